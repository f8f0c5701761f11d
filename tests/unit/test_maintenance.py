"""Maintenance windows: parsing, coverage, the store, config, journal, and the classifier.

The classifier cases drive a real Classifier with the fake fleet of the classifier tests:
while a window covers a probe, its failures are recorded but open no outage; the probe shows
`maintenance`; once the window ends on a probe still failing, an outage opens as usual.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probenet.collector.config import parse_config
from probenet.collector.journal import Journal
from probenet.collector.maintenance import (
    MAX_BODY_BYTES,
    MAX_NAMES,
    MAX_REASON_CHARS,
    ConfigWindowError,
    MaintenanceError,
    MaintenanceStore,
    MaintenanceWindow,
    UnknownWindowError,
    merge,
    parse_window_json,
)
from probenet.collector.model import (
    OutageEvent,
    OutageKind,
    RegionVerdict,
    TargetChange,
    TargetState,
    rfc3339,
)
from probenet.configfile import ConfigError
from support.classifier_fleet import DOWN, GLOBAL, REGIONAL, UP, Down, Fleet

NOW = 1_800_000_000.0
MAINT = RegionVerdict.MAINTENANCE


def window(window_id: str = "w1", *, probes: tuple[str, ...] = ("web",),
           services: tuple[str, ...] = (), regions: tuple[str, ...] = (),
           start: float = NOW, end: float = NOW + 3600,
           source: str = "api") -> MaintenanceWindow:
    return MaintenanceWindow(id=window_id, probes=probes, services=services, regions=regions,
                             start=start, end=end, reason="db upgrade",
                             source=source,  # type: ignore[arg-type]
                             created_at=NOW if source == "api" else None)


def body(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {"probes": ["web"], "start": rfc3339(NOW),
                               "end": rfc3339(NOW + 3600), "reason": "db upgrade"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


# -- the API's JSON body ------------------------------------------------------------------


def test_a_valid_body_makes_an_api_window():
    got = parse_window_json(
        body(probes=["web", "api", "web"], services=["social"], regions=["eu"]),
        now=NOW, new_id=lambda: "fixed")
    assert got == MaintenanceWindow(
        id="fixed", probes=("api", "web"), services=("social",), regions=("eu",), start=NOW,
        end=NOW + 3600, reason="db upgrade", source="api", created_at=NOW)


def test_start_defaults_to_now():
    got = parse_window_json(body(start=None, end="2027-01-15T10:30:00+01:00"), now=NOW)
    assert got.start == NOW
    assert rfc3339(got.end) == "2027-01-15T09:30:00.000Z"


@pytest.mark.parametrize(("payload", "field", "fragment"), [
    (["not", "an", "object"], None, "must be a JSON object"),
    (body(color="red"), "color", "unknown key 'color'"),
    (body(probes=[], services=[]), "probes", "must name probes or services"),
    (body(probes="web"), "probes", "must be a list of names"),
    (body(probes=["bad name"]), "probes", "invalid name 'bad name'"),
    (body(services=[1]), "services", "must be a list of names"),
    (body(regions=[f"r{i}" for i in range(MAX_NAMES + 1)]), "regions", f"at most {MAX_NAMES}"),
    (body(end=None), "end", "end is required"),
    (body(reason=None), "reason", "reason is required"),
    (body(end="tomorrow"), "end", "'tomorrow' is not an RFC 3339 time"),
    (body(end="2027-01-15"), "end", "is not an RFC 3339 time"),
    (body(end="2027-W03-1T09:00:00Z"), "end", "is not an RFC 3339 time"),
    (body(end="2027-02-30T09:00:00Z"), "end", "is not a valid time"),
    (body(end="9999-12-31T23:59:59Z"), "end", "out of range"),
    (body(start="2027-01-15T08:00:00"), "start", "has no time zone"),
    (body(end=1_800_003_600), "end", "must be an RFC 3339 time string"),
    (body(end=rfc3339(NOW)), "end", "must be after start"),
    (body(start=rfc3339(NOW - 7200), end=rfc3339(NOW - 3600)), "end", "is in the past"),
    (body(start=rfc3339(NOW - 3600)), "start", "cannot be declared after the fact"),
    (body(end=rfc3339(NOW + 40 * 86400)), "end", "at most 31 days"),
    (body(reason=""), "reason", "must not be empty"),
    (body(reason="x" * (MAX_REASON_CHARS + 1)), "reason", f"at most {MAX_REASON_CHARS}"),
    (body(reason="a\x00b"), "reason", "control characters"),
    (body(reason=42), "reason", "must be a string"),
])
def test_bad_bodies_are_refused_naming_the_field(payload, field, fragment):
    with pytest.raises(MaintenanceError) as caught:
        parse_window_json(payload, now=NOW)
    assert caught.value.field == field
    assert fragment in str(caught.value)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["probes", "services", "regions", "start", "end", "reason", "x"]),
        inner, max_size=6),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(payload=_JSON)
def test_no_body_crashes_the_parser(payload):
    try:
        got = parse_window_json(payload, now=NOW)
    except MaintenanceError:
        return  # refused with a message: fine (any other exception fails the test)
    assert got.end > got.start
    assert got.probes or got.services
    assert json.dumps(got.to_json(NOW))


def test_body_limit_is_generous_for_a_real_window():
    big = body(probes=[f"probe-{i}" for i in range(MAX_NAMES)], reason="r" * MAX_REASON_CHARS)
    assert len(json.dumps(big)) < MAX_BODY_BYTES


# -- windows and coverage -------------------------------------------------------------------


def test_window_state_and_json():
    w = window(regions=("eu",))
    assert [w.state(t) for t in (NOW - 1, NOW, NOW + 3599, NOW + 3600)] == [
        "planned", "active", "active", "ended"]
    assert w.to_json(NOW) == {
        "id": "w1", "probes": ["web"], "services": [], "regions": ["eu"],
        "start": "2027-01-15T08:00:00.000Z", "end": "2027-01-15T09:00:00.000Z",
        "reason": "db upgrade", "source": "api", "state": "active",
        "created_at": "2027-01-15T08:00:00.000Z"}
    assert MaintenanceWindow.from_record(w.to_record()) == w


def test_covers_by_probe_service_region_and_time():
    w = window(probes=("web",), services=("social",), regions=("eu", "us"))
    assert w.covers("web", None, "eu", NOW)
    assert w.covers("feed", "social", "us", NOW + 10)
    assert not w.covers("feed", None, "eu", NOW)
    assert not w.covers("web", None, "ap", NOW)
    assert not w.covers("web", None, "eu", NOW - 1)
    assert not w.covers("web", None, "eu", NOW + 3600)
    assert window(regions=()).covers("web", None, "anywhere", NOW)


def test_store_merges_coverage_across_windows():
    store = MaintenanceStore([window("c1", regions=("eu",), source="config")], [
        window("a1", regions=("us",)),
        window("a2", probes=(), services=("social",)),
        window("a3", probes=("api",), start=NOW + 100, end=NOW + 200),
    ])
    assert store.covered_regions("web", None, NOW) == frozenset({"eu", "us"})
    assert store.covered_regions("web", "social", NOW) is None
    assert store.covered_regions("api", None, NOW) == frozenset()
    assert store.covered_regions("api", None, NOW + 150) is None
    coverage = store.coverage(NOW)
    assert coverage.probes == {"web": frozenset({"eu", "us"})}
    assert coverage.services == {"social": None}
    assert [w.id for w in store.active(NOW + 150)] == ["a1", "a2", "c1", "a3"]
    assert store.next_change_after(NOW) == NOW + 100
    assert merge(frozenset({"a"}), None) is None


def test_store_add_delete_and_notify():
    calls: list[int] = []
    store = MaintenanceStore([window("cfg-1", source="config")], clock=lambda: NOW)
    store.subscribe(lambda: calls.append(1))
    store.add(window("a1"))
    with pytest.raises(MaintenanceError):
        store.add(window("a1"))
    with pytest.raises(ConfigWindowError, match="comes from the config file"):
        store.delete("cfg-1")
    with pytest.raises(UnknownWindowError):
        store.delete("nope")
    assert store.delete("a1").id == "a1"
    assert calls == [1, 1]
    assert [w.id for w in store.windows()] == ["cfg-1"]


def test_store_prunes_long_ended_api_windows_only():
    store = MaintenanceStore([window("c", end=NOW + 1, source="config")],
                             [window("old", end=NOW + 1), window("new", end=NOW + 10 ** 6)])
    assert [w.id for w in store.prune(NOW + 8 * 86400)] == ["old"]
    assert {w.id for w in store.windows()} == {"c", "new"}


def test_write_api_is_off_without_a_token():
    assert not MaintenanceStore().write_enabled
    assert MaintenanceStore(admin_token="t").admin_token == "t"


# -- config -----------------------------------------------------------------------------------


def test_config_windows_and_admin_token(tmp_path):
    (tmp_path / "admin").write_text("s3cret\n")
    text = f"""\
api: {{admin_token_file: {tmp_path / "admin"}}}
maintenance:
  - {{services: [social], start: "2026-12-01T02:00:00Z", end: "2026-12-01T03:00:00Z",
     reason: "db upgrade"}}
  - probes: [web, api]
    regions: [eu]
    start: 2026-12-01T02:00:00+01:00
    end: 2026-12-01T03:00:00Z
    reason: network work
"""
    config = parse_config(text, "c.yaml")
    assert config.api is not None
    assert config.api.admin_token_file == str(tmp_path / "admin")
    first, second = (entry.window() for entry in config.maintenance)
    assert first.services == ("social",)
    assert first.source == "config"
    assert first.id.startswith("cfg-")
    assert rfc3339(second.start) == "2026-12-01T01:00:00.000Z"
    assert second.probes == ("api", "web")
    # Stable across loads, different per content.
    assert parse_config(text, "c.yaml").maintenance[0].window().id == first.id
    assert first.id != second.id


@pytest.mark.parametrize(("text", "expected"), [
    (("maintenance:\n  - {probes: [a], start: 2026-12-01T02:00:00Z,"
      " end: 2026-12-01T01:00:00Z, reason: x}\n"),
     "2:53: maintenance[0].end: end (2026-12-01T01:00:00.000Z) must be after start"),
    (("maintenance:\n  - {regions: [eu], start: 2026-12-01T02:00:00Z,"
      " end: 2026-12-01T03:00:00Z, reason: x}\n"),
     "2:5: maintenance[0]: name probes or services (or both)"),
    ("maintenance:\n  - {probes: [a], start: '2026-12-01T02:00:00', end: nope, reason: ''}\n",
     "2:26: maintenance[0].start: '2026-12-01T02:00:00' has no time zone"),
    ("maintenance:\n  - {probes: [a], start: '2026-12-01T02:00:00Z', end: nope, reason: x}\n",
     "2:55: maintenance[0].end: 'nope' is not an RFC 3339 time"),
    (("maintenance:\n  - {probes: [a], start: 2026-12-01T02:00:00Z,"
      " end: 2026-12-01T03:00:00Z, reason: '', color: red}\n"),
     "2:83: maintenance[0].reason: must not be empty"),
    (("maintenance:\n  - {probes: [a], start: 2026-12-01T02:00:00Z,"
      " end: 2026-12-01T03:00:00Z, reason: x, color: red}\n"),
     "unknown key 'color'"),
    ("api: {admin_token_file: /nonexistent/admin}\n",
     "1:25: api.admin_token_file: no such file: /nonexistent/admin"),
    ("api: {}\n", "missing required key 'admin_token_file'"),
])
def test_bad_config_windows_name_file_line_col(text, expected):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    assert expected in str(caught.value), str(caught.value)
    assert "c.yaml:" in str(caught.value)


def test_empty_admin_token_file_is_refused(tmp_path):
    (tmp_path / "admin").write_text("  \n")
    with pytest.raises(ConfigError, match="is empty: write the admin token in it"):
        parse_config(f"api: {{admin_token_file: {tmp_path / 'admin'}}}\n", "c.yaml")


# -- journal ------------------------------------------------------------------------------------


def test_journal_keeps_api_windows_across_reopen(tmp_path):
    path = tmp_path / "j.db"
    with Journal(path) as journal:
        journal.add_maintenance_window(window("a1"))
        journal.add_maintenance_window(window("a2", start=NOW + 10, end=NOW + 20))
        assert journal.delete_maintenance_window("a2")
        assert not journal.delete_maintenance_window("a2")
    with Journal(path) as journal:
        assert journal.maintenance_windows() == [window("a1")]
        assert journal.maintenance_windows(ended_after=NOW + 3600) == []


def test_journal_without_the_table_gets_it_on_open(tmp_path):
    path = tmp_path / "old.db"
    with Journal(path):
        pass
    db = sqlite3.connect(path)
    db.execute("DROP TABLE maintenance_windows")
    db.commit()
    db.close()
    with Journal(path) as journal:
        journal.add_maintenance_window(window("a1"))
        assert [w.id for w in journal.maintenance_windows()] == ["a1"]


# -- classifier -----------------------------------------------------------------------------------


def covered_all(*probes: str) -> dict[str, frozenset[str] | None]:
    return dict.fromkeys(probes)


def fleet(**kwargs: object) -> Fleet:
    f = Fleet({"eu": 2, "us": 2, "ap": 2}, **kwargs)  # type: ignore[arg-type]
    f.rounds(2)  # warm up: everything up
    return f


def test_no_outage_opens_during_a_window_and_failures_are_still_recorded():
    f = fleet()
    f.clf.set_maintenance(covered_all("web"), f.now)
    f.rounds(4, Down(("web",)))
    assert f.open() == []
    assert f.events(OutageEvent.OPENED) == []
    assert f.state("web") is TargetState.MAINTENANCE
    view = f.clf.target("web")
    assert view is not None
    assert view.to_json()["state"] == "maintenance"
    assert dict(view.regions) == {"ap": MAINT, "eu": MAINT, "us": MAINT}
    # The failures are recorded: the latest samples say failure, verdicts say down.
    assert {s.agent for s in f.clf.samples() if s.probe == "web" and not s.success} == set(
        f.agents)
    assert f.verdicts("web") == {"ap": DOWN, "eu": DOWN, "us": DOWN}
    assert f.clf.maintenance_probes() == frozenset({"web"})
    # The view change was emitted (the retained MQTT state follows).
    assert f.target_changes("web")[-1].view.state is TargetState.MAINTENANCE


def test_outage_opens_normally_after_the_window_if_failures_persist():
    f = fleet()
    f.clf.set_maintenance(covered_all("web"), f.now)
    f.rounds(3, Down(("web",)))
    ended_at = f.now
    f.clf.set_maintenance({}, ended_at)
    f.transitions.extend(f.clf.take_transitions())
    opened = f.events(OutageEvent.OPENED, OutageKind.PROBE)
    assert [(e.record.probe, e.record.scope) for e in opened] == [("web", "global")]
    # The failures during the window were maintenance: the outage starts at its end.
    assert opened[0].record.started_at == ended_at
    assert f.state("web") is GLOBAL
    assert f.clf.maintenance_probes() == frozenset()


def test_after_the_window_a_healthy_probe_is_up_again():
    f = fleet()
    f.clf.set_maintenance(covered_all("web"), f.now)
    f.rounds(2, Down(("web",)))
    f.rounds(2)
    f.clf.set_maintenance({}, f.now)
    f.rounds(1)
    assert f.state("web") is TargetState.UP
    assert f.open() == []


def test_a_covered_service_opens_neither_probe_nor_service_records():
    f = fleet(services={"web": "social", "api": "social"})
    f.clf.set_maintenance({}, f.now, services={"social": None})
    f.rounds(4, Down(("web", "api")))
    assert f.open() == []
    assert f.state("web") is TargetState.MAINTENANCE
    assert f.state("api") is TargetState.MAINTENANCE
    assert f.state("dns") is TargetState.UP


def test_a_window_on_one_region_keeps_the_others_watched():
    f = fleet()
    f.clf.set_maintenance({"web": frozenset({"eu"})}, f.now)
    f.rounds(3, Down(("web",), regions=("eu",)))
    assert f.open() == []
    assert f.state("web") is TargetState.UP
    view = f.clf.target("web")
    assert view is not None
    assert dict(view.regions) == {"ap": UP, "eu": MAINT, "us": UP}
    # Partly covered: no probenet_maintenance_active (its other regions still alert).
    assert f.clf.maintenance_probes() == frozenset()
    # An outage in an uncovered region opens, naming only that region.
    f.rounds(3, Down(("web",), regions=("eu", "us")))
    records = f.open(OutageKind.PROBE)
    assert [(r.probe, r.scope, r.regions) for r in records] == [("web", "regional", ("us",))]
    assert f.state("web") is REGIONAL


def test_a_covered_down_region_does_not_corroborate_a_lone_failure():
    f = Fleet({"eu": 1, "us": 1, "ap": 1})
    f.rounds(2)
    f.clf.set_maintenance({"web": frozenset({"eu"})}, f.now)
    f.rounds(2, Down(("web",), regions=("eu",)))
    # One confirmed failure of the lone us agent: not enough alone, and the covered eu
    # region's down vote must not count as "another region sees it down".
    f.round(Down(("web",), regions=("eu", "us")))
    assert f.open() == []


def test_an_outage_open_when_the_window_starts_stays_open_until_recovery():
    f = fleet()
    f.rounds(2, Down(("web",)))
    [record] = f.open(OutageKind.PROBE)
    f.clf.set_maintenance(covered_all("web"), f.now)
    f.rounds(3, Down(("web",)))
    assert [r.id for r in f.open(OutageKind.PROBE)] == [record.id]
    assert f.state("web") is TargetState.MAINTENANCE
    f.rounds(3)  # the probe recovers during the window
    assert f.open() == []
    resolved = f.events(OutageEvent.RESOLVED, OutageKind.PROBE)
    assert [e.record.id for e in resolved] == [record.id]


def test_a_covered_agent_failing_many_probes_is_not_taken_for_impaired():
    f = fleet()
    f.clf.set_maintenance(dict.fromkeys(f.probes, frozenset({"eu"})), f.now)
    f.rounds(4, Down(regions=("eu",)))
    assert [a.id for a in f.clf.agents() if a.impaired] == []
    assert f.clf.isolated_regions() == frozenset()
    assert f.open() == []


def test_a_probe_first_seen_during_its_services_window_is_covered():
    f = fleet(services={"web": "social", "new": "social"})
    f.clf.set_maintenance({}, f.now, services={"social": None})
    f.probes = (*f.probes, "new")
    f.rounds(3, Down(("new",)))
    assert f.state("new") is TargetState.MAINTENANCE
    assert f.open() == []


def test_set_maintenance_with_unchanged_coverage_emits_nothing():
    f = fleet()
    f.clf.set_maintenance(covered_all("web"), f.now)
    first = [t for t in f.clf.take_transitions() if isinstance(t, TargetChange)]
    assert [c.view.state for c in first] == [TargetState.MAINTENANCE]
    f.clf.set_maintenance(covered_all("web"), f.now + 1)
    assert f.clf.take_transitions() == []
