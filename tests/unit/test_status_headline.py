"""The status page's headline: one plain sentence per situation, from hand-made snapshots and
from a real classifier driven through DESIGN.md's situations."""

from __future__ import annotations

import datetime as dt

import pytest

from probenet.collector.model import (
    AgentView,
    OutageKind,
    OutageRecord,
    RegionVerdict,
    Scope,
    TargetState,
    TargetView,
)
from probenet.collector.status.headline import (
    Headline,
    Level,
    MaintenanceNote,
    clock_time,
    headline,
    region_label,
)
from support.classifier_fleet import CONNECT, Down, Fleet

NOW = dt.datetime(2026, 11, 24, 16, 0, tzinfo=dt.UTC).timestamp()
AT_1539 = dt.datetime(2026, 11, 24, 15, 39, 12, tzinfo=dt.UTC).timestamp()
REGIONS = ("ap-south", "eu-central", "us-east")
UP, DOWN, UNKNOWN = RegionVerdict.UP, RegionVerdict.DOWN, RegionVerdict.UNKNOWN


def target(probe: str, state: str = "up", *, service: str | None = None,
           regions: dict[str, RegionVerdict] | None = None) -> TargetView:
    verdicts = regions if regions is not None else dict.fromkeys(REGIONS, UP)
    return TargetView(probe, f"https://{probe}.example/", service, "http", TargetState(state),
                      verdicts)


def agent(agent_id: str, region: str, *, impaired: bool = False,
          stale: bool = False) -> AgentView:
    return AgentView(agent_id, region, connected=not stale, impaired=impaired, stale=stale,
                     last_seen=NOW)


AGENTS = [agent(f"{r}-{n}", r) for r in REGIONS for n in (1, 2)]


def outage(probe: str | None, *, service: str | None = None, scope: Scope = Scope.GLOBAL,
           regions: tuple[str, ...] = REGIONS, phase: str | None = "connect",
           reason: str | None = "connect_refused", step: str | None = None,
           started: float = AT_1539, kind: OutageKind = OutageKind.PROBE,
           probes: tuple[str, ...] = (), flapping: bool = False) -> OutageRecord:
    return OutageRecord(id=f"id-{probe or service}", kind=kind, probe=probe, service=service,
                        region=None, probes=probes, scope=scope, peak_scope=scope,
                        regions=regions, regions_ever=regions, phase=phase, reason=reason,
                        started_at=started, detected_at=started + 2.5, flapping=flapping,
                        step=step)


def say(*, targets=(), outages=(), agents=AGENTS, isolated=(), degraded=False,
        maintenance=(), names=None) -> Headline:
    return headline(targets=list(targets), outages=list(outages), agents=list(agents),
                    isolated_regions=set(isolated), monitoring_degraded=degraded,
                    maintenance=list(maintenance), region_names=names or {}, now=NOW)


def test_everything_up():
    top = say(targets=[target("web"), target("api", service="shop")])
    assert top == Headline("Everything is up.", Level.UP)


def test_no_results_yet():
    assert say() == Headline("No results yet: waiting for our probes to report.",
                             Level.UNKNOWN)


def test_the_seeds_global_outage_of_a_flow_failing_at_login():
    down = dict.fromkeys(REGIONS, DOWN)
    top = say(targets=[target("social-login", "global_outage", service="social",
                              regions=down)],
              outages=[outage("social-login", service="social", step="login",
                              phase="validation", reason="status_200")])
    assert top.text == ("social: down in every region since 15:39 UTC, failing at login; "
                        "our probes are healthy.")
    assert top.level is Level.GLOBAL


def test_a_global_outage_not_yet_in_every_region_counts_them():
    verdicts = {"ap-south": DOWN, "eu-central": DOWN, "us-east": UP, "sa-east": DOWN,
                "af-south": DOWN}
    top = say(targets=[target("web", "global_outage", regions=verdicts)],
              outages=[outage("web", regions=("af-south", "ap-south", "eu-central",
                                              "sa-east"))])
    assert top.text.startswith("web: down in 4 of 5 regions since 15:39 UTC, failing at "
                               "connect (connect_refused)")


def test_a_regional_outage_names_the_regions_with_their_names():
    verdicts = {"ap-south": UP, "eu-central": DOWN, "us-east": UP}
    top = say(targets=[target("web", "regional_outage", regions=verdicts)],
              outages=[outage("web", scope=Scope.REGIONAL, regions=("eu-central",))],
              names={"eu-central": "Frankfurt"})
    assert top == Headline("web: down in Frankfurt (eu-central) since 15:39 UTC, failing at "
                           "connect (connect_refused), up elsewhere; our probes are healthy.",
                           Level.REGIONAL)


def test_a_service_record_speaks_for_its_probes():
    down = dict.fromkeys(REGIONS, DOWN)
    records = [outage("social-web", service="social", started=AT_1539 + 5),
               outage("social-photos", service="social", started=AT_1539),
               outage(None, service="social", kind=OutageKind.SERVICE,
                      probes=("social-photos", "social-web"), phase="tls",
                      reason="handshake_failed", started=AT_1539 + 1)]
    top = say(targets=[target("social-web", "global_outage", service="social", regions=down),
                       target("social-photos", "global_outage", service="social",
                              regions=down)],
              outages=records)
    assert top.text == ("social: down in every region since 15:39 UTC, failing at tls "
                        "(handshake_failed); our probes are healthy.")


def test_global_outages_come_before_regional_ones_and_only_the_last_names_the_fleet():
    top = say(targets=[target("a", "regional_outage"), target("b", "global_outage")],
              outages=[outage("a", scope=Scope.REGIONAL, regions=("us-east",),
                              started=AT_1539 - 60),
                       outage("b", phase=None, reason=None)])
    assert top.text == ("b: down in every region since 15:39 UTC. a: down in us-east since "
                        "15:38 UTC, failing at connect (connect_refused), up elsewhere; "
                        "our probes are healthy.")
    assert top.level is Level.GLOBAL


def test_an_isolated_region_is_not_an_outage_of_your_services():
    top = say(targets=[target("web", regions={"ap-south": UNKNOWN, "eu-central": UP,
                                              "us-east": UP})],
              agents=[*AGENTS[2:], agent("ap-south-1", "ap-south", impaired=True),
                      agent("ap-south-2", "ap-south", impaired=True)],
              isolated=["ap-south"])
    assert top == Headline("ap-south: our probes there cannot reach anything; not an outage "
                           "of your services. Everything else is up.", Level.ISOLATED)


def test_an_outage_while_some_of_our_probes_are_impaired_says_so():
    top = say(targets=[target("web", "global_outage")], outages=[outage("web")],
              agents=[*AGENTS[1:], agent("ap-south-1", "ap-south", impaired=True)])
    assert top.text.endswith("; 1 of our 6 probes is impaired or silent.")
    two = say(targets=[target("web", "global_outage")], outages=[outage("web")],
              agents=[*AGENTS[2:], agent("ap-south-1", "ap-south", impaired=True),
                      agent("ap-south-2", "ap-south", stale=True)])
    assert two.text.endswith("; 2 of our 6 probes are impaired or silent.")


def test_monitoring_degraded_comes_first_and_names_no_fleet_clause():
    top = say(targets=[target("web", "global_outage")], outages=[outage("web")],
              agents=[agent(f"x{n}", "eu-central", stale=True) for n in range(4)],
              degraded=True)
    assert top.level is Level.DEGRADED
    assert top.text.startswith("Our monitoring is degraded: most of our probes are silent")
    assert "our probes are healthy" not in top.text
    assert "web: down in every region" in top.text
    assert "Everything" not in top.text


def test_maintenance_says_until_when_and_why():
    note = MaintenanceNote("social", AT_1539 + 3600, "db upgrade")
    top = say(targets=[target("social-web", service="social"), target("web")],
              maintenance=[note])
    assert top == Headline("social: in planned maintenance until 16:39 UTC (db upgrade). "
                           "Everything else is up.", Level.MAINTENANCE)


def test_maintenance_without_an_end_or_reason():
    top = say(targets=[target("web")], maintenance=[MaintenanceNote("web", None, None)])
    assert top.text == "web: in planned maintenance. Everything else is up."


@pytest.mark.parametrize(("unknown", "expected"), [
    (["solo"], "solo: unknown, fewer than 2 regions report it."),
    (["a", "b"], "a and b: unknown, fewer than 2 regions report them."),
    (["a", "b", "c"], "a, b and c: unknown, fewer than 2 regions report them."),
    (["a", "b", "c", "d"], "4 probes are unknown: fewer than 2 regions report them."),
])
def test_unknown_probes_are_named_then_counted(unknown, expected):
    targets = [target(p, "unknown", regions={"eu-central": UP}) for p in unknown]
    top = say(targets=[*targets, target("web")])
    assert top == Headline(f"{expected} Everything else is up.", Level.UNKNOWN)


def test_only_unknown_probes_claim_nothing_is_up():
    top = say(targets=[target("solo", "unknown", regions={"eu-central": UP})])
    assert top == Headline("solo: unknown, fewer than 2 regions report it.", Level.UNKNOWN)


def test_a_probe_in_outage_is_not_also_called_unknown():
    top = say(targets=[target("web", "unknown", regions={"eu-central": DOWN})],
              outages=[outage("web", scope=Scope.REGIONAL, regions=("eu-central",))])
    assert "unknown" not in top.text


def test_a_flapping_probe_says_so():
    top = say(targets=[target("web", "regional_outage")],
              outages=[outage("web", scope=Scope.REGIONAL, regions=("us-east",),
                              flapping=True)])
    assert ", flapping;" in top.text


def test_the_worst_level_wins():
    top = say(targets=[target("web", "regional_outage"), target("u", "unknown")],
              outages=[outage("web", scope=Scope.REGIONAL, regions=("us-east",))],
              isolated=["ap-south"], maintenance=[MaintenanceNote("x", None, None)])
    assert top.level is Level.REGIONAL
    assert top.text.index("web: down") < top.text.index("ap-south:") \
        < top.text.index("x: in planned") < top.text.index("u: unknown")


def test_times_on_another_day_name_the_day():
    assert clock_time(AT_1539, NOW) == "15:39 UTC"
    assert clock_time(AT_1539 - 86_400, NOW) == "Nov 23 15:39 UTC"


def test_region_labels():
    assert region_label("eu-central", {"eu-central": "Frankfurt"}) == "Frankfurt (eu-central)"
    assert region_label("us-east", {"eu-central": "Frankfurt"}) == "us-east"


# -- from a real classifier ----------------------------------------------------------------


def from_fleet(fleet: Fleet) -> Headline:
    clf = fleet.clf
    return headline(targets=clf.targets(), outages=clf.open_outages(), agents=clf.agents(),
                    isolated_regions=clf.isolated_regions(),
                    monitoring_degraded=clf.monitoring_degraded, maintenance=[],
                    region_names={"eu": "Frankfurt"}, now=fleet.now)


def test_classifier_states_read_as_sentences():
    fleet = Fleet({"eu": 2, "us": 2, "ap": 2}, probes=("web", "api", "dns", "cdn"),
                  networks={f"{r}-{n}": f"as{r}{n}" for r in ("eu", "us", "ap")
                            for n in (1, 2)},
                  services={"web": "shop", "api": "shop"})
    fleet.rounds(3)
    assert from_fleet(fleet) == Headline("Everything is up.", Level.UP)

    fleet.rounds(3, Down(probes=("dns",), regions=("eu",), phase=CONNECT))
    regional = from_fleet(fleet)
    assert regional.level is Level.REGIONAL
    assert regional.text.startswith("dns: down in Frankfurt (eu) since ")
    assert regional.text.endswith("up elsewhere; our probes are healthy.")

    fleet.rounds(4)
    fleet.rounds(3, Down(probes=("web", "api")))
    both = from_fleet(fleet)
    assert both.level is Level.GLOBAL
    assert both.text.startswith("shop: down in every region since ")

    fleet.rounds(4)
    fleet.rounds(4, Down(regions=("ap",)))
    isolated = from_fleet(fleet)
    assert fleet.clf.isolated_regions() == {"ap"}
    assert isolated == Headline("ap: our probes there cannot reach anything; not an outage of "
                                "your services. Everything else is up.", Level.ISOLATED)
