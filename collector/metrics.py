"""Prometheus metrics: ingest counters, and the classifier's state read at scrape time.

Ingest counts per batch (never per result) on a registry passed in, never the global
default; probe failures are counted in a plain dict at ingest and exported as a counter
family. The classifier's verdicts are read when Prometheus scrapes. Each scrape-time family
is described once here, by a `FamilySpec` (name, help, type, labels), which both renderers
share: `collector.exposition.MetricsPage`, the /metrics page that formats them itself in
bounded chunks, and `ClassifierMetrics`, the prometheus_client collector kept as the
reference implementation (tests and benchmarks compare the two). The
blackbox_exporter-compatible per-kind metrics (`probe_http_status_code`,
`probe_ssl_earliest_cert_expiry`, ...) live in `collector.details`, labelled `PAIR_LABELS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from probenet.version import __version__

from .model import OutageKind, RegionVerdict, Scope, TargetState

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from collections.abc import Set as AbstractSet

    from .classify import Classifier, PairSample
    from .model import OutageRecord

# The labels of every per-(agent, probe) series: probe_success, the per-kind details, ...
PAIR_LABELS = ("probe", "target", "kind", "region", "agent")
FAILURE_LABELS = ("probe", "region", "phase", "reason")
# The labels of the per-step series of a flow probe (probenet_step_success, ...).
STEP_LABELS = ("probe", "step", "region", "agent")
# Beyond this many (probe, region, phase, reason) series, new reasons fold into "other":
# the reason is agent-supplied text, and a broken agent must not explode the series count.
MAX_FAILURE_SERIES = 50_000

PerAgent = Literal["all", "success", "none"]
"""Which per-(probe, agent) series are exported (`metrics.per_agent` in the config)."""


@dataclass(frozen=True, slots=True)
class FamilySpec:
    """One scrape-time metric family: what prometheus_client needs to describe it."""

    name: str  # a counter's name without `_total`, as prometheus_client takes it
    documentation: str
    type: Literal["gauge", "counter"]
    labels: tuple[str, ...]

    @property
    def sample_name(self) -> str:
        """The name its samples carry (counters add `_total`)."""
        return f"{self.name}_total" if self.type == "counter" else self.name

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        """An empty prometheus_client family of this spec."""
        if self.type == "counter":
            return CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labels)


def _gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> FamilySpec:
    return FamilySpec(name, documentation, "gauge", labels)


PROBE_SUCCESS = _gauge("probe_success", "Last result of the agent for the probe, 0 or 1.",
                       PAIR_LABELS)
PROBE_DURATION = _gauge("probe_duration_seconds",
                        "Duration of the agent's last result for the probe.", PAIR_LABELS)
REGION_UP = _gauge("probenet_region_up", "The region's verdict for the probe, 0 or 1; absent "
                   "while unknown.", ("probe", "region"))
TARGET_STATE = _gauge("probenet_target_state", "State set: 1 for the probe's current state.",
                      ("probe", "service", "state"))
OUTAGE_ACTIVE = _gauge("probenet_outage_active", '1 while an outage of that scope is open '
                       '(probe="" for a service-level record).', ("probe", "service", "scope"))
OUTAGE_STEP = _gauge("probenet_outage_step", "1 while an open outage of a flow probe fails at "
                     'that step (the step seen most; probe="" for a service-level record); '
                     "absent otherwise.", ("probe", "service", "step"))
TARGET_FLAPPING = _gauge("probenet_target_flapping", "1 while the probe is flapping.",
                         ("probe",))
AGENT_UP = _gauge("probenet_agent_up", "1 while the agent is connected and fresh.",
                  ("agent", "region"))
AGENT_IMPAIRED = _gauge("probenet_agent_impaired", "1 while the agent is impaired (its results "
                        "are left out).", ("agent", "region"))
REGION_ISOLATED = _gauge("probenet_region_isolated",
                         "1 while every agent of the region is impaired.", ("region",))
MONITORING_DEGRADED = _gauge("probenet_monitoring_degraded",
                             "1 while more than half of the agents are stale or impaired.")
PROBE_FAILURES = FamilySpec(
    "probenet_probe_failures",
    "Failed probe results received, by probe, region, failed phase and reason.", "counter",
    FAILURE_LABELS)


class FailureCounts:
    """Failed results by (probe, region, phase, reason), counted at ingest in a plain dict."""

    __slots__ = ("counts", "max_series")

    def __init__(self, max_series: int = MAX_FAILURE_SERIES) -> None:
        """Count up to `max_series` distinct label sets; fold the rest into reason=other."""
        self.counts: dict[tuple[str, str, str, str], int] = {}
        self.max_series = max_series

    def add(self, probe: str, region: str, phase: str, reason: str) -> None:
        """Count one failed result."""
        key = (probe, region, phase, reason)
        counts = self.counts
        if key in counts:
            counts[key] += 1
        elif len(counts) < self.max_series:
            counts[key] = 1
        else:
            key = (probe, region, phase, "other")
            counts[key] = counts.get(key, 0) + 1

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        """probenet_probe_failures_total."""
        family = PROBE_FAILURES.family()
        for labels, value in self.counts.items():
            family.add_metric(labels, value)
        return family


class IngestMetrics:
    """Counters the gRPC ingest updates once per batch or stream."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register on `registry`."""
        results = Counter("probenet_ingest_results",
                          "Results received, by outcome (applied, duplicate, rejected).",
                          ["outcome"], registry=registry)
        self.applied = results.labels("applied")
        self.duplicate = results.labels("duplicate")
        self.rejected = results.labels("rejected")
        self.batches = Counter("probenet_ingest_batches", "Result batches received.",
                               registry=registry)
        self.rejections = Counter(
            "probenet_ingest_rejections",
            "Rejected results, batches and streams, by reason.", ["reason"], registry=registry)
        self.streams = Gauge("probenet_agent_streams", "Agent streams open now.",
                             registry=registry)
        self.streams_opened = Counter("probenet_agent_streams_opened",
                                      "Agent streams accepted (Welcome sent).",
                                      registry=registry)
        build = Info("probenet_build", "The collector's version.", registry=registry)
        build.info({"version": __version__})


class FleetViewMetrics:
    """The merged fleet view's peer groups (collector/fleetview_api.py), on a registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register the families on `registry`."""
        self.peer_up = Gauge(
            "probenet_fleet_peer_up", "1 if the last fleet view request to the collector "
            "group of that shard got an answer, else 0.", ["shard"], registry=registry)


def _add_record_rows(open_records: Iterable[OutageRecord], known: AbstractSet[str], *,
                     active: GaugeMetricFamily | CounterMetricFamily,
                     outage_step: GaugeMetricFamily | CounterMetricFamily) -> None:
    """Rows of the open records no target view shows.

    Service records, and probe records restored after a restart before any result about
    their probe arrived.
    """
    for record in open_records:
        if record.kind is OutageKind.SERVICE:
            probe = ""
        elif record.kind is OutageKind.PROBE and record.probe not in known:
            probe = record.probe or ""
        else:
            continue
        service = record.service or ""
        # Every scope, as for a probe (the page writes them so: 0 for the other scope).
        for scope in Scope:
            active.add_metric((probe, service, str(scope)), _bool(scope is record.scope))
        if record.step is not None:
            outage_step.add_metric((probe, service, record.step), 1.0)


def _bool(value: bool) -> float:
    return 1.0 if value else 0.0


class ClassifierMetrics(Collector):
    """The dashboards' metrics (DESIGN.md table), computed from the classifier at scrape.

    The reference implementation of these families: the /metrics page renders the same
    families itself (`collector.exposition.MetricsPage`), in chunks.
    """

    def __init__(self, classifier: Classifier, *, failures: FailureCounts | None = None,
                 registered_agents: Sequence[tuple[str, str]] = (),
                 per_agent: PerAgent = "all") -> None:
        """`registered_agents` (id, region) show as down until they first connect.

        `per_agent`: `all` exports probe_success and probe_duration_seconds per pair,
        `success` only probe_success, `none` neither.
        """
        self._classifier = classifier
        self._failures = failures
        self._registered = tuple(registered_agents)
        self._per_agent = per_agent

    def describe(self) -> list[Metric]:
        """Nothing: scrape-time families are not checked for name clashes upfront."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every family, from one consistent read of the classifier."""
        classifier = self._classifier
        if self._per_agent != "none":
            yield from self._sample_families(classifier.samples(),
                                             duration=self._per_agent == "all")
        yield from self._target_families()
        yield from self._agent_families()
        degraded = MONITORING_DEGRADED.family()
        degraded.add_metric((), _bool(classifier.monitoring_degraded))
        yield degraded
        if self._failures is not None:
            yield self._failures.family()

    @staticmethod
    def _sample_families(samples: Iterable[PairSample], *, duration: bool) -> Iterator[Metric]:
        success = PROBE_SUCCESS.family()
        durations = PROBE_DURATION.family()
        for s in samples:
            labels = (s.probe, s.target, s.kind, s.region, s.agent)
            success.add_metric(labels, 1.0 if s.success else 0.0)
            durations.add_metric(labels, s.duration_seconds)
        yield success
        if duration:
            yield durations

    def _target_families(self) -> Iterator[Metric]:
        classifier = self._classifier
        targets = classifier.targets()
        region_up = REGION_UP.family()
        state = TARGET_STATE.family()
        active = OUTAGE_ACTIVE.family()
        outage_step = OUTAGE_STEP.family()
        flapping = TARGET_FLAPPING.family()
        open_records = classifier.open_outages()
        open_probe_scopes = {(r.probe, r.scope) for r in open_records
                             if r.kind is OutageKind.PROBE}
        flapping_now = classifier.flapping_probes()
        for view in targets:
            service = view.service or ""
            for region, verdict in view.regions.items():
                # Unknown, or under maintenance (no evidence): no sample.
                if verdict not in {RegionVerdict.UNKNOWN, RegionVerdict.MAINTENANCE}:
                    region_up.add_metric((view.probe, region), _bool(verdict is RegionVerdict.UP))
            for each in TargetState:
                state.add_metric((view.probe, service, str(each)), _bool(view.state is each))
            for scope in Scope:
                active.add_metric((view.probe, service, str(scope)),
                                  _bool((view.probe, scope) in open_probe_scopes))
            # The (probe, service) of probenet_outage_active: alert rules join on them.
            if view.step is not None:
                outage_step.add_metric((view.probe, service, view.step), 1.0)
            flapping.add_metric((view.probe,),
                                _bool(view.flapping or view.probe in flapping_now))
        _add_record_rows(open_records, {view.probe for view in targets}, active=active,
                         outage_step=outage_step)
        yield region_up
        yield state
        yield active
        yield outage_step
        yield flapping

    def _agent_families(self) -> Iterator[Metric]:
        classifier = self._classifier
        agent_up = AGENT_UP.family()
        impaired = AGENT_IMPAIRED.family()
        isolated = REGION_ISOLATED.family()
        seen: set[str] = set()
        regions: set[str] = set()
        for agent in classifier.agents():
            seen.add(agent.id)
            regions.add(agent.region)
            agent_up.add_metric((agent.id, agent.region),
                                _bool(agent.connected and not agent.stale))
            impaired.add_metric((agent.id, agent.region), _bool(agent.impaired))
        for agent_id, region in self._registered:
            if agent_id not in seen:
                regions.add(region)
                agent_up.add_metric((agent_id, region), 0.0)
                impaired.add_metric((agent_id, region), 0.0)
        isolated_now = classifier.isolated_regions()
        for region in sorted(regions | isolated_now):
            isolated.add_metric((region,), _bool(region in isolated_now))
        yield agent_up
        yield impaired
        yield isolated
