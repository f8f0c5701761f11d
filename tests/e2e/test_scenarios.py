"""End-to-end scenarios: real `probenet collector` and `probenet agent` processes started from
config files, targets that fail by source address, assertions on /api/v1/* and /metrics.

One fleet serves the whole module (five regions, eight agents, probes dedicated to each
scenario); a few probes see 5% random loss at every agent from the start to the end, and the
last test checks that in more than two minutes of that noise no outage was opened. Detection
latencies are printed at the end of the session.
"""

from __future__ import annotations

import time

import pytest

from probenet.lab.fleet import AgentSeat, FleetPlan, ProbePlan, pick_free_port
from probenet.lab.targets import FaultMode
from support.e2e_fleet import (
    EVERY_PROBE,
    FaultTable,
    FleetHarness,
    Latency,
    LatencyReport,
    wait_until,
)

pytestmark = pytest.mark.slow

INTERVAL_S = 1.0
# Generous bounds (the machine is shared with other suites); the real figures are printed.
DETECT_BOUND_S = 6 * INTERVAL_S
RESOLVE_BOUND_S = 15 * INTERVAL_S
IMPAIRED_BOUND_S = 12 * INTERVAL_S
QUIET_BOUND_S = 30.0
NOISE_SECONDS = 125.0
NOISE_RATIO = 0.05

AGENTS = (
    AgentSeat("e1a", "eu-central", "127.0.11.1", "as65101"),
    AgentSeat("e1b", "eu-central", "127.0.11.2", "as65102"),
    AgentSeat("u1a", "us-east", "127.0.12.1", "as65111"),
    AgentSeat("u1b", "us-east", "127.0.12.2", "as65112"),
    AgentSeat("a1a", "ap-south", "127.0.13.1", "as65121"),
    AgentSeat("a1b", "ap-south", "127.0.13.2", "as65122"),
    AgentSeat("s1", "sa-east", "127.0.14.1", "as65131"),
    AgentSeat("f1", "af-south", "127.0.15.1", "as65141"),
)
REGIONS = ["eu-central", "us-east", "ap-south", "sa-east", "af-south"]
NOISE_PROBES = ("noise-web", "noise-tcp", "noise-dns")
PROBES = (
    ProbePlan("social-web", "http", "social"),
    ProbePlan("social-photos", "http", "social"),
    ProbePlan("regional-web", "http"),
    ProbePlan("kofn-dns", "dns"),
    ProbePlan("restart-tcp", "tcp"),
    ProbePlan("hyst-web", "http"),
    ProbePlan("noise-web", "http"),
    ProbePlan("noise-tcp", "tcp"),
    ProbePlan("noise-dns", "dns"),
    ProbePlan("steady-web", "http"),
    ProbePlan("steady-dns", "dns"),
    ProbePlan("portal-web", "http", "portal"),
    ProbePlan("portal-login", "flow", "portal"),
)


@pytest.fixture(scope="module")
def latency(request) -> LatencyReport:
    report = LatencyReport()
    request.config.pluginmanager.register(report, "probenet-e2e-latency")
    return report


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, latency):
    plan = FleetPlan(
        agents=AGENTS, probes=PROBES, interval_s=INTERVAL_S, http_port=pick_free_port(),
        grpc_port=pick_free_port(), classification={"global_ratio": 0.8},
        collector_settings={"tick": "250ms"})
    faults = FaultTable(plan.agents_by_address())
    for probe in NOISE_PROBES:
        faults.lose(probe, NOISE_RATIO)
    harness = FleetHarness(plan, tmp_path_factory.mktemp("e2e-fleet"), faults)
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture
def quiet(fleet):
    """Each scenario starts from a healthy fleet, and leaves no fault behind."""
    wait_until(fleet.is_quiet, QUIET_BOUND_S, "a quiet fleet before the scenario")

    def every_region_up():
        # A probe is up with a region still unknown (a lone agent's leftover weak down, from
        # the scenario before): that region must be up too, or this scenario's faults could
        # corroborate it.
        return all(set(t.regions.values()) == {"up"} for name, t in fleet.targets_view().items()
                   if name not in NOISE_PROBES)
    wait_until(every_region_up, QUIET_BOUND_S, "every region up for every probe")
    yield fleet
    for probe in [p.name for p in PROBES if p.name not in NOISE_PROBES] + [EVERY_PROBE]:
        fleet.faults.clear(probe)


def record_ids(fleet: FleetHarness) -> set[str]:
    return {o.id for o in fleet.outages()}


def wait_outage(fleet: FleetHarness, probe: str, injected_at: float, **match) -> tuple:
    """Wait for `probe`'s open record (matching fields); return it and the API latency."""
    def found():
        outage = fleet.outage_of(probe)
        if outage is None or any(getattr(outage, k) != v for k, v in match.items()):
            return None
        return outage
    outage = wait_until(found, DETECT_BOUND_S + 10, f"an outage of {probe} {match}",
                        poll_s=0.02)
    return outage, time.time() - injected_at


def wait_resolved(fleet: FleetHarness, outage_id: str):
    def ended():
        return next((o for o in fleet.outages() if o.id == outage_id and not o.active), None)
    return wait_until(ended, RESOLVE_BOUND_S, f"outage {outage_id} to resolve")


# -- scenarios -----------------------------------------------------------------------------


def test_global_outage_of_a_service(quiet, latency):
    fleet = quiet
    injected = time.time()
    fleet.faults.fail("social-web")
    fleet.faults.fail("social-photos")
    first, api_seconds = wait_outage(fleet, "social-web", injected)
    outage, global_seconds = wait_outage(fleet, "social-web", injected, scope="global")
    latency.add(Latency("global outage (service of 2 probes)", "global", global_seconds,
                        outage.detection_seconds, INTERVAL_S))
    assert api_seconds <= global_seconds
    assert global_seconds <= DETECT_BOUND_S
    assert outage.id == first.id  # a regional start escalates inside the same record
    # Global from 4 of 5 regions (global_ratio 0.8); the fifth follows.
    assert len(outage.regions) >= 4
    everywhere, _ = wait_outage(fleet, "social-web", injected, regions=sorted(REGIONS))
    assert everywhere.id == outage.id
    photos, _ = wait_outage(fleet, "social-photos", injected, scope="global")
    assert photos.phase == outage.phase
    assert outage.phase in {"response", "validation"}
    assert outage.started_at <= outage.detected_at

    service = wait_until(
        lambda: next((o for o in fleet.outages(active=True)
                      if o.kind == "service" and o.service == "social"), None),
        DETECT_BOUND_S, "the service record of social")
    assert {"social-web", "social-photos"} <= set(service.probes)
    assert service.scope == "global"

    view = fleet.targets_view()["social-web"]
    assert view.state == "global_outage"
    assert all(view.regions[r] == "down" for r in REGIONS)
    assert fleet.metric("probenet_outage_active", probe="social-web", scope="global") == 1
    assert fleet.metric("probenet_region_up", probe="social-web", region="us-east") == 0
    assert fleet.metric("probenet_target_state", probe="social-web",
                        state="global_outage") == 1
    assert fleet.metric("probe_success", probe="social-web", agent="s1") == 0

    fleet.faults.clear("social-web")
    fleet.faults.clear("social-photos")
    for outage_id in (outage.id, photos.id, service.id):
        ended = wait_resolved(fleet, outage_id)
        assert ended.peak_scope == "global"
    records = [o for o in fleet.outages() if o.probe == "social-web"]
    assert [o.id for o in records] == [outage.id]
    assert fleet.metric("probenet_outage_active", probe="social-web", scope="global") in {0, None}


def test_regional_outage_names_its_region(quiet, latency):
    fleet = quiet
    injected = time.time()
    fleet.faults.fail("regional-web", FaultMode.RESET, regions=["ap-south"])
    outage, api_seconds = wait_outage(fleet, "regional-web", injected)
    latency.add(Latency("regional outage (1 of 5 regions)", "regional", api_seconds,
                        outage.detection_seconds, INTERVAL_S))
    assert api_seconds <= DETECT_BOUND_S
    assert outage.scope == "regional"
    assert outage.regions == ["ap-south"]
    view = fleet.targets_view()["regional-web"]
    assert view.state == "regional_outage"
    assert view.regions["ap-south"] == "down"
    assert all(view.regions[r] == "up" for r in REGIONS if r != "ap-south")
    assert fleet.metric("probenet_outage_active", probe="regional-web", scope="regional") == 1

    # It stays regional: the other regions keep reaching the target.
    hold_until = time.time() + 3 * INTERVAL_S
    while time.time() < hold_until:
        current = fleet.outage_of("regional-web")
        assert current is not None
        assert (current.id, current.scope) == (outage.id, "regional")
        time.sleep(0.2)

    fleet.faults.clear("regional-web")
    ended = wait_resolved(fleet, outage.id)
    assert ended.peak_scope == "regional"
    assert ended.regions_ever == ["ap-south"]


def test_login_failing_everywhere_while_pages_load_is_a_global_outage_at_login(quiet,
                                                                              latency):
    fleet = quiet
    injected = time.time()
    fleet.faults.fail("portal-login", FaultMode.DENY_LOGIN)  # pages load, logins refused
    outage, seconds = wait_outage(fleet, "portal-login", injected, scope="global")
    latency.add(Latency("flow failing at one step, everywhere", "global", seconds,
                        outage.detection_seconds, INTERVAL_S))
    assert outage.step == "login"
    assert outage.phase == "validation"
    assert outage.reason == "http_status"
    wait_outage(fleet, "portal-login", injected, regions=sorted(REGIONS))
    views = fleet.targets_view()
    assert (views["portal-login"].state, views["portal-login"].step) == ("global_outage", "login")
    # The page itself (and the flow's home step) is up from everywhere.
    assert views["portal-web"].state == "up"
    assert views["portal-web"].step is None
    assert fleet.outage_of("portal-web") is None
    for agent in ("e1a", "s1", "f1"):
        assert fleet.metric("probenet_step_success", probe="portal-login", step="home",
                            agent=agent) == 1
        assert fleet.metric("probenet_step_success", probe="portal-login", step="login",
                            agent=agent) == 0
        # The step after the failing one did not run.
        assert fleet.metric("probenet_step_success", probe="portal-login", step="feed",
                            agent=agent) is None
    assert fleet.metric("probenet_outage_step", probe="portal-login", step="login") == 1
    assert fleet.metric("probe_success", probe="portal-login", kind="flow", agent="s1") == 0

    fleet.faults.clear("portal-login")
    ended = wait_resolved(fleet, outage.id)
    assert (ended.peak_scope, ended.step) == ("global", "login")
    assert fleet.metric("probenet_step_success", probe="portal-login", step="feed",
                        agent="s1") == 1
    assert fleet.metric("probenet_outage_step", probe="portal-login", step="login") is None
    assert_secret_nowhere(fleet)


def test_login_failing_from_one_region_is_a_regional_outage_at_login(quiet, latency):
    fleet = quiet
    injected = time.time()
    fleet.faults.fail("portal-login", FaultMode.DENY_LOGIN, regions=["us-east"])
    outage, seconds = wait_outage(fleet, "portal-login", injected)
    latency.add(Latency("flow failing at one step, one region", "regional", seconds,
                        outage.detection_seconds, INTERVAL_S))
    assert (outage.scope, outage.regions, outage.step) == ("regional", ["us-east"], "login")
    view = fleet.targets_view()["portal-login"]
    assert (view.state, view.step) == ("regional_outage", "login")
    assert view.regions["us-east"] == "down"
    assert all(view.regions[r] == "up" for r in REGIONS if r != "us-east")
    fleet.faults.clear("portal-login")
    ended = wait_resolved(fleet, outage.id)
    assert (ended.peak_scope, ended.regions_ever) == ("regional", ["us-east"])


def assert_secret_nowhere(fleet: FleetHarness) -> None:
    """The flow's password is in its secret file and nowhere the collector or a log shows."""
    assert fleet.targets is not None
    secret = fleet.targets.login_password.encode()
    assert (fleet.workdir / "secrets" / "portal-login").read_bytes().strip() == secret
    for path in ("/metrics", "/api/v1/targets", "/api/v1/outages", "/api/v1/agents"):
        assert secret not in fleet.get(path), path
    logs = list((fleet.workdir / "logs").glob("*.log"))
    assert logs
    for log_file in logs:
        assert secret not in log_file.read_bytes(), log_file
    # The collector's journal and every agent's state file (spooled results).
    stored = [p for p in fleet.workdir.rglob("*") if p.is_file() and (
        p.name.startswith("journal.db") or ".spool" in p.name)]
    assert any(".spool" in p.name for p in stored)
    for path in stored:
        assert secret not in path.read_bytes(), path


def test_k_of_n_regions_around_the_global_threshold(quiet, latency):
    """With 5 regions and global_ratio 0.8: 3 down is regional, 4 down is global."""
    fleet = quiet
    three = ["eu-central", "us-east", "ap-south"]
    injected = time.time()
    fleet.faults.fail("kofn-dns", FaultMode.ERROR, regions=three)

    def three_down():
        outage = fleet.outage_of("kofn-dns")
        return outage if outage and sorted(outage.regions) == sorted(three) else None
    outage = wait_until(three_down, DETECT_BOUND_S + 10, "kofn-dns down in 3 regions")
    latency.add(Latency("k-of-N: 3 of 5 regions", "regional", time.time() - injected,
                        outage.detection_seconds, INTERVAL_S))
    assert outage.scope == "regional"
    assert outage.phase is not None
    hold_until = time.time() + 3 * INTERVAL_S
    while time.time() < hold_until:
        current = fleet.outage_of("kofn-dns")
        assert current is not None
        assert current.scope == "regional"
        assert fleet.targets_view()["kofn-dns"].state == "regional_outage"
        time.sleep(0.2)

    escalated_at = time.time()
    fleet.faults.fail("kofn-dns", FaultMode.ERROR, regions=["sa-east"])
    globally, seconds = wait_outage(fleet, "kofn-dns", escalated_at, scope="global")
    latency.add(Latency("k-of-N: 4 of 5 regions (escalation)", "global", seconds,
                        globally.detection_seconds, INTERVAL_S))
    assert globally.id == outage.id
    assert sorted(globally.regions) == sorted([*three, "sa-east"])
    assert globally.peak_scope == "global"
    assert fleet.targets_view()["kofn-dns"].regions["af-south"] == "up"

    fleet.faults.clear("kofn-dns")
    ended = wait_resolved(fleet, outage.id)
    assert ended.peak_scope == "global"
    assert [o.id for o in fleet.outages() if o.probe == "kofn-dns"] == [outage.id]


def test_impaired_agent_is_left_out_and_its_region_falls_back(quiet, latency):
    fleet = quiet
    before = record_ids(fleet)
    injected = time.time()
    fleet.faults.fail(EVERY_PROBE, FaultMode.ERROR, agents=["e1b"])
    wait_until(lambda: fleet.agents()["e1b"].impaired, IMPAIRED_BOUND_S, "e1b impaired",
               poll_s=0.02)
    seconds = time.time() - injected
    latency.add(Latency("agent impaired (2-agent region)", "impaired", seconds, seconds,
                        INTERVAL_S))
    assert fleet.metric("probenet_agent_impaired", agent="e1b", region="eu-central") == 1
    # Its region falls back to e1a: every probe stays up in eu-central, nothing opens.
    hold_until = time.time() + 3 * INTERVAL_S
    while time.time() < hold_until:
        view = fleet.targets_view()
        assert all(t.regions["eu-central"] == "up" for t in view.values()), view
        assert fleet.agents()["e1b"].impaired
        time.sleep(0.2)
    assert record_ids(fleet) == before
    assert fleet.metric("probe_success", probe="steady-web", agent="e1b") == 0

    fleet.faults.clear(EVERY_PROBE)
    wait_until(lambda: not fleet.agents()["e1b"].impaired, IMPAIRED_BOUND_S,
               "e1b no longer impaired")
    assert record_ids(fleet) == before


def test_lone_impaired_agent_leaves_its_region_unknown(quiet, latency):
    fleet = quiet
    before = record_ids(fleet)
    injected = time.time()
    fleet.faults.fail(EVERY_PROBE, FaultMode.ERROR, agents=["f1"])
    wait_until(lambda: fleet.agents()["f1"].impaired, IMPAIRED_BOUND_S, "f1 impaired",
               poll_s=0.02)
    seconds = time.time() - injected
    latency.add(Latency("lone agent impaired (1-agent region)", "impaired", seconds, seconds,
                        INTERVAL_S))

    def af_south_unknown():
        view = fleet.targets_view()
        return all(t.regions.get("af-south", "unknown") == "unknown" for t in view.values())
    wait_until(af_south_unknown, 5 * INTERVAL_S, "af-south unknown for every probe")
    view = fleet.targets_view()
    assert all(t.state == "up" for t in view.values()), view
    assert fleet.metric("probenet_region_up", probe="steady-web", region="af-south") is None
    assert record_ids(fleet) == before

    fleet.faults.clear(EVERY_PROBE)
    wait_until(lambda: not fleet.agents()["f1"].impaired, IMPAIRED_BOUND_S,
               "f1 no longer impaired")
    wait_until(lambda: fleet.targets_view()["steady-web"].regions["af-south"] == "up",
               5 * INTERVAL_S, "af-south up again")
    assert record_ids(fleet) == before


def test_a_region_losing_its_network_is_isolated_and_opens_no_outage(quiet, latency):
    """Both ap-south agents (distinct networks) lose every target at once (issue 12)."""
    fleet = quiet
    before = record_ids(fleet)
    injected = time.time()
    fleet.faults.fail(EVERY_PROBE, FaultMode.RESET, regions=["ap-south"])

    def isolation():
        return next((o for o in fleet.outages(active=True)
                     if o.kind == "region_isolated" and o.region == "ap-south"), None)
    leaked: list[str] = []

    def isolated_and_nothing_leaked():
        leaked.extend(f"{o.kind} {o.probe or o.service} {o.regions_ever}"
                      for o in fleet.outages() if o.id not in before
                      and o.kind in ("probe", "service"))
        return isolation() is not None or bool(leaked)
    wait_until(isolated_and_nothing_leaked, IMPAIRED_BOUND_S, "ap-south isolated", poll_s=0.02)
    assert leaked == [], "a region's network loss opened outage records"
    seconds = time.time() - injected
    latency.add(Latency("region loses its network (2 agents)", "impaired", seconds, seconds,
                        INTERVAL_S))
    isolated = isolation()
    assert isolated is not None
    hold_until = time.time() + 3 * INTERVAL_S
    while time.time() < hold_until:
        assert all(t.state == "up" for t in fleet.targets_view().values())
        time.sleep(0.2)

    fleet.faults.clear(EVERY_PROBE)
    wait_until(lambda: isolation() is None, IMPAIRED_BOUND_S, "ap-south no longer isolated")
    new = [o for o in fleet.outages() if o.id not in before]
    assert [(o.kind, o.region) for o in new] == [("region_isolated", "ap-south")]


def test_killed_agent_goes_stale_without_an_outage(quiet):
    fleet = quiet
    before = record_ids(fleet)
    killed_at = time.monotonic()
    fleet.kill_agent("u1b")
    wait_until(lambda: not fleet.agents()["u1b"].connected, 5 * INTERVAL_S,
               "u1b disconnected")
    wait_until(lambda: fleet.agents()["u1b"].stale, 10 * INTERVAL_S, "u1b stale")
    stale_after = time.monotonic() - killed_at
    # Stale means no results for 3 intervals: never much sooner than that.
    assert stale_after >= 2 * INTERVAL_S
    assert fleet.metric("probenet_agent_up", agent="u1b", region="us-east") == 0
    view = fleet.targets_view()
    assert all(t.regions["us-east"] == "up" for t in view.values())  # u1a still reports
    assert all(t.state == "up" for t in view.values())
    assert record_ids(fleet) == before

    fleet.start_agent("u1b")
    wait_until(lambda: (a := fleet.agents()["u1b"]).connected and not a.stale,
               10 * INTERVAL_S, "u1b back")
    assert record_ids(fleet) == before


def test_collector_killed_during_an_open_outage_keeps_its_id(quiet, latency):
    fleet = quiet
    injected = time.time()
    fleet.faults.fail("restart-tcp", FaultMode.RESET)
    outage, seconds = wait_outage(fleet, "restart-tcp", injected, scope="global")
    latency.add(Latency("global outage (tcp reset), before a crash", "global", seconds,
                        outage.detection_seconds, INTERVAL_S))

    fleet.kill_collector()
    fleet.start_collector()
    # Restored from the journal before any agent is back: same id, still open.
    restored = fleet.outage_of("restart-tcp")
    assert restored is not None
    assert restored.id == outage.id
    assert restored.started_at == outage.started_at
    wait_until(lambda: all(a.connected for a in fleet.agents().values())
               and len(fleet.agents()) == len(AGENTS), 30, "every agent reconnected")
    # The fault persists: the same record continues, nothing is duplicated.
    wait_until(lambda: fleet.targets_view()["restart-tcp"].state == "global_outage",
               DETECT_BOUND_S + 5, "restart-tcp global again after the restart")
    current = fleet.outage_of("restart-tcp")
    assert current is not None
    assert current.id == outage.id
    assert [o.id for o in fleet.outages() if o.probe == "restart-tcp"] == [outage.id]

    fleet.faults.clear("restart-tcp")
    ended = wait_resolved(fleet, outage.id)
    assert ended.started_at == outage.started_at
    assert [o.id for o in fleet.outages() if o.probe == "restart-tcp"] == [outage.id]
    assert len(fleet.outages(active=True)) == 0


def test_recovery_needs_two_good_results(quiet, latency):
    fleet = quiet
    injected = time.time()
    fleet.faults.fail("hyst-web", FaultMode.ERROR, regions=["ap-south"])
    outage, seconds = wait_outage(fleet, "hyst-web", injected)
    latency.add(Latency("regional outage (http 503), then recovery", "regional", seconds,
                        outage.detection_seconds, INTERVAL_S))
    assert outage.regions == ["ap-south"]
    assert fleet.targets is not None

    # One good result from the region, then failures again: not a recovery.
    allowed_at = time.time()
    fleet.faults.let_through("hyst-web", 1)
    ap_south = {a.source_address for a in AGENTS if a.region == "ap-south"}

    def good_results_since(since: float) -> int:
        assert fleet.targets is not None
        return sum(1 for r in fleet.targets.served("hyst-web", since)
                   if r.fault is None and r.peer in ap_south)
    wait_until(lambda: good_results_since(allowed_at) >= 1, 5 * INTERVAL_S,
               "one good result served to ap-south")
    hold_until = time.time() + 3 * INTERVAL_S
    while time.time() < hold_until:
        current = fleet.outage_of("hyst-web")
        assert current is not None, "one good result closed the outage"
        assert current.id == outage.id
        assert fleet.targets_view()["hyst-web"].regions["ap-south"] == "down"
        time.sleep(0.1)
    assert good_results_since(allowed_at) == 1

    cleared_at = time.time()
    fleet.faults.clear("hyst-web")
    ended = wait_resolved(fleet, outage.id)
    # The collector needed 2 good results from the region; by the time we see it resolved,
    # the targets have served at least that many.
    assert good_results_since(cleared_at) >= 2
    assert ended.ended_at is not None
    assert ended.ended_at.timestamp() >= cleared_at


def test_random_loss_at_every_agent_opens_no_outage(fleet):
    """Runs last: by now the noise probes have seen 5% loss at every agent for 2+ minutes."""
    remaining = NOISE_SECONDS - (time.time() - fleet.started_at)
    if remaining > 0:
        time.sleep(remaining)
    assert time.time() - fleet.started_at >= 120
    noisy = set(NOISE_PROBES) | {"steady-web", "steady-dns"}
    opened = [o for o in fleet.outages()
              if o.probe in noisy or (o.kind == "service" and set(o.probes) & noisy)]
    assert opened == []
    assert not [o for o in fleet.outages() if o.kind == "monitoring_degraded"]
    assert fleet.targets is not None
    for probe in NOISE_PROBES:
        served = fleet.targets.served(probe)
        faulted = sum(1 for r in served if r.fault is not None)
        assert len(served) >= 100 * len(AGENTS) // 2, probe
        ratio = faulted / len(served)
        # Independent 5% loss (first failures and their re-probes alike).
        assert 0.02 <= ratio <= 0.09, (probe, ratio, len(served))
    assert all(t.state == "up" for t in fleet.targets_view().values())
