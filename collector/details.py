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

`serving_status` takes UNKNOWN, SERVING, NOT_SERVING and SERVICE_UNKNOWN, one series each,
1 for the current status and 0 for the others, as blackbox_exporter does.

Label values that come from agents are bounded: phase names are kept only when known, and
version and cipher strings are cut to a sane length, so a misbehaving agent cannot blow up
the series count.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from probenet.v1 import probenet_pb2 as pb

from .metrics import PAIR_LABELS

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from prometheus_client.core import Metric

    from .classify import Classifier, PairSample

log = logging.getLogger(__name__)

HTTP_PHASES = ("resolve", "connect", "tls", "processing", "transfer")
DNS_PHASES = ("resolve", "connect", "request")
ICMP_PHASES = ("resolve", "setup", "rtt")
KNOWN_PHASES = frozenset((*HTTP_PHASES, *DNS_PHASES, *ICMP_PHASES))
# Each known name to its one string: facts are kept per pair, a name read is a new string.
_PHASE_NAMES = {name: name for name in KNOWN_PHASES}
_PHASE_KINDS = frozenset(("http", "dns", "icmp"))  # kinds with a per-phase family
SERVING_STATUSES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")
ICMP_STATS = ("min", "avg", "max", "stddev")
_MAX_LABEL_CHARS = 64
_finite = math.isfinite

Phases = tuple[tuple[str, float], ...]


@dataclass(slots=True)
class TlsSummary:
    """The TLS facts of a handshake (`probenet.v1.TlsFacts`)."""

    earliest_cert_expiry: int  # unix seconds, 0 when unknown
    version: str  # "TLS 1.3"
    cipher: str


@dataclass(slots=True)
class ResultFacts:
    """Timing phases a result's metrics need (kinds without a per-phase family: resolve only).

    The base of every facts value; subclasses add a kind's details. Not frozen, because a
    frozen dataclass costs a third more to build, and a scrape builds one per pair: treat
    them as read-only.
    """

    phases: Phases

    def phase(self, name: str) -> float | None:
        """Seconds spent in timing phase `name`, or None when the result has none."""
        for phase_name, seconds in self.phases:
            if phase_name == name:
                return seconds
        return None


@dataclass(slots=True)
class HttpFacts(ResultFacts):
    """An http result's facts."""

    http_version: float  # 0.0 when unknown
    redirects: int
    content_length: int
    tls: TlsSummary | None


@dataclass(slots=True)
class DnsFacts(ResultFacts):
    """A dns result's facts."""

    answer_rrs: int
    authority_rrs: int
    additional_rrs: int
    rcode: str


@dataclass(slots=True)
class IcmpFacts(ResultFacts):
    """An icmp result's facts."""

    sent: int
    received: int
    rtt_min_seconds: float
    rtt_avg_seconds: float
    rtt_max_seconds: float
    rtt_stddev_seconds: float


@dataclass(slots=True)
class TlsProbeFacts(ResultFacts):
    """A tls result's facts."""

    tls: TlsSummary


@dataclass(slots=True)
class GrpcFacts(ResultFacts):
    """A grpc result's facts."""

    serving_status: str  # one of SERVING_STATUSES


def _phases(phases: Any) -> Phases:
    kept = []
    for phase in phases:
        name, seconds = _PHASE_NAMES.get(phase.name), phase.seconds
        if name is not None and _finite(seconds):
            kept.append((name, seconds))
    return tuple(kept)


def _resolve_only(phases: Any) -> Phases:
    # Kinds without phase families need only the resolve time, which probes time first.
    first = phases[0]
    seconds = first.seconds
    return (("resolve", seconds),) if first.name == "resolve" and _finite(seconds) else ()


def _tls(facts: Any) -> TlsSummary:
    return TlsSummary(facts.earliest_cert_expiry, facts.version[:_MAX_LABEL_CHARS],
                      facts.cipher[:_MAX_LABEL_CHARS])


def _http_version(text: str) -> float:
    try:
        value = float(text.removeprefix("HTTP/"))
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def facts_of(result: Any) -> ResultFacts | None:
    """What the metrics need of one `probenet.v1.ProbeResult` (None when there is nothing)."""
    try:
        which = result.WhichOneof("details")
        phases = result.phases
    except AttributeError:
        return None
    if which is None:
        if not phases:
            return None
        kind = result.kind
        return ResultFacts(_phases(phases) if kind in _PHASE_KINDS else _resolve_only(phases))
    if which == "http":
        http = result.http
        return HttpFacts(_phases(phases), _http_version(http.http_version), http.redirects,
                         http.content_length, _tls(http.tls) if http.HasField("tls") else None)
    if which == "dns":
        dns = result.dns
        return DnsFacts(_phases(phases), dns.answer_rrs, dns.authority_rrs, dns.additional_rrs,
                        dns.rcode[:_MAX_LABEL_CHARS])
    if which == "icmp":
        icmp = result.icmp
        return IcmpFacts(_phases(phases), icmp.sent, icmp.received, icmp.rtt_min_seconds,
                         icmp.rtt_avg_seconds, icmp.rtt_max_seconds, icmp.rtt_stddev_seconds)
    resolve = _resolve_only(phases) if phases else ()
    if which == "tls":
        return TlsProbeFacts(resolve, _tls(result.tls.tls))
    if which == "grpc":
        status = result.grpc.serving_status
        return GrpcFacts(resolve, status if status in SERVING_STATUSES else "UNKNOWN")
    return ResultFacts(resolve)


def _decode(wire: bytes) -> ResultFacts | None:
    try:
        return facts_of(pb.ProbeResult.FromString(wire))
    except DecodeError:
        return None


class LatestDetails:
    """The latest per-kind details of each (agent, probe) pair, as the ingest accepted them.

    An entry holds the wire bytes of the pair's latest `probenet.v1.ProbeResult` until a
    scrape decodes them into its `ResultFacts`, kept until the next result replaces them.
    Each `join` keeps only the pairs it was given, so the store follows the classifier's
    pairs and never outgrows them.
    """

    __slots__ = ("_by_agent", "_names")

    def __init__(self) -> None:
        """An empty store."""
        self._by_agent: dict[str, dict[str, bytes | ResultFacts]] = {}
        # One string per probe name, shared by every agent's entry: a name read from a
        # message is a new string each time, and one per pair would cost 60 bytes a pair.
        self._names: dict[str, str] = {}

    def __len__(self) -> int:
        """Pairs with details kept."""
        return sum(len(kept) for kept in self._by_agent.values())

    def kept(self, agent_id: str, probe: str) -> bytes | ResultFacts | None:
        """What is kept for the pair now: wire bytes, or their facts once a scrape read them."""
        return self._by_agent.get(agent_id, {}).get(probe)

    def update(self, agent_id: str, latest: Mapping[str, bytes]) -> None:
        """Keep `latest`: probe -> wire bytes of the agent's latest accepted result for it."""
        kept = self._by_agent.get(agent_id)
        if kept is None:
            kept = self._by_agent[agent_id] = {}
        if latest.keys() <= kept.keys():
            kept.update(latest)  # the usual case: every pair known, its key object kept
        else:  # new pairs (rare): key this batch by the shared names
            names = self._names
            kept.update({names.setdefault(probe, probe): data for probe, data in latest.items()})

    def join(self, samples: Iterable[PairSample]
             ) -> Iterator[tuple[PairSample, ResultFacts | None]]:
        """Each sample with its pair's facts (None when it has none), decoded once per result.

        Pass every live pair (`Classifier.samples()`): once the iteration completes, the
        entries of pairs that were not among `samples` are gone.
        """
        by_agent = self._by_agent
        joined: dict[str, dict[str, bytes | ResultFacts]] = {}
        names: dict[str, str] = {}
        agent: str | None = None
        kept: Mapping[str, bytes | ResultFacts] = {}
        keep: dict[str, bytes | ResultFacts] = {}
        for sample in samples:
            if sample.agent != agent:
                agent = sample.agent
                kept = by_agent.get(agent, {})
                keep = joined.setdefault(agent, {})
            probe = sample.probe  # the classifier's string, one per probe name
            names[probe] = probe
            facts = kept.get(probe)
            if isinstance(facts, bytes):
                facts = _decode(facts)
            if facts is not None:
                keep[probe] = facts
            yield sample, facts
        self._by_agent = joined
        self._names = names


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
        self.by_name: dict[str, GaugeMetricFamily] = {}

    def add(self, name: str, documentation: str, labels: tuple[str, ...], value: float, *,
            extra: tuple[str, ...] = (), extra_values: tuple[str, ...] = ()) -> None:
        family = self.by_name.get(name)
        if family is None:
            family = GaugeMetricFamily(name, documentation, labels=[*PAIR_LABELS, *extra])
            self.by_name[name] = family
        family.add_metric([*labels, *extra_values], value)


def _export_tls(families: _Families, labels: tuple[str, ...], tls: TlsSummary) -> None:
    if tls.earliest_cert_expiry > 0:
        families.add("probe_ssl_earliest_cert_expiry",
                     "Earliest expiry of the certificate chain, unix seconds.", labels,
                     tls.earliest_cert_expiry)
    if tls.version:
        families.add("probe_tls_version_info", "The TLS version used (value 1).", labels, 1,
                     extra=("version",), extra_values=(tls.version,))
    if tls.cipher:
        families.add("probe_tls_cipher_info", "The TLS cipher suite used (value 1).", labels, 1,
                     extra=("cipher",), extra_values=(tls.cipher,))


def _export_phases(families: _Families, name: str, documentation: str, *,
                   labels: tuple[str, ...], facts: ResultFacts, names: tuple[str, ...],
                   overrides: dict[str, float] | None = None) -> None:
    for phase in names:
        seconds = overrides.get(phase) if overrides else None
        if seconds is None:
            seconds = facts.phase(phase) or 0.0
        families.add(name, documentation, labels, seconds, extra=("phase",),
                     extra_values=(phase,))


def _export_http(families: _Families, labels: tuple[str, ...], sample: PairSample,
                 facts: ResultFacts | None) -> None:
    families.add("probe_http_status_code", "HTTP status code of the response, 0 if none.",
                 labels, sample.status_code)
    if facts is None:
        return
    _export_phases(families, "probe_http_duration_seconds",
                   "Duration of each phase of the HTTP request.", labels=labels, facts=facts,
                   names=HTTP_PHASES)
    if not isinstance(facts, HttpFacts):
        return
    if facts.http_version:
        families.add("probe_http_version", "HTTP version of the response.", labels,
                     facts.http_version)
    families.add("probe_http_redirects", "Number of redirects followed.", labels,
                 facts.redirects)
    families.add("probe_http_content_length", "Length of the response body, bytes.", labels,
                 facts.content_length)
    families.add("probe_http_ssl", "1 when the final request used TLS.", labels,
                 1 if facts.tls is not None else 0)
    if facts.tls is not None:
        _export_tls(families, labels, facts.tls)


def _export_dns(families: _Families, labels: tuple[str, ...], facts: ResultFacts) -> None:
    _export_phases(families, "probe_dns_duration_seconds",
                   "Duration of each phase of the DNS query.", labels=labels, facts=facts,
                   names=DNS_PHASES)
    if isinstance(facts, DnsFacts):
        families.add("probe_dns_answer_rrs", "Records in the answer section.", labels,
                     facts.answer_rrs)
        families.add("probe_dns_authority_rrs", "Records in the authority section.", labels,
                     facts.authority_rrs)
        families.add("probe_dns_additional_rrs", "Records in the additional section.", labels,
                     facts.additional_rrs)


def _export_icmp(families: _Families, labels: tuple[str, ...], facts: ResultFacts) -> None:
    icmp = facts if isinstance(facts, IcmpFacts) else None
    # blackbox_exporter's rtt phase is one echo's round trip: export the mean round trip,
    # not the wall time of the whole exchange (which includes the spacing).
    rtt = {"rtt": icmp.rtt_avg_seconds if icmp and icmp.received else 0.0}
    _export_phases(families, "probe_icmp_duration_seconds",
                   "Duration of each phase of the ICMP probe (rtt: mean round trip).",
                   labels=labels, facts=facts, names=ICMP_PHASES, overrides=rtt)
    if icmp is None:
        return
    if icmp.sent:
        families.add("probenet_icmp_packet_loss_ratio",
                     "Share of echo requests left unanswered (0 to 1).", labels,
                     (icmp.sent - min(icmp.received, icmp.sent)) / icmp.sent)
    if icmp.received:
        stats = (icmp.rtt_min_seconds, icmp.rtt_avg_seconds, icmp.rtt_max_seconds,
                 icmp.rtt_stddev_seconds)
        for stat, seconds in zip(ICMP_STATS, stats, strict=True):
            families.add("probenet_icmp_rtt_seconds", "Echo round-trip time statistics.",
                         labels, seconds, extra=("stat",), extra_values=(stat,))


def kind_metric_families(pairs: Iterable[tuple[PairSample, ResultFacts | None]]
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
                families.add("probe_dns_lookup_time_seconds",
                             "Time taken to resolve the target's name.", labels, resolve)
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
                families.add("probe_grpc_healthcheck_response",
                             "Health check serving status (1 for the current one).", labels,
                             1 if status == facts.serving_status else 0,
                             extra=("serving_status",), extra_values=(status,))
    return list(families.by_name.values())
