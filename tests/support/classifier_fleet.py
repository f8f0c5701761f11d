"""A small fake fleet for the classifier: the scenario helper of the classifier tests.

`Fleet` drives a real `Classifier`: agents in regions report every probe once per round, in
time order; a failing pair sends a first (unconfirmed) failure and then the confirmed
re-probe, as a real agent does. After each round the clock moves one interval on and `tick`
runs. `faults(Down(...), ...)` says which (probe, agent) pairs fail in a round, and how.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from probenet.collector.classify import Classifier
from probenet.collector.model import (
    PHASE_NAMES,
    ClassificationParams,
    OutageEvent,
    OutageKind,
    OutageRecord,
    OutageTransition,
    RegionVerdict,
    TargetChange,
    TargetState,
    Transition,
)

PROBES = ("web", "api", "dns", "cdn", "mail", "auth")
START = 1_800_000_000.0
DNS = PHASE_NAMES.index("dns")
CONNECT = PHASE_NAMES.index("connect")
TLS = PHASE_NAMES.index("tls")

UP, DOWN, UNKNOWN = RegionVerdict.UP, RegionVerdict.DOWN, RegionVerdict.UNKNOWN
GLOBAL, REGIONAL = TargetState.GLOBAL_OUTAGE, TargetState.REGIONAL_OUTAGE


@dataclass(frozen=True, slots=True)
class Result:
    """A probenet.v1.ProbeResult look-alike."""

    probe: str
    success: bool = True
    confirmed: bool = False
    failed_phase: int = 0
    timeout_phase: int = 0
    reason: str = ""
    target: str = ""
    kind: str = "http"
    service: str = ""
    duration_seconds: float = 0.02
    status_code: int = 200
    timestamp_ms: int = 0
    interval_ms: int = 10_000


# What goes wrong for one (agent, probe) in one round: (phase index, reason), or None.
Failure = tuple[int, str] | None
FaultFn = Callable[[str, str], Failure]


@dataclass(frozen=True)
class Down:
    """A fault: these probes fail (confirmed) at these agents, or every agent of these regions.

    Empty `probes` means every probe; empty `regions` and `agents` means every agent.
    """

    probes: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    phase: int = CONNECT
    reason: str = "connect_refused"


def faults(*downs: Down, region_of: Mapping[str, str]) -> FaultFn:
    """The failure of (agent, probe) under `downs` (the first matching one wins)."""

    def failure(agent: str, probe: str) -> Failure:
        for down in downs:
            if down.probes and probe not in down.probes:
                continue
            if (down.regions or down.agents) and not (
                    region_of[agent] in down.regions or agent in down.agents):
                continue
            return (down.phase, down.reason)
        return None

    return failure


class Fleet:
    """Agents in regions, probes, a clock, a classifier and everything it emitted."""

    def __init__(
        self,
        regions: Mapping[str, int],
        probes: Sequence[str] = PROBES,
        *,
        interval_s: float = 10.0,
        params: ClassificationParams | None = None,
        networks: Mapping[str, str] | None = None,
        services: Mapping[str, str] | None = None,
        clock_skew_s: Mapping[str, float] | None = None,
        start: float = START,
        classifier: Classifier | None = None,
    ) -> None:
        self.params = params or ClassificationParams()
        self.clf = classifier or Classifier(self.params)
        self.probes = tuple(probes)
        self.interval_s = interval_s
        self.services = dict(services or {})
        self.skew = dict(clock_skew_s or {})
        self.now = start
        self.region_of: dict[str, str] = {}
        for region, count in regions.items():
            for n in range(1, count + 1):
                self.region_of[f"{region}-{n}"] = region
        self.agents = tuple(self.region_of)
        self.networks = dict(networks or {})
        self.probes_of: dict[str, tuple[str, ...]] = {}  # per-agent override of `probes`
        self.transitions: list[Transition] = []
        for agent in self.agents:
            self.connect(agent)

    # -- driving ---------------------------------------------------------------------------

    def connect(self, agent: str, region: str | None = None) -> None:
        if region is not None:
            self.region_of[agent] = region
            if agent not in self.agents:
                self.agents = (*self.agents, agent)
        labels = {"network": self.networks[agent]} if agent in self.networks else {}
        self.clf.agent_connected(agent, self.region_of[agent], labels, self.interval_s, self.now)
        self._collect()

    def results_for(self, agent: str, failure_of: FaultFn, noise: Iterable[str] = ()) -> list[
            Result]:
        """One agent's batch for one round: every probe once; failures re-probed."""
        stamp = int((self.now + self.skew.get(agent, 0.0)) * 1000)
        noisy = set(noise)
        results: list[Result] = []
        for probe in self.probes_of.get(agent, self.probes):
            common = {"probe": probe, "target": f"https://{probe}.example/",
                      "service": self.services.get(probe, ""), "timestamp_ms": stamp,
                      "interval_ms": int(self.interval_s * 1000)}
            failure = failure_of(agent, probe)
            if failure is None and probe not in noisy:
                results.append(Result(**common))  # type: ignore[arg-type]
                continue
            phase, reason = failure or (CONNECT, "connect_timeout")
            first = Result(success=False, confirmed=False, failed_phase=phase, reason=reason,
                           status_code=0, **common)  # type: ignore[arg-type]
            results.append(first)
            if failure is not None:
                results.append(Result(success=False, confirmed=True, failed_phase=phase,
                                      reason=reason, status_code=0, **common))  # type: ignore[arg-type]
            else:
                results.append(Result(**common))  # type: ignore[arg-type]  # re-probe passed
        return results

    def round(
        self,
        *downs: Down,
        silent: Iterable[str] = (),
        noise: Mapping[str, Iterable[str]] | None = None,
        fault: FaultFn | None = None,
        order: Sequence[str] | None = None,
        slots: int | None = None,
    ) -> None:
        """One probe interval: every agent but `silent` reports once, then `tick`.

        The interval is cut in `slots` + 1 steps (default: one slot per reporting agent);
        two fleets given the same `slots` report their shared agents at the same moments.
        """
        failure_of = fault or faults(*downs, region_of=self.region_of)
        muted = set(silent)
        start = self.now
        reporting = [a for a in (order or self.agents) if a not in muted]
        step = self.interval_s / ((slots or len(reporting)) + 1)
        noise = noise or {}
        for agent in reporting:
            self.now += step
            self.clf.apply(agent, self.results_for(agent, failure_of, noise.get(agent, ())),
                           self.now)
            self._collect()
        self.now = start + self.interval_s
        self.clf.tick(self.now)
        self._collect()

    def rounds(self, count: int, *downs: Down, silent: Iterable[str] = ()) -> None:
        for _ in range(count):
            self.round(*downs, silent=silent)

    def _collect(self) -> None:
        self.transitions.extend(self.clf.take_transitions())

    # -- reading ----------------------------------------------------------------------------

    def state(self, probe: str) -> TargetState:
        view = self.clf.target(probe)
        assert view is not None, probe
        return view.state

    def verdicts(self, probe: str) -> dict[str, RegionVerdict]:
        return dict(self.clf.region_verdicts(probe))

    def open(self, kind: OutageKind | None = None) -> list[OutageRecord]:
        return [r for r in self.clf.open_outages() if kind is None or r.kind is kind]

    def events(self, event: OutageEvent | None = None,
               kind: OutageKind | None = None) -> list[OutageTransition]:
        return [t for t in self.transitions if isinstance(t, OutageTransition)
                and (event is None or t.event is event)
                and (kind is None or t.record.kind is kind)]

    def target_changes(self, probe: str) -> list[TargetChange]:
        return [t for t in self.transitions
                if isinstance(t, TargetChange) and t.view.probe == probe]

    def agent(self, agent_id: str) -> dict[str, object]:
        found = [a for a in self.clf.agents() if a.id == agent_id]
        assert found, agent_id
        return found[0].to_json()


def summary(record: OutageRecord) -> tuple[str, str | None, str, tuple[str, ...]]:
    """What a table case asserts of a record: kind, subject, scope, regions."""
    subject = record.probe or record.service or record.region
    return (str(record.kind), subject, str(record.scope), record.regions)


# -- table: one row of DESIGN.md per case ---------------------------------------------------
