"""Classification of `flow` probes: the failing step is part of the failure an outage shows.

A real Classifier fed real `probenet.v1.ProbeResult` messages, round by round: a login flow
(`social-login`: steps home, login, feed) next to plain http probes of the same service.
Records carry `step` (the step seen most, with phase and reason as one failure), the target
views and their TargetChanges carry the open record's step, service records take the step
most of their probes' records show, and every other kind shows none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from probenet.collector.classify import Classifier
from probenet.collector.model import (
    ClassificationParams,
    OutageEvent,
    OutageKind,
    OutageRecord,
    OutageTransition,
    Scope,
    TargetChange,
    TargetState,
    Transition,
)
from probenet.v1 import probenet_pb2 as pb

START = 1_800_000_000.0
INTERVAL_S = 10.0
LOGIN = "social-login"
STEPS = ("home", "login", "feed")


@dataclass(frozen=True)
class Fails:
    """`probe` fails (confirmed) at `step` in `regions` (empty: everywhere)."""

    probe: str
    step: str = ""
    regions: tuple[str, ...] = ()
    phase: int = pb.PHASE_VALIDATION
    reason: str = "status_mismatch"


def flow_details(*, failed_at: str | None) -> pb.FlowDetails:
    """The steps that ran: up to and including the failing one (all when none fails)."""
    ran: list[pb.FlowStep] = []
    for name in STEPS:
        ok = name != failed_at
        ran.append(pb.FlowStep(name=name, success=ok, duration_seconds=0.05))
        if not ok:
            break
    index = len(ran) if failed_at else 0
    return pb.FlowDetails(steps=ran, failed_step_index=index, step_count=len(STEPS))


@dataclass
class StepFleet:
    """Agents (two per region), probes of service `social`, a clock and what was emitted."""

    regions: tuple[str, ...] = ("eu", "us", "ap")
    probes: dict[str, str] = field(default_factory=lambda: {
        LOGIN: "flow", "social-web": "http"})
    classifier: Classifier = field(init=False)
    now: float = START
    transitions: list[Transition] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.classifier = Classifier(ClassificationParams())
        for region in self.regions:
            for n in (1, 2):
                self.classifier.agent_connected(f"{region}-{n}", region, {}, INTERVAL_S,
                                                self.now)

    @property
    def agents(self) -> list[tuple[str, str]]:
        return [(f"{region}-{n}", region) for region in self.regions for n in (1, 2)]

    def results(self, region: str, stamp_ms: int, faults: tuple[Fails, ...],
                stray_step: str = "") -> list[pb.ProbeResult]:
        out: list[pb.ProbeResult] = []
        for probe, kind in self.probes.items():
            common = {"probe": probe, "kind": kind, "service": "social",
                      "target": f"https://{probe}.example/", "timestamp_ms": stamp_ms,
                      "interval_ms": int(INTERVAL_S * 1000), "duration_seconds": 0.2}
            fault = next((f for f in faults if f.probe == probe
                          and (not f.regions or region in f.regions)), None)
            if fault is None:
                extra = {"flow": flow_details(failed_at=None)} if kind == "flow" else {}
                out.append(pb.ProbeResult(success=True, status_code=200, **common, **extra))
                continue
            for confirmed in (False, True):  # the failure, then its confirming re-probe
                extra = ({"flow": flow_details(failed_at=fault.step)} if kind == "flow"
                         else {})
                out.append(pb.ProbeResult(
                    success=False, confirmed=confirmed, failed_phase=fault.phase,
                    reason=fault.reason, step=fault.step or stray_step, **common, **extra))
        return out

    def round(self, *faults: Fails, stray_step: str = "") -> None:
        """One interval: every agent reports every probe once (failures re-probed)."""
        agents = self.agents
        start = self.now
        for agent, region in agents:
            self.now += INTERVAL_S / (len(agents) + 1)
            self.classifier.apply(agent, self.results(region, int(self.now * 1000), faults,
                                                      stray_step), self.now)
            self.transitions.extend(self.classifier.take_transitions())
        self.now = start + INTERVAL_S
        self.classifier.tick(self.now)
        self.transitions.extend(self.classifier.take_transitions())

    def open(self, kind: OutageKind = OutageKind.PROBE) -> list[OutageRecord]:
        return [r for r in self.classifier.open_outages() if r.kind is kind]

    def events(self, probe: str | None = None) -> list[OutageTransition]:
        return [t for t in self.transitions if isinstance(t, OutageTransition)
                and (probe is None or t.record.probe == probe)]

    def views(self, probe: str) -> list[TargetChange]:
        return [t for t in self.transitions
                if isinstance(t, TargetChange) and t.view.probe == probe]


def warmed(**kwargs: object) -> StepFleet:
    fleet = StepFleet(**kwargs)  # type: ignore[arg-type]
    fleet.round()
    fleet.round()
    return fleet


def test_a_global_outage_of_a_flow_names_the_failing_step():
    fleet = warmed()
    for _ in range(2):
        fleet.round(Fails(LOGIN, "login"))
    [record] = fleet.open()
    assert (record.probe, record.scope, record.regions) == (LOGIN, Scope.GLOBAL,
                                                            ("ap", "eu", "us"))
    assert (record.phase, record.reason, record.step) == ("validation", "status_mismatch",
                                                          "login")
    assert record.to_json()["step"] == "login"
    opened = [t for t in fleet.events(LOGIN) if t.event is OutageEvent.OPENED]
    assert [t.record.step for t in opened] == ["login"]
    # The pages are still up: their view shows no step, the flow's shows the failing one.
    login = fleet.classifier.target(LOGIN)
    assert login is not None
    assert (login.state, login.step) == (TargetState.GLOBAL_OUTAGE, "login")
    assert login.to_json()["step"] == "login"
    web = fleet.classifier.target("social-web")
    assert web is not None
    assert (web.state, web.step) == (TargetState.UP, None)
    # The retained state (the last TargetChange) is current: it shows the step.
    assert fleet.views(LOGIN)[-1].view.step == "login"
    assert not fleet.open(OutageKind.SERVICE)  # one probe of the service: no service record


def test_a_regional_outage_of_a_flow_names_the_step_and_the_region():
    fleet = warmed()
    for _ in range(3):
        fleet.round(Fails(LOGIN, "feed", regions=("eu",)))
    [record] = fleet.open()
    assert (record.scope, record.regions, record.step) == (Scope.REGIONAL, ("eu",), "feed")
    login = fleet.classifier.target(LOGIN)
    assert login is not None
    assert (login.state, login.step) == (TargetState.REGIONAL_OUTAGE, "feed")


def test_the_record_follows_the_step_seen_most_with_an_updated_transition():
    fleet = warmed()
    for _ in range(2):
        fleet.round(Fails(LOGIN, "login"))
    [record] = fleet.open()
    assert record.step == "login"
    # The journey now breaks earlier, at the home page: once it is seen more than login,
    # the same record (same id, same scope) shows it.
    for _ in range(3):
        fleet.round(Fails(LOGIN, "home", phase=pb.PHASE_CONNECT, reason="connect_refused"))
    [now] = fleet.open()
    assert now.id == record.id
    assert (now.phase, now.reason, now.step) == ("connect", "connect_refused", "home")
    updates = [t for t in fleet.events(LOGIN) if t.event is OutageEvent.UPDATED]
    assert [t.record.step for t in updates] == ["home"]
    assert fleet.views(LOGIN)[-1].view.step == "home"  # the retained state follows it


def test_a_step_change_alone_updates_the_record():
    # Same phase and reason, another step: still another failure.
    fleet = warmed()
    for _ in range(2):
        fleet.round(Fails(LOGIN, "login"))
    for _ in range(3):
        fleet.round(Fails(LOGIN, "feed"))
    [record] = fleet.open()
    assert (record.phase, record.reason, record.step) == ("validation", "status_mismatch",
                                                          "feed")
    assert [t.record.step for t in fleet.events(LOGIN)
            if t.event is OutageEvent.UPDATED] == ["feed"]


def test_recovery_resolves_the_record_and_clears_the_views_step():
    fleet = warmed()
    for _ in range(2):
        fleet.round(Fails(LOGIN, "login"))
    for _ in range(3):
        fleet.round()
    assert not fleet.open()
    [resolved] = [t for t in fleet.events(LOGIN) if t.event is OutageEvent.RESOLVED]
    assert resolved.record.step == "login"  # the record keeps what it showed
    login = fleet.classifier.target(LOGIN)
    assert login is not None
    assert (login.state, login.step) == (TargetState.UP, None)
    last = fleet.views(LOGIN)[-1]
    assert (last.view.state, last.view.step) == (TargetState.UP, None)
    # The view's step changed after the resolve: a TargetChange at the same moment follows it.
    assert fleet.transitions.index(last) > fleet.transitions.index(resolved)


def test_other_kinds_show_no_step_even_when_their_results_carry_one():
    fleet = warmed()
    for _ in range(2):
        fleet.round(Fails("social-web", phase=pb.PHASE_CONNECT, reason="connect_refused"),
                    stray_step="login")
    [record] = fleet.open()
    assert record.probe == "social-web"
    assert record.step is None
    assert record.to_json()["step"] is None  # present, null
    web = fleet.classifier.target("social-web")
    assert web is not None
    assert web.step is None
    assert web.to_json()["step"] is None
    assert all(t.view.step is None for t in fleet.views("social-web"))


def test_a_service_record_shows_the_step_most_of_its_probes_records_show():
    fleet = warmed(probes={LOGIN: "flow", "social-post": "flow", "social-web": "http"})
    faults = (Fails(LOGIN, "login"), Fails("social-post", "login"),
              Fails("social-web", phase=pb.PHASE_TLS, reason="tls_handshake"))
    for _ in range(2):
        fleet.round(*faults)
    [service] = fleet.open(OutageKind.SERVICE)
    assert service.probes == (LOGIN, "social-post", "social-web")
    assert (service.phase, service.reason, service.step) == ("validation",
                                                             "status_mismatch", "login")
    assert {r.probe: r.step for r in fleet.open()} == {
        LOGIN: "login", "social-post": "login", "social-web": None}


def test_a_service_record_of_plain_probes_has_no_step():
    fleet = warmed(probes={LOGIN: "flow", "social-web": "http", "social-api": "http"})
    faults = (Fails(LOGIN, "login"), Fails("social-web", phase=pb.PHASE_TLS,
                                           reason="tls_handshake"),
              Fails("social-api", phase=pb.PHASE_TLS, reason="tls_handshake"))
    for _ in range(2):
        fleet.round(*faults)
    [service] = fleet.open(OutageKind.SERVICE)
    assert (service.phase, service.step) == ("tls", None)


def test_a_restored_record_keeps_its_step_and_the_view_shows_it():
    fleet = warmed()
    for _ in range(2):
        fleet.round(Fails(LOGIN, "login"))
    [record] = fleet.open()
    restarted = StepFleet(now=fleet.now)
    restarted.classifier.restore([record], restarted.now)
    restarted.transitions.extend(restarted.classifier.take_transitions())
    assert restarted.open() == [record]
    # The fault persists after the restart: same record, and the step never changes.
    for _ in range(3):
        restarted.round(Fails(LOGIN, "login"))
    [same] = restarted.open()
    assert (same.id, same.step) == (record.id, "login")
    assert {t.record.step for t in restarted.events(LOGIN)} <= {"login"}
    view = restarted.classifier.target(LOGIN)
    assert view is not None
    assert view.step == "login"
