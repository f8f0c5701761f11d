"""The metrics of `flow` probes: per-step series per agent, and the failing step of an outage.

A real Classifier and details store fed real result messages (support.details_fleet), the
/metrics page (`MetricsPage`) against prometheus_client's rendering of the same families
(`reference_registry`), values read back from a fresh registry, and promtool.
"""

from __future__ import annotations

import gc
import math
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.parser import text_string_to_metric_families

from probenet.collector import details
from probenet.collector.config import parse_config
from probenet.collector.exposition import MetricsPage
from probenet.collector.metrics import STEP_LABELS, FailureCounts
from probenet.v1 import probenet_pb2 as pb
from support.details_fleet import DetailsFleet
from support.system import need_binary

LOGIN = "social-login"
STEPS = ("home", "login", "feed")
AGENTS = (("fra-1", "eu"), ("iad-1", "us"), ("sin-1", "ap"))
# A step name prometheus_client must escape (the ingest bounds only its length).
AWKWARD = 'say "hi" \\ then\nbye'


class Fleet(DetailsFleet):
    """DetailsFleet with the page over it."""

    def __init__(self, yaml: str = "") -> None:
        super().__init__()
        settings = parse_config(yaml + "\n").metrics
        self.page = MetricsPage(CollectorRegistry(), classifier=self.classifier,
                                details=self.details if settings.kind_details else None,
                                failures=FailureCounts(), settings=settings)

    def reference(self) -> CollectorRegistry:
        return self.page.reference_registry()


def flow_result(*, failed_at: str | None = None, steps: tuple[str, ...] = STEPS,
                seconds: float = 0.25, kind: str = "flow",
                probe: str = LOGIN) -> pb.ProbeResult:
    ran: list[pb.FlowStep] = []
    for i, name in enumerate(steps):
        ok = name != failed_at
        ran.append(pb.FlowStep(name=name, success=ok, duration_seconds=seconds * (i + 1),
                               status_code=200 if ok else 500))
        if not ok:
            break
    failed = failed_at is not None
    return pb.ProbeResult(
        seq=1, probe=probe, target="https://social.example/", kind=kind, service="social",
        success=not failed, confirmed=failed,
        failed_phase=pb.PHASE_VALIDATION if failed else pb.PHASE_UNSPECIFIED,
        reason="status_mismatch" if failed else "", step=failed_at or "",
        duration_seconds=sum(s.duration_seconds for s in ran), interval_ms=10_000,
        flow=pb.FlowDetails(steps=ran, failed_step_index=len(ran) if failed else 0,
                            step_count=len(steps)))


def series(text: str) -> dict[tuple[str, tuple], float | str]:
    """Every sample by (name, labels); NaN made comparable."""
    found: dict[tuple[str, tuple], float | str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"duplicate series {key}"
            found[key] = "NaN" if math.isnan(sample.value) else sample.value
    return found


def step_value(registry: CollectorRegistry, name: str, step: str, agent: str,
               region: str) -> float | None:
    return registry.get_sample_value(name, {"probe": LOGIN, "step": step, "region": region,
                                            "agent": agent})


def assert_page_is_the_reference(fleet: Fleet) -> str:
    """The page has exactly the series prometheus_client renders of the same families."""
    page = fleet.page.render().decode()
    assert series(page) == series(generate_latest(fleet.reference()).decode())
    return page


def test_each_step_that_ran_in_the_last_result_is_a_series_per_agent():
    fleet = Fleet()
    fleet.send("fra-1", "eu", flow_result())
    fleet.send("iad-1", "us", flow_result(failed_at="login"))
    page = assert_page_is_the_reference(fleet)
    registry = fleet.reference()
    success, duration = "probenet_step_success", "probenet_step_duration_seconds"
    assert {step: step_value(registry, success, step, "fra-1", "eu") for step in STEPS} == {
        "home": 1, "login": 1, "feed": 1}
    assert {step: step_value(registry, duration, step, "fra-1", "eu") for step in STEPS} == {
        "home": 0.25, "login": 0.5, "feed": 0.75}
    # The failed journey: home passed, login failed, feed never ran (absent, not 0).
    assert {step: step_value(registry, success, step, "iad-1", "us") for step in STEPS} == {
        "home": 1, "login": 0, "feed": None}
    assert step_value(registry, duration, "login", "iad-1", "us") == 0.5
    assert step_value(registry, duration, "feed", "iad-1", "us") is None
    # Labelled (probe, step, region, agent), not the pair labels; five series each.
    for family in text_string_to_metric_families(page):
        if family.name in {success, duration}:
            assert len(family.samples) == 5
            assert all(set(s.labels) == set(STEP_LABELS) for s in family.samples)
    # The flow's own pair series are there as for any kind.
    assert registry.get_sample_value("probe_success", {
        "probe": LOGIN, "target": "https://social.example/", "kind": "flow", "region": "us",
        "agent": "iad-1"}) == 0


def test_the_next_result_replaces_the_steps_of_the_last():
    fleet = Fleet()
    fleet.send("iad-1", "us", flow_result(failed_at="home"))
    registry = fleet.reference()
    assert step_value(registry, "probenet_step_success", "home", "iad-1", "us") == 0
    assert step_value(registry, "probenet_step_success", "login", "iad-1", "us") is None
    fleet.send("iad-1", "us", flow_result())
    registry = fleet.reference()
    assert [step_value(registry, "probenet_step_success", step, "iad-1", "us")
            for step in STEPS] == [1, 1, 1]
    assert_page_is_the_reference(fleet)


def outage_fleet() -> Fleet:
    fleet = Fleet()
    for _ in range(2):
        for agent, region in AGENTS:
            fleet.send(agent, region, flow_result())
    for _ in range(3):
        for agent, region in AGENTS:
            fleet.send(agent, region, flow_result(failed_at="login"))
    return fleet


def test_outage_step_is_1_while_the_flow_outage_is_open_and_absent_otherwise():
    fleet = Fleet()
    for agent, region in AGENTS:
        fleet.send(agent, region, flow_result())
    page = fleet.page.render().decode()
    assert "# TYPE probenet_outage_step gauge" in page  # the family is always described
    assert "probenet_outage_step{" not in page

    fleet = outage_fleet()
    [record] = fleet.classifier.open_outages()
    assert (record.probe, record.step, str(record.scope)) == (LOGIN, "login", "global")
    page = assert_page_is_the_reference(fleet)
    registry = fleet.reference()
    assert registry.get_sample_value("probenet_outage_step", {
        "probe": LOGIN, "service": "social", "step": "login"}) == 1
    assert registry.get_sample_value("probenet_outage_active", {
        "probe": LOGIN, "service": "social", "scope": "global"}) == 1
    # The alert rules' join: `probenet_outage_active{scope="global"} * on (probe, service)
    # group_left (step) probenet_outage_step` needs one step series per (probe, service).
    steps = [s for f in text_string_to_metric_families(page) if f.name == "probenet_outage_step"
             for s in f.samples]
    assert [s.labels for s in steps] == [{"probe": LOGIN, "service": "social", "step": "login"}]

    for _ in range(3):
        for agent, region in AGENTS:
            fleet.send(agent, region, flow_result())
    assert not fleet.classifier.open_outages()
    assert "probenet_outage_step{" not in assert_page_is_the_reference(fleet)


def test_a_service_record_with_a_step_has_its_own_series():
    fleet = Fleet()
    rounds = [(flow_result(), flow_result(probe="social-post"))] * 2 + [
        (flow_result(failed_at="login"), flow_result(failed_at="login", probe="social-post"))
    ] * 3
    for results in rounds:
        for agent, region in AGENTS:
            fleet.send(agent, region, *results)
    registry = fleet.reference()
    assert registry.get_sample_value("probenet_outage_step", {
        "probe": "", "service": "social", "step": "login"}) == 1
    assert registry.get_sample_value("probenet_outage_step", {
        "probe": "social-post", "service": "social", "step": "login"}) == 1
    assert_page_is_the_reference(fleet)


def test_out_of_contract_steps_are_left_out_and_counted():
    fleet = Fleet()
    fleet.send("fra-1", "eu", flow_result(seconds=math.nan))
    # Past the ingest (which refuses these): repeated names, flow details of an http result.
    fleet.send("iad-1", "us", flow_result(steps=("home", "home", "feed")))
    fleet.send("sin-1", "ap", flow_result(kind="http"))
    registry = fleet.reference()
    assert step_value(registry, "probenet_step_success", "home", "fra-1", "eu") == 1
    assert step_value(registry, "probenet_step_duration_seconds", "home", "fra-1",
                      "eu") is None
    assert [step_value(registry, "probenet_step_success", step, "iad-1", "us")
            for step in ("home", "feed")] == [1, 1]
    assert step_value(registry, "probenet_step_success", "home", "sin-1", "ap") is None
    dropped = fleet.details.dropped
    assert (dropped["step_seconds"], dropped["flow_steps"]) == (3, 1 + 3)
    assert_page_is_the_reference(fleet)


def test_awkward_step_names_are_escaped_as_prometheus_client_escapes_them():
    fleet = Fleet()
    fleet.send("fra-1", "eu", flow_result(steps=("home", AWKWARD)))
    assert_page_is_the_reference(fleet)
    assert step_value(fleet.reference(), "probenet_step_success", AWKWARD, "fra-1", "eu") == 1
    for scheme in ("allow-utf-8", "underscores", "dots", "values"):
        assert om_exposition.escape_label_name("step", scheme) == "step"


@pytest.mark.parametrize(("yaml", "exported"), [
    ("", True),
    ("metrics: {per_agent: all, per_kind_details: false}", False),
    ("metrics: {per_agent: none}", False),
])
def test_step_series_come_with_the_per_kind_details(yaml, exported):
    fleet = Fleet(yaml)
    for agent, region in AGENTS:
        fleet.send(agent, region, flow_result(failed_at="login"))
    page = fleet.page.render().decode()
    assert ("probenet_step_success{" in page) is exported
    assert ("probenet_step_duration_seconds{" in page) is exported
    assert "# TYPE probenet_outage_step gauge" in page
    assert series(page) == series(
        fleet.page.render().decode())  # stable across scrapes


def test_packed_flow_facts_round_trip_and_are_not_tracked_by_the_garbage_collector():
    fleet = Fleet()
    message = flow_result(failed_at="feed")
    fleet.send("fra-1", "eu", message)
    fleet.page.render()
    kept = fleet.details.kept("fra-1", LOGIN)
    assert isinstance(kept, tuple)
    assert details.unpack(kept) == details.facts_of(message)
    facts = details.unpack(kept)
    assert isinstance(facts, details.FlowFacts)
    assert [(s.name, s.success) for s in facts.steps] == [
        ("home", True), ("login", True), ("feed", False)]
    for _ in range(2):
        gc.collect()
    assert not gc.is_tracked(kept)


def test_promtool_check_metrics_is_clean_with_flow_series():
    promtool = need_binary("promtool", "prometheus")
    fleet = outage_fleet()
    fleet.send("fra-1", "eu", flow_result(steps=("home", AWKWARD)))
    page = fleet.page.render()
    assert b"probenet_step_success{" in page
    assert b"probenet_outage_step{" in page
    checked = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True,
                             timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().strip() == "", checked.stdout.decode()
