"""Per-kind result details: the latest of each (agent, probe) pair, exported at scrape time.

The ingest fills `LatestDetails` once a batch is accepted: for each pair, the wire bytes of
its latest result (read from a second, cheap parse of the batch, `probenet.v1.ingest_wire`;
keeping the protobuf message itself would pin its whole batch in memory, and decoding every
field of every result costs ten times more than keeping its bytes). At scrape time,
`KindDetailsMetrics`, a prometheus_client collector, joins the classifier's live pairs with
the store: the bytes of each pair are decoded once (`facts_of`, into a small slotted value
that replaces the bytes until the next result), entries whose pair the classifier no longer
has are dropped, and the facts become metric families with the pair's current labels.
Scrapes are rare and results many: the decoding cost moves to where it is paid once per
scrape, not once per result. The classifier knows nothing of any of this.

Every family is labelled (probe, target, kind, region, agent), plus its own label where it
has one:

| metric | extra label | from |
| --- | --- | --- |
| probe_dns_lookup_time_seconds | | every kind: the `resolve` phase (resolving the target) |
| probe_http_status_code | | http |
| probe_http_duration_seconds | phase: resolve, connect, tls, processing, transfer | http |
| probe_http_version | | http (1.0, 1.1, 2) |
| probe_http_redirects | | http |
| probe_http_content_length | | http (body bytes read) |
| probe_http_ssl | | http: 1 when TLS was used |
| probe_ssl_earliest_cert_expiry | | http (https), tls: unix seconds |
| probe_tls_version_info | version | http (https), tls: 1 |
| probe_tls_cipher_info | cipher | http (https), tls: 1 |
| probe_dns_duration_seconds | phase: resolve, connect, request | dns |
| probe_dns_answer_rrs, probe_dns_authority_rrs, probe_dns_additional_rrs | | dns |
| probe_icmp_duration_seconds | phase: resolve, setup, rtt | icmp (rtt: mean round trip) |
| probenet_icmp_packet_loss_ratio | | icmp |
| probenet_icmp_rtt_seconds | stat: min, avg, max, stddev | icmp, when a reply came |
| probe_grpc_healthcheck_response | serving_status (see below) | grpc: 1 for the current |

A `flow` result's steps have two families of their own, labelled (probe, step, region,
agent): `probenet_step_success` (0/1) and `probenet_step_duration_seconds`, one series each
per step that ran in the pair's latest result (steps after a failing one did not run: no
series). The ingest bounds a flow's steps (`limits.max_flow_steps`) and step names
(`limits.max_label_value_length`) and refuses repeated or empty names; the decode leaves out
a step whose name is empty or repeated anyway, and the steps of flow details on a result of
another kind (`flow_steps`), and a step duration out of contract (`step_seconds`).

`serving_status` takes UNKNOWN, SERVING, NOT_SERVING and SERVICE_UNKNOWN, one series each,
1 for the current status and 0 for the others, as blackbox_exporter does.

Label values that come from agents are bounded: phase names are kept only when known, and
version and cipher strings are cut to a sane length, so a misbehaving agent cannot blow up
the series count. Values are checked here, where they are read: the ingest checks what the
classifier reads and leaves per-phase durations and kind-specific numbers to this decode
(once per scraped result, off the hot path; collector/ingest.py says why). A time NaN,
negative or over `MAX_SECONDS` is dropped (a phase) or read as 0 (an ICMP round trip), a
negative content length or certificate expiry as 0 (unknown), an HTTP version outside
(0, 10] as unknown: the per-kind families never export a value out of contract.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, NamedTuple

from google.protobuf.message import DecodeError
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from probenet.names import MAX_LABEL_LENGTH
from probenet.v1 import probenet_pb2 as pb

from .metrics import PAIR_LABELS, STEP_LABELS, FamilySpec

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from prometheus_client.core import GaugeMetricFamily, Metric

    from .classify import Classifier, PairSample

log = logging.getLogger(__name__)

HTTP_PHASES = ("resolve", "connect", "tls", "processing", "transfer")
DNS_PHASES = ("resolve", "connect", "request")
ICMP_PHASES = ("resolve", "setup", "rtt")
# Every phase name kept, in the order facts keep them (each name once, the first seen).
PHASE_ORDER = tuple(dict.fromkeys((*HTTP_PHASES, *DNS_PHASES, *ICMP_PHASES)))
KNOWN_PHASES = frozenset(PHASE_ORDER)
_PHASE_SLOT = {name: slot for slot, name in enumerate(PHASE_ORDER)}
# Each known name to its one string: facts are kept per pair, a name read is a new string.
_PHASE_NAMES = {name: name for name in KNOWN_PHASES}
_PHASE_KINDS = frozenset(("http", "dns", "icmp"))  # kinds with a per-phase family
SERVING_STATUSES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")
ICMP_STATS = ("min", "avg", "max", "stddev")
_MAX_LABEL_CHARS = 64
# The longest time a decoded fact may hold, seconds (the ingest's `MAX_DURATION_S`); and the
# highest HTTP version taken for one.
MAX_SECONDS = 86_400.0
_MAX_HTTP_VERSION = 10.0
# The most steps a flow's facts keep (the ingest's `limits.max_flow_steps` is lower).
MAX_FLOW_STEPS = 1000

Phases = tuple[tuple[str, float], ...]


def _pair_gauge(name: str, documentation: str, *extra: str) -> FamilySpec:
    return FamilySpec(name, documentation, "gauge", (*PAIR_LABELS, *extra))


# The per-kind families, each described once for both renderers (`KindDetailsMetrics` and
# `collector.exposition.MetricsPage`).
DNS_LOOKUP = _pair_gauge("probe_dns_lookup_time_seconds",
                         "Time taken to resolve the target's name.")
HTTP_STATUS = _pair_gauge("probe_http_status_code",
                          "HTTP status code of the response, 0 if none.")
HTTP_DURATION = _pair_gauge("probe_http_duration_seconds",
                            "Duration of each phase of the HTTP request.", "phase")
HTTP_VERSION = _pair_gauge("probe_http_version", "HTTP version of the response.")
HTTP_REDIRECTS = _pair_gauge("probe_http_redirects", "Number of redirects followed.")
HTTP_CONTENT_LENGTH = _pair_gauge("probe_http_content_length",
                                  "Length of the response body, bytes.")
HTTP_SSL = _pair_gauge("probe_http_ssl", "1 when the final request used TLS.")
SSL_EXPIRY = _pair_gauge("probe_ssl_earliest_cert_expiry",
                         "Earliest expiry of the certificate chain, unix seconds.")
TLS_VERSION = _pair_gauge("probe_tls_version_info", "The TLS version used (value 1).",
                          "version")
TLS_CIPHER = _pair_gauge("probe_tls_cipher_info", "The TLS cipher suite used (value 1).",
                         "cipher")
DNS_DURATION = _pair_gauge("probe_dns_duration_seconds",
                           "Duration of each phase of the DNS query.", "phase")
DNS_ANSWER_RRS = _pair_gauge("probe_dns_answer_rrs", "Records in the answer section.")
DNS_AUTHORITY_RRS = _pair_gauge("probe_dns_authority_rrs", "Records in the authority section.")
DNS_ADDITIONAL_RRS = _pair_gauge("probe_dns_additional_rrs",
                                 "Records in the additional section.")
ICMP_DURATION = _pair_gauge(
    "probe_icmp_duration_seconds",
    "Duration of each phase of the ICMP probe (rtt: mean round trip).", "phase")
ICMP_LOSS = _pair_gauge("probenet_icmp_packet_loss_ratio",
                        "Share of echo requests left unanswered (0 to 1).")
ICMP_RTT = _pair_gauge("probenet_icmp_rtt_seconds", "Echo round-trip time statistics.", "stat")
GRPC_HEALTH = _pair_gauge("probe_grpc_healthcheck_response",
                          "Health check serving status (1 for the current one).",
                          "serving_status")
STEP_SUCCESS = FamilySpec("probenet_step_success",
                          "Each step of the agent's last flow result that ran, 0 or 1.", "gauge",
                          STEP_LABELS)
STEP_DURATION = FamilySpec("probenet_step_duration_seconds",
                           "Duration of each step of the agent's last flow result that ran.",
                           "gauge", STEP_LABELS)


def phase_seconds(phases: Phases, name: str) -> float | None:
    """Seconds spent in timing phase `name` (the first of that name), or None."""
    for phase_name, seconds in phases:
        if phase_name == name:
            return seconds
    return None


# The facts are named tuples, and the store keeps them as flat plain tuples (`pack`): the
# garbage collector stops tracking a plain tuple of numbers and strings at the first
# collection that sees it, where it tracks a slotted object (or a named tuple) for good, and
# a tuple holding tuples until a collection has untracked those first. With 100,000 pairs,
# kept objects made every full collection ~300 ms longer, and each scrape's new facts set
# one off. The last field, `tag`, names the class.


class TlsSummary(NamedTuple):
    """The TLS facts of a handshake (`probenet.v1.TlsFacts`)."""

    earliest_cert_expiry: int  # unix seconds, 0 when unknown
    version: str  # "TLS 1.3"
    cipher: str


class ResultFacts(NamedTuple):
    """Timing phases a result's metrics need (kinds without a per-phase family: resolve only).

    The facts of a result without kind-specific details; the other facts add a kind's.
    `phases` holds known names only, each once (the first the result gave), in
    `PHASE_ORDER`.
    """

    phases: Phases
    tag: str = ""

    def phase(self, name: str) -> float | None:
        """Seconds spent in timing phase `name`, or None when the result has none."""
        return phase_seconds(self.phases, name)


class HttpFacts(NamedTuple):
    """An http result's facts."""

    phases: Phases
    http_version: float  # 0.0 when unknown
    redirects: int
    content_length: int
    tls: TlsSummary | None
    tag: str = "http"

    def phase(self, name: str) -> float | None:
        """Seconds spent in timing phase `name`, or None when the result has none."""
        return phase_seconds(self.phases, name)


class DnsFacts(NamedTuple):
    """A dns result's facts."""

    phases: Phases
    answer_rrs: int
    authority_rrs: int
    additional_rrs: int
    rcode: str
    tag: str = "dns"

    def phase(self, name: str) -> float | None:
        """Seconds spent in timing phase `name`, or None when the result has none."""
        return phase_seconds(self.phases, name)


class IcmpFacts(NamedTuple):
    """An icmp result's facts."""

    phases: Phases
    sent: int
    received: int
    rtt_min_seconds: float
    rtt_avg_seconds: float
    rtt_max_seconds: float
    rtt_stddev_seconds: float
    tag: str = "icmp"

    def phase(self, name: str) -> float | None:
        """Seconds spent in timing phase `name`, or None when the result has none."""
        return phase_seconds(self.phases, name)


class TlsProbeFacts(NamedTuple):
    """A tls result's facts."""

    phases: Phases
    tls: TlsSummary
    tag: str = "tls"

    def phase(self, name: str) -> float | None:
        """Seconds spent in timing phase `name`, or None when the result has none."""
        return phase_seconds(self.phases, name)


class GrpcFacts(NamedTuple):
    """A grpc result's facts."""

    phases: Phases
    serving_status: str  # one of SERVING_STATUSES
    tag: str = "grpc"

    def phase(self, name: str) -> float | None:
        """Seconds spent in timing phase `name`, or None when the result has none."""
        return phase_seconds(self.phases, name)


class FlowStepFacts(NamedTuple):
    """One step of a flow that ran (`probenet.v1.FlowStep`)."""

    name: str
    success: bool
    duration_seconds: float | None  # None when out of contract (left out)


class FlowFacts(NamedTuple):
    """A flow result's facts: the steps that ran, in order (names unique and non-empty)."""

    phases: Phases
    steps: tuple[FlowStepFacts, ...]
    tag: str = "flow"

    def phase(self, name: str) -> float | None:
        """Seconds spent in timing phase `name`, or None when the result has none."""
        return phase_seconds(self.phases, name)


Facts = ResultFacts | HttpFacts | DnsFacts | IcmpFacts | TlsProbeFacts | GrpcFacts | FlowFacts
PackedFacts = tuple[Any, ...]
"""Facts as the store keeps them: a flat plain tuple of numbers, strings and None. First one
slot per name of `PHASE_ORDER` (seconds, or None), then the named tuple's other fields in
order, `tls` as three (earliest_cert_expiry, version, cipher; None each without TLS), `steps`
as three per step (name, success, duration_seconds), flat: it is the last field, its steps
run up to `tag`, last. `packed_layout` gives the index of each field (of `steps`: its
first)."""

_FACTS_BY_TAG: dict[str, type[Facts]] = {
    cls._field_defaults["tag"]: cls
    for cls in (ResultFacts, HttpFacts, DnsFacts, IcmpFacts, TlsProbeFacts, GrpcFacts,
                FlowFacts)}
_STEP_FIELDS = len(FlowStepFacts._fields)
_NO_TLS = (None, None, None)


def packed_layout(cls: type[Facts]) -> dict[str, int]:
    """Field name -> index in packed facts of `cls` (`tls` -> its first of three)."""
    layout = {}
    at = len(PHASE_ORDER)
    for name in cls._fields[1:]:
        layout[name] = at
        at += 3 if name == "tls" else 1
    return layout


def pack(facts: Facts) -> PackedFacts:
    """`facts` as the store keeps them (`PackedFacts`)."""
    items: list[Any] = [None] * len(PHASE_ORDER)
    for name, seconds in facts.phases:
        slot = _PHASE_SLOT[name]
        if items[slot] is None:
            items[slot] = seconds
    if isinstance(facts, FlowFacts):  # its steps flat, three items a step, then the tag
        for step in facts.steps:
            items.extend(step)
        items.append(facts.tag)
        return tuple(items)
    for item in facts[1:]:
        if isinstance(item, TlsSummary):
            items.extend(item)
        elif item is None:  # HttpFacts.tls, the only field that may be None
            items.extend(_NO_TLS)
        else:
            items.append(item)
    return tuple(items)


def unpack(packed: PackedFacts) -> Facts:
    """The named tuple `packed` was made of."""
    cls = _FACTS_BY_TAG[packed[-1]]
    phase_count = len(PHASE_ORDER)
    phases = tuple((name, seconds) for name, seconds in zip(PHASE_ORDER, packed[:phase_count],
                                                            strict=True)
                   if seconds is not None)
    fields: list[Any] = [phases]
    at = phase_count
    for name in cls._fields[1:]:
        if name == "tls":
            tls = packed[at:at + 3]
            fields.append(None if tls == _NO_TLS else TlsSummary._make(tls))
            at += 3
        elif name == "steps":  # the last field: its steps run up to the tag
            flat = packed[at:-1]
            fields.append(tuple(FlowStepFacts._make(flat[i:i + _STEP_FIELDS])
                                for i in range(0, len(flat), _STEP_FIELDS)))
            at = len(packed) - 1
        else:
            fields.append(packed[at])
            at += 1
    return cls._make(fields)


def packed_phase(packed: PackedFacts, name: str) -> float | None:
    """`phase_seconds` of packed facts (None for a name not in `PHASE_ORDER`)."""
    slot = _PHASE_SLOT.get(name)
    seconds: float | None = None if slot is None else packed[slot]
    return seconds


# Out-of-contract values left out at decode, counted by field (`DroppedValues`).
# `step` is counted at ingest (a `step` on a success or on a result of another kind than
# flow, ignored); the others when a scrape decodes a result.
DROPPED_FIELDS = ("phase_name", "phase_seconds", "icmp_rtt_seconds", "content_length",
                  "cert_expiry", "http_version", "step", "step_seconds", "flow_steps")
DroppedValues = Counter


def _seconds(value: float, dropped: DroppedValues[str]) -> float:
    """`value` when it is a sane time in seconds, else 0.0 (NaN, negative, absurd)."""
    if 0.0 <= value <= MAX_SECONDS:
        return value
    dropped["icmp_rtt_seconds"] += 1
    return 0.0


def _phases(phases: Any, dropped: DroppedValues[str]) -> Phases:
    slots: list[float | None] = [None] * len(PHASE_ORDER)
    for phase in phases:
        name, seconds = _PHASE_NAMES.get(phase.name), phase.seconds
        if name is not None and 0.0 <= seconds <= MAX_SECONDS:
            slot = _PHASE_SLOT[name]
            if slots[slot] is None:  # the first of a name counts (`phase_seconds`)
                slots[slot] = seconds
        else:
            dropped["phase_name" if name is None else "phase_seconds"] += 1
    return tuple((name, seconds) for name, seconds in zip(PHASE_ORDER, slots, strict=True)
                 if seconds is not None)


def _resolve_only(phases: Any, dropped: DroppedValues[str]) -> Phases:
    # Kinds without phase families need only the resolve time, which probes time first.
    first = phases[0]
    seconds = first.seconds
    if first.name != "resolve":
        return ()
    if 0.0 <= seconds <= MAX_SECONDS:
        return (("resolve", seconds),)
    dropped["phase_seconds"] += 1
    return ()


def _tls(facts: Any, dropped: DroppedValues[str]) -> TlsSummary:
    expiry = facts.earliest_cert_expiry
    if expiry < 0:
        dropped["cert_expiry"] += 1
        expiry = 0
    return TlsSummary(expiry, facts.version[:_MAX_LABEL_CHARS], facts.cipher[:_MAX_LABEL_CHARS])


def _http_version(text: str, dropped: DroppedValues[str]) -> float:
    try:
        value = float(text.removeprefix("HTTP/"))
    except ValueError:
        value = -1.0
    if 0 < value <= _MAX_HTTP_VERSION:
        return value
    if text:  # empty: no version known, not out of contract
        dropped["http_version"] += 1
    return 0.0


def _flow_steps(steps: Any, dropped: DroppedValues[str]) -> tuple[FlowStepFacts, ...]:
    """The steps that ran, each name once (label values must not repeat), times in contract."""
    kept: list[FlowStepFacts] = []
    names: set[str] = set()
    for step in steps:
        name = step.name
        if (not name or name in names or len(name) > MAX_LABEL_LENGTH
                or len(kept) >= MAX_FLOW_STEPS):
            dropped["flow_steps"] += 1
            continue
        names.add(name)
        seconds = step.duration_seconds
        duration: float | None = seconds
        if not 0.0 <= seconds <= MAX_SECONDS:
            dropped["step_seconds"] += 1
            duration = None
        kept.append(FlowStepFacts(name, step.success, duration))
    return tuple(kept)


def facts_of(result: Any, dropped: DroppedValues[str] | None = None) -> Facts | None:
    """What the metrics need of one `probenet.v1.ProbeResult` (None when there is nothing).

    Values out of contract are left out or read as unknown, and counted in `dropped`.
    """
    if dropped is None:
        dropped = DroppedValues()
    try:
        which = result.WhichOneof("details")
        phases = result.phases
    except AttributeError:
        return None
    if which is None:
        if not phases:
            return None
        kind = result.kind
        return ResultFacts(_phases(phases, dropped) if kind in _PHASE_KINDS
                           else _resolve_only(phases, dropped))
    if which == "http":
        http = result.http
        length = http.content_length
        if length < 0:
            dropped["content_length"] += 1
            length = 0
        return HttpFacts(_phases(phases, dropped), _http_version(http.http_version, dropped),
                         http.redirects, length,
                         _tls(http.tls, dropped) if http.HasField("tls") else None)
    if which == "dns":
        dns = result.dns
        return DnsFacts(_phases(phases, dropped), dns.answer_rrs, dns.authority_rrs,
                        dns.additional_rrs, dns.rcode[:_MAX_LABEL_CHARS])
    if which == "icmp":
        icmp = result.icmp
        return IcmpFacts(_phases(phases, dropped), icmp.sent, icmp.received,
                         _seconds(icmp.rtt_min_seconds, dropped),
                         _seconds(icmp.rtt_avg_seconds, dropped),
                         _seconds(icmp.rtt_max_seconds, dropped),
                         _seconds(icmp.rtt_stddev_seconds, dropped))
    resolve = _resolve_only(phases, dropped) if phases else ()
    if which == "flow":
        steps = result.flow.steps
        if result.kind == "flow":
            return FlowFacts(resolve, _flow_steps(steps, dropped))
        dropped["flow_steps"] += len(steps)  # steps of another kind's result: no series
    if which == "tls":
        return TlsProbeFacts(resolve, _tls(result.tls.tls, dropped))
    if which == "grpc":
        status = result.grpc.serving_status
        return GrpcFacts(resolve, status if status in SERVING_STATUSES else "UNKNOWN")
    return ResultFacts(resolve)


def _decode(wire: bytes, dropped: DroppedValues[str]) -> PackedFacts | None:
    try:
        facts = facts_of(pb.ProbeResult.FromString(wire), dropped)
    except DecodeError:
        return None
    return None if facts is None else pack(facts)


class LatestDetails:
    """The latest per-kind details of each (agent, probe) pair, as the ingest accepted them.

    An entry holds the wire bytes of the pair's latest `probenet.v1.ProbeResult` until a
    scrape decodes them into its facts (packed, `pack`), kept until the next result replaces
    them.
    Each scrape keeps only the pairs it was given (`join` at once, `scrape` in steps), so
    the store follows the classifier's pairs and never outgrows them.
    """

    __slots__ = ("_by_agent", "_names", "_scrapes", "dropped")

    def __init__(self) -> None:
        """An empty store."""
        self._by_agent: dict[str, dict[str, bytes | PackedFacts]] = {}
        # One string per probe name, shared by every agent's entry: a name read from a
        # message is a new string each time, and one per pair would cost 60 bytes a pair.
        self._names: dict[str, str] = {}
        # Scrapes in progress (`scrape`): each learns which pairs were written meanwhile.
        self._scrapes: list[DetailsScrape] = []
        # Values out of contract left out at decode, by field (DROPPED_FIELDS).
        self.dropped: DroppedValues[str] = DroppedValues()

    def __len__(self) -> int:
        """Pairs with details kept."""
        return sum(len(kept) for kept in self._by_agent.values())

    def kept(self, agent_id: str, probe: str) -> bytes | PackedFacts | None:
        """What is kept for the pair: wire bytes, or packed facts once a scrape read them."""
        return self._by_agent.get(agent_id, {}).get(probe)

    def update(self, agent_id: str, latest: Mapping[str, bytes]) -> None:
        """Keep `latest`: probe -> wire bytes of the agent's latest accepted result for it."""
        kept = self._by_agent.get(agent_id)
        if kept is None:
            kept = self._by_agent[agent_id] = {}
        for scrape in self._scrapes:  # usually none
            scrape.written(agent_id, latest)
        if latest.keys() <= kept.keys():
            kept.update(latest)  # the usual case: every pair known, its key object kept
        else:  # new pairs (rare): key this batch by the shared names
            names = self._names
            kept.update({names.setdefault(probe, probe): data for probe, data in latest.items()})

    def join(self, samples: Iterable[PairSample]
             ) -> Iterator[tuple[PairSample, Facts | None]]:
        """Each sample with its pair's facts (None when it has none), decoded once per result.

        Pass every live pair (`Classifier.samples()`): once the iteration completes, the
        entries of pairs that were not among `samples` are gone.
        """
        by_agent = self._by_agent
        joined: dict[str, dict[str, bytes | PackedFacts]] = {}
        names: dict[str, str] = {}
        agent: str | None = None
        kept: Mapping[str, bytes | PackedFacts] = {}
        keep: dict[str, bytes | PackedFacts] = {}
        for sample in samples:
            if sample.agent != agent:
                agent = sample.agent
                kept = by_agent.get(agent, {})
                keep = joined.setdefault(agent, {})
            probe = sample.probe  # the classifier's string, one per probe name
            names[probe] = probe
            packed = kept.get(probe)
            if isinstance(packed, bytes):
                packed = _decode(packed, self.dropped)
            if packed is not None:
                keep[probe] = packed
            yield sample, None if packed is None else unpack(packed)
        self._by_agent = joined
        self._names = names

    def scrape(self) -> DetailsScrape:
        """Start a scrape that reads the store in steps, between which the ingest may write.

        Read each live pair with `DetailsScrape.facts`, then run `DetailsScrape.prune`
        (entries of pairs neither read nor written meanwhile are dropped, as `join` drops
        them), or `close` it to give up without pruning.
        """
        scrape = DetailsScrape(self)
        self._scrapes.append(scrape)
        return scrape


class DetailsScrape:
    """One scrape of a `LatestDetails` store, read pair by pair across event-loop turns.

    Nothing here iterates the store's live dicts across a step: each `facts` call looks its
    pair up afresh, and `prune` walks a snapshot of the agents, one agent's entries at once.
    Pairs the ingest writes while the scrape runs are kept, whether the scrape saw them or
    not: they are live.
    """

    __slots__ = ("_open", "_seen", "_store", "_written")

    def __init__(self, store: LatestDetails) -> None:
        """Use `LatestDetails.scrape`, which registers the scrape for writes."""
        self._store = store
        self._seen: dict[str, set[str]] = {}  # agent -> probes read (with an entry)
        self._written: dict[str, set[str]] = {}  # agent -> probes written since the start
        self._open = True

    def written(self, agent_id: str, probes: Iterable[str]) -> None:
        """The ingest wrote these pairs' entries (called by `LatestDetails.update`)."""
        found = self._written.get(agent_id)
        if found is None:
            found = self._written[agent_id] = set()
        found.update(probes)

    def facts(self, sample: PairSample) -> PackedFacts | None:
        """The pair's packed facts (None when it has none), decoded at most once per result."""
        agent = sample.agent
        kept = self._store._by_agent.get(agent)  # noqa: SLF001 - the store's own reader
        if kept is None:
            return None
        probe = sample.probe
        facts = kept.get(probe)
        if facts is None:
            return None
        if isinstance(facts, bytes):
            facts = _decode(facts, self._store.dropped)
            if facts is None:  # nothing to keep (as `join` keeps nothing)
                del kept[probe]
                return None
            kept[probe] = facts
        seen = self._seen.get(agent)
        if seen is None:
            seen = self._seen[agent] = set()
        seen.add(probe)
        return facts

    def prune(self, entries_per_step: int = 50_000) -> Iterator[None]:
        """Drop the entries of pairs neither read nor written since the scrape began.

        A generator: it yields after about `entries_per_step` entries checked, so that the
        caller can return to the event loop. The scrape is closed once it is exhausted.
        """
        store = self._store
        checked = 0
        try:
            for agent, kept in list(store._by_agent.items()):  # noqa: SLF001
                if checked >= entries_per_step:
                    checked = 0
                    yield
                if store._by_agent.get(agent) is not kept:  # noqa: SLF001 - gone meanwhile
                    continue
                checked += len(kept)
                live = self._seen.get(agent, set())
                written = self._written.get(agent)
                if written:
                    live = live | written
                if not live:
                    del store._by_agent[agent]  # noqa: SLF001
                elif not kept.keys() <= live:
                    for probe in [probe for probe in kept if probe not in live]:
                        del kept[probe]
        finally:
            self.close()

    def close(self) -> None:
        """Stop following the store's writes (idempotent); the store is left as it is."""
        if self._open:
            self._open = False
            self._store._scrapes.remove(self)  # noqa: SLF001


class DroppedValuesMetrics(Collector):
    """`probenet_result_values_dropped_total{field}`: out-of-contract detail values."""

    def __init__(self, dropped: DroppedValues[str]) -> None:
        """Read `dropped` (the details store's, shared with the ingest) at each scrape."""
        self._dropped = dropped

    def collect(self) -> Iterator[Metric]:
        """One counter, a sample per field (0 until one is dropped)."""
        family = CounterMetricFamily(
            "probenet_result_values_dropped",
            "Per-kind detail values out of contract (NaN, negative or absurd times, unknown "
            "phase names, negative lengths or expiries, bad HTTP versions, flow steps with "
            "empty or repeated names or of another kind's result) left out of the exported "
            "metrics, by field; counted when a scrape decodes them. field=step: a step name "
            "on a success or a non-flow result, ignored at ingest.",
            labels=["field"])
        dropped = self._dropped
        for name in DROPPED_FIELDS:
            family.add_metric([name], dropped.get(name, 0))
        yield family


class KindDetailsMetrics(Collector):
    """The per-kind families at scrape time: the classifier's pairs joined with `details`."""

    def __init__(self, classifier: Classifier, details: LatestDetails) -> None:
        """Read `classifier.samples()` (labels, status code) and `details` at each scrape."""
        self._classifier = classifier
        self._details = details

    def describe(self) -> list[Metric]:
        """Nothing: scrape-time families are not checked for name clashes upfront."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every per-kind family; none (logged) if building them fails."""
        try:
            families = kind_metric_families(self._details.join(self._classifier.samples()))
        except Exception:
            log.exception("per-kind metrics failed; scrape continues without them")
            return iter(())
        return iter(families)


class _Families:
    """The gauge families of one scrape, created when first needed."""

    def __init__(self) -> None:
        self.by_name: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def add(self, spec: FamilySpec, labels: tuple[str, ...], value: float,
            extra_values: tuple[str, ...] = ()) -> None:
        family = self.by_name.get(spec.name)
        if family is None:
            family = self.by_name[spec.name] = spec.family()
        family.add_metric([*labels, *extra_values], value)


def _export_tls(families: _Families, labels: tuple[str, ...], tls: TlsSummary) -> None:
    if tls.earliest_cert_expiry > 0:
        families.add(SSL_EXPIRY, labels, tls.earliest_cert_expiry)
    if tls.version:
        families.add(TLS_VERSION, labels, 1, (tls.version,))
    if tls.cipher:
        families.add(TLS_CIPHER, labels, 1, (tls.cipher,))


def _export_phases(families: _Families, spec: FamilySpec, *, labels: tuple[str, ...],
                   facts: Facts, names: tuple[str, ...],
                   overrides: dict[str, float] | None = None) -> None:
    for phase in names:
        seconds = overrides.get(phase) if overrides else None
        if seconds is None:
            seconds = facts.phase(phase) or 0.0
        families.add(spec, labels, seconds, (phase,))


def _export_http(families: _Families, labels: tuple[str, ...], sample: PairSample,
                 facts: Facts | None) -> None:
    families.add(HTTP_STATUS, labels, sample.status_code)
    if facts is None:
        return
    _export_phases(families, HTTP_DURATION, labels=labels, facts=facts, names=HTTP_PHASES)
    if not isinstance(facts, HttpFacts):
        return
    if facts.http_version:
        families.add(HTTP_VERSION, labels, facts.http_version)
    families.add(HTTP_REDIRECTS, labels, facts.redirects)
    families.add(HTTP_CONTENT_LENGTH, labels, facts.content_length)
    families.add(HTTP_SSL, labels, 1 if facts.tls is not None else 0)
    if facts.tls is not None:
        _export_tls(families, labels, facts.tls)


def _export_dns(families: _Families, labels: tuple[str, ...], facts: Facts) -> None:
    _export_phases(families, DNS_DURATION, labels=labels, facts=facts, names=DNS_PHASES)
    if isinstance(facts, DnsFacts):
        families.add(DNS_ANSWER_RRS, labels, facts.answer_rrs)
        families.add(DNS_AUTHORITY_RRS, labels, facts.authority_rrs)
        families.add(DNS_ADDITIONAL_RRS, labels, facts.additional_rrs)


def _export_icmp(families: _Families, labels: tuple[str, ...], facts: Facts) -> None:
    icmp = facts if isinstance(facts, IcmpFacts) else None
    # blackbox_exporter's rtt phase is one echo's round trip: export the mean round trip,
    # not the wall time of the whole exchange (which includes the spacing).
    rtt = {"rtt": icmp.rtt_avg_seconds if icmp and icmp.received else 0.0}
    _export_phases(families, ICMP_DURATION, labels=labels, facts=facts, names=ICMP_PHASES,
                   overrides=rtt)
    if icmp is None:
        return
    if icmp.sent:
        families.add(ICMP_LOSS, labels, icmp_loss_ratio(icmp))
    if icmp.received:
        for stat, seconds in zip(ICMP_STATS, icmp_rtt_stats(icmp), strict=True):
            families.add(ICMP_RTT, labels, seconds, (stat,))


def icmp_loss_ratio(icmp: IcmpFacts) -> float:
    """Share of echo requests left unanswered (more replies than requests count as none)."""
    return (icmp.sent - min(icmp.received, icmp.sent)) / icmp.sent


def icmp_rtt_stats(icmp: IcmpFacts) -> tuple[float, float, float, float]:
    """The round-trip statistics in `ICMP_STATS` order."""
    return (icmp.rtt_min_seconds, icmp.rtt_avg_seconds, icmp.rtt_max_seconds,
            icmp.rtt_stddev_seconds)


def kind_metric_families(pairs: Iterable[tuple[PairSample, Facts | None]]
                         ) -> list[Metric]:
    """blackbox_exporter-compatible per-kind families: each pair's latest sample and facts.

    Families without any sample are left out.
    """
    families = _Families()
    for sample, facts in pairs:
        kind = sample.kind
        if facts is None and kind != "http":
            continue
        labels = (sample.probe, sample.target, kind, sample.region, sample.agent)
        if facts is not None:
            resolve = facts.phase("resolve")
            if resolve is not None:
                families.add(DNS_LOOKUP, labels, resolve)
        if kind == "http":
            _export_http(families, labels, sample, facts)
        elif facts is None:
            continue
        elif kind == "dns":
            _export_dns(families, labels, facts)
        elif kind == "icmp":
            _export_icmp(families, labels, facts)
        elif isinstance(facts, TlsProbeFacts):
            _export_tls(families, labels, facts.tls)
        elif isinstance(facts, GrpcFacts):
            for status in SERVING_STATUSES:
                families.add(GRPC_HEALTH, labels, 1 if status == facts.serving_status else 0,
                             (status,))
        elif isinstance(facts, FlowFacts):
            _export_flow(families, sample, facts)
    return list(families.by_name.values())


def _export_flow(families: _Families, sample: PairSample, facts: FlowFacts) -> None:
    """The pair's steps that ran: labelled (probe, step, region, agent), not the pair labels."""
    probe, region, agent = sample.probe, sample.region, sample.agent
    for step in facts.steps:
        labels = (probe, step.name, region, agent)
        families.add(STEP_SUCCESS, labels, 1 if step.success else 0)
        if step.duration_seconds is not None:
            families.add(STEP_DURATION, labels, step.duration_seconds)
