"""A soak run: a real fleet with churn for N minutes; RSS, fds and journal growth per minute.

    .venv/bin/python benchmarks/soak.py [--quick] [--minutes 30] [--report-every 60]
        [--seed 1] [--agents 6] [--regions 3] [--interval 1s] [--collector-restarts [N]]
        [--restart-every 45] [--outage-every 60] [--workdir DIR]

A `probenet collector` and `--agents` `probenet agent` processes (default 6 in 3 regions,
each bound to its own loopback source address 127.0.R.N), started by `probenet.lab.Fleet`,
probe local HTTP, TCP and DNS targets (`probenet.lab.targets.FaultyTargets`, in this
process) every `--interval`. A churn schedule drawn up front from `--seed` plays through the
run: agents restarted (SIGTERM, some `kill -9`), outages opened and closed through the
targets' faults (global: some probes of the `social` service fail from every region;
regional: `bank` probes fail from one region), and with `--collector-restarts` the
collector restarted (SIGTERM, start, every agent reconnected).

Every `--report-every` seconds one row: the collector's RSS (VmRSS of /proc/PID/status),
open fds (/proc/PID/fd) and CPU share, the same summed over the agents, the journal's size
(the SQLite file and its -wal) and growth since the previous row, other files the fleet
keeps in the work folder (e.g. an agent's spool), outage records (`/api/v1/outages`),
results accepted (`probenet_ingest_results_total{outcome="applied"}`, summed over collector
restarts), the churn done so far and the machine's load average. At the end: the slope of
each figure over the second half of the run (flat is what a soak wants to see), and as the
last stdout line one JSON object with every figure. Churn events are logged on stderr.

Bounded: the run ends after `--minutes` (or on Ctrl-C, or when a child dies unasked); every
wait has a deadline; every child is stopped on the way out (SIGTERM, then SIGKILL), and
the children get SIGTERM from the kernel if this process dies first. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from probenet.configfile import parse_duration
from probenet.lab.client import CollectorApi
from probenet.lab.errors import ApiError, FleetError, LabError
from probenet.lab.fleet import AgentSeat, Fleet, FleetPlan, ProbePlan, pick_free_port
from probenet.lab.snapshot import OutageEntry, parse_entries
from probenet.lab.targets import FaultMode, FaultyTargets
from probenet.lifecycle import StopSignals, abandoned_on

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

log = logging.getLogger("probenet.soak")

CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
OUTAGES_LIMIT = 10_000  # the API's MAX_LIMIT: the count is exact below it
READY_TIMEOUT_S = 90.0  # an agent's reconnect backoff is capped at 10 s: this is generous
STOP_GRACE_S = 10.0
JOURNAL = "journal.db"  # the name probenet.lab.fleet gives the collector's journal
COLLECTOR_RESTARTS_AUTO = -1  # `--collector-restarts` alone: one per 10 minutes

# Short site codes for region names, in the order regions are handed out.
REGIONS: tuple[tuple[str, str], ...] = (
    ("eu-central", "fra"), ("us-east", "iad"), ("ap-south", "bom"), ("sa-east", "gru"),
    ("af-south", "jnb"), ("me-central", "dxb"), ("ap-southeast", "syd"), ("us-west", "sjc"),
)

# Twelve probes; a global fault takes at most the 4 `social` ones, a regional fault at most
# the 2 `bank` ones: an agent never has half its probes down, so churn never makes a healthy
# agent look impaired (DESIGN.md's rule) and every fault shows as an outage.
GLOBAL_POOL = ("social-web", "social-photos", "social-messenger", "social-dns")
REGIONAL_POOL = ("bank-web", "bank-api")
PROBES: tuple[ProbePlan, ...] = (
    ProbePlan("social-web", "http", "social"),
    ProbePlan("social-photos", "http", "social"),
    ProbePlan("social-messenger", "http", "social"),
    ProbePlan("social-dns", "dns", "social"),
    ProbePlan("bank-web", "http", "bank"),
    ProbePlan("bank-api", "tcp", "bank"),
    ProbePlan("news-web", "http", "news"),
    ProbePlan("news-dns", "dns", "news"),
    ProbePlan("mail-smtp", "tcp", "mail"),
    ProbePlan("cdn-dns", "dns", "cdn"),
    ProbePlan("shop-api", "tcp", "shop"),
    ProbePlan("status-dns", "dns", "status"),
)


# -- the fleet ---------------------------------------------------------------------------


def soak_agents(agents: int, regions: int) -> tuple[AgentSeat, ...]:
    """`agents` seats spread round-robin over `regions` regions, each on 127.0.R.N."""
    seats = []
    for index in range(agents):
        region_index, number = index % regions, index // regions + 1
        region, site = REGIONS[region_index]
        seats.append(AgentSeat(f"{site}-{number}", region,
                               f"127.0.{region_index + 1}.{number}",
                               f"as64{region_index + 5}{number:02d}"))
    return tuple(seats)


def soak_plan(options: SoakOptions) -> FleetPlan:
    """The fleet: agents, the twelve probes, the interval, free loopback ports."""
    return FleetPlan(agents=soak_agents(options.agents, options.regions), probes=PROBES,
                     interval_s=options.interval_s, http_port=pick_free_port(),
                     grpc_port=pick_free_port())


@dataclass(frozen=True, slots=True)
class Fault:
    """Probes that fail with `mode`, from `regions` only (empty: from every region)."""

    probes: frozenset[str]
    mode: FaultMode
    regions: frozenset[str] = frozenset()


class FaultBoard:
    """The targets' fault policy: the faults open now, keyed by a name; edited by the churn."""

    def __init__(self, seats: Sequence[AgentSeat]) -> None:
        """`seats` tell the targets which agent (and region) a source address belongs to."""
        self._seats = {seat.source_address: seat for seat in seats}
        self._faults: dict[str, Fault] = {}

    def open(self, name: str, fault: Fault) -> None:
        """Start failing as `fault` says, until `close(name)`."""
        self._faults[name] = fault

    def close(self, name: str) -> None:
        """Lift the fault `name` (nothing if it is not open)."""
        self._faults.pop(name, None)

    def __call__(self, probe: str, peer: str) -> FaultMode | None:
        """The fault for `probe` asked from `peer` (a stranger is always answered)."""
        seat = self._seats.get(peer)
        if seat is None:
            return None
        for fault in self._faults.values():
            if probe in fault.probes and (not fault.regions or seat.region in fault.regions):
                return fault.mode
        return None


# -- the churn schedule --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChurnEvent:
    """One thing the churn does `at_s` seconds into the run."""

    at_s: float
    action: str  # agent_term | agent_kill | collector_restart | fault_open | fault_close
    target: str = ""  # agent id, or the fault's name
    fault: Fault | None = None

    @property
    def is_process(self) -> bool:
        """True for restarts (played in order, one at a time, beside the faults)."""
        return not self.action.startswith("fault_")

    def describe(self) -> str:
        """One line for the log."""
        if self.fault is None:
            return f"{self.action} {self.target}".strip()
        where = ",".join(sorted(self.fault.regions)) or "every region"
        return (f"{self.action} {self.target}: {','.join(sorted(self.fault.probes))} "
                f"{self.fault.mode.value} from {where}")


def _gaps(rng: random.Random, mean_s: float, start_s: float, end_s: float) -> Iterator[float]:
    """Times from `start_s` to `end_s`, exponential gaps of mean `mean_s` (a Poisson process)."""
    at = start_s + rng.expovariate(1.0 / mean_s)
    while at < end_s:
        yield at
        at += rng.expovariate(1.0 / mean_s)


def _restarts(rng: random.Random, options: SoakOptions, seats: Sequence[AgentSeat],
              duration_s: float) -> list[ChurnEvent]:
    events = []
    # The first report interval and the last few seconds stay quiet: the first row is a
    # baseline, the last shows the fleet settled.
    for at in _gaps(rng, options.restart_every_s, options.report_every_s, duration_s - 5):
        action = "agent_kill" if rng.random() < options.kill_share else "agent_term"
        events.append(ChurnEvent(at, action, rng.choice(seats).id))
    count = options.collector_restarts
    if count == COLLECTOR_RESTARTS_AUTO:
        count = max(1, round(duration_s / 600))
    events.extend(ChurnEvent(rng.uniform(0.1, 0.9) * duration_s, "collector_restart",
                             "collector") for _ in range(count))
    return events


def _faults(rng: random.Random, options: SoakOptions, regions: Sequence[str],
            duration_s: float) -> list[ChurnEvent]:
    """Global and regional faults in turn at random, one of each kind open at most."""
    events: list[ChurnEvent] = []
    busy_until = {"global": 0.0, "regional": 0.0}
    shortest_s, longest_s = options.outage_seconds
    for number, at in enumerate(_gaps(rng, options.outage_every_s, options.report_every_s,
                                      duration_s - longest_s), start=1):
        scope = "global" if rng.random() < 0.5 else "regional"
        if busy_until[scope] > at:
            continue  # one fault per pool at a time, so each fault opens its own outage
        if scope == "global":
            probes = rng.sample(GLOBAL_POOL, rng.randint(1, len(GLOBAL_POOL)))
            fault = Fault(frozenset(probes), rng.choice(list(FaultMode)))
        else:
            probes = rng.sample(REGIONAL_POOL, rng.randint(1, len(REGIONAL_POOL)))
            fault = Fault(frozenset(probes), rng.choice(list(FaultMode)),
                          frozenset({rng.choice(regions)}))
        lasts = rng.uniform(shortest_s, longest_s)
        name = f"{scope}-{number}"
        events.append(ChurnEvent(at, "fault_open", name, fault))
        events.append(ChurnEvent(at + lasts, "fault_close", name, fault))
        busy_until[scope] = at + lasts
    return events


def churn_schedule(options: SoakOptions, plan: FleetPlan) -> list[ChurnEvent]:
    """Every churn event of the run, in time order; the same seed gives the same schedule."""
    rng = random.Random(options.seed)
    duration_s = options.minutes * 60
    events = _restarts(rng, options, plan.agents, duration_s)
    events += _faults(rng, options, plan.regions, duration_s)
    return sorted(events, key=lambda e: e.at_s)


# -- /proc ----------------------------------------------------------------------------------


def vm_rss_bytes(pid: int) -> int | None:
    """VmRSS of /proc/PID/status, or None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # the kernel writes kB
    except (OSError, ValueError):
        return None
    return None


def open_fds(pid: int) -> int | None:
    """Entries of /proc/PID/fd, or None if the process is gone."""
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` (every thread), or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def child_pids(config_paths: dict[str, Path]) -> dict[str, int]:
    """name -> pid of this process's children, matched by the `--config` they were given.

    `Fleet` keeps its children's pids to itself; /proc tells them just as well.
    """
    by_config = {str(path): name for name, path in config_paths.items()}
    me = os.getpid()
    found: dict[str, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != me:
                continue
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        for flag, value in itertools.pairwise(argv):
            name = by_config.get(value.decode(errors="replace")) if flag == b"--config" else None
            if name is not None:
                found[name] = int(entry.name)
    return found


def file_bytes(path: Path) -> int:
    """The size of `path`, 0 if it does not exist (yet)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def state_files(workdir: Path) -> dict[str, int]:
    """Path -> bytes of every other file the fleet keeps in the work folder (agent spools).

    Left out: the journal (its own column), the logs, the tokens and the generated configs.
    """
    found: dict[str, int] = {}
    for path in workdir.rglob("*"):
        relative = path.relative_to(workdir)
        if relative.parts[0] in {"logs", "tokens"} or path.name.startswith(JOURNAL) \
                or (len(relative.parts) == 1 and path.suffix == ".yaml"):
            continue
        with contextlib.suppress(OSError):
            if path.is_file():
                found[str(relative)] = path.stat().st_size
    return found


def logs_bytes(workdir: Path) -> int:
    """The children's log files, together."""
    return sum(p.stat().st_size for p in (workdir / "logs").glob("*.log"))


# -- samples ----------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """A collector counter summed over collector processes (each restart starts it at 0)."""

    banked: float = 0.0
    last: float = 0.0
    pid: int | None = None

    def observe(self, pid: int, value: float) -> float:
        """Record `value` read from collector `pid`; return the total over every process."""
        if pid != self.pid:
            self.banked += self.last
            self.last, self.pid = 0.0, pid
        self.last = max(self.last, value)
        return self.banked + self.last


@dataclass(slots=True)
class Row:
    """One line of the table (None: could not be read)."""

    elapsed_s: float
    collector_pid: int | None
    collector_rss: int | None
    collector_fds: int | None
    collector_cpu_share: float | None
    agents_running: int
    agents_rss: int
    agents_fds: int
    agents_cpu_share: float | None
    journal_bytes: int  # the SQLite file and its -wal together
    journal_db_bytes: int
    journal_wal_bytes: int
    journal_growth: int
    state_bytes: int
    logs_bytes: int
    outages: int | None
    outages_open: int | None
    accepted: float | None
    duplicates: float | None
    accepted_per_s: float | None
    agent_terms: int
    agent_kills: int
    collector_restarts: int
    faults_opened: int
    load1: float  # the machine's 1-minute load average: a busy machine makes spurious outages


@dataclass(slots=True)
class ChurnCount:
    """What the churn did so far (and how long each restart took to reconnect)."""

    agent_term: int = 0
    agent_kill: int = 0
    collector_restart: int = 0
    fault_open: int = 0
    fault_close: int = 0
    reconnect_s: list[float] = field(default_factory=list)
    collector_ready_s: list[float] = field(default_factory=list)
    late_s: float = 0.0  # the longest an event started after its planned time


class Sampler:
    """Reads one `Row`: /proc for the children, the work folder, the collector's API."""

    def __init__(self, fleet: Fleet, api: CollectorApi, churn: ChurnCount) -> None:
        """Figures since the previous row are kept here (CPU, journal, counters)."""
        self._fleet = fleet
        self._api = api
        self._churn = churn
        self.accepted = Tally()
        self.duplicates = Tally()
        self._previous: tuple[float, dict[int, float], int, float | None] | None = None
        self.state_listing: dict[str, int] = {}  # the latest row's state files

    async def counters(self, pid: int) -> tuple[float | None, float | None]:
        """Accepted and duplicate results over every collector so far (None: unreadable)."""
        try:
            text = await self._api.metrics()
        except ApiError as exc:
            log.warning("cannot read /metrics", extra={"error": str(exc)})
            return None, None
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "probenet_ingest_results":
                continue
            for sample in family.samples:
                if sample.name == "probenet_ingest_results_total":
                    values[sample.labels.get("outcome", "")] = sample.value
        return (self.accepted.observe(pid, values.get("applied", 0.0)),
                self.duplicates.observe(pid, values.get("duplicate", 0.0)))

    async def _outages(self) -> tuple[int | None, int | None]:
        # CollectorApi.outages() takes no limit, and the API's default (100) is passed in a
        # long run: ask for the most it gives.
        path = f"/api/v1/outages?limit={OUTAGES_LIMIT}"
        try:
            records = parse_entries(OutageEntry, await self._api.get_json(path), path)
        except ApiError as exc:
            log.warning("cannot read /api/v1/outages", extra={"error": str(exc)})
            return None, None
        return len(records), sum(1 for r in records if r.active)

    async def row(self, elapsed_s: float) -> Row:
        """The fleet now."""
        workdir = self._fleet.workdir
        pids = child_pids(self._fleet.config_paths)
        collector = pids.pop("collector", None)
        cpu = {pid: cpu_seconds(pid) for pid in (*pids.values(), collector) if pid}
        self.state_listing = state_files(workdir)
        journal_db = file_bytes(workdir / JOURNAL)
        journal_wal = file_bytes(workdir / f"{JOURNAL}-wal")
        journal = journal_db + journal_wal
        accepted = duplicates = None
        if collector is not None:
            accepted, duplicates = await self.counters(collector)
        outages, outages_open = await self._outages()
        now = time.monotonic()
        previous = self._previous
        self._previous = (now, {p: c for p, c in cpu.items() if c is not None}, journal,
                          accepted)
        span = now - previous[0] if previous else 0.0

        def share(pid_list: list[int]) -> float | None:
            if previous is None or span <= 0:
                return None
            # A process that started since the previous row counts from 0 CPU seconds.
            used = sum((cpu.get(p) or 0.0) - previous[1].get(p, 0.0) for p in pid_list)
            return used / span

        agent_pids = list(pids.values())
        return Row(
            elapsed_s=elapsed_s,
            collector_pid=collector,
            collector_rss=vm_rss_bytes(collector) if collector else None,
            collector_fds=open_fds(collector) if collector else None,
            collector_cpu_share=share([collector]) if collector else None,
            agents_running=len(agent_pids),
            agents_rss=sum(vm_rss_bytes(p) or 0 for p in agent_pids),
            agents_fds=sum(open_fds(p) or 0 for p in agent_pids),
            agents_cpu_share=share(agent_pids),
            journal_bytes=journal,
            journal_db_bytes=journal_db,
            journal_wal_bytes=journal_wal,
            journal_growth=journal - previous[2] if previous else 0,
            state_bytes=sum(self.state_listing.values()),
            logs_bytes=logs_bytes(workdir),
            outages=outages,
            outages_open=outages_open,
            accepted=accepted,
            duplicates=duplicates,
            accepted_per_s=((accepted - previous[3]) / span
                            if previous and previous[3] is not None and accepted is not None
                            and span > 0 else None),
            agent_terms=self._churn.agent_term,
            agent_kills=self._churn.agent_kill,
            collector_restarts=self._churn.collector_restart,
            faults_opened=self._churn.fault_open,
            load1=os.getloadavg()[0],
        )


# -- the table ------------------------------------------------------------------------------

HEADER = (f"{'min':>5} {'coll MiB':>8} {'fds':>4} {'cpu':>4}  {'agents MiB':>10} {'fds':>4} "
          f"{'cpu':>4}  {'journal MiB':>11} {'+KiB':>7} {'state KiB':>9}  {'outages':>7} "
          f"{'open':>4} {'accepted':>9} {'/s':>5}  {'restarts t/k/c':>14} {'faults':>6} "
          f"{'load':>5}")


def _or_dash(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _mib(value: int | None) -> float | None:
    return None if value is None else value / MIB


def format_row(row: Row) -> str:
    """One line of the table, aligned with HEADER."""
    restarts = f"{row.agent_terms}/{row.agent_kills}/{row.collector_restarts}"
    return (f"{row.elapsed_s / 60:>5.1f} {_or_dash(_mib(row.collector_rss), '8.1f')} "
            f"{_or_dash(row.collector_fds, '4d')} "
            f"{_or_dash(row.collector_cpu_share, '4.0%')}  "
            f"{row.agents_rss / MIB:>10.1f} {row.agents_fds:>4d} "
            f"{_or_dash(row.agents_cpu_share, '4.0%')}  "
            f"{row.journal_bytes / MIB:>11.2f} {row.journal_growth / 1024:>+7.0f} "
            f"{row.state_bytes / 1024:>9.0f}  {_or_dash(row.outages, '7d')} "
            f"{_or_dash(row.outages_open, '4d')} {_or_dash(row.accepted, '9,.0f')} "
            f"{_or_dash(row.accepted_per_s, '5.0f')}  {restarts:>14} {row.faults_opened:>6} "
            f"{row.load1:>5.1f}")


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute; None for fewer than 2."""
    if len(points) < 2:
        return None
    xs = [x / 60 for x, _ in points]
    ys = [y for _, y in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def second_half(rows: Sequence[Row], duration_s: float) -> dict[str, Any]:
    """Slopes (per minute) and first -> last values of each figure over the second half.

    The collector's figures use only the rows of its last process (a restart starts it
    afresh, which is not a trend); the agents' sums are taken as they are (a restarted agent
    starts small, so churn makes their sum noisy rather than rising).
    """
    half = [r for r in rows if r.elapsed_s >= duration_s / 2]
    if rows and rows[-1] not in half:
        half = [rows[-1]]
    last_pid = half[-1].collector_pid if half else None
    collector = [r for r in half if r.collector_pid == last_pid]
    figures: dict[str, Any] = {"rows": len(half), "collector_rows": len(collector)}

    def trend(name: str, source: Sequence[Row], attr: str) -> None:
        points = [(r.elapsed_s, float(v)) for r in source
                  if (v := getattr(r, attr)) is not None]
        figures[f"{name}_slope_per_min"] = slope_per_minute(points)
        figures[f"{name}_first"] = points[0][1] if points else None
        figures[f"{name}_last"] = points[-1][1] if points else None

    trend("collector_rss_bytes", collector, "collector_rss")
    trend("collector_fds", collector, "collector_fds")
    trend("agents_rss_bytes", half, "agents_rss")
    trend("agents_fds", half, "agents_fds")
    trend("journal_bytes", half, "journal_bytes")
    trend("state_bytes", half, "state_bytes")
    return figures


def summary_lines(figures: dict[str, Any]) -> list[str]:
    """The closing lines: what the second half says, and what the churn did."""
    half = figures["second_half"]
    churn = figures["churn_done"]
    lines = [(f"second half ({half['rows']} rows; collector figures over the "
              f"{half['collector_rows']} rows of its last process), least-squares slope:")]

    def line(label: str, key: str, unit: tuple[str, float], slope_unit: tuple[str, float]
             ) -> None:
        slope = half[f"{key}_slope_per_min"]
        first, last = half[f"{key}_first"], half[f"{key}_last"]
        if slope is None or first is None or last is None:
            lines.append(f"  {label:18} n/a (too few rows)")
            return
        lines.append(f"  {label:18} {first / unit[1]:,.1f} -> {last / unit[1]:,.1f}"
                     f"{' ' + unit[0] if unit[0] else ''}, slope "
                     f"{slope / slope_unit[1]:+,.1f}{' ' + slope_unit[0] if slope_unit[0] else ''}"
                     "/min")

    count, kib, mib = ("", 1.0), ("KiB", 1024.0), ("MiB", float(MIB))
    line("collector RSS", "collector_rss_bytes", mib, kib)
    line("collector fds", "collector_fds", count, count)
    line("agents RSS (sum)", "agents_rss_bytes", mib, kib)
    line("agents fds (sum)", "agents_fds", count, count)
    line("journal", "journal_bytes", mib, kib)
    line("state files", "state_bytes", kib, kib)
    reconnect = churn["reconnect_s"]
    lines.append(
        f"churn: {churn['agent_term']} agent SIGTERM restarts, {churn['agent_kill']} kill -9, "
        f"{churn['collector_restart']} collector restarts, {churn['fault_open']} faults "
        f"opened ({churn['fault_close']} closed); agent back in the collector's view "
        f"after a restart: max {max(reconnect, default=0.0):.1f} s; events late by at most "
        f"{churn['late_s']:.1f} s")
    last = figures["rows"][-1] if figures["rows"] else None
    if last is not None:
        lines.append(f"results accepted {last['accepted'] or 0:,.0f} (duplicates "
                     f"{last['duplicates'] or 0:,.0f}), outage records {last['outages']}, "
                     f"children's logs {last['logs_bytes'] / MIB:.1f} MiB")
    return lines


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SoakOptions:
    """The command line, parsed."""

    minutes: float
    report_every_s: float
    seed: int
    agents: int
    regions: int
    interval_s: float
    collector_restarts: int
    restart_every_s: float
    kill_share: float
    outage_every_s: float
    outage_seconds: tuple[float, float]
    workdir: Path | None
    log_level: str

    @property
    def duration_s(self) -> float:
        """The run's length in seconds."""
        return self.minutes * 60


class Soak:
    """One run: the fleet is up; `play` runs the churn and the rows until the end."""

    def __init__(self, options: SoakOptions, fleet: Fleet, board: FaultBoard,
                 api: CollectorApi, stop: asyncio.Event) -> None:
        """`stop` ends the run early (a signal); the run sets it itself at its end."""
        self.options = options
        self.fleet = fleet
        self.board = board
        self.stop = stop
        self.churn = ChurnCount()
        self.sampler = Sampler(fleet, api, self.churn)
        self.rows: list[Row] = []
        self.failure: FleetError | None = None
        self.interrupted = False
        self._lock = asyncio.Lock()  # a row is never taken in the middle of a restart
        self._started = 0.0

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    async def _sleep_until(self, at_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, at_s - self._elapsed())):
                await self.stop.wait()

    async def play(self, events: Sequence[ChurnEvent]) -> None:
        """Rows every `report_every_s` and the churn, until the end, a signal or a failure."""
        self._started = time.monotonic()
        await self._take_row()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._play([e for e in events if e.is_process]), name="restarts")
            group.create_task(self._play([e for e in events if not e.is_process]),
                              name="faults")
            rows = group.create_task(self._rows(), name="rows")
            watch = group.create_task(self._watch(), name="watch-fleet")
            await self.stop.wait()
            watch.cancel()
            await rows

    async def _watch(self) -> None:
        self.failure = await self.fleet.wait_failure()
        log.error("a child exited unasked; ending the run", extra={"child": self.failure.name})
        self.stop.set()

    async def _rows(self) -> None:
        duration = self.options.duration_s
        number = 1
        while not self.stop.is_set():
            at = min(number * self.options.report_every_s, duration)
            await self._sleep_until(at)
            if self.stop.is_set():
                self.interrupted = self.failure is None
                await self._take_row()  # where the early end left the fleet
                return
            await self._take_row()
            if at >= duration:
                self.stop.set()
            number += 1

    async def _take_row(self) -> None:
        async with self._lock:
            row = await self.sampler.row(self._elapsed())
        self.rows.append(row)
        print(format_row(row), flush=True)

    async def _play(self, events: Sequence[ChurnEvent]) -> None:
        for event in events:
            await self._sleep_until(event.at_s)
            if self.stop.is_set():
                return
            self.churn.late_s = max(self.churn.late_s, self._elapsed() - event.at_s)
            log.info("churn: %s", event.describe(),
                     extra={"action": event.action, "target": event.target,
                            "at_s": round(event.at_s, 1)})
            try:
                await self._apply(event)
            except FleetError as exc:
                # A restart that does not come back within READY_TIMEOUT_S is the soak's
                # finding: the run ends with it rather than piling up more churn on top.
                self.failure = self.failure or exc
                self.stop.set()
                return

    async def _apply(self, event: ChurnEvent) -> None:
        if event.action == "fault_open":
            assert event.fault is not None
            self.board.open(event.target, event.fault)
            self.churn.fault_open += 1
            return
        if event.action == "fault_close":
            self.board.close(event.target)
            self.churn.fault_close += 1
            return
        async with self._lock:
            if event.action == "collector_restart":
                await self._restart_collector()
                self.churn.collector_restart += 1
                return
            sig = signal.SIGKILL if event.action == "agent_kill" else signal.SIGTERM
            await self.fleet.stop_agent(event.target, sig)
            began = time.monotonic()
            await self.fleet.start_agent(event.target)  # until the collector sees it again
            self.churn.reconnect_s.append(time.monotonic() - began)
            if sig is signal.SIGKILL:
                self.churn.agent_kill += 1
            else:
                self.churn.agent_term += 1

    async def _restart_collector(self) -> None:
        pid = child_pids(self.fleet.config_paths).get("collector")
        if pid is not None:
            await self.sampler.counters(pid)  # bank its counters: the next process starts at 0
        await self.fleet.stop_collector(signal.SIGTERM)
        began = time.monotonic()
        await self.fleet.start_collector()
        self.churn.collector_ready_s.append(time.monotonic() - began)
        await self.fleet.wait_agents_connected([a.id for a in self.fleet.plan.agents])
        self.churn.reconnect_s.append(time.monotonic() - began)




def _figures(options: SoakOptions, plan: FleetPlan, events: Sequence[ChurnEvent],
             soak: Soak | None, workdir: Path) -> dict[str, Any]:
    planned: dict[str, int] = {}
    for event in events:
        planned[event.action] = planned.get(event.action, 0) + 1
    rows = soak.rows if soak else []
    churn = dataclasses.asdict(soak.churn) if soak else dataclasses.asdict(ChurnCount())
    failure = soak.failure if soak else None
    return {
        "config": {
            "minutes": options.minutes, "report_every_s": options.report_every_s,
            "seed": options.seed, "agents": [dataclasses.asdict(a) for a in plan.agents],
            "regions": plan.regions, "probes": [p.name for p in plan.probes],
            "interval_s": options.interval_s, "restart_every_s": options.restart_every_s,
            "kill_share": options.kill_share, "outage_every_s": options.outage_every_s,
            "outage_seconds": list(options.outage_seconds),
            "collector_restarts": planned.get("collector_restart", 0),
            "workdir": str(workdir), "cpus": os.cpu_count(),
        },
        "churn_planned": planned,
        "churn_done": churn,
        "rows": [dataclasses.asdict(r) for r in rows],
        "state_files_last_row": soak.sampler.state_listing if soak else {},
        "second_half": second_half(rows, options.duration_s),
        "interrupted": bool(soak and soak.interrupted),
        "failure": None if failure is None else
        {"child": failure.name, "error": str(failure), "log_tail": failure.log_tail},
    }


async def run(options: SoakOptions, stop: asyncio.Event, workdir: Path) -> dict[str, Any]:
    """Start targets and fleet, play the soak, stop everything; return every figure."""
    plan = soak_plan(options)
    events = churn_schedule(options, plan)
    board = FaultBoard(plan.agents)
    planned = _figures(options, plan, events, None, workdir)["churn_planned"]
    print(f"soak: {options.minutes:g} min, seed {options.seed}; {len(plan.agents)} agents in "
          f"{len(plan.regions)} regions ({', '.join(plan.regions)}), {len(plan.probes)} probes "
          f"every {options.interval_s:g} s; churn planned: {planned}; work folder {workdir}",
          flush=True)
    soak: Soak | None = None
    async with contextlib.AsyncExitStack() as stack:
        with abandoned_on(stop):
            targets = await stack.enter_async_context(
                FaultyTargets(board, tcp_probes=plan.tcp_probes))
            fleet = await stack.enter_async_context(
                Fleet(plan, targets, workdir, log_level=options.log_level,
                      ready_timeout_s=READY_TIMEOUT_S, stop_grace_s=STOP_GRACE_S))
            api = await stack.enter_async_context(CollectorApi(fleet.api_url, timeout_s=10.0))
        print(f"fleet up: collector {fleet.api_url}", flush=True)
        print(HEADER, flush=True)
        soak = Soak(options, fleet, board, api, stop)
        await soak.play(events)
    return _figures(options, plan, events, soak, workdir)


async def _main(options: SoakOptions) -> int:
    with StopSignals(log, stop_message="signal received; stopping the fleet (again to force)",
                     forced_status=130) as signals, contextlib.ExitStack() as folders:
        if options.workdir is not None:
            workdir = options.workdir
        else:
            workdir = Path(folders.enter_context(
                tempfile.TemporaryDirectory(prefix="probenet-soak-")))
        started = time.monotonic()
        try:
            figures = await run(options, signals.stop, workdir)
        except asyncio.CancelledError:
            if not signals.stop.is_set():
                raise
            print("soak: interrupted while the fleet was starting", flush=True)
            return 130
        except LabError as exc:
            print(f"soak: {exc}", flush=True)
            if isinstance(exc, FleetError) and exc.log_tail:
                print(f"--- last lines of {exc.name}'s log ---\n{exc.log_tail}", flush=True)
            return 1
        figures["total_wall_s"] = time.monotonic() - started
    for line in summary_lines(figures):
        print(line)
    failure = figures["failure"]
    if failure is not None:
        print(f"soak: ended early: {failure['error']}")
        if failure["log_tail"]:
            print(f"--- last lines of {failure['child']}'s log ---\n{failure['log_tail']}")
    print(json.dumps(figures), flush=True)
    if failure is not None:
        return 1
    return 130 if figures["interrupted"] else 0


def parse_options(argv: Sequence[str] | None = None) -> SoakOptions:
    """The command line, `--quick` applied."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    parser.add_argument("--quick", action="store_true",
                        help="2 minutes, a row every 20 s, churn every few seconds")
    parser.add_argument("--report-every", type=float, default=60.0, metavar="SECONDS",
                        help="seconds between rows (default 60)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the churn schedule")
    parser.add_argument("--agents", type=int, default=6)
    parser.add_argument("--regions", type=int, default=3, help=f"at most {len(REGIONS)}")
    parser.add_argument("--interval", default="1s", help="probe interval (default 1s)")
    parser.add_argument("--collector-restarts", type=int, nargs="?", default=0,
                        const=COLLECTOR_RESTARTS_AUTO, metavar="N",
                        help="restart the collector N times (alone: one per 10 minutes)")
    parser.add_argument("--restart-every", type=float, default=45.0, metavar="SECONDS",
                        help="mean seconds between agent restarts (default 45)")
    parser.add_argument("--kill-share", type=float, default=0.3,
                        help="share of agent restarts done with kill -9 (default 0.3)")
    parser.add_argument("--outage-every", type=float, default=60.0, metavar="SECONDS",
                        help="mean seconds between outages opened (default 60)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep configs, logs and journal here (default: a temporary "
                             "folder, removed at the end)")
    parser.add_argument("--log-level", default="info", help="the children's log level")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.report_every = 2.0, 20.0
        args.restart_every, args.outage_every = 12.0, 15.0
    interval_s = parse_duration(args.interval)
    if not 1 <= args.regions <= len(REGIONS) or args.agents < args.regions:
        parser.error(f"--regions must be 1 to {len(REGIONS)}, and --agents at least as many")
    if args.minutes <= 0 or args.report_every <= 0 or interval_s <= 0:
        parser.error("--minutes, --report-every and --interval must be positive")
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty")
    # An outage lasts long enough to be confirmed, detected and recovered (a few intervals
    # each), and is capped so that a short run still sees several.
    outage_seconds = (max(8 * interval_s, 5.0), max(25 * interval_s, 10.0))
    return SoakOptions(
        minutes=args.minutes, report_every_s=args.report_every, seed=args.seed,
        agents=args.agents, regions=args.regions, interval_s=interval_s,
        collector_restarts=args.collector_restarts, restart_every_s=args.restart_every,
        kill_share=args.kill_share, outage_every_s=args.outage_every,
        outage_seconds=outage_seconds, workdir=args.workdir, log_level=args.log_level)


def main() -> int:
    """Run the soak; exit 0, 1 when a child failed, 130 when interrupted."""
    options = parse_options()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    return asyncio.run(_main(options))


if __name__ == "__main__":
    sys.exit(main())
