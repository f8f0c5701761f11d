"""The status page's model and HTML: public filtering on the server, maintenance, the map's
states per selection, and markup with no inline script or style and every name escaped."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from probenet.collector.config import parse_config
from probenet.collector.model import (
    AgentView,
    OutageKind,
    OutageRecord,
    RegionVerdict,
    Scope,
    TargetState,
    TargetView,
)
from probenet.collector.status.render import (
    agents_page_html,
    fragments,
    outage_page_html,
    page_html,
    uptime_bars,
)
from probenet.collector.status.view import StatusInputs, StatusSettings, build_page, state_of
from probenet.collector.status.worldmap import project, world_map

NOW = 1_800_000_000.0
UP, DOWN, UNKNOWN = RegionVerdict.UP, RegionVerdict.DOWN, RegionVerdict.UNKNOWN
REGIONS_YAML = """
regions:
  eu-central: {name: Frankfurt, location: [50.1, 8.7]}
  us-east: {name: Virginia, location: [38.9, -77.0]}
  ap-south: {name: Mumbai, location: [19.1, 72.9]}
"""


def settings(status_page: str = "") -> StatusSettings:
    config = parse_config(REGIONS_YAML + status_page)
    return StatusSettings(config.status_page, config.regions)


def view(probe: str, service: str | None, state: TargetState = TargetState.UP,
         **verdicts: RegionVerdict) -> TargetView:
    regions = {"eu-central": UP, "us-east": UP, "ap-south": UP}
    regions.update({k.replace("_", "-"): v for k, v in verdicts.items()})
    return TargetView(probe, f"https://secret-{probe}.internal:8443/health", service, "http",
                      state, regions)


TARGETS = [
    view("social-web", "social", TargetState.REGIONAL_OUTAGE, eu_central=DOWN),
    view("social-login", "social"),
    view("billing-api", "billing", TargetState.GLOBAL_OUTAGE, eu_central=DOWN, us_east=DOWN,
         ap_south=DOWN),
    view("lonely", None),
]
AGENTS = [AgentView("fra-1", "eu-central", connected=True, impaired=False, stale=False,
                    last_seen=NOW, labels={"network": "as24940"}),
          AgentView("iad-1", "us-east", connected=True, impaired=True, stale=False,
                    last_seen=NOW),
          AgentView("bom-1", "ap-south", connected=False, impaired=False, stale=True,
                    last_seen=None)]


def record(probe: str, service: str | None, scope: Scope,
           regions: tuple[str, ...]) -> OutageRecord:
    return OutageRecord(id=f"out-{probe}", kind=OutageKind.PROBE, probe=probe,
                        service=service, region=None, probes=(), scope=scope,
                        peak_scope=scope, regions=regions, regions_ever=regions,
                        phase="connect", reason="connect_refused", started_at=NOW - 120,
                        detected_at=NOW - 118)


OUTAGES = [record("social-web", "social", Scope.REGIONAL, ("eu-central",)),
           record("billing-api", "billing", Scope.GLOBAL, ("ap-south", "eu-central",
                                                            "us-east"))]
WINDOW = {"id": "w1", "probes": [], "services": ["social"], "regions": ["us-east"],
          "start": "2057-01-15T07:00:00.000Z", "end": "2057-01-15T09:00:00.000Z",
          "reason": "db upgrade", "source": "api", "state": "active"}
BILLING_WINDOW = {**WINDOW, "id": "w2", "services": ["billing"], "reason": "billing secret"}


def inputs(**changes) -> StatusInputs:
    base = {"targets": TARGETS, "outages": OUTAGES, "agents": AGENTS,
            "isolated_regions": frozenset(), "monitoring_degraded": False, "now": NOW,
            "maintenance": [WINDOW, BILLING_WINDOW]}
    base.update(changes)
    return StatusInputs(**base)


def test_the_model_groups_probes_by_service_with_the_worst_state():
    model = build_page(inputs(), settings())
    services = {s["label"]: (s["state"], [p["probe"] for p in s["probes"]])
                for s in model["services"]}
    assert services == {
        "billing": ("global_outage", ["billing-api"]),
        "social": ("regional_outage", ["social-web", "social-login"]),
        "Probes without a service": ("up", ["lonely"]),
    }
    assert [r["id"] for r in model["regions"]] == ["ap-south", "eu-central", "us-east"]
    assert model["regions"][1] == {"id": "eu-central", "name": "Frankfurt",
                                   "location": [50.1, 8.7]}
    # Global first, then by start.
    assert [o["subject"] for o in model["outages"]] == ["billing: billing-api",
                                                        "social: social-web"]
    assert model["outages"][0]["detect_seconds"] == 2.0


def test_a_maintenance_window_marks_its_probes_and_regions():
    model = build_page(inputs(), settings())
    login = next(p for s in model["services"] for p in s["probes"]
                 if p["probe"] == "social-login")
    assert login["state"] == "maintenance"
    assert login["regions"] == {"ap-south": "up", "eu-central": "up",
                                "us-east": "maintenance"}
    web = next(p for s in model["services"] for p in s["probes"] if p["probe"] == "social-web")
    assert web["state"] == "regional_outage"  # an outage outranks the window's word
    assert web["regions"]["eu-central"] == "down"
    assert "social: in planned maintenance until" in model["headline"]["text"]


def test_state_order():
    assert state_of(["up", "maintenance", "regional_outage"]) == "regional_outage"
    assert state_of(["up", "unknown", "maintenance"]) == "maintenance"
    assert state_of([]) == "unknown"


def test_map_states_per_selection():
    model = build_page(inputs(isolated_regions=frozenset({"ap-south"})), settings())
    assert model["map"]["all"] == {"ap-south": "isolated", "eu-central": "down",
                                   "us-east": "down"}
    assert model["map"]["service:social"]["us-east"] == "maintenance"
    assert model["map"]["probe:lonely"] == {"ap-south": "isolated", "eu-central": "up",
                                            "us-east": "up"}
    assert model["map"]["service:social"]["eu-central"] == "down"
    assert model["map"]["service:"]["us-east"] == "up"  # probes without a service


def test_the_private_page_shows_agents_and_targets():
    model = build_page(inputs(), settings())
    assert [a["id"] for a in model["agents"]] == ["bom-1", "fra-1", "iad-1"]
    assert [a["health"] for a in model["agents"]] == ["disconnected", "ok", "impaired"]
    text = json.dumps(model)
    assert "secret-social-web.internal" in text
    assert model["region_health"]["us-east"] == {"agents": 1, "healthy": 0, "impaired": 1,
                                                 "silent": 0, "isolated": False}


def test_the_public_page_holds_only_the_listed_services_and_no_fleet_details():
    public = settings("status_page: {public: true, title: Acme status, services: [social]}\n")
    model = build_page(inputs(), public)
    page = page_html(model, selection="all", now=NOW)
    data = json.dumps({**model, "html": fragments(model, NOW)})
    for text in (page, data):
        for hidden in ("billing", "lonely", "secret-", "internal", "fra-1", "iad-1", "bom-1",
                       "as24940", "/status/agents"):
            assert hidden not in text, hidden
        assert "social-web" in text
        assert "Acme status" in text
    assert "agents" not in model
    assert model["maintenance"] == [{**{k: WINDOW[k] for k in (
        "id", "services", "probes", "regions", "start", "end", "reason", "state")},
        "subject": "social"}]
    assert [o["subject"] for o in model["outages"]] == ["social: social-web"]
    # The counts per region stay: they name no agent.
    assert model["region_health"]["eu-central"]["healthy"] == 1


def test_a_service_record_names_its_probe_count():
    record = OutageRecord.service_outage(
        "svc-1", "social", probes=["social-web", "social-login"], scope=Scope.GLOBAL,
        regions=["eu-central"], regions_ever=[], phase=None, reason=None,
        started_at=NOW - 60, detected_at=NOW - 59)
    model = build_page(inputs(outages=[record]), settings())
    assert [o["subject"] for o in model["outages"]] == ["social (2 probes)"]
    assert model["outages"][0]["probes"] == ["social-login", "social-web"]


def test_a_private_page_may_list_services_too():
    model = build_page(inputs(), settings("status_page: {services: [billing]}\n"))
    assert [s["label"] for s in model["services"]] == ["billing"]
    assert "agents" in model


def test_isolated_and_degraded_records_stay_on_a_public_page():
    isolated = OutageRecord.region_isolated("iso-1", "ap-south", at=NOW - 60)
    degraded = OutageRecord.monitoring_degraded("deg-1", ["ap-south"], at=NOW - 30)
    public = settings("status_page: {public: true, services: [social]}\n")
    model = build_page(inputs(outages=[isolated, degraded], isolated_regions={"ap-south"}),
                       public)
    assert [o["kind"] for o in model["outages"]] == ["monitoring_degraded", "region_isolated"]
    assert model["outages"][1]["subject"] == \
        "Mumbai (ap-south): our probes cannot reach anything"


class _Markup(HTMLParser):
    """Collects what a CSP of default-src 'self' would refuse, and every element seen."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.refused.append("inline script")
        if tag == "style" or "style" in names:
            self.refused.append(f"inline style on {tag}")
        self.refused.extend(f"{name} on {tag}" for name in names if name.startswith("on"))
        self.refused.extend(f"{name}={value}" for name, value in attrs
                            if value and value.strip().lower().startswith("javascript:"))
        self.refused.extend(f"{name}={value} (another host)" for name, value in attrs
                            if name in {"src", "href"} and value and "//" in value)


def markup(html: str) -> _Markup:
    parser = _Markup()
    parser.feed(html)
    parser.close()
    return parser


def hostile_inputs() -> StatusInputs:
    evil = '<img src=x onerror="alert(1)">'
    return inputs(targets=[view("p1", evil)], outages=[record("p1", evil, Scope.GLOBAL,
                                                              ("eu-central",))],
                  agents=[AgentView(evil, "eu-central", connected=True, impaired=False,
                                    stale=False, last_seen=NOW)],
                  maintenance=[{**WINDOW, "services": [evil], "reason": evil}],
                  uptime={"p1": {"availability": 0.5, "daily": [
                      {"date": evil, "availability": None, "seconds": {}}]}})


@pytest.mark.parametrize("page", ["status", "agents", "outage"])
def test_pages_hold_no_inline_code_and_escape_every_name(page):
    model = build_page(hostile_inputs(), settings())
    detail = {**OUTAGES[0].to_json(), "service": "<b>x</b>", "timeline": [
        {"at": "2027-01-15T08:00:00.000Z", "event": "<i>opened</i>", "scope": "regional",
         "regions": ["<u>r</u>"]}]}
    html = {"status": lambda: page_html(model, selection="<x>", now=NOW),
            "agents": lambda: agents_page_html(model, NOW),
            "outage": lambda: outage_page_html(model, detail, NOW)}[page]()
    found = markup(html)
    assert found.refused == []
    assert "img" not in found.tags
    assert "<img" not in html
    assert "<b>x" not in html
    assert "<i>opened" not in html
    assert html.startswith("<!doctype html>")


def test_the_status_page_renders_without_script_what_the_model_says():
    model = build_page(inputs(), settings())
    html = page_html(model, selection="service:social", now=NOW)
    assert "billing: down in every region since" in html
    assert 'data-outage="out-billing-api"' in html
    assert '<option value="service:social" selected>' in html
    assert 'class="rg st-down" data-region="eu-central"' in html
    assert '<tspan class="rg-state">Maintenance</tspan>' in html  # us-east, for social
    # The same states as text under the map.
    assert '<li data-region="eu-central">Frankfurt <span class="badge st-down">' in html
    assert '<li data-region="us-east">Virginia <span class="badge st-maintenance">' in html
    assert "https://secret-social-web.internal:8443/health" in html


def test_uptime_bars_say_each_day_by_height_and_title():
    days = [{"date": "2026-11-01", "availability": 1.0, "seconds": {}},
            {"date": "2026-11-02", "availability": 0.995,
             "seconds": {"regional_outage": 432.0}},
            {"date": "2026-11-03", "availability": 0.5, "seconds": {"global_outage": 43200.0}},
            {"date": "2026-11-04", "availability": None, "seconds": {"maintenance": 86400.0}},
            {"date": "2026-11-05", "availability": None, "seconds": {"unknown": 86400.0}}]
    svg = uptime_bars(days)
    classes = re.findall(r'<rect class="(ub-[a-z]+)"', svg)
    heights = re.findall(r'height="([0-9.]+)"', svg)
    assert classes == ["ub-up", "ub-minor", "ub-major", "ub-maint", "ub-none"]
    assert heights == ["20", "14", "8", "20", "3"]
    assert "2026-11-02, 99.50% up, 7 min in outage" in svg
    assert "2026-11-04, no data, 1440 min in maintenance" in svg
    assert svg.count("<rect") == 5
    assert 'x="255"' in svg  # the newest day is drawn at the right end of 90


def test_the_map_places_regions_and_says_their_state():
    assert project(50.1, 8.7) == (188.7, 29.9)
    assert project(-89, 0) == (180.0, 140.0)  # clamped to the drawn band
    svg = world_map([{"id": "eu", "name": "Frankfurt", "location": [50.1, 8.7]},
                     {"id": "nowhere", "name": "Nowhere", "location": None}],
                    {"eu": "down"}, {"down": "Down"})
    assert svg.count('class="rg ') == 1
    assert '>Frankfurt</tspan>: <tspan class="rg-state">Down</tspan>' in svg
