"""The `limits:` that make one agent harmless, over the real gRPC ingest: a cap on each agent's
distinct probes, on field lengths and result size, and on agents connected at once."""

from __future__ import annotations

import logging

import grpc
import pytest

from probenet.collector.config import parse_config
from probenet.collector.server import CollectorService
from support.collector_client import (
    ManualClock,
    StreamEndedError,
    TestAgent,
    applied,
    collector_yaml,
    counter,
    http_get,
    metric_value,
    rejections,
)
from support.targets import wait_until

S = grpc.StatusCode
INGEST_LOGGER = "probenet.collector.ingest"


def limits_config(tmp_path, limits: str, extra: str = ""):
    return parse_config(collector_yaml(str(tmp_path / "journal.db"),
                                       extra=f"limits: {{{limits}}}\n{extra}"))








def open_streams(service) -> float:
    return counter(service, "probenet_agent_streams")


async def failures(service, probe: str, region: str, reason: str) -> float:
    """probenet_probe_failures_total of a `connect` failure, read from the /metrics page."""
    status, _, text = await http_get(service.http.url + "/metrics")
    assert status == 200
    return metric_value(text, "probenet_probe_failures_total", probe=probe, region=region,
                        phase="connect", reason=reason) or 0.0


def samples(service, agent: str) -> dict[str, bool]:
    """probe -> success of the latest applied result of `agent`."""
    return {s.probe: s.success for s in service.classifier.samples() if s.agent == agent}


def limit_logs(caplog, reason: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == INGEST_LOGGER and getattr(r, "reason", None) == reason]


# -- distinct probes per agent ---------------------------------------------------------------


async def test_an_agent_over_its_probe_cap_is_rejected_while_another_keeps_being_applied(
        tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=INGEST_LOGGER)
    config = limits_config(tmp_path, "max_probes_per_agent: 5")
    async with CollectorService(config, clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "noisy", "eu") as noisy, \
            TestAgent(service.grpc_address, "quiet", "us") as quiet:
        wide = [f"p{i}" for i in range(8)]
        ack = await noisy.send(noisy.results(wide))
        assert ack.acked_seq == 8  # the rejected results are acknowledged: never resent
        assert sorted(samples(service, "noisy")) == wide[:5]
        assert rejections(service, "too_many_probes") == 3

        # The other agent is unaffected (its own cap counts its own probes), before and
        # after the noisy one goes on.
        await quiet.send(quiet.results(wide[:4]))
        assert sorted(samples(service, "quiet")) == wide[:4]
        await noisy.send(noisy.results(wide, success=False))
        assert rejections(service, "too_many_probes") == 6
        # Its known probes keep being applied (the failures replaced the successes).
        assert samples(service, "noisy") == dict.fromkeys(wide[:5], False)
        await quiet.send(quiet.results([*wide[:4], "extra"], success=False))
        assert samples(service, "quiet") == dict.fromkeys([*wide[:4], "extra"], False)
        # Failures of the rejected probes are not counted either.
        assert await failures(service, "p4", "eu", "connect_refused") == 1
        assert await failures(service, "p6", "eu", "connect_refused") == 0

    assert applied(service) == 5 + 4 + 5 + 5
    assert counter(service, "probenet_ingest_results_total", outcome="rejected") == 6
    # One log line for the agent over its cap, naming the cap and its count; none for the
    # other agent.
    [line] = limit_logs(caplog, "too_many_probes")
    assert line.agent == "noisy"
    assert "the agent reports 5 distinct probes; the limit is 5" in line.detail
    assert "limits.max_probes_per_agent" in line.detail


async def test_the_probe_cap_counts_across_batches_and_holds_across_a_reconnect(tmp_path):
    config = limits_config(tmp_path, "max_probes_per_agent: 4")
    clock = ManualClock()
    async with CollectorService(config, clock=clock) as service:
        async with TestAgent(service.grpc_address, "fra-1", "eu", epoch=1) as agent:
            await agent.send(agent.results(["a", "b"]))
            # Two slots left: c (twice: one slot) and d take them, a and b are known, the
            # new e and f are refused.
            await agent.send(agent.results(["c", "c", "a", "d", "e", "b", "f"]))
            assert sorted(samples(service, "fra-1")) == ["a", "b", "c", "d"]
            assert rejections(service, "too_many_probes") == 2
        await wait_until(lambda: open_streams(service) == 0)

        # A new stream (a new epoch: the agent restarted) finds its probes still counted.
        async with TestAgent(service.grpc_address, "fra-1", "eu", epoch=2) as again:
            ack = await again.send(again.results(["e", "a", "z"], success=False))
            assert ack.acked_seq == 3
        assert rejections(service, "too_many_probes") == 4
        assert samples(service, "fra-1") == {"a": False, "b": True, "c": True, "d": True}
        # Probes whose results stopped coming still hold their slots: the classifier keeps
        # their pairs (and their series) until the collector restarts.
        service.classifier.tick(clock.advance(60))
        assert [a.stale for a in service.classifier.agents()] == [True]
        async with TestAgent(service.grpc_address, "fra-1", "eu", epoch=2,
                             next_seq=4) as same_epoch:
            assert same_epoch.welcome.acked_seq == 3
            await same_epoch.send(same_epoch.results(["y", "b"]))
        assert rejections(service, "too_many_probes") == 5
        assert sorted(samples(service, "fra-1")) == ["a", "b", "c", "d"]


# -- lengths and sizes -----------------------------------------------------------------------


async def test_fields_over_their_limits_are_rejected_and_the_rest_applied(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=INGEST_LOGGER)
    config = limits_config(tmp_path, ("max_target_length: 40, max_reason_length: 12, "
                                      "max_label_value_length: 16, max_result_bytes: 1024"))
    async with CollectorService(config, clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        batch = [
            agent.result("ok-1"),
            agent.result("long-target", target="https://" + "t" * 40 + ".example/"),
            agent.result("edge-target", target="https://" + "t" * 23 + ".example/"),
            agent.result("long-reason", success=False, reason="connect_refused"),
            agent.result("edge-reason", success=False, reason="r" * 12),
            agent.result("long-service", service="s" * 17),
            agent.result("edge-service", service="s" * 16),
            agent.result("big", success=False, reason="boom", error="e" * 2000),
            agent.result("fits", success=False, reason="boom", error="e" * 500),
            agent.result("ok-2"),
        ]
        assert len(batch[2].target) == 40
        ack = await agent.send(batch)
        assert ack.acked_seq == 10
        assert await failures(service, "edge-reason", "eu", "r" * 12) == 1
        assert await failures(service, "long-reason", "eu", "connect_refused") == 0
    assert sorted(samples(service, "fra-1")) == sorted(
        ["ok-1", "edge-target", "edge-reason", "edge-service", "fits", "ok-2"])
    assert rejections(service, "field_too_long") == 3
    assert rejections(service, "result_too_large") == 1
    assert applied(service) == 6
    [too_long] = limit_logs(caplog, "field_too_long")
    assert "target 40, service 16, failure reason 12 characters" in too_long.detail
    [too_large] = limit_logs(caplog, "result_too_large")
    assert "over 1024 bytes (limits.max_result_bytes)" in too_large.detail


async def test_result_bytes_are_only_bounded_where_they_are_kept(tmp_path):
    config = limits_config(tmp_path, "max_result_bytes: 1024")
    async with CollectorService(config, clock=ManualClock(), kind_details=False) as service, \
            TestAgent(service.grpc_address, "fra-1", "eu") as agent:
        await agent.send([agent.result("big", success=False, error="e" * 2000)])
    assert samples(service, "fra-1") == {"big": False}
    assert rejections(service, "result_too_large") == 0


@pytest.mark.parametrize(("agent_id", "region", "labels", "detail"), [
    ("a" * 17, "eu", {}, "agent_id: 17 characters long; at most 16 are allowed"),
    ("fra-1", "r" * 17, {}, "region: 17 characters long; at most 16 are allowed"),
    ("fra-1", "eu", {"network": "v" * 17},
     "labels['network']: 17 characters long; at most 16 are allowed"),
])
async def test_a_hello_value_over_the_label_limit_is_refused(tmp_path, agent_id, region,
                                                            labels, detail):
    config = limits_config(tmp_path, "max_label_value_length: 16")
    async with CollectorService(config, clock=ManualClock()) as service:
        with pytest.raises(StreamEndedError) as ended:
            async with TestAgent(service.grpc_address, agent_id, region, labels=labels):
                pass
        assert ended.value.code is S.INVALID_ARGUMENT
        assert ended.value.details == f"{detail} (limits.max_label_value_length)"
        assert rejections(service, "bad_hello") == 1
        # At the limit, the same agent is welcome.
        async with TestAgent(service.grpc_address, agent_id[:16], region[:16],
                             labels={k: v[:16] for k, v in labels.items()}) as agent:
            assert (await agent.send([agent.result("web")])).acked_seq == 1


# -- agents at once --------------------------------------------------------------------------


async def test_the_agent_cap_refuses_one_more_until_another_leaves(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=INGEST_LOGGER)
    config = limits_config(tmp_path, "max_agents: 2")
    async with CollectorService(config, clock=ManualClock()) as service, \
            TestAgent(service.grpc_address, "a-1", "eu", epoch=1) as first, \
            TestAgent(service.grpc_address, "a-2", "us", epoch=1) as second:
        with pytest.raises(StreamEndedError) as refused:
            async with TestAgent(service.grpc_address, "a-3", "ap"):
                pass
        assert refused.value.code is S.RESOURCE_EXHAUSTED
        assert refused.value.details == (
            "2 agent streams are open; the limit is 2 (limits.max_agents); "
            "retry later")
        assert rejections(service, "too_many_agents") == 1

        # A connected agent's reconnect replaces its stream: never refused.
        async with TestAgent(service.grpc_address, "a-2", "us", epoch=1) as replacing:
            code, _ = await second.status()
            assert code is S.ABORTED
            assert (await replacing.send([replacing.result("web")])).acked_seq == 1
            assert rejections(service, "too_many_agents") == 1
            # The other connected agent is not disturbed.
            assert (await first.send([first.result("web")])).acked_seq == 1

            await first.close()
            await wait_until(lambda: open_streams(service) == 1)
            async with TestAgent(service.grpc_address, "a-3", "ap") as third:
                assert (await third.send([third.result("web")])).acked_seq == 1
    assert rejections(service, "too_many_agents") == 1
    [line] = limit_logs(caplog, "too_many_agents")
    assert line.agent == "a-3"


async def test_without_a_registry_distinct_agent_ids_are_capped(tmp_path):
    config = limits_config(tmp_path, "max_unregistered_agents: 2")
    async with CollectorService(config, clock=ManualClock()) as service:
        for agent_id in ("a-1", "a-2"):
            async with TestAgent(service.grpc_address, agent_id, "eu") as agent:
                await agent.send([agent.result("web")])
        await wait_until(lambda: open_streams(service) == 0)
        # No stream is open, but the collector keeps both agents (and their pairs).
        with pytest.raises(StreamEndedError) as refused:
            async with TestAgent(service.grpc_address, "a-3", "eu"):
                pass
        assert refused.value.code is S.RESOURCE_EXHAUSTED
        assert "limits.max_unregistered_agents" in refused.value.details
        assert rejections(service, "too_many_agents") == 1
        async with TestAgent(service.grpc_address, "a-1", "eu") as known:
            assert (await known.send([known.result("web")])).acked_seq == 1
    assert sorted(a.id for a in service.classifier.agents()) == ["a-1", "a-2"]


async def test_with_a_registry_the_registry_bounds_agent_ids(tmp_path):
    config = limits_config(tmp_path, "max_unregistered_agents: 1", extra=(
        "agents:\n  - {id: a-1, region: eu}\n  - {id: a-2, region: eu}\n"))
    async with CollectorService(config, clock=ManualClock()) as service:
        for agent_id in ("a-1", "a-2"):
            async with TestAgent(service.grpc_address, agent_id, "eu") as agent:
                await agent.send([agent.result("web")])
        with pytest.raises(StreamEndedError) as refused:
            async with TestAgent(service.grpc_address, "a-3", "eu"):
                pass
        assert refused.value.code is S.UNAUTHENTICATED
    assert rejections(service, "too_many_agents") == 0
    assert rejections(service, "unknown_agent") == 1


async def test_every_limit_reason_exists_from_the_start(tmp_path):
    async with CollectorService(limits_config(tmp_path, ""), clock=ManualClock()) as service:
        for reason in ("too_many_agents", "too_many_probes", "result_too_large",
                       "field_too_long"):
            assert service.registry.get_sample_value(
                "probenet_ingest_rejections_total", {"reason": reason}) == 0.0



async def test_a_hello_interval_over_the_probe_interval_limit_is_refused(tmp_path):
    config = limits_config(tmp_path, "max_probe_interval: 1h")
    async with CollectorService(config, clock=ManualClock()) as service:
        with pytest.raises(StreamEndedError) as ended:
            async with TestAgent(service.grpc_address, "fra-1", "eu", interval_ms=3_600_001):
                pass
        assert ended.value.code is S.INVALID_ARGUMENT
        assert ended.value.details == ("interval_ms: 3600001 is over 3600s "
                                       "(limits.max_probe_interval)")
        assert rejections(service, "bad_hello") == 1
        # At the limit, the same agent is welcome.
        async with TestAgent(service.grpc_address, "fra-1", "eu", interval_ms=3_600_000) as agent:
            assert (await agent.send([agent.result("web")])).acked_seq == 1
