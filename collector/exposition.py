"""The /metrics page: the big scrape-time families, formatted in bounded chunks, then the registry.

A collector with 100,000 (probe, agent) pairs exports about 1.6 million series (200 MB of
text). prometheus_client builds a metric object per series and formats it on the event
loop in one go (15 s and more); `MetricsPage` formats the same families itself, straight
from the classifier and the details store, ten times faster or more, in steps of about a
millisecond of work, returning to the event loop after each, so the ingest keeps
acknowledging while a scrape runs (text is written in chunks of 256 KiB):

1. one snapshot of the list of pairs (`Classifier.samples()`; the list, not the values);
2. a join over it, a slice of pairs at a time: each pair's label text, cached per pair and
   rebuilt only when its target, kind or region changed, and its per-kind facts, decoded
   at most once per result (`LatestDetails.scrape`);
3. family by family (the exposition formats want each family's samples together), a slice
   of pairs at a time; values are read as each slice is formatted;
4. the details store is pruned of pairs gone (in slices), and the registry's own, small
   families (ingest counters, histograms, build info) are appended by prometheus_client's
   encoder, whose OpenMetrics `# EOF` thus ends the page.

What a scrape keeps across steps is plain lists, and per pair only plain tuples of strings
and numbers (label text, packed facts), which the garbage collector stops tracking: with
100,000 pairs, tracked objects left behind by each scrape set off a full collection of
several hundred milliseconds at each scrape.

The text is what prometheus_client would write for the same families (`reference_registry`
builds that reference: `ClassifierMetrics` and `KindDetailsMetrics`): HELP and TYPE lines
are prometheus_client's own, label values are escaped as it escapes them, and values parse
to the same numbers (integers are written as integers, `+Inf`, `-Inf` and `NaN` as
Prometheus spells them). Families without any sample are left out as before: the per-kind
ones; the classifier's families are always there.

`gzip_chunks` compresses a stream of chunks in a worker thread, a batch behind the renderer:
the event loop's own work does not grow with gzip.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import UNDERSCORES, escape_label_name
from prometheus_client.registry import Collector

from .config import MetricsConfig
from .details import (
    DNS_ADDITIONAL_RRS,
    DNS_ANSWER_RRS,
    DNS_AUTHORITY_RRS,
    DNS_DURATION,
    DNS_LOOKUP,
    DNS_PHASES,
    GRPC_HEALTH,
    HTTP_CONTENT_LENGTH,
    HTTP_DURATION,
    HTTP_PHASES,
    HTTP_REDIRECTS,
    HTTP_SSL,
    HTTP_STATUS,
    HTTP_VERSION,
    ICMP_DURATION,
    ICMP_LOSS,
    ICMP_PHASES,
    ICMP_RTT,
    ICMP_STATS,
    PHASE_ORDER,
    SERVING_STATUSES,
    SSL_EXPIRY,
    STEP_DURATION,
    STEP_SUCCESS,
    TLS_CIPHER,
    TLS_VERSION,
    DnsFacts,
    FlowFacts,
    GrpcFacts,
    HttpFacts,
    IcmpFacts,
    KindDetailsMetrics,
    TlsProbeFacts,
    packed_layout,
)
from .metrics import (
    AGENT_IMPAIRED,
    AGENT_UP,
    MONITORING_DEGRADED,
    OUTAGE_ACTIVE,
    OUTAGE_STEP,
    PROBE_DURATION,
    PROBE_FAILURES,
    PROBE_SUCCESS,
    REGION_ISOLATED,
    REGION_UP,
    TARGET_FLAPPING,
    TARGET_STATE,
    ClassifierMetrics,
    FamilySpec,
)
from .model import OutageKind, RegionVerdict, Scope, TargetState

if TYPE_CHECKING:
    from collections.abc import (
        AsyncGenerator,
        AsyncIterator,
        Callable,
        Generator,
        Iterator,
        Sequence,
    )

    from prometheus_client.core import Metric

    from .classify import Classifier, PairSample
    from .details import DetailsScrape, LatestDetails, PackedFacts
    from .metrics import FailureCounts
    from .model import TargetView

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# The page returns to the event loop once a step of work took this long. asyncio runs each
# ready callback once per turn of the loop, so the page's share of a busy loop is about
# this against what the ingest's callbacks of one turn take (a batch each, ~0.5 ms).
STEP_S = 0.001
# Turns of the event loop given away after each step. One gRPC message takes several turns
# (read completed, handler resumed, Ack written, next read): with one turn per step, a
# scrape of several seconds starves a busy ingest, whose Acks then wait seconds. Idle turns
# cost ~10 us each.
YIELD_TURNS = 4
# A chunk is written (and handed to gzip) once this much text is formatted: about 2,000
# lines; steps that end before that write nothing.
CHUNK_CHARS = 256 * 1024
# Lines formatted per slice of one family (512 pairs of a one-line family, 102 of the
# five-line probe_http_duration_seconds): 0.2 to 0.5 ms, the grain of a step.
SLICE_LINES = 512
# Pairs joined per slice: label text, and the first decode of a pair's details after each
# result (5 to 10 us a pair).
JOIN_PAIRS = 64
# Details store entries checked per pruning slice.
PRUNE_ENTRIES = 20_000
# gzip level of /metrics. Measured on the page's text: levels 1 to 3 compress it ~25x at
# 300 to 450 MB/s of one core; level 6, 1 % smaller, at a third of that speed.
GZIP_LEVEL = 1
# Text handed to the gzip worker thread per call (~13 ms of zlib). zlib lets go of the GIL
# while it deflates, but the worker needs the GIL to start a call and after each block of
# output, and a busy renderer hands it over once per switch interval (5 ms): fewer, larger
# calls wait less. The waits are not stalls (the loop runs other work meanwhile); they make
# a gzip scrape longer (100,000 pairs: ~3.5 s against ~2.5 s plain).
GZIP_BATCH_BYTES = 4 * 1024 * 1024
_OPENMETRICS = "application/openmetrics-text"


# -- formats -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpositionFormat:
    """The format of one scrape: the content type negotiated as prometheus_client does.

    `encoder` is prometheus_client's encoder for that content type; the page uses it for the
    registry's own families and, once per family, to take HELP and TYPE lines and escaped
    names from it. Formats compare by content type.
    """

    content_type: str
    encoder: Callable[[Collector], bytes] = field(compare=False, repr=False)

    @classmethod
    def negotiate(cls, accept: str) -> ExpositionFormat:
        """The format for a request's Accept header (`prometheus_client.choose_encoder`)."""
        encoder, content_type = choose_encoder(accept)
        return cls(content_type, encoder)

    @classmethod
    def text(cls) -> ExpositionFormat:
        """Prometheus text format 0.0.4, the default."""
        return cls.negotiate("")

    @classmethod
    def openmetrics_1(cls) -> ExpositionFormat:
        """OpenMetrics 1.0.0."""
        return cls.negotiate(f"{_OPENMETRICS}; version=1.0.0")

    @property
    def openmetrics(self) -> bool:
        """True for OpenMetrics (HELP/TYPE spelled its way, `# EOF` at the end)."""
        return self.content_type.startswith(_OPENMETRICS)

    @property
    def escaping(self) -> str:
        """The name escaping scheme the content type announces (underscores by default)."""
        for parameter in self.content_type.split(";"):
            key, _, value = parameter.strip().partition("=")
            if key == "escaping" and value:
                return value
        return UNDERSCORES


def escape_label_value(value: str) -> str:
    """A label value escaped as the exposition formats want (backslash, newline, quote)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def format_value(value: float) -> str:
    """A sample value: integers as integers, floats as repr, +Inf, -Inf and NaN spelled out."""
    kind = value.__class__
    if kind is int:
        return repr(value)
    if kind is not float:
        value = float(value)  # bool and friends: the number they stand for
    if value - value == 0.0:  # finite
        return repr(value)
    if value != value:  # noqa: PLR0124 - NaN is the only value unequal to itself
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


_num = format_value
_esc = escape_label_value


class _OneFamily(Collector):
    """A collector of one family, to run prometheus_client's encoder on it."""

    def __init__(self, family: Metric) -> None:
        self._family = family

    def collect(self) -> Iterator[Metric]:
        yield self._family


@dataclass(frozen=True, slots=True)
class _Layout:
    """How one family is written in one format."""

    header: str  # HELP and TYPE lines, as prometheus_client writes them
    open: str  # the sample name and "{" (or " " for a family without labels)
    extra: str  # the escaped name of the family's label after the pair labels, if any


@functools.lru_cache(maxsize=512)
def _layout(spec: FamilySpec, fmt: ExpositionFormat) -> _Layout:
    """Take HELP/TYPE lines and the escaped sample name from prometheus_client itself."""
    header = fmt.encoder(_OneFamily(spec.family())).decode()
    header = header.removesuffix("# EOF\n")
    family = spec.family()
    family.add_metric(["x"] * len(spec.labels), 1)
    sample = fmt.encoder(_OneFamily(family)).decode().removesuffix("# EOF\n")
    line = sample.splitlines()[-1]
    name = line[:line.index("{")] if spec.labels else line[:line.index(" ")]
    if not name or name.startswith("{"):
        raise ValueError(f"exposition: cannot take the sample name of {spec.name} from {line!r}")
    extra = escape_label_name(spec.labels[-1], fmt.escaping) if spec.labels else ""
    return _Layout(header, f"{name}{{" if spec.labels else f"{name} ", extra)


def pair_label_text(sample: PairSample) -> str:
    """`probe="..",target="..",kind="..",region="..",agent=".."` (`PAIR_LABELS`), escaped."""
    return (f'probe="{_esc(sample.probe)}",target="{_esc(sample.target)}",'
            f'kind="{_esc(sample.kind)}",region="{_esc(sample.region)}",'
            f'agent="{_esc(sample.agent)}"')


# -- the page ----------------------------------------------------------------------------

# The label text cache: per pair (keyed by the pair's id), its (agent, probe, target, kind,
# region) and their text. Plain tuples of strings, which the garbage collector stops
# tracking: 100,000 tracked entries would lengthen every full collection.
_LabelEntry = tuple[str, str, str, str, str, str]


class MetricsPage:
    """The /metrics page: the classifier's and the per-kind families, then `registry`'s own.

    `registry` holds the small prometheus_client metrics (ingest counters, histograms, build
    info); the big scrape-time families are not registered there: the page renders them
    itself, as `settings` (`metrics:` in the config) choose. `details` None: no per-kind
    families. `render` returns a whole page; `chunks` yields the same page in chunks,
    returning to the event loop between them.
    """

    def __init__(self, registry: CollectorRegistry, *, classifier: Classifier,
                 details: LatestDetails | None, failures: FailureCounts,
                 registered_agents: Sequence[tuple[str, str]] = (),
                 settings: MetricsConfig | None = None, step_s: float = STEP_S) -> None:
        """`registered_agents` (id, region) show as down until they first connect.

        `step_s`: the work of one step of `chunks` (0: one slice of work per step).
        """
        self._registry = registry
        self._classifier = classifier
        self._settings = settings if settings is not None else MetricsConfig()
        self._details = details if self._settings.kind_details else None
        self._failures = failures
        self._registered = tuple(registered_agents)
        self._step_s = step_s
        # Label text per pair, keyed by the pair's id and checked against the pair's agent,
        # probe, target, kind and region; rebuilt by each complete scrape.
        self._labels: dict[int, _LabelEntry] = {}

    @property
    def settings(self) -> MetricsConfig:
        """What the page exports."""
        return self._settings

    @property
    def details(self) -> LatestDetails | None:
        """The details store the per-kind families come from (None: no per-kind families)."""
        return self._details

    def render(self, *, openmetrics: bool = False, fmt: ExpositionFormat | None = None) -> bytes:
        """The whole page at once (tests, benchmarks): the text format, or OpenMetrics."""
        return b"".join(self._steps(_format(fmt, openmetrics=openmetrics)))

    async def chunks(self, *, openmetrics: bool = False, fmt: ExpositionFormat | None = None
                     ) -> AsyncGenerator[bytes, None]:
        """The same page as chunks of bytes, returning to the event loop after each step."""
        steps = self._steps(_format(fmt, openmetrics=openmetrics))
        try:
            for chunk in steps:
                if chunk:
                    yield chunk
                for _ in range(YIELD_TURNS):
                    await asyncio.sleep(0)
        finally:
            steps.close()

    def reference_registry(self) -> CollectorRegistry:
        """The same page as prometheus_client collectors, for tests and benchmarks.

        `registry`'s families, `ClassifierMetrics` and `KindDetailsMetrics`, honouring the
        same settings. Collecting it reads (and prunes) the details store as the page does.
        """
        reference = CollectorRegistry(auto_describe=False)
        reference.register(ClassifierMetrics(
            self._classifier, failures=self._failures, registered_agents=self._registered,
            per_agent=self._settings.per_agent))
        if self._details is not None:
            reference.register(KindDetailsMetrics(self._classifier, self._details))
        reference.register(_RegistryFamilies(self._registry))
        return reference

    def _steps(self, fmt: ExpositionFormat) -> Generator[bytes, None, None]:
        """The page in steps of about `step_s` of work each: a chunk of text, or b"".

        A step ends after the slice that took it past `step_s`; a slice is a fraction of a
        millisecond, but for a few that are one call each (the snapshot of the pairs: ~4 ms
        at 100,000 pairs; the classifier's targets: ~3 ms at 1,000 probes, ~70 ms at 10,000).
        """
        clock = time.perf_counter
        started = clock()
        written = 0
        buffered: list[str] = []
        size = 0
        scrape = _Scrape(self._classifier, fmt, settings=self._settings, labels=self._labels,
                         details=self._details, failures=self._failures,
                         registered=self._registered)
        try:
            step_s = self._step_s
            step_ends = clock() + step_s
            for piece in scrape.pieces():
                if piece:
                    buffered.append(piece)
                    size += len(piece)
                if size >= CHUNK_CHARS:
                    chunk = "".join(buffered).encode()
                    buffered.clear()
                    size = 0
                    written += len(chunk)
                    yield chunk
                elif clock() >= step_ends:
                    yield b""
                else:
                    continue
                step_ends = clock() + step_s
            self._labels = scrape.labels  # complete: the cache follows the live pairs
        finally:
            scrape.close()
        tail = "".join(buffered).encode() + fmt.encoder(self._registry)
        log.debug("metrics page rendered", extra={
            "bytes": written + len(tail), "pairs": scrape.pair_count,
            "seconds": round(time.perf_counter() - started, 3),
            "content_type": fmt.content_type})
        yield tail


def _format(fmt: ExpositionFormat | None, *, openmetrics: bool) -> ExpositionFormat:
    if fmt is not None:
        return fmt
    return ExpositionFormat.openmetrics_1() if openmetrics else ExpositionFormat.text()


class _RegistryFamilies(Collector):
    """Another registry's families, inside a reference registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()


class _Table:
    """The pairs of one scrape: parallel lists (a list is one object for the collector)."""

    __slots__ = ("facts", "labels", "pairs")

    def __init__(self, pairs: list[PairSample]) -> None:
        self.pairs = pairs  # the snapshot of the classifier's pairs (read live)
        self.labels: list[str] = []  # each pair's label text
        self.facts: list[PackedFacts | None] = []  # each pair's packed facts (details on)


class _Scrape:
    """The state of one rendering of the page: snapshots, the pairs' table, per-kind buckets.

    Nothing kept from one step to the next is a tracked object per pair: a scrape that left
    100,000 tracked objects behind in the old generation would set off a full collection
    (hundreds of ms at that size) at each scrape.
    """

    def __init__(self, classifier: Classifier, fmt: ExpositionFormat, *,
                 settings: MetricsConfig, labels: dict[int, _LabelEntry],
                 details: LatestDetails | None, failures: FailureCounts,
                 registered: tuple[tuple[str, str], ...]) -> None:
        """`labels`: the label text cache of the last complete scrape (read only)."""
        self.classifier = classifier
        self.fmt = fmt
        self.per_pair = settings.per_agent != "none"
        self.duration = settings.per_agent == "all"
        self.cached_labels = labels
        self.failures = failures
        self.registered = registered
        self.details: DetailsScrape | None = None if details is None else details.scrape()
        self.labels: dict[int, _LabelEntry] = {}  # this scrape's cache, of live pairs only
        self.table = _Table([])
        # Per-kind buckets: indices into the table, in the dispatch of
        # `details.kind_metric_families`.
        self.resolve: list[int] = []  # pairs with a resolve phase
        self.http: list[int] = []  # kind http (facts or not)
        self.dns: list[int] = []
        self.icmp: list[int] = []
        self.tls: list[int] = []  # tls facts of a kind other than http, dns, icmp
        self.grpc: list[int] = []
        self.flow: list[int] = []

    @property
    def pair_count(self) -> int:
        return len(self.table.pairs)

    def close(self) -> None:
        if self.details is not None:
            self.details.close()

    def layout(self, spec: FamilySpec) -> _Layout:
        return _layout(spec, self.fmt)

    # -- the sequence of steps ------------------------------------------------------------

    def pieces(self) -> Iterator[str]:
        """The page's text (but the registry's), as pieces, each a slice of work.

        "" marks a slice that wrote nothing (the caller may end a step there).
        """
        self.table = table = _Table(list(self.classifier.samples()))
        yield ""
        if self.per_pair or self.details is not None:
            yield from self.join()
        if self.per_pair:
            every = range(len(table.pairs))
            yield from self.family(PROBE_SUCCESS, every,
                                   lambda layout, rows: _success(layout, rows, table),
                                   always=True)
            if self.duration:
                yield from self.family(PROBE_DURATION, every,
                                       lambda layout, rows: _duration(layout, rows, table),
                                       always=True)
        yield from self.target_families()
        yield from self.agent_families()
        layout = self.layout(MONITORING_DEGRADED)
        yield f"{layout.header}{layout.open}{1 if self.classifier.monitoring_degraded else 0}\n"
        yield from self.failure_family()
        if self.details is not None:
            try:
                yield from self.kind_families()
            except Exception:
                # As the prometheus_client collector did: the page goes on without them.
                log.exception("per-kind metrics failed; the page goes on without them")
            for _ in self.details.prune(PRUNE_ENTRIES):
                yield ""

    def join(self) -> Iterator[str]:
        """Each pair's label text (cached) and facts, sorted into the per-kind buckets."""
        table = self.table
        pairs, labels, all_facts = table.pairs, table.labels, table.facts
        cached = self.cached_labels
        fresh = self.labels
        details = self.details
        for start in range(0, len(pairs), JOIN_PAIRS):
            for index in range(start, min(start + JOIN_PAIRS, len(pairs))):
                pair = pairs[index]
                key = id(pair)
                entry = cached.get(key)
                if (entry is None or entry[0] != pair.agent or entry[1] != pair.probe
                        or entry[2] != pair.target or entry[3] != pair.kind
                        or entry[4] != pair.region):
                    entry = (pair.agent, pair.probe, pair.target, pair.kind, pair.region,
                             pair_label_text(pair))
                fresh[key] = entry
                labels.append(entry[5])
                if details is not None:
                    facts = details.facts(pair)
                    all_facts.append(facts)
                    self._bucket(index, entry[3], facts)
            yield ""

    def _bucket(self, index: int, kind: str, facts: PackedFacts | None) -> None:
        # The dispatch of `details.kind_metric_families`, once per pair.
        if facts is not None and facts[_RESOLVE] is not None:
            self.resolve.append(index)
        if kind == "http":
            self.http.append(index)
        elif facts is None:
            return
        elif kind == "dns":
            self.dns.append(index)
        elif kind == "icmp":
            self.icmp.append(index)
        elif facts[-1] == _TLS_TAG:
            self.tls.append(index)
        elif facts[-1] == _GRPC_TAG:
            self.grpc.append(index)
        elif facts[-1] == _FLOW_TAG:
            self.flow.append(index)

    def family(self, spec: FamilySpec, rows: Sequence[_T],
               lines: Callable[[_Layout, Sequence[_T]], str], *, per_row: int = 1,
               always: bool = False) -> Iterator[str]:
        """One family, a slice of rows per step; HELP and TYPE first if it has a sample.

        `always`: HELP and TYPE even without any sample (the classifier's families).
        """
        layout = self.layout(spec)
        step = max(1, SLICE_LINES // per_row)
        started = False
        for start in range(0, len(rows), step):
            text = lines(layout, rows[start:start + step])
            if text and not started:
                started = True
                yield layout.header
            yield text
        if always and not started:
            yield layout.header

    # -- the classifier's families --------------------------------------------------------

    def target_families(self) -> Iterator[str]:
        classifier = self.classifier
        targets = classifier.targets()
        open_records = classifier.open_outages()
        flapping_now = classifier.flapping_probes()
        yield ""
        views = [(_esc(view.probe), _esc(view.service or ""), view) for view in targets]
        yield ""
        yield from self.family(REGION_UP, views, _region_up, per_row=4, always=True)
        yield from self.family(TARGET_STATE, views, _target_state, per_row=len(TargetState),
                               always=True)
        open_scopes = {(r.probe, r.scope) for r in open_records if r.kind is OutageKind.PROBE}
        active = [(probe, service, [scope for scope in Scope
                                    if (view.probe, scope) in open_scopes])
                  for probe, service, view in views]
        known = {view.probe for view in targets}
        for record in open_records:
            if record.kind is OutageKind.SERVICE:
                active.append(("", _esc(record.service or ""), [record.scope]))
            elif record.kind is OutageKind.PROBE and record.probe not in known:
                # Restored after a restart, before any result about the probe arrived.
                active.append((_esc(record.probe or ""), _esc(record.service or ""),
                               [record.scope]))
        yield from self.family(OUTAGE_ACTIVE, active, _outage_active, per_row=len(Scope),
                               always=True)
        # The (probe, service) of probenet_outage_active: alert rules join on them.
        steps = [(probe, service, _esc(view.step)) for probe, service, view in views
                 if view.step is not None]
        steps.extend(("", _esc(record.service or ""), _esc(record.step))
                     for record in open_records
                     if record.kind is OutageKind.SERVICE and record.step is not None)
        steps.extend((_esc(record.probe or ""), _esc(record.service or ""), _esc(record.step))
                     for record in open_records
                     if record.kind is OutageKind.PROBE and record.probe not in known
                     and record.step is not None)
        yield from self.family(OUTAGE_STEP, steps, _outage_step, always=True)
        flapping = [(probe, view.flapping or view.probe in flapping_now)
                    for probe, _, view in views]
        yield from self.family(TARGET_FLAPPING, flapping, _flag_rows, always=True)

    def agent_families(self) -> Iterator[str]:
        classifier = self.classifier
        rows: list[tuple[str, bool, bool]] = []
        seen: set[str] = set()
        regions: set[str] = set()
        for agent in classifier.agents():
            seen.add(agent.id)
            regions.add(agent.region)
            labels = f'agent="{_esc(agent.id)}",region="{_esc(agent.region)}"'
            rows.append((labels, agent.connected and not agent.stale, agent.impaired))
        for agent_id, region in self.registered:
            if agent_id not in seen:
                regions.add(region)
                rows.append((f'agent="{_esc(agent_id)}",region="{_esc(region)}"', False, False))
        isolated_now = classifier.isolated_regions()
        isolated = [(f'region="{_esc(region)}"', region in isolated_now)
                    for region in sorted(regions | isolated_now)]
        yield ""
        yield from self.family(AGENT_UP, [(labels, up) for labels, up, _ in rows], _flags,
                               always=True)
        yield from self.family(AGENT_IMPAIRED, [(labels, bad) for labels, _, bad in rows],
                               _flags, always=True)
        yield from self.family(REGION_ISOLATED, isolated, _flags, always=True)

    def failure_family(self) -> Iterator[str]:
        counts = list(self.failures.counts.items())
        yield ""
        yield from self.family(PROBE_FAILURES, counts, _failures, always=True)

    # -- the per-kind families ------------------------------------------------------------

    def kind_families(self) -> Iterator[str]:
        t = self.table
        family = self.family
        http, dns, icmp = self.http, self.dns, self.icmp
        yield from family(DNS_LOOKUP, self.resolve, lambda lay, rows: _resolve(lay, rows, t))
        yield from family(HTTP_STATUS, http, lambda lay, rows: _status_code(lay, rows, t))
        yield from family(HTTP_DURATION, http,
                          lambda lay, rows: _phase_lines(lay, rows, t, HTTP_PHASES),
                          per_row=len(HTTP_PHASES))
        yield from family(HTTP_VERSION, http, lambda lay, rows: _http_version(lay, rows, t))
        for spec, at in ((HTTP_REDIRECTS, _H_REDIRECTS), (HTTP_CONTENT_LENGTH, _H_LENGTH)):
            yield from family(spec, http, _field_lines(t, _HTTP_TAG, at))
        yield from family(HTTP_SSL, http, lambda lay, rows: _http_ssl(lay, rows, t))
        # TLS facts: of http results, then of tls probes (the order within a family is free).
        facts = t.facts
        tls: list[int] = []
        for start in range(0, len(http), SLICE_LINES):
            tls.extend([i for i in http[start:start + SLICE_LINES]
                        if (f := facts[i]) is not None and f[-1] == _HTTP_TAG
                        and f[_H_TLS] is not None])
            yield ""
        tls.extend(self.tls)
        yield from family(SSL_EXPIRY, tls, lambda lay, rows: _ssl_expiry(lay, rows, t))
        for spec, at in ((TLS_VERSION, _TLS_VERSION), (TLS_CIPHER, _TLS_CIPHER)):
            yield from family(spec, tls, _tls_text_lines(t, at))
        yield from family(DNS_DURATION, dns,
                          lambda lay, rows: _phase_lines(lay, rows, t, DNS_PHASES),
                          per_row=len(DNS_PHASES))
        for spec, at in ((DNS_ANSWER_RRS, _D_ANSWER), (DNS_AUTHORITY_RRS, _D_AUTHORITY),
                         (DNS_ADDITIONAL_RRS, _D_ADDITIONAL)):
            yield from family(spec, dns, _field_lines(t, _DNS_TAG, at))
        yield from family(ICMP_DURATION, icmp, lambda lay, rows: _icmp_phases(lay, rows, t),
                          per_row=len(ICMP_PHASES))
        yield from family(ICMP_LOSS, icmp, lambda lay, rows: _icmp_loss(lay, rows, t))
        yield from family(ICMP_RTT, icmp, lambda lay, rows: _icmp_rtt(lay, rows, t),
                          per_row=len(ICMP_STATS))
        yield from family(GRPC_HEALTH, self.grpc, lambda lay, rows: _grpc_health(lay, rows, t),
                          per_row=len(SERVING_STATUSES))
        yield from family(STEP_SUCCESS, self.flow, lambda lay, rows: _step_success(lay, rows, t),
                          per_row=_STEPS_PER_ROW)
        yield from family(STEP_DURATION, self.flow,
                          lambda lay, rows: _step_duration(lay, rows, t), per_row=_STEPS_PER_ROW)


# -- line formatters: one slice of rows to text ---------------------------------------------
# List comprehensions and f-strings: at a million lines per scrape, the per-line cost is
# the whole cost. Per-kind facts are packed tuples (`details.pack`), read by field index.


_SLOT = {name: slot for slot, name in enumerate(PHASE_ORDER)}
_RESOLVE = _SLOT["resolve"]
_HTTP, _DNS, _ICMP = packed_layout(HttpFacts), packed_layout(DnsFacts), packed_layout(IcmpFacts)
_H_VERSION, _H_REDIRECTS, _H_LENGTH, _H_TLS = (
    _HTTP[name] for name in ("http_version", "redirects", "content_length", "tls"))
_D_ANSWER, _D_AUTHORITY, _D_ADDITIONAL = (
    _DNS[name] for name in ("answer_rrs", "authority_rrs", "additional_rrs"))
_I_SENT, _I_RECEIVED, _I_RTT_AVG = (_ICMP[name] for name in ("sent", "received",
                                                              "rtt_avg_seconds"))
_I_RTT_STATS = tuple(_ICMP[f"rtt_{stat}_seconds"] for stat in ICMP_STATS)
_T_TLS = packed_layout(TlsProbeFacts)["tls"]
_G_STATUS = packed_layout(GrpcFacts)["serving_status"]
# Packed TLS facts: earliest_cert_expiry, version, cipher, from the `tls` index on.
_TLS_EXPIRY, _TLS_VERSION, _TLS_CIPHER = 0, 1, 2
_HTTP_TAG, _DNS_TAG, _ICMP_TAG, _TLS_TAG, _GRPC_TAG, _FLOW_TAG = (
    cls._field_defaults["tag"]
    for cls in (HttpFacts, DnsFacts, IcmpFacts, TlsProbeFacts, GrpcFacts, FlowFacts))
# Packed flow facts: three items a step (name, success, duration_seconds) from here to the
# tag; a slice of flow rows is sized for this many steps a row.
_F_STEPS = packed_layout(FlowFacts)["steps"]
_STEPS_PER_ROW = 8


def _success(layout: _Layout, rows: Sequence[int], t: _Table) -> str:
    head, pairs, labels = layout.open, t.pairs, t.labels
    return "".join([f"{head}{labels[i]}}} {1 if pairs[i].success else 0}\n" for i in rows])


def _duration(layout: _Layout, rows: Sequence[int], t: _Table) -> str:
    head, pairs, labels = layout.open, t.pairs, t.labels
    return "".join([f"{head}{labels[i]}}} {_num(pairs[i].duration_seconds)}\n" for i in rows])


_View = tuple[str, str, "TargetView"]  # escaped probe, escaped service, the view


def _region_up(layout: _Layout, views: Sequence[_View]) -> str:
    head = layout.open
    up = RegionVerdict.UP
    return "".join([
        f'{head}probe="{probe}",region="{_esc(region)}"}} {1 if verdict is up else 0}\n'
        for probe, _, view in views for region, verdict in view.regions.items()
        if verdict not in _NO_REGION_UP])


# Verdicts without a probenet_region_up sample: no verdict, or a maintenance window's.
_NO_REGION_UP = frozenset({RegionVerdict.UNKNOWN, RegionVerdict.MAINTENANCE})


def _target_state(layout: _Layout, views: Sequence[_View]) -> str:
    head = layout.open
    return "".join([
        f'{head}probe="{probe}",service="{service}",state="{state}"}} '
        f"{1 if view.state is state else 0}\n"
        for probe, service, view in views for state in TargetState])


def _outage_active(layout: _Layout, rows: Sequence[tuple[str, str, list[Scope]]]) -> str:
    head = layout.open
    return "".join([
        f'{head}probe="{probe}",service="{service}",scope="{scope}"}} '
        f"{1 if scope in active else 0}\n"
        for probe, service, active in rows for scope in Scope])


def _outage_step(layout: _Layout, rows: Sequence[tuple[str, str, str]]) -> str:
    head = layout.open
    return "".join([f'{head}probe="{probe}",service="{service}",step="{step}"}} 1\n'
                    for probe, service, step in rows])


def _flag_rows(layout: _Layout, rows: Sequence[tuple[str, bool]]) -> str:
    head = layout.open
    return "".join([f'{head}probe="{probe}"}} {1 if flag else 0}\n' for probe, flag in rows])


def _flags(layout: _Layout, rows: Sequence[tuple[str, bool]]) -> str:
    head = layout.open
    return "".join([f"{head}{labels}}} {1 if flag else 0}\n" for labels, flag in rows])


def _failures(layout: _Layout, rows: Sequence[tuple[tuple[str, str, str, str], int]]) -> str:
    head = layout.open
    return "".join([
        f'{head}probe="{_esc(probe)}",region="{_esc(region)}",phase="{_esc(phase)}",'
        f'reason="{_esc(reason)}"}} {_num(count)}\n'
        for (probe, region, phase, reason), count in rows])


def _resolve(layout: _Layout, rows: Sequence[int], t: _Table) -> str:
    head, labels, facts = layout.open, t.labels, t.facts
    return "".join([f"{head}{labels[i]}}} {_num(seconds)}\n" for i in rows
                    if (f := facts[i]) is not None
                    and (seconds := f[_RESOLVE]) is not None])


def _status_code(layout: _Layout, rows: Sequence[int], t: _Table) -> str:
    head, pairs, labels = layout.open, t.pairs, t.labels
    return "".join([f"{head}{labels[i]}}} {_num(pairs[i].status_code)}\n" for i in rows])


def _phase_lines(layout: _Layout, rows: Sequence[int], t: _Table,
                 names: tuple[str, ...]) -> str:
    head, labels, facts = layout.open, t.labels, t.facts
    ends = [(_SLOT[name], f',{layout.extra}="{name}"}} ') for name in names]
    return "".join([f"{head}{labels[i]}{end}{_num(f[slot] or 0.0)}\n"
                    for i in rows if (f := facts[i]) is not None for slot, end in ends])


def _icmp_phases(layout: _Layout, rows: Sequence[int], t: _Table) -> str:
    head, labels, facts = layout.open, t.labels, t.facts
    ends = [(_SLOT[name], f',{layout.extra}="{name}"}} ') for name in ICMP_PHASES]
    rtt = _SLOT["rtt"]
    out: list[str] = []
    for i in rows:
        f = facts[i]
        if f is None:
            continue
        # blackbox_exporter's rtt phase is one echo's round trip: the mean, not the wall
        # time of the exchange (as `details._export_icmp`).
        mean = f[_I_RTT_AVG] if f[-1] == _ICMP_TAG and f[_I_RECEIVED] else 0.0
        out.extend([f"{head}{labels[i]}{end}{_num((mean if slot == rtt else f[slot]) or 0.0)}\n"
                    for slot, end in ends])
    return "".join(out)


def _http_version(layout: _Layout, rows: Sequence[int], t: _Table) -> str:
    head, labels, facts = layout.open, t.labels, t.facts
    return "".join([f"{head}{labels[i]}}} {_num(f[_H_VERSION])}\n" for i in rows
                    if (f := facts[i]) is not None and f[-1] == _HTTP_TAG and f[_H_VERSION]])


def _http_ssl(layout: _Layout, rows: Sequence[int], t: _Table) -> str:
    head, labels, facts = layout.open, t.labels, t.facts
    return "".join([f"{head}{labels[i]}}} {0 if f[_H_TLS] is None else 1}\n" for i in rows
                    if (f := facts[i]) is not None and f[-1] == _HTTP_TAG])


def _field_lines(t: _Table, tag: str, at: int) -> Callable[[_Layout, Sequence[int]], str]:
    """The formatter of numeric field `at` of the facts tagged `tag`."""
    def lines(layout: _Layout, rows: Sequence[int]) -> str:
        head, labels, facts = layout.open, t.labels, t.facts
        return "".join([f"{head}{labels[i]}}} {_num(f[at])}\n" for i in rows
                        if (f := facts[i]) is not None and f[-1] == tag])
    return lines


def _tls_at(facts: PackedFacts) -> int:
    """Where the TLS facts start, in rows known to have them: http results' or tls probes'."""
    return _H_TLS if facts[-1] == _HTTP_TAG else _T_TLS


def _ssl_expiry(layout: _Layout, rows: Sequence[int], t: _Table) -> str:
    head, labels, facts = layout.open, t.labels, t.facts
    return "".join([f"{head}{labels[i]}}} {_num(expiry)}\n" for i in rows
                    if (f := facts[i]) is not None
                    and (expiry := f[_tls_at(f) + _TLS_EXPIRY]) > 0])


def _tls_text_lines(t: _Table, at: int) -> Callable[[_Layout, Sequence[int]], str]:
    """The formatter of a TLS text fact (version, cipher) as a label, value 1."""
    def lines(layout: _Layout, rows: Sequence[int]) -> str:
        head, name, labels, facts = layout.open, layout.extra, t.labels, t.facts
        return "".join([f'{head}{labels[i]},{name}="{_esc(text)}"}} 1\n' for i in rows
                        if (f := facts[i]) is not None and (text := f[_tls_at(f) + at])])
    return lines


def _icmp_loss(layout: _Layout, rows: Sequence[int], t: _Table) -> str:
    head, labels, facts = layout.open, t.labels, t.facts
    return "".join([
        f"{head}{labels[i]}}} {_num((sent - min(f[_I_RECEIVED], sent)) / sent)}\n"
        for i in rows if (f := facts[i]) is not None and f[-1] == _ICMP_TAG
        and (sent := f[_I_SENT])])


def _icmp_rtt(layout: _Layout, rows: Sequence[int], t: _Table) -> str:
    head, labels, facts = layout.open, t.labels, t.facts
    ends = [(at, f',{layout.extra}="{stat}"}} ') for stat, at in zip(ICMP_STATS, _I_RTT_STATS,
                                                                         strict=True)]
    return "".join([
        f"{head}{labels[i]}{end}{_num(f[at])}\n"
        for i in rows if (f := facts[i]) is not None and f[-1] == _ICMP_TAG and f[_I_RECEIVED]
        for at, end in ends])


def _grpc_health(layout: _Layout, rows: Sequence[int], t: _Table) -> str:
    head, labels, facts = layout.open, t.labels, t.facts
    ends = [(status, f',{layout.extra}="{status}"}} ') for status in SERVING_STATUSES]
    return "".join([
        f"{head}{labels[i]}{end}{1 if status == f[_G_STATUS] else 0}\n"
        for i in rows if (f := facts[i]) is not None and f[-1] == _GRPC_TAG
        for status, end in ends])


def _step_heads(head: str, pair: PairSample) -> tuple[str, str]:
    """The text of a step series before and after its step name (`STEP_LABELS`)."""
    return (f'{head}probe="{_esc(pair.probe)}",step="',
            f'",region="{_esc(pair.region)}",agent="{_esc(pair.agent)}"}} ')


def _step_success(layout: _Layout, rows: Sequence[int], t: _Table) -> str:
    out: list[str] = []
    for i in rows:
        f = t.facts[i]
        if f is None:
            continue
        before, after = _step_heads(layout.open, t.pairs[i])
        out.extend([f"{before}{_esc(f[at])}{after}{1 if f[at + 1] else 0}\n"
                    for at in range(_F_STEPS, len(f) - 1, 3)])
    return "".join(out)


def _step_duration(layout: _Layout, rows: Sequence[int], t: _Table) -> str:
    out: list[str] = []
    for i in rows:
        f = t.facts[i]
        if f is None:
            continue
        before, after = _step_heads(layout.open, t.pairs[i])
        out.extend([f"{before}{_esc(f[at])}{after}{_num(seconds)}\n"
                    for at in range(_F_STEPS, len(f) - 1, 3)
                    if (seconds := f[at + 2]) is not None])
    return "".join(out)


# -- gzip ----------------------------------------------------------------------------------


async def gzip_chunks(chunks: AsyncIterator[bytes], *, level: int = GZIP_LEVEL,
                      batch_bytes: int = GZIP_BATCH_BYTES) -> AsyncGenerator[bytes, None]:
    """`chunks` as one gzip stream, compressed in the default executor, `batch_bytes` a call.

    Compression runs one batch behind: while a worker thread compresses batch n, the event
    loop renders batch n+1 (and serves other work while it waits for batch n). One
    compressor, one call at a time.
    """
    loop = asyncio.get_running_loop()
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip wrapper
    pending: asyncio.Future[bytes] | None = None
    batch: list[bytes] = []
    size = 0
    async for chunk in chunks:
        batch.append(chunk)
        size += len(chunk)
        if size < batch_bytes:
            continue
        if pending is not None:
            compressed = await pending
            if compressed:
                yield compressed
        pending = loop.run_in_executor(None, compressor.compress, b"".join(batch))
        batch.clear()
        size = 0
    if pending is not None:
        compressed = await pending
        if compressed:
            yield compressed
    yield await loop.run_in_executor(None, _gzip_end, compressor, b"".join(batch))


def _gzip_end(compressor: Any, data: bytes) -> bytes:
    """The last batch compressed, and the end of the gzip stream."""
    compressed: bytes = compressor.compress(data) + compressor.flush()
    return compressed
