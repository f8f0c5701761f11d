"""Path traces: contract check, journaled store, metrics and an outage's `paths`.

DESIGN.md "Path traces".

A trace arrives as a ProbeResult of kind "trace" (proto PathTrace); the ingest checks it with
`trace_problem` (`bad_trace`) and hands it to `TraceStore.add` instead of the classifier.

Stored in the journal's `path_traces` table, one row per trace: (probe, agent, region,
trigger, taken_at, outage_id, trace JSON). What is kept, per (probe, agent):

- the last `keep` traces not attached to an outage, and always its latest baseline;
- a trace that arrives while an outage of its probe (a probe record, or a service record
  naming the probe) is open is attached to it (`outage_id`), and so are the pair's
  unattached traces taken since the outage started (a failure trace usually arrives before
  enough regions agree to open the outage); the last `keep` per (outage, probe, agent) stay.

`outage_paths` reads an outage's `paths` back from the journal (so they survive a restart):
every trace of its probes taken between its start and its end, latest per (region, agent),
the latest baselines from before its end, and the summary (collector/pathsummary.py).
`PathMetrics` exports `probenet_path_hops{probe,region}` and
`probenet_path_last_hop_info{probe,region,address}` from the latest trace per (probe, region).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

from .errors import JournalError
from .model import OutageKind, OutageRecord, rfc3339
from .pathsummary import RegionPath, summarize_paths

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from prometheus_client.registry import Collector as _Collector

    from probenet.v1 import probenet_pb2 as pb

    from .journal import Journal
else:
    _Collector = object

log = logging.getLogger(__name__)

__all__ = ["MAX_HOPS", "MAX_PROBES_PER_HOP", "TRACE_KIND", "PathMetrics", "StoredTrace",
           "TraceStore", "outage_paths", "trace_json", "trace_problem"]

TRACE_KIND = "trace"
TRIGGERS = frozenset({"failure", "baseline"})
METHODS = frozenset({"", "udp", "icmp"})
MAX_HOPS = 64
MAX_PROBES_PER_HOP = 10
MAX_TRACE_TEXT = 64  # stop_reason, a hop's error
MAX_ADDRESS = 64
MAX_RTT_S = 60.0
KEEP_PER_PAIR = 5
# (probe, region) pairs the metrics hold: beyond, new pairs are left out of /metrics.
MAX_METRIC_PAIRS = 10_000


def _bad_address(address: str) -> bool:
    if not address:
        return False
    if len(address) > MAX_ADDRESS:
        return True
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return True
    return False


def _bad_hop(hop: pb.TraceHop) -> bool:
    return (not 1 <= hop.ttl <= MAX_HOPS or _bad_address(hop.address)
            or hop.sent > MAX_PROBES_PER_HOP or hop.received > hop.sent
            or len(hop.rtt_seconds) > hop.received or len(hop.error) > MAX_TRACE_TEXT
            or (hop.received > 0 and not hop.address)
            or any(not (math.isfinite(rtt) and 0.0 <= rtt <= MAX_RTT_S)
                   for rtt in hop.rtt_seconds))


def trace_problem(result: pb.ProbeResult) -> str | None:
    """Why a result of kind "trace" is out of contract (a log detail), or None.

    Counted as `bad_trace` by the ingest. Bounds: at most MAX_HOPS hops and max_hops,
    MAX_PROBES_PER_HOP probes per hop, each hop's TTL within [1, MAX_HOPS] and increasing,
    addresses IP literals or empty, short strings, round trips finite within [0, 60] s.
    """
    if _bad_address(result.address):
        return "the traced address is not an IP address"
    if result.WhichOneof("details") != TRACE_KIND:
        # No trace taken: acceptable only with the reason why.
        return None if result.error else "a trace result without trace details or error"
    trace = result.trace
    problem = _header_problem(trace)
    if problem is not None:
        return problem
    last_ttl = 0
    for hop in trace.hops:
        if _bad_hop(hop) or hop.ttl <= last_ttl:
            return f"hop {hop.ttl}: out of contract (TTL, address, counts, round trips, error)"
        last_ttl = hop.ttl
    return None


def _header_problem(trace: pb.PathTrace) -> str | None:
    problems = (
        (trace.trigger not in TRIGGERS, (f"trigger {trace.trigger[:32]!r} is not failure or "
                                        "baseline")),
        (trace.method not in METHODS, f"method {trace.method[:32]!r} is not udp or icmp"),
        (trace.max_hops > MAX_HOPS or len(trace.hops) > MAX_HOPS, f"more than {MAX_HOPS} hops"),
        (bool(trace.max_hops) and len(trace.hops) > trace.max_hops, "more hops than max_hops"),
        (trace.probes_per_hop > MAX_PROBES_PER_HOP,
         f"more than {MAX_PROBES_PER_HOP} probes per hop"),
        (len(trace.stop_reason) > MAX_TRACE_TEXT, f"stop_reason over {MAX_TRACE_TEXT} characters"),
    )
    return next((message for broken, message in problems if broken), None)


def trace_json(result: pb.ProbeResult) -> dict[str, Any]:
    """The JSON form of a (checked) trace result, as stored and served."""
    trace = result.trace
    return {
        "probe": result.probe, "target": result.target, "address": result.address,
        "success": result.success, "error": result.error,
        "trigger": trace.trigger or ("failure" if not result.success else "baseline"),
        "method": trace.method, "max_hops": trace.max_hops,
        "probes_per_hop": trace.probes_per_hop, "reached": trace.reached,
        "stop_reason": trace.stop_reason,
        "hops": [{"ttl": hop.ttl, "address": hop.address, "sent": hop.sent,
                  "received": hop.received, "rtt_seconds": list(hop.rtt_seconds),
                  "error": hop.error} for hop in trace.hops],
    }


@dataclass(frozen=True, slots=True)
class StoredTrace:
    """One trace as kept: who took it, when, and its JSON."""

    probe: str
    agent: str
    region: str
    trigger: str
    taken_at: float
    trace: Mapping[str, Any]

    @property
    def path(self) -> RegionPath:
        """Its path, for the summary."""
        return RegionPath.from_json(self.trace)

    def to_json(self) -> dict[str, Any]:
        """The entry of `paths` (trace, taken_at, trigger)."""
        return {"trace": dict(self.trace), "taken_at": rfc3339(self.taken_at),
                "trigger": self.trigger}


def _matches(record: OutageRecord, probe: str) -> bool:
    return record.kind in (OutageKind.PROBE, OutageKind.SERVICE) and (
        record.probe == probe or probe in record.probes)


class TraceStore:
    """Traces in, journaled (table `path_traces`); the latest per (probe, region) in memory."""

    def __init__(self, journal: Journal, *,
                 open_outages: Callable[[], Sequence[OutageRecord]],
                 keep: int = KEEP_PER_PAIR) -> None:
        """`journal` must be open when `add` or `load` runs; `open_outages`: the classifier's."""
        self._journal = journal
        self._open_outages = open_outages
        self._keep = keep
        self._latest: dict[tuple[str, str], StoredTrace] = {}

    def load(self) -> None:
        """Read the latest trace per (probe, region) back from the journal (after a start)."""
        rows = self._journal.db.execute(
            "SELECT probe, agent, region, trigger, taken_at, trace FROM path_traces "
            "WHERE id IN (SELECT MAX(id) FROM path_traces GROUP BY probe, region)")
        for row in rows:
            stored = _stored(row)
            if stored is not None:
                self._remember(stored)

    def latest(self) -> Mapping[tuple[str, str], StoredTrace]:
        """The latest trace per (probe, region)."""
        return self._latest

    def _remember(self, stored: StoredTrace) -> None:
        key = (stored.probe, stored.region)
        if key in self._latest or len(self._latest) < MAX_METRIC_PAIRS:
            self._latest[key] = stored

    def add(self, agent: str, region: str, result: pb.ProbeResult, now: float) -> StoredTrace:
        """Keep one checked trace (JournalError if the journal fails: nothing is kept)."""
        taken_at = result.timestamp_ms / 1000 if result.timestamp_ms else now
        body = trace_json(result)
        stored = StoredTrace(result.probe, agent, region, body["trigger"], taken_at, body)
        outages = [r for r in self._open_outages() if _matches(r, result.probe)]
        outage_id = outages[0].id if outages else None
        db = self._journal.db
        try:
            db.execute("BEGIN")
            try:
                db.execute(
                    "INSERT INTO path_traces (probe, agent, region, trigger, taken_at, "
                    "outage_id, trace) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (stored.probe, agent, region, stored.trigger, taken_at, outage_id,
                     json.dumps(body, separators=(",", ":"))))
                if outages:
                    # The pair's traces since the outage began belong to it too.
                    db.execute(
                        "UPDATE path_traces SET outage_id = ? WHERE outage_id IS NULL AND "
                        "probe = ? AND agent = ? AND taken_at >= ?",
                        (outage_id, stored.probe, agent,
                         min(r.started_at for r in outages)))
                self._prune(db, stored.probe, agent, outage_id)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise JournalError(self._journal.path, f"storing a path trace failed: {exc}") from exc
        self._remember(stored)
        return stored

    def _prune(self, db: sqlite3.Connection, probe: str, agent: str,
               outage_id: str | None) -> None:
        keep = self._keep
        db.execute(
            "DELETE FROM path_traces WHERE probe = ? AND agent = ? AND outage_id IS NULL "
            "AND id NOT IN (SELECT id FROM path_traces WHERE probe = ? AND agent = ? AND "
            "outage_id IS NULL ORDER BY id DESC LIMIT ?) AND id NOT IN (SELECT MAX(id) FROM "
            "path_traces WHERE probe = ? AND agent = ? AND trigger = 'baseline')",
            (probe, agent, probe, agent, keep, probe, agent))
        if outage_id is not None:
            db.execute(
                "DELETE FROM path_traces WHERE probe = ? AND agent = ? AND outage_id = ? "
                "AND id NOT IN (SELECT id FROM path_traces WHERE probe = ? AND agent = ? AND "
                "outage_id = ? ORDER BY id DESC LIMIT ?) AND id NOT IN (SELECT MAX(id) FROM "
                "path_traces WHERE probe = ? AND agent = ? AND trigger = 'baseline')",
                (probe, agent, outage_id, probe, agent, outage_id, keep, probe, agent))


def _stored(row: Sequence[Any]) -> StoredTrace | None:
    probe, agent, region, trigger, taken_at, text = row
    try:
        body = json.loads(text)
    except ValueError:
        log.warning("unreadable path trace skipped", extra={"probe": probe, "agent": agent})
        return None
    if not isinstance(body, dict):
        return None
    return StoredTrace(probe, agent, region, trigger, float(taken_at), body)


def _latest_per(traces: Iterator[StoredTrace] | Sequence[StoredTrace]
                ) -> dict[str, dict[str, StoredTrace]]:
    """The latest trace per region and agent."""
    found: dict[str, dict[str, StoredTrace]] = {}
    for stored in traces:
        agents = found.setdefault(stored.region, {})
        current = agents.get(stored.agent)
        if current is None or stored.taken_at >= current.taken_at:
            agents[stored.agent] = stored
    return found


def _region_path(agents: Mapping[str, StoredTrace]) -> StoredTrace:
    return max(agents.values(), key=lambda stored: stored.taken_at)


def outage_paths(db: sqlite3.Connection, record: OutageRecord, now: float
                 ) -> dict[str, Any] | None:
    """The `paths` of an outage (module docstring); None for kinds without a probe.

    {"regions": {region: {"agents": {agent: {"trace", "taken_at", "trigger"}}, "last_hop",
    "reached"}}, "baseline": {region: {agent: {...}}}, "summary": PathSummary.to_json()}.
    """
    probes = tuple(dict.fromkeys((*((record.probe,) if record.probe else ()), *record.probes)))
    if record.kind not in (OutageKind.PROBE, OutageKind.SERVICE) or not probes:
        return None
    end = record.ended_at if record.ended_at is not None else now
    marks = ",".join("?" * len(probes))
    columns = "probe, agent, region, trigger, taken_at, trace"
    during = [s for row in db.execute(
        f"SELECT {columns} FROM path_traces WHERE probe IN ({marks}) "  # noqa: S608
        "AND taken_at >= ? AND taken_at <= ? ORDER BY id", (*probes, record.started_at, end))
        if (s := _stored(row)) is not None]
    baselines = [s for row in db.execute(
        f"SELECT {columns} FROM path_traces WHERE probe IN ({marks}) "  # noqa: S608
        "AND trigger = 'baseline' AND taken_at < ? ORDER BY id", (*probes, record.started_at))
        if (s := _stored(row)) is not None]
    regions = _latest_per(during)
    baseline = _latest_per(baselines)
    down = set(record.regions) | set(record.regions_ever)
    chosen: dict[str, RegionPath | None] = {}
    for region, agents in regions.items():
        chosen[region] = _region_path(agents).path
    for region, agents in baseline.items():
        if region not in chosen and region not in down:
            chosen[region] = _region_path(agents).path
    up = {region for region in chosen if region not in down}
    summary = summarize_paths(chosen, down=down, up=up)
    return {
        "regions": {region: {
            "agents": {agent: stored.to_json() for agent, stored in sorted(agents.items())},
            "last_hop": _region_path(agents).path.last_hop,
            "reached": _region_path(agents).path.reached,
        } for region, agents in sorted(regions.items())},
        "baseline": {region: {agent: stored.to_json() for agent, stored in sorted(agents.items())}
                     for region, agents in sorted(baseline.items())},
        "summary": summary.to_json(),
    }


class PathMetrics(_Collector):
    """`probenet_path_hops` and `probenet_path_last_hop_info` per (probe, region)."""

    def __init__(self, store: TraceStore) -> None:
        """Read `store`'s latest traces at each scrape."""
        self._store = store

    def describe(self) -> list[Any]:
        """No description up front: the families are built at scrape."""
        return []

    def collect(self) -> Iterator[Any]:
        """The two families from the latest trace per (probe, region)."""
        hops = GaugeMetricFamily(
            "probenet_path_hops", "Hops of the latest path trace per probe and region.",
            labels=["probe", "region"])
        last = InfoMetricFamily(
            "probenet_path_last_hop",
            "The last hop that answered in the latest path trace per probe and region.",
            labels=["probe", "region"])
        for (probe, region), stored in sorted(self._store.latest().items()):
            path = stored.path
            hops.add_metric([probe, region], len(path.hops))
            last.add_metric([probe, region], {"address": path.last_hop or ""})
        yield hops
        yield last
