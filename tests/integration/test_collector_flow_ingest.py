"""The ingest contract of `flow` results, over the real gRPC ingest.

Step names are label values: the failing `step` and each step's name are bounded by
`limits.max_label_value_length` (`field_too_long`), the steps by `limits.max_flow_steps`
(`too_many_steps`), and details that do not hold together are refused (`bad_flow`). Each
refused result is counted, acknowledged (never resent) and leaves no trace; the rest of its
batch is applied. A `step` where none belongs (a success, another kind) is ignored and
counted as a dropped value.
"""

from __future__ import annotations

import pytest

from probenet.collector.config import parse_config
from probenet.collector.server import CollectorService
from probenet.configfile import ConfigError
from probenet.v1 import probenet_pb2 as pb
from support.collector_client import (
    ManualClock,
    TestAgent,
    applied,
    collector_yaml,
    counter,
    http_get,
    metric_value,
    rejections,
)

STEPS = ("home", "login", "feed")


def config_of(tmp_path, limits: str = ""):
    extra = f"limits: {{{limits}}}\n" if limits else ""
    return parse_config(collector_yaml(str(tmp_path / "journal.db"), extra=extra))


def flow(agent: TestAgent, probe: str, *, failed_at: str | None = None,
         steps: tuple[str, ...] = STEPS, step: str | None = None,
         index: int | None = None, step_count: int | None = None, success: bool | None = None,
         **fields) -> pb.ProbeResult:
    """A flow result: the steps up to `failed_at` ran; `step`, `index`... override."""
    ran = []
    for name in steps:
        ran.append(pb.FlowStep(name=name, success=name != failed_at, duration_seconds=0.1))
        if name == failed_at:
            break
    failed = failed_at is not None
    details = pb.FlowDetails(
        steps=ran, failed_step_index=(len(ran) if failed else 0) if index is None else index,
        step_count=len(steps) if step_count is None else step_count)
    return agent.result(probe, kind="flow", success=not failed if success is None else success,
                        phase="validation", reason="status_mismatch",
                        step=(failed_at or "") if step is None else step, flow=details,
                        **fields)


def probes_of(service, agent: str) -> set[str]:
    return {s.probe for s in service.classifier.samples() if s.agent == agent}


async def test_step_names_over_the_label_limit_are_refused(tmp_path):
    async with CollectorService(config_of(tmp_path, "max_label_value_length: 16"),
                                clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        long_name = "s" * 17
        ack = await agent.send([
            flow(agent, "ok-before"),
            flow(agent, "long-step", failed_at=long_name, steps=("home", long_name)),
            flow(agent, "long-name", steps=("home", long_name)),  # a success: its steps
            flow(agent, "edge", failed_at="s" * 16, steps=("home", "s" * 16)),
            flow(agent, "bare-long", step=long_name, success=False, index=0, steps=()),
            flow(agent, "ok-after")])
        assert ack.acked_seq == 6
        assert rejections(service, "field_too_long") == 3
        assert probes_of(service, "fra-1") == {"ok-before", "edge", "ok-after"}
        assert applied(service) == 3


async def test_too_many_steps_are_refused(tmp_path):
    async with CollectorService(config_of(tmp_path), clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        assert service.config.limits.max_flow_steps == 50  # the default, the agent's too
        fifty = tuple(f"s{i}" for i in range(50))
        fifty_one = (*fifty, "s50")
        await agent.send([
            flow(agent, "fifty", steps=fifty),
            flow(agent, "ran-51", steps=fifty_one),
            flow(agent, "configured-51", failed_at="s0", steps=fifty_one),  # 1 ran of 51
            flow(agent, "ok")])
        assert rejections(service, "too_many_steps") == 2
        assert probes_of(service, "fra-1") == {"fifty", "ok"}


async def test_max_flow_steps_is_the_configured_bound(tmp_path):
    async with CollectorService(config_of(tmp_path, "max_flow_steps: 3"),
                                clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        await agent.send([flow(agent, "three"),
                          flow(agent, "four", steps=(*STEPS, "logout"))])
        assert rejections(service, "too_many_steps") == 1
        assert probes_of(service, "fra-1") == {"three"}


@pytest.mark.parametrize(("name", "fields"), [
    ("repeated name", {"steps": ("home", "home", "feed")}),
    ("empty name", {"steps": ("home", "", "feed")}),
    ("index beyond the steps", {"failed_at": "login", "index": 3}),
    ("index on a success", {"index": 1}),
    ("step not the failing one", {"failed_at": "login", "step": "feed"}),
    ("no step on a failure at an index", {"failed_at": "login", "step": ""}),
])
async def test_flow_details_that_do_not_hold_together_are_refused(tmp_path, name, fields):
    async with CollectorService(config_of(tmp_path), clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        ack = await agent.send([flow(agent, "before"), flow(agent, "garbage", **fields),
                                flow(agent, "after", failed_at="feed")])
        assert ack.acked_seq == 3, name
        assert rejections(service, "bad_flow") == 1, name
        assert probes_of(service, "fra-1") == {"before", "after"}, name
        text = (await http_get(service.http.url + "/metrics"))[2]
    assert 'probe="garbage"' not in text


async def test_a_failed_flow_without_details_or_steps_is_taken(tmp_path):
    # A flow that fails before its first step (no step ran) names none.
    async with CollectorService(config_of(tmp_path), clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        await agent.send([
            flow(agent, "nothing-ran", success=False, steps=(), index=0, step=""),
            agent.result("no-details", kind="flow", success=False, step="login")])
        assert probes_of(service, "fra-1") == {"nothing-ran", "no-details"}
        assert sum(rejections(service, reason) for reason in (
            "bad_flow", "too_many_steps", "field_too_long")) == 0


async def test_a_step_where_none_belongs_is_ignored_and_counted(tmp_path):
    async with CollectorService(config_of(tmp_path), clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        await agent.send([
            agent.result("web", success=False, step="login"),  # http
            agent.result("edge", kind="tcp", step="login"),  # a success of another kind
            flow(agent, "journey", step="login"),  # a flow success
            flow(agent, "failing", failed_at="login")])  # where it belongs: not counted
        assert probes_of(service, "fra-1") == {"web", "edge", "journey", "failing"}
        assert counter(service, "probenet_result_values_dropped_total", field="step") == 3
        text = (await http_get(service.http.url + "/metrics"))[2]
    assert metric_value(text, "probenet_result_values_dropped_total", field="step") == 3


async def test_flow_details_on_another_kind_give_no_step_series(tmp_path):
    async with CollectorService(config_of(tmp_path), clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        odd = agent.result("odd", kind="http", flow=pb.FlowDetails(steps=[
            pb.FlowStep(name="home", success=True, duration_seconds=0.1)]))
        await agent.send([odd, flow(agent, "journey")])
        text = (await http_get(service.http.url + "/metrics"))[2]
    assert metric_value(text, "probenet_step_success", probe="odd") is None
    assert metric_value(text, "probenet_step_success", probe="journey", step="home") == 1
    assert metric_value(text, "probenet_result_values_dropped_total", field="flow_steps") == 1


def test_the_limit_is_a_config_key_with_bounds():
    assert parse_config("").limits.max_flow_steps == 50
    assert parse_config("limits: {max_flow_steps: 1000}\n").limits.max_flow_steps == 1000
    for bad in (0, 1001):
        with pytest.raises(ConfigError, match=r"limits\.max_flow_steps"):
            parse_config(f"limits: {{max_flow_steps: {bad}}}\n")
