"""Per-kind result facts, kept per (agent, probe) and exported under blackbox_exporter's names.

Two halves. At ingest, `details_of(result)` copies what the metrics need out of a
`probenet.v1.ProbeResult` into a small slotted value (keeping the protobuf message would pin
its whole batch in memory); the classifier stores it as `PairSample.details`. At scrape
time, `kind_metric_families(samples)` turns the latest samples into metric families.

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
| probe_grpc_healthcheck_response | serving_status: UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN | grpc: 1 for the current status, 0 for the others |

Label values that come from agents are bounded: phase names are kept only when known, and
version and cipher strings are cut to a sane length, so a misbehaving agent cannot blow up
the series count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from prometheus_client.core import Metric

    from collector.classify import PairSample

PAIR_LABELS = ("probe", "target", "kind", "region", "agent")

HTTP_PHASES = ("resolve", "connect", "tls", "processing", "transfer")
DNS_PHASES = ("resolve", "connect", "request")
ICMP_PHASES = ("resolve", "setup", "rtt")
KNOWN_PHASES = frozenset((*HTTP_PHASES, *DNS_PHASES, *ICMP_PHASES))
SERVING_STATUSES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")
ICMP_STATS = ("min", "avg", "max", "stddev")
_MAX_LABEL_CHARS = 64

Phases = tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class TlsSummary:
    """The TLS facts of a handshake (`probenet.v1.TlsFacts`)."""

    earliest_cert_expiry: int  # unix seconds, 0 when unknown
    version: str  # "TLS 1.3"
    cipher: str


@dataclass(frozen=True, slots=True)
class ResultFacts:
    """Timing phases of a result whose kind has no details (or sent none)."""

    phases: Phases

    def phase(self, name: str) -> float | None:
        """Seconds spent in timing phase `name`, or None when the result has none."""
        for phase_name, seconds in self.phases:
            if phase_name == name:
                return seconds
        return None


@dataclass(frozen=True, slots=True)
class HttpFacts(ResultFacts):
    """An http result's facts."""

    http_version: float  # 0.0 when unknown
    redirects: int
    content_length: int
    tls: TlsSummary | None


@dataclass(frozen=True, slots=True)
class DnsFacts(ResultFacts):
    """A dns result's facts."""

    answer_rrs: int
    authority_rrs: int
    additional_rrs: int
    rcode: str


@dataclass(frozen=True, slots=True)
class IcmpFacts(ResultFacts):
    """An icmp result's facts."""

    sent: int
    received: int
    rtt_min_seconds: float
    rtt_avg_seconds: float
    rtt_max_seconds: float
    rtt_stddev_seconds: float


@dataclass(frozen=True, slots=True)
class TlsProbeFacts(ResultFacts):
    """A tls result's facts."""

    tls: TlsSummary


@dataclass(frozen=True, slots=True)
class GrpcFacts(ResultFacts):
    """A grpc result's facts."""

    serving_status: str  # one of SERVING_STATUSES


def _phases(phases: Any) -> Phases:
    return tuple((p.name, p.seconds) for p in phases
                 if p.name in KNOWN_PHASES and math.isfinite(p.seconds))


def _tls(facts: Any) -> TlsSummary:
    return TlsSummary(facts.earliest_cert_expiry, facts.version[:_MAX_LABEL_CHARS],
                      facts.cipher[:_MAX_LABEL_CHARS])


def _http_version(text: str) -> float:
    try:
        value = float(text.removeprefix("HTTP/"))
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def details_of(result: Any) -> ResultFacts | None:
    """What the metrics need of one `probenet.v1.ProbeResult` (None when there is nothing).

    Called by the classifier for every result: the common case (no details, no phases)
    returns at once; objects that are not ProbeResult messages give None.
    """
    try:
        which = result.WhichOneof("details")
        phases = result.phases
    except AttributeError:
        return None
    if which is None:
        return ResultFacts(_phases(phases)) if phases else None
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
    if which == "tls":
        return TlsProbeFacts(_phases(phases), _tls(result.tls.tls))
    if which == "grpc":
        status = result.grpc.serving_status
        return GrpcFacts(_phases(phases), status if status in SERVING_STATUSES else "UNKNOWN")
    return ResultFacts(_phases(phases))


class _Families:
    """The gauge families of one scrape, created when first needed."""

    def __init__(self) -> None:
        self.by_name: dict[str, GaugeMetricFamily] = {}

    def add(self, name: str, documentation: str, labels: tuple[str, ...], value: float,
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
                     ("version",), (tls.version,))
    if tls.cipher:
        families.add("probe_tls_cipher_info", "The TLS cipher suite used (value 1).", labels, 1,
                     ("cipher",), (tls.cipher,))


def _export_phases(families: _Families, name: str, documentation: str,
                   labels: tuple[str, ...], facts: ResultFacts, names: tuple[str, ...],
                   overrides: dict[str, float] | None = None) -> None:
    for phase in names:
        seconds = overrides.get(phase) if overrides else None
        if seconds is None:
            seconds = facts.phase(phase) or 0.0
        families.add(name, documentation, labels, seconds, ("phase",), (phase,))


def _export_http(families: _Families, labels: tuple[str, ...], sample: PairSample,
                 facts: ResultFacts | None) -> None:
    families.add("probe_http_status_code", "HTTP status code of the response, 0 if none.",
                 labels, sample.status_code)
    if facts is None:
        return
    _export_phases(families, "probe_http_duration_seconds",
                   "Duration of each phase of the HTTP request.", labels, facts, HTTP_PHASES)
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
                   "Duration of each phase of the DNS query.", labels, facts, DNS_PHASES)
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
                   "Duration of each phase of the ICMP probe (rtt: mean round trip).", labels,
                   facts, ICMP_PHASES, rtt)
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
                         labels, seconds, ("stat",), (stat,))


def kind_metric_families(samples: Iterable[PairSample]) -> Iterator[Metric]:
    """blackbox_exporter-compatible per-kind families for the latest sample of each pair.

    Families without any sample are not yielded.
    """
    families = _Families()
    for sample in samples:
        facts = sample.details
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
                             ("serving_status",), (status,))
    yield from families.by_name.values()
