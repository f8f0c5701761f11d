"""OutageRecord's builders: each kind's shape, and the invariants every change keeps."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from probenet.collector.model import OutageKind, OutageRecord, Scope, widest

T0 = 1_800_000_000.0
REGIONS = ("ap", "eu", "sa", "us")


def probe_record(**changes: object) -> OutageRecord:
    facts: dict[str, object] = {
        "service": "meta", "scope": Scope.REGIONAL, "regions": ("us", "eu"), "phase": "tls",
        "reason": "tls_handshake", "started_at": T0 - 20, "detected_at": T0,
    }
    facts.update(changes)
    return OutageRecord.probe_outage("o1", "web", **facts)  # type: ignore[arg-type]


def assert_invariants(record: OutageRecord) -> None:
    assert record.scope is record.peak_scope or record.peak_scope is Scope.GLOBAL
    assert set(record.regions) <= set(record.regions_ever)
    assert list(record.regions) == sorted(set(record.regions))
    assert list(record.regions_ever) == sorted(set(record.regions_ever))
    assert list(record.probes) == sorted(set(record.probes))
    assert record.started_at <= record.detected_at
    assert record.ended_at is None or record.ended_at >= record.detected_at


# -- opening ---------------------------------------------------------------------------------


def test_a_probe_outage_names_its_probe_and_regions_sorted() -> None:
    record = probe_record()
    assert (record.id, record.kind, record.probe, record.service, record.region) == (
        "o1", OutageKind.PROBE, "web", "meta", None)
    assert (record.scope, record.peak_scope) == (Scope.REGIONAL, Scope.REGIONAL)
    assert (record.regions, record.regions_ever) == (("eu", "us"), ("eu", "us"))
    assert (record.phase, record.reason) == ("tls", "tls_handshake")
    assert (record.started_at, record.detected_at, record.ended_at) == (T0 - 20, T0, None)
    assert record.probes == ()
    assert record.active
    assert_invariants(record)


def test_a_probe_outage_never_starts_after_it_was_detected() -> None:
    record = probe_record(started_at=T0 + 5)  # an agent clock ahead of the collector's
    assert record.started_at == record.detected_at == T0


def test_a_service_outage_inherits_its_probes_history() -> None:
    record = OutageRecord.service_outage(
        "s1", "meta", probes=["web", "api", "web"], scope=Scope.GLOBAL, regions={"us", "eu"},
        regions_ever={"ap"}, phase="dns", reason="dns_servfail", started_at=T0 - 60,
        detected_at=T0)
    assert (record.kind, record.probe, record.service, record.region) == (
        OutageKind.SERVICE, None, "meta", None)
    assert record.probes == ("api", "web")
    assert (record.scope, record.peak_scope) == (Scope.GLOBAL, Scope.GLOBAL)
    assert record.regions == ("eu", "us")
    assert record.regions_ever == ("ap", "eu", "us")  # always covers the regions down now
    assert (record.started_at, record.detected_at) == (T0 - 60, T0)
    assert_invariants(record)


def test_a_region_isolation_is_regional_and_about_its_region() -> None:
    record = OutageRecord.region_isolated("r1", "eu", at=T0)
    assert (record.kind, record.probe, record.service, record.region) == (
        OutageKind.REGION_ISOLATED, None, None, "eu")
    assert (record.scope, record.peak_scope) == (Scope.REGIONAL, Scope.REGIONAL)
    assert (record.regions, record.regions_ever) == (("eu",), ("eu",))
    assert (record.phase, record.reason, record.probes) == (None, None, ())
    assert record.started_at == record.detected_at == T0
    assert_invariants(record)


def test_monitoring_degraded_is_global_and_names_the_troubled_regions() -> None:
    record = OutageRecord.monitoring_degraded("m1", ["us", "eu"], at=T0)
    assert (record.kind, record.probe, record.service, record.region) == (
        OutageKind.MONITORING_DEGRADED, None, None, None)
    assert (record.scope, record.peak_scope) == (Scope.GLOBAL, Scope.GLOBAL)
    assert (record.regions, record.regions_ever) == (("eu", "us"), ("eu", "us"))
    assert record.started_at == record.detected_at == T0
    assert_invariants(record)


# -- changing ----------------------------------------------------------------------------------


def test_scope_rises_and_falls_and_the_peak_remembers() -> None:
    record = probe_record()
    wider = record.with_scope(Scope.GLOBAL)
    assert (wider.scope, wider.peak_scope) == (Scope.GLOBAL, Scope.GLOBAL)
    narrower = wider.with_scope(Scope.REGIONAL)
    assert (narrower.scope, narrower.peak_scope) == (Scope.REGIONAL, Scope.GLOBAL)
    assert record.with_scope(Scope.REGIONAL) == record  # no change, an equal record


def test_regions_now_come_and_go_and_regions_ever_keeps_them_all() -> None:
    record = probe_record(regions=("eu",))
    widened = record.with_regions(["us", "eu"])
    assert (widened.regions, widened.regions_ever) == (("eu", "us"), ("eu", "us"))
    narrowed = widened.with_regions(["us"])
    assert (narrowed.regions, narrowed.regions_ever) == (("us",), ("eu", "us"))
    assert narrowed.with_regions(["us"]) == narrowed


def test_failure_and_probes_change_only_themselves() -> None:
    record = probe_record()
    changed = record.with_failure("dns", None)
    assert (changed.phase, changed.reason) == ("dns", None)
    assert changed.with_failure("tls", "tls_handshake") == record
    service = OutageRecord.service_outage(
        "s1", "meta", probes=("web",), scope=Scope.REGIONAL, regions=("eu",), regions_ever=(),
        phase=None, reason=None, started_at=T0, detected_at=T0)
    assert service.with_probes({"web", "api"}).probes == ("api", "web")


def test_ended_never_before_detection() -> None:
    record = probe_record()
    ended = record.ended(T0 + 30)
    assert ended.ended_at == T0 + 30
    assert not ended.active
    assert record.active  # records are values: the original is untouched
    assert record.ended(T0 - 5).ended_at == T0  # the clock went backwards


def test_built_records_survive_the_json_round_trip() -> None:
    service = OutageRecord.service_outage(
        "s1", "meta", probes=("web", "api"), scope=Scope.REGIONAL, regions=("eu",),
        regions_ever=("us",), phase="dns", reason=None, started_at=T0 - 7, detected_at=T0)
    records = [
        probe_record(),
        probe_record().with_scope(Scope.GLOBAL).with_regions(["ap"]).ended(T0 + 60),
        service,
        service.with_probes(["web"]).with_failure(None, None),
        OutageRecord.region_isolated("r1", "eu", at=T0),
        OutageRecord.monitoring_degraded("m1", ["us"], at=T0).ended(T0 + 1),
    ]
    for record in records:
        assert OutageRecord.from_json(record.to_json()) == record


def test_widest() -> None:
    assert widest(Scope.REGIONAL, Scope.GLOBAL) is Scope.GLOBAL
    assert widest(Scope.GLOBAL, Scope.REGIONAL) is Scope.GLOBAL
    assert widest(Scope.REGIONAL, Scope.REGIONAL) is Scope.REGIONAL
    assert widest() is Scope.REGIONAL


# -- the invariants, whatever happens to a record -------------------------------------------

region_sets = st.sets(st.sampled_from(REGIONS), max_size=len(REGIONS))
scopes = st.sampled_from(list(Scope))
failures = st.tuples(st.sampled_from([None, "dns", "tls"]), st.sampled_from([None, "refused"]))
changes = st.one_of(
    st.tuples(st.just("scope"), scopes),
    st.tuples(st.just("regions"), region_sets),
    st.tuples(st.just("failure"), failures),
    st.tuples(st.just("probes"), st.sets(st.sampled_from(("web", "api", "cdn")))),
)
openers = st.one_of(
    st.builds(lambda scope, regions, started: probe_record(
        scope=scope, regions=regions, started_at=T0 + started),
        scopes, region_sets, st.floats(-600, 600)),
    st.builds(lambda scope, regions, ever, started: OutageRecord.service_outage(
        "s1", "meta", probes=("web", "api"), scope=scope, regions=regions, regions_ever=ever,
        phase=None, reason=None, started_at=T0 + started, detected_at=T0),
        scopes, region_sets, region_sets, st.floats(-600, 600)),
    st.builds(lambda region: OutageRecord.region_isolated("r1", region, at=T0),
              st.sampled_from(REGIONS)),
    st.builds(lambda regions: OutageRecord.monitoring_degraded("m1", regions, at=T0),
              region_sets),
)


@given(openers, st.lists(changes, max_size=12), st.one_of(st.none(), st.floats(-600, 600)))
def test_every_change_keeps_the_invariants(record: OutageRecord,
                                           steps: list[tuple[str, object]],
                                           end: float | None) -> None:
    assert_invariants(record)
    seen_regions = set(record.regions_ever)
    peak = record.peak_scope
    for what, value in steps:
        if what == "scope":
            record = record.with_scope(value)  # type: ignore[arg-type]
            assert record.scope is value
        elif what == "regions":
            record = record.with_regions(value)  # type: ignore[arg-type]
            assert set(record.regions) == value
        elif what == "failure":
            record = record.with_failure(*value)  # type: ignore[misc]
            assert (record.phase, record.reason) == value
        else:
            record = record.with_probes(value)  # type: ignore[arg-type]
        seen_regions |= set(record.regions)
        peak = widest(peak, record.scope)
        assert set(record.regions_ever) == seen_regions
        assert record.peak_scope is peak
        assert_invariants(record)
    if end is not None:
        record = record.ended(T0 + end)
        assert record.ended_at == max(T0 + end, record.detected_at)
        assert_invariants(record)
