"""The outage page's path traces: the summary and hop lists on a private page, the sentence
without addresses or agents on a public one, names escaped, nothing without traces."""

from __future__ import annotations

from probenet.collector.config import parse_config
from probenet.collector.model import OutageKind, OutageRecord, Scope
from probenet.collector.status.render import outage_page_html
from probenet.collector.status.view import StatusInputs, StatusSettings, build_page, paths_view

NOW = 1_800_000_000.0
REGIONS_YAML = """
regions:
  eu-central: {name: Frankfurt, location: [50.1, 8.7]}
  ap-south: {name: Mumbai, location: [19.1, 72.9]}
"""
RECORD = OutageRecord(id="out-web", kind=OutageKind.PROBE, probe="web", service="shop",
                      region=None, probes=(), scope=Scope.REGIONAL, peak_scope=Scope.REGIONAL,
                      regions=("ap-south",), regions_ever=("ap-south",), phase="connect",
                      reason="timeout", started_at=NOW - 120, detected_at=NOW - 118)


def hops(*addresses: str) -> list[dict[str, object]]:
    return [{"ttl": ttl, "address": a, "sent": 3, "received": 3 if a else 0, "rtt_seconds": [],
             "error": ""} for ttl, a in enumerate(addresses, start=1)]


PATHS = {
    "regions": {"ap-south": {
        "agents": {"bom-<1>": {"trace": {"hops": hops("10.1.0.1", "198.18.3.1", ""),
                                         "reached": False},
                               "taken_at": "2027-01-15T08:00:00.000Z", "trigger": "failure"}},
        "last_hop": "198.18.3.1", "reached": False}},
    "baseline": {},
    "summary": {"text": "path from ap-south stops after 198.18.3.1; eu-central passes it",
                "public_text": "path from ap-south stop inside the network before the target; "
                               "eu-central reaches past that point",
                "divergence": {"level": "address", "address": "198.18.3.1"}},
}


def model(status_page: str = "") -> dict[str, object]:
    config = parse_config(REGIONS_YAML + status_page)
    inputs = StatusInputs(targets=[], outages=[RECORD], agents=[],
                          isolated_regions=frozenset(), monitoring_degraded=False, now=NOW,
                          maintenance=[])
    return build_page(inputs, StatusSettings(config.status_page, config.regions))


def detail(paths: object) -> dict[str, object]:
    return {**RECORD.to_json(), "timeline": [], "paths": paths}


def test_private_page_shows_the_sentence_and_hops_per_region() -> None:
    page = outage_page_html(model(), detail(PATHS), NOW)
    assert 'id="paths"' in page
    assert "path from ap-south stops after 198.18.3.1; eu-central passes it" in page
    assert "<h3>Mumbai</h3>" in page
    assert "<li>198.18.3.1</li>" in page
    assert "<li>*</li>" in page
    assert "bom-&lt;1&gt;" in page
    assert "bom-<1>" not in page


def test_public_page_shows_the_sentence_without_addresses_or_agents() -> None:
    page = outage_page_html(model("status_page: {public: true, services: [shop]}\n"),
                            detail(PATHS), NOW)
    assert "stop inside the network before the target" in page
    assert "198.18" not in page
    assert "10.1.0.1" not in page
    assert "bom-" not in page


def test_no_paths_no_section() -> None:
    assert 'id="paths"' not in outage_page_html(model(), detail(None), NOW)
    assert paths_view(None, public=False) is None
    assert paths_view({}, public=True) is None


def test_paths_view_lists_agents_in_order() -> None:
    shown = paths_view(PATHS, public=False)
    assert shown is not None
    assert shown["regions"][0]["agents"][0]["hops"] == ["10.1.0.1", "198.18.3.1", "*"]
    assert shown["regions"][0]["last_hop"] == "198.18.3.1"
