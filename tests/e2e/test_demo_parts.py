"""The demo's parts on their own: fault-injecting targets over real sockets, the schedule,
the API parsing, the live table and the event log."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from typing import TYPE_CHECKING

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import pytest
import yaml
from rich.console import Console

from probenet.agent.config import load_config as load_agent
from probenet.collector.config import load_config as load_collector
from probenet.demo.errors import DemoError
from probenet.demo.report import DemoSummary, FleetObserver
from probenet.demo.scenario import (
    AGENTS,
    BANK_PROBES,
    BROKEN_AGENT,
    PROBES,
    REGIONAL_OUTAGE_REGION,
    SOCIAL_LOGIN,
    SOCIAL_PROBES,
    demo_phases,
    demo_schedule,
)
from probenet.demo.schedule import PHASE_INTERVALS, Fault, Phase, Schedule, ScheduledFaults
from probenet.demo.table import DemoStatus, render_dashboard
from probenet.lab.errors import ApiError, LabError, LifecycleError, TargetsError
from probenet.lab.fleet import AgentSeat, FleetPlan, ProbePlan, write_configs
from probenet.lab.snapshot import (
    AgentEntry,
    FleetSnapshot,
    OutageEntry,
    TargetEntry,
    parse_entries,
)
from probenet.lab.targets import TCP_BANNER, FaultMode, FaultyTargets

if TYPE_CHECKING:
    from pathlib import Path

HEALTHY = "127.0.9.1"
ERROR = "127.0.9.2"
RESET = "127.0.9.3"
STALL = "127.0.9.4"
BY_PEER = {ERROR: FaultMode.ERROR, RESET: FaultMode.RESET, STALL: FaultMode.STALL}


def by_peer(probe: str, peer: str) -> FaultMode | None:
    return BY_PEER.get(peer) if probe != "always-fine" else None


async def http_get(url: str, source: str, timeout_s: float = 2.0) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as client, \
            client.get(url) as response:
        await response.read()
        return response.status


async def tcp_banner(address: str, source: str, timeout_s: float = 2.0) -> bytes:
    host, port = address.rsplit(":", 1)
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
        try:
            return await reader.readline()
        finally:
            writer.close()


async def dns_query(targets: FaultyTargets, name: str, source: str,
                    timeout_s: float = 2.0) -> dns.message.Message:
    host, port = targets.dns_server().rsplit(":", 1)
    query = dns.message.make_query(name, "A")
    return await dns.asyncquery.udp(query, host, port=int(port), source=source,
                                    timeout=timeout_s)


@pytest.fixture
async def targets():
    async with FaultyTargets(by_peer, tcp_probes=["api", "always-fine"], max_stall_s=10) as t:
        yield t


# -- targets -------------------------------------------------------------------------------


async def test_http_target_fails_by_source_address(targets):
    assert await http_get(targets.http_url("web"), HEALTHY) == 200
    assert await http_get(targets.http_url("web"), ERROR) == 503
    with pytest.raises(aiohttp.ClientError):
        await http_get(targets.http_url("web"), RESET)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await http_get(targets.http_url("web"), STALL, timeout_s=0.5)
    assert time.monotonic() - started >= 0.4
    assert await http_get(targets.http_url("always-fine"), ERROR) == 200
    # aiohttp's client retries a GET once on a reset connection: compare distinct requests.
    seen = list(dict.fromkeys((r.peer, r.fault) for r in targets.served("web")))
    assert seen == [(HEALTHY, None), (ERROR, FaultMode.ERROR), (RESET, FaultMode.RESET),
                    (STALL, FaultMode.STALL)]
    assert {r.protocol for r in targets.served()} == {"http"}


async def walk_login_journey(targets: FaultyTargets, probe: str, source: str,
                             password: str) -> tuple[int, int, str]:
    """Home, login, feed like a browser: (home status, login status, feed text or '')."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    base = targets.flow_url(probe)
    # unsafe: keep cookies of an IP-address host (aiohttp's jar drops them by default).
    async with aiohttp.ClientSession(connector=connector,
                                     cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     timeout=aiohttp.ClientTimeout(total=2)) as client:
        async with client.get(base) as home:
            page = await home.text()
        csrf = page.split('name="csrf" value="', 1)[-1].split('"', 1)[0]
        form = {"user": targets.journey.user, "password": password, "csrf": csrf}
        async with client.post(base + "login", data=form, allow_redirects=False) as login:
            await login.read()
        feed_text = ""
        if login.status == 303:
            async with client.get(base + "feed", allow_redirects=False) as feed:
                feed_text = await feed.text() if feed.status == 200 else ""
        return home.status, login.status, feed_text


async def test_login_journey_logs_in_and_deny_login_refuses_only_the_login():
    deny = "127.0.0.9"

    def policy(probe: str, peer: str) -> FaultMode | None:
        return FaultMode.DENY_LOGIN if peer == deny else BY_PEER.get(peer)

    async with FaultyTargets(policy, login_password="pw-123") as targets:
        assert targets.login_password == "pw-123"
        home, login, feed = await walk_login_journey(targets, "login", HEALTHY, "pw-123")
        assert (home, login) == (200, 303)
        assert "Welcome probe-bot" in feed
        # A wrong password: 401, no session.
        assert (await walk_login_journey(targets, "login", HEALTHY, "nope"))[1:] == (401, "")
        # deny_login: the home page loads, the login answers 200 without a session, and
        # the plain http target of the same probe stays healthy.
        assert (await walk_login_journey(targets, "login", deny, "pw-123")) == (200, 200, "")
        assert await http_get(targets.http_url("login"), deny) == 200
        # The other faults hit every page of the journey.
        assert (await walk_login_journey(targets, "login-x", ERROR, "pw-123"))[0] == 503


async def test_tcp_target_sends_banner_or_resets_or_stalls(targets):
    address = targets.tcp_address("api")
    assert await tcp_banner(address, HEALTHY) == TCP_BANNER
    for source in (ERROR, RESET):
        try:
            line = await tcp_banner(address, source)
        except ConnectionResetError:
            line = b""
        assert line == b"", source
    with pytest.raises(TimeoutError):
        await tcp_banner(address, STALL, timeout_s=0.5)
    assert await tcp_banner(targets.tcp_address("always-fine"), STALL) == TCP_BANNER
    assert targets.counts["api", None] == 1
    assert targets.counts["api", FaultMode.STALL] == 1
    with pytest.raises(TargetsError, match="no TCP target for probe 'web'"):
        targets.tcp_address("web")


async def test_dns_target_answers_by_source_address(targets):
    name = targets.dns_name("news")
    assert name == "news.probenet.test"
    healthy = await dns_query(targets, name, HEALTHY)
    assert healthy.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rr in healthy.answer[0]] == ["127.0.0.1"]
    assert (await dns_query(targets, name, ERROR)).rcode() == dns.rcode.SERVFAIL
    assert (await dns_query(targets, name, RESET)).rcode() == dns.rcode.REFUSED
    with pytest.raises(dns.exception.Timeout):
        await dns_query(targets, name, STALL, timeout_s=0.5)
    outside = await dns_query(targets, "example.com", HEALTHY)
    assert outside.rcode() == dns.rcode.NXDOMAIN


async def test_dns_target_survives_garbage(targets):
    host, port = targets.dns_server().rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for garbage in (b"", b"\x00", b"\xff" * 40, b"x" * 5000):
            sock.sendto(garbage, (host, int(port)))
    # A reply to a query is the proof the responder is still there after the garbage.
    reply = await dns_query(targets, targets.dns_name("news"), HEALTHY)
    assert reply.rcode() == dns.rcode.NOERROR
    assert targets.malformed_dns == 4


async def test_targets_policy_errors_do_not_break_answers():
    def broken(probe: str, peer: str) -> FaultMode | None:
        raise RuntimeError("bug in a policy")

    async with FaultyTargets(broken) as targets:
        assert await http_get(targets.http_url("web"), HEALTHY) == 200


async def test_targets_enter_twice_is_an_error_and_exit_is_idempotent():
    targets = FaultyTargets(by_peer)
    async with targets:
        with pytest.raises(LifecycleError, match="FaultyTargets entered twice"):
            await targets.__aenter__()
    await targets.__aexit__(None, None, None)


async def test_stalled_requests_end_when_targets_close():
    targets = FaultyTargets(by_peer, tcp_probes=["api"], max_stall_s=60)
    await targets.__aenter__()
    pending = [asyncio.ensure_future(http_get(targets.http_url("web"), STALL, timeout_s=30)),
               asyncio.ensure_future(tcp_banner(targets.tcp_address("api"), STALL, 30))]
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await targets.__aexit__(None, None, None)
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert time.monotonic() - started < 10
    assert all(isinstance(r, Exception | bytes) for r in results)


# -- schedule ------------------------------------------------------------------------------


def seat(agent_id: str) -> AgentSeat:
    return next(a for a in AGENTS if a.id == agent_id)


def test_schedule_positions_loop():
    phases = [Phase("a", "A"), Phase("b", "B"), Phase("c", "C")]
    schedule = Schedule(phases, 10.0)
    assert schedule.cycle_seconds == 30.0
    assert schedule.at(0).phase.name == "a"
    assert schedule.at(9.99).phase.name == "a"
    position = schedule.at(12.5)
    assert (position.cycle, position.index, position.phase.name) == (0, 1, "b")
    assert position.remaining_s == pytest.approx(7.5)
    assert schedule.at(31).phase.name == "a"
    assert schedule.at(31).cycle == 1
    with pytest.raises(DemoError):
        Schedule([], 1.0)
    with pytest.raises(DemoError):
        Schedule(phases, 0)


def test_phase_length_follows_the_interval():
    assert demo_schedule(0.5).phase_seconds == pytest.approx(PHASE_INTERVALS * 0.5)
    assert demo_schedule(2.0).phase_seconds == pytest.approx(PHASE_INTERVALS * 2.0)
    assert PHASE_INTERVALS >= 8


def test_scheduled_faults_follow_the_clock_and_the_peer():
    now = [100.0]
    fault = Fault(frozenset({"web"}), FaultMode.ERROR, regions=frozenset({"us-east"}))
    schedule = Schedule([Phase("calm", "calm"), Phase("storm", "storm", (fault,))], 5.0)
    policy = ScheduledFaults(schedule, {a.source_address: a for a in AGENTS},
                             clock=lambda: now[0])
    iad = seat("iad-1").source_address
    assert policy("web", iad) is None  # not started
    policy.start()
    assert policy("web", iad) is None  # calm
    now[0] += 6
    assert policy("web", iad) is FaultMode.ERROR
    assert policy("web", seat("fra-1").source_address) is None  # other region
    assert policy("mail", iad) is None  # other probe
    assert policy("web", "127.0.0.1") is None  # not an agent of the fleet
    now[0] += 5
    assert policy("web", iad) is None  # calm again, next cycle


def test_demo_story_faults():
    phases = {p.name: p for p in demo_phases()}
    assert list(phases) == ["healthy", "global_outage", "recovery", "login_outage",
                            "regional_outage", "agent_impaired"]
    regions = {a.region for a in AGENTS}
    assert len(regions) >= 4
    assert any(sum(a.region == r for a in AGENTS) == 2 for r in regions)
    probe_names = [p.name for p in PROBES]
    for agent in AGENTS:
        for probe in probe_names:
            assert phases["healthy"].fault_for(probe, agent) is None
            assert phases["recovery"].fault_for(probe, agent) is None
            in_social = probe in SOCIAL_PROBES or probe == SOCIAL_LOGIN
            assert (phases["global_outage"].fault_for(probe, agent) is not None) == in_social
            login = phases["login_outage"].fault_for(probe, agent)
            assert login is (FaultMode.DENY_LOGIN if probe == SOCIAL_LOGIN else None)
            regional = probe in BANK_PROBES and agent.region == REGIONAL_OUTAGE_REGION
            assert (phases["regional_outage"].fault_for(probe, agent) is not None) == regional
            broken = agent.id == BROKEN_AGENT
            assert (phases["agent_impaired"].fault_for(probe, agent) is not None) == broken
    # The impaired rule needs half of the broken agent's probes (and at least 3) down; a
    # healthy agent watching the global outage must stay below half.
    assert len(PROBES) >= 6
    assert len(SOCIAL_PROBES) + 1 < len(PROBES) / 2
    assert {p.kind for p in PROBES} == {"http", "tcp", "dns", "flow"}
    # The regional outage's region has two agents, so it is a majority, not a lone agent.
    assert sum(a.region == REGIONAL_OUTAGE_REGION for a in AGENTS) == 2
    # The broken agent's region has another agent to fall back to.
    broken_region = seat(BROKEN_AGENT).region
    assert sum(a.region == broken_region for a in AGENTS) == 2
    assert len({a.source_address for a in AGENTS}) == len(AGENTS)


# -- config generation ---------------------------------------------------------------------


async def test_generated_configs_pass_the_real_loaders(tmp_path: Path):
    plan = FleetPlan(agents=AGENTS, probes=PROBES, interval_s=0.5, http_port=19464,
                     grpc_port=17070, classification={"global_ratio": 0.8})
    async with FaultyTargets(by_peer, tcp_probes=plan.tcp_probes) as targets:
        paths = write_configs(plan, targets, tmp_path)
    collector = load_collector(paths["collector"])
    assert len(collector.agents) == len(AGENTS)
    for agent in AGENTS:
        config = load_agent(paths[agent.id])
        assert config.agent.source_address == agent.source_address
        assert config.agent.region == agent.region
        assert [p.name for p in config.probes] == [p.name for p in PROBES]
    raw = yaml.safe_load(paths["fra-1"].read_text())
    assert raw["defaults"] == {"interval": "500ms", "timeout": "400ms"}
    token = (tmp_path / "tokens" / "fra-1").read_text().strip()
    assert len(token) >= 20
    assert (tmp_path / "tokens" / "fra-1").stat().st_mode & 0o077 == 0


def test_fleet_plan_refuses_bad_plans():
    agents = (AgentSeat("a", "r", "127.0.0.2", "n"),)
    probes = (ProbePlan("p", "http"),)
    with pytest.raises(LabError, match="duplicate agent"):
        FleetPlan(agents=agents * 2, probes=probes, interval_s=1, http_port=1, grpc_port=2)
    with pytest.raises(LabError, match="duplicate probe"):
        FleetPlan(agents=agents, probes=probes * 2, interval_s=1, http_port=1, grpc_port=2)
    with pytest.raises(LabError, match="timeout must be shorter"):
        FleetPlan(agents=agents, probes=probes, interval_s=1, http_port=1, grpc_port=2,
                  timeout_s=1)


# -- API parsing, table, events ------------------------------------------------------------

T0 = dt.datetime(2026, 11, 24, 15, 39, tzinfo=dt.UTC)


def rfc(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def api_targets(state: str, down: list[str]) -> list[dict]:
    regions = ["eu-central", "us-east", "ap-south", "sa-east"]
    return [
        {"probe": "social-web", "target": "http://127.0.0.1:1/p/social-web",
         "service": "social", "kind": "http", "state": state,
         "regions": {r: ("down" if r in down else "up") for r in regions},
         "flapping": False, "added_later": 1},
        {"probe": "cdn-dns", "target": "cdn-dns.probenet.test", "service": "cdn",
         "kind": "dns", "state": "unknown", "regions": dict.fromkeys(regions, "unknown")},
    ]


def api_outage(scope: str, regions: list[str], ended: float | None = None) -> dict:
    return {"id": "0123456789abcdef", "kind": "probe", "probe": "social-web",
            "service": "social", "region": None, "probes": [], "scope": scope,
            "peak_scope": "global", "regions": regions, "regions_ever": regions,
            "phase": "validation", "reason": "http_status", "started_at": rfc(0),
            "detected_at": rfc(1.25), "ended_at": None if ended is None else rfc(ended)}


def api_agents(impaired: str | None = None) -> list[dict]:
    return [{"id": a.id, "region": a.region, "connected": True, "impaired": a.id == impaired,
             "stale": False, "last_seen": rfc(2), "labels": {}} for a in AGENTS]


def snapshot(state: str, down: list[str], outages: list[dict],
             impaired: str | None = None) -> FleetSnapshot:
    return FleetSnapshot(
        parse_entries(TargetEntry, api_targets(state, down), "/api/v1/targets"),
        parse_entries(OutageEntry, outages, "/api/v1/outages"),
        parse_entries(AgentEntry, api_agents(impaired), "/api/v1/agents"),
        taken_at=T0.timestamp() + 3)


def test_parse_entries_names_the_bad_field():
    bad = api_targets("up", [])
    del bad[1]["state"]
    with pytest.raises(ApiError, match=r"/api/v1/targets: .*\[1\]\.state"):
        parse_entries(TargetEntry, bad, "/api/v1/targets")
    with pytest.raises(ApiError, match="top level"):
        parse_entries(AgentEntry, {"not": "a list"}, "/api/v1/agents")
    outage = parse_entries(OutageEntry, [api_outage("global", ["us-east"])], "/x")[0]
    assert outage.detection_seconds == pytest.approx(1.25)
    assert outage.active


def test_live_table_shows_states_regions_outages_and_agents():
    down = ["eu-central", "us-east", "ap-south", "sa-east"]
    snap = snapshot("global_outage", down, [api_outage("global", down)], impaired="fra-2")
    schedule = demo_schedule(0.5)
    status = DemoStatus("http://127.0.0.1:9464", schedule.at(6.0), len(schedule.phases))
    console = Console(record=True, width=200, color_system=None)
    console.print(render_dashboard(snap, status, now=T0.timestamp() + 65))
    text = console.export_text()
    assert "global_outage" in text
    for region in down:
        assert region in text
    assert "✖ down" in text
    assert "? unknown" in text
    assert "impaired" in text
    assert "fra-2" in text
    assert f"phase 2/{len(schedule.phases)}" in text
    assert "http://127.0.0.1:9464/metrics" in text
    assert "01234567" in text  # short outage id
    assert "1m05s" in text  # open for 65 s
    assert "1.2s" in text  # detected in 1.25 s
    assert "validation" in text


def test_live_table_before_the_first_answer():
    console = Console(record=True, width=120, color_system=None)
    console.print(render_dashboard(None, DemoStatus("http://x", error="/readyz: refused"),
                                   now=0))
    text = console.export_text()
    assert "waiting for the fleet" in text
    assert "/readyz: refused" in text


def test_observer_reports_opened_scope_resolved_and_impaired():
    observer = FleetObserver()
    assert [e.event for e in observer.update(snapshot("up", [], []))] == []
    events = observer.update(snapshot("regional_outage", ["us-east"],
                                      [api_outage("regional", ["us-east"])]))
    assert [e.event for e in events] == ["outage_opened", "target_state"]
    assert "social-web" in events[0].message
    events = observer.update(snapshot("global_outage", ["us-east", "eu-central"],
                                      [api_outage("global", ["us-east", "eu-central"])]))
    assert [e.event for e in events] == ["outage_scope_changed", "target_state"]
    events = observer.update(snapshot("up", [], [], impaired="fra-2"))
    assert [e.event for e in events] == ["outage_resolved", "agent_health", "target_state"]
    assert events[1].fields == {"agent": "fra-2", "region": "eu-central",
                                "health": "impaired"}
    observer.update(snapshot("up", [], []))
    assert observer.impaired_agents == {"fra-2": "eu-central"}


def test_summary_lists_outages_and_impaired_agents():
    outage = parse_entries(OutageEntry, [api_outage("regional", ["ap-south"], ended=9)], "/x")
    summary = DemoSummary(outage, {"fra-2": "eu-central"}, ["healthy", "global_outage"], 42)
    text = "\n".join(summary.lines())
    assert "social-web" in text
    assert "peak global" in text
    assert "fra-2 (eu-central)" in text
    assert "lasted 9.0s" in text
    data = summary.to_json()
    assert data["impaired_agents"] == [{"id": "fra-2", "region": "eu-central"}]
    assert data["outages"][0]["detection_seconds"] == 1.25
