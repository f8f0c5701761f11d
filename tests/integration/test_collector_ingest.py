"""The ingest protocol against the real gRPC server: dedup, auth, hostile input, health."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from probenet.collector.config import parse_config
from probenet.collector.server import CollectorService
from probenet.v1 import probenet_pb2 as pb
from support.collector_client import (
    ManualClock,
    RawStream,
    StreamEndedError,
    TestAgent,
    batch_bytes,
    collector_yaml,
    counter,
    hello_bytes,
    http_get,
    http_json,
    make_result,
    metric_value,
    rejections,
)
from support.system import need_binary

S = grpc.StatusCode


def registry_yaml(tmp_path, extra: str = "") -> str:
    (tmp_path / "fra-1.token").write_text("s3cret-fra\n")
    (tmp_path / "iad-1.token").write_text("s3cret-iad\n")
    return collector_yaml(str(tmp_path / "journal.db"), extra=(
        "agents:\n"
        f"  - {{id: fra-1, region: eu, token_file: {tmp_path / 'fra-1.token'}}}\n"
        f"  - {{id: iad-1, region: us, token_file: {tmp_path / 'iad-1.token'}}}\n"
        "  - {id: sin-1, region: ap}\n" + extra))


@pytest.fixture
async def collector(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db"), extra=(
        "limits: {max_message_bytes: 65536, max_batch_results: 50, hello_timeout: 300ms}\n")))
    async with CollectorService(config, clock=ManualClock()) as service:
        yield service


@pytest.fixture
async def secured(tmp_path):
    async with CollectorService(parse_config(registry_yaml(tmp_path))) as service:
        yield service




def ingest(service, outcome: str) -> float:
    return counter(service, "probenet_ingest_results_total", outcome=outcome)




# -- deduplication ---------------------------------------------------------------------------


async def test_resent_results_are_acked_but_not_counted_twice(collector):
    async with TestAgent(collector.grpc_address, "fra-1", "eu", epoch=7) as agent:
        assert agent.welcome.acked_seq == 0
        batch = [make_result(seq, f"p{seq}", success=seq % 2 == 0) for seq in range(1, 11)]
        ack = await agent.send(batch)
        assert (ack.epoch, ack.acked_seq) == (7, 10)
        failures_before = counter(collector, "probenet_probe_failures_total", probe="p1",
                                  region="eu", phase="connect", reason="connect_refused")
        # The same batch again (as after a lost ack): acknowledged, dropped as duplicates.
        ack = await agent.send(batch)
        assert ack.acked_seq == 10
        assert ingest(collector, "applied") == 10
        assert ingest(collector, "duplicate") == 10
        # Overlapping: 6..10 are duplicates, 11..15 new.
        overlap = [make_result(seq, f"p{seq}") for seq in range(6, 16)]
        ack = await agent.send(overlap)
        assert ack.acked_seq == 15
        assert ingest(collector, "applied") == 15
        assert ingest(collector, "duplicate") == 15
        assert counter(collector, "probenet_ingest_batches_total") == 3
        assert counter(collector, "probenet_probe_failures_total", probe="p1", region="eu",
                       phase="connect", reason="connect_refused") == failures_before == 1
    # The resent p6..p10 (now successes) did not overwrite the applied samples.
    samples = {s.probe: s.success for s in collector.classifier.samples()}
    assert samples["p7"] is False
    assert samples["p6"] is True
    assert samples["p15"] is True

    # A reconnect in the same epoch learns what is applied; a newer epoch starts over.
    async with TestAgent(collector.grpc_address, "fra-1", "eu", epoch=7) as again:
        assert again.welcome.acked_seq == 15
    async with TestAgent(collector.grpc_address, "fra-1", "eu", epoch=8) as newer:
        assert newer.welcome.acked_seq == 0
        assert (await newer.send([newer.result("p1")])).acked_seq == 1


async def test_an_older_epoch_is_refused(collector):
    async with TestAgent(collector.grpc_address, "fra-1", "eu", epoch=100) as agent:
        await agent.send([agent.result("web")])
    with pytest.raises(StreamEndedError) as ended:
        async with TestAgent(collector.grpc_address, "fra-1", "eu", epoch=99):
            pass
    assert ended.value.code is S.FAILED_PRECONDITION
    assert rejections(collector, "stale_epoch") == 1


async def test_a_second_stream_replaces_the_first(collector):
    async with TestAgent(collector.grpc_address, "fra-1", "eu", epoch=5) as first:
        await first.send([first.result("web")])
        async with TestAgent(collector.grpc_address, "fra-1", "eu", epoch=5,
                             next_seq=2) as second:
            assert second.welcome.acked_seq == 1
            code, details = await first.status()
            assert code is S.ABORTED
            assert "replaced" in details
            assert (await second.send([second.result("web")])).acked_seq == 2
            agents = await http_json(collector.http.url + "/api/v1/agents")
            assert [(a["id"], a["connected"]) for a in agents] == [("fra-1", True)]


# -- validation ------------------------------------------------------------------------------


async def test_invalid_results_are_rejected_by_reason_and_the_rest_applied(collector):
    async with TestAgent(collector.grpc_address, "fra-1", "eu") as agent:
        batch = [
            make_result(1, "good-1"),
            make_result(2, "", kind="http"),                     # bad_probe
            make_result(3, "weird", kind="carrier-pigeon"),      # bad_kind
            make_result(4, "slow", duration_seconds=math.nan),   # bad_duration
            make_result(5, "neg", duration_seconds=-1.0),        # bad_duration
            make_result(5, "again"),                             # seq_order
            pb.ProbeResult(seq=6, probe="phase", kind="tcp", success=False,
                           failed_phase=42),                     # bad_phase
            make_result(7, "x" * 300),                           # bad_probe (too long)
            make_result(8, "good-2"),
        ]
        ack = await agent.send(batch)
        assert ack.acked_seq == 8
    assert ingest(collector, "applied") == 2
    assert ingest(collector, "rejected") == 7
    assert rejections(collector, "bad_probe") == 2
    assert rejections(collector, "bad_kind") == 1
    assert rejections(collector, "bad_duration") == 2
    assert rejections(collector, "seq_order") == 1
    assert rejections(collector, "bad_phase") == 1
    assert sorted(s.probe for s in collector.classifier.samples()) == ["good-1", "good-2"]


async def test_a_batch_over_the_limit_ends_the_stream(collector):
    async with TestAgent(collector.grpc_address, "fra-1", "eu") as agent:
        assert agent.welcome.max_batch_results == 50
        with pytest.raises(StreamEndedError) as ended:
            await agent.send(agent.results([f"p{i}" for i in range(51)]))
    assert ended.value.code is S.RESOURCE_EXHAUSTED
    assert rejections(collector, "batch_too_large") == 1
    assert ingest(collector, "applied") == 0


async def test_garbage_and_oversized_messages_do_not_disturb_other_agents(collector):
    async with TestAgent(collector.grpc_address, "iad-1", "us") as bystander:
        await bystander.send([bystander.result("web")])
        async with RawStream(collector.grpc_address) as raw:
            await raw.send(b"\x0a\xff\xff\xff\xff\x0fnot protobuf")
            code, _ = await raw.outcome()
        assert code is S.INVALID_ARGUMENT
        assert rejections(collector, "malformed") == 1

        async with RawStream(collector.grpc_address) as raw:
            await raw.send(hello_bytes("fra-1", "eu"))
            assert (await raw.read()).WhichOneof("body") == "welcome"
            await raw.send(b"\x00" * 100_000)  # over max_message_bytes (64 KiB)
            code, _ = await raw.outcome()
        assert code is S.RESOURCE_EXHAUSTED
        assert rejections(collector, "message_too_large") == 1

        async with RawStream(collector.grpc_address) as raw:
            await raw.send(hello_bytes("fra-1", "eu"))
            await raw.read()
            await raw.send(b"\x00" * 1_000_000)  # far over: grpc cuts it before we see it
            code, _ = await raw.outcome()
        assert code is S.RESOURCE_EXHAUSTED

        async with RawStream(collector.grpc_address) as raw:
            await raw.send(batch_bytes([make_result(1, "web")]))  # no Hello first
            code, details = await raw.outcome()
        assert code is S.INVALID_ARGUMENT
        assert "Hello" in details
        assert rejections(collector, "no_hello") == 1

        async with RawStream(collector.grpc_address) as raw:
            await raw.send(hello_bytes("fra-2", "eu"))
            await raw.read()
            await raw.send(hello_bytes("fra-2", "eu"))  # a second Hello
            code, _ = await raw.outcome()
        assert code is S.INVALID_ARGUMENT
        assert rejections(collector, "unexpected_hello") == 1

        async with RawStream(collector.grpc_address) as raw:
            await raw.send(hello_bytes("bad\nname", "eu"))
            code, _ = await raw.outcome()
        assert code is S.INVALID_ARGUMENT
        assert rejections(collector, "bad_hello") == 1

        # The bystander's stream was never disturbed.
        assert (await bystander.send([bystander.result("web")])).acked_seq == 2
    status, _, _ = await http_get(collector.http.url + "/readyz")
    assert status == 200


async def test_draining_answers_not_ready_and_refuses_new_streams(collector):
    async with TestAgent(collector.grpc_address, "fra-1", "eu") as agent:
        await agent.send([agent.result("web")])
        await collector.drain()
        code, details = await agent.status()
        assert code is S.UNAVAILABLE
        assert "shutting down" in details
    status, _, _ = await http_get(collector.http.url + "/readyz")
    assert status == 503
    status, _, _ = await http_get(collector.http.url + "/healthz")
    assert status == 200  # alive, just not ready
    async with grpc.aio.insecure_channel(collector.grpc_address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(StreamEndedError) as ended:
        async with TestAgent(collector.grpc_address, "iad-1", "us"):
            pass
    assert ended.value.code is S.UNAVAILABLE
    assert rejections(collector, "draining") == 1


async def test_a_silent_stream_is_ended_after_the_hello_deadline(collector):
    async with RawStream(collector.grpc_address) as raw:
        code, _ = await raw.outcome()  # sends nothing at all
    assert code is S.DEADLINE_EXCEEDED
    assert rejections(collector, "hello_timeout") == 1


# -- authentication --------------------------------------------------------------------------


async def test_registered_agent_with_its_token_is_welcome(secured):
    async with TestAgent(secured.grpc_address, "fra-1", "eu", token="s3cret-fra") as agent:
        assert (await agent.send([agent.result("web")])).acked_seq == 1
    # An entry without token_file needs none.
    async with TestAgent(secured.grpc_address, "sin-1", "ap") as agent:
        assert (await agent.send([agent.result("web")])).acked_seq == 1


@pytest.mark.parametrize(("agent_id", "region", "token", "code", "reason"), [
    ("fra-1", "us", "s3cret-fra", S.PERMISSION_DENIED, "wrong_region"),
    ("fra-1", "eu", "s3cret-iad", S.UNAUTHENTICATED, "bad_token"),
    ("fra-1", "eu", None, S.UNAUTHENTICATED, "missing_token"),
    ("ghost-1", "eu", "s3cret-fra", S.UNAUTHENTICATED, "unknown_agent"),
])
async def test_bad_credentials_are_refused_and_counted(  # noqa: PLR0917 - parametrized
        secured, agent_id, region, token, code, reason):
    with pytest.raises(StreamEndedError) as ended:
        async with TestAgent(secured.grpc_address, agent_id, region, token=token):
            pass
    assert ended.value.code is code
    assert rejections(secured, reason) == 1
    assert await http_json(secured.http.url + "/api/v1/outages") == []
    views = {a["id"]: a for a in await http_json(secured.http.url + "/api/v1/agents")}
    assert views["fra-1"]["connected"] is False  # registered, never accepted
    text = (await http_get(secured.http.url + "/metrics"))[2]
    assert metric_value(text, "probenet_ingest_rejections_total", reason=reason) == 1
    assert metric_value(text, "probenet_agent_up", agent="fra-1", region="eu") == 0


async def test_mutual_tls_checks_the_certificate_names_the_agent(tmp_path):
    from support.certs import TestCA  # noqa: PLC0415

    ca = TestCA(tmp_path / "pki")
    server = ca.issue("localhost", "127.0.0.1")
    good = ca.issue("fra-1", client=True)
    other = ca.issue("iad-1", client=True)
    config = parse_config(collector_yaml(str(tmp_path / "journal.db"), extra=(
        f"tls: {{cert_file: {server.cert_file}, key_file: {server.key_file}, "
        f"client_ca_file: {ca.ca_file}}}\n"
        "agents: [{id: fra-1, region: eu}, {id: iad-1, region: us}]\n")))

    def creds(cert):
        return grpc.ssl_channel_credentials(root_certificates=ca.ca_pem,
                                            private_key=cert.key_pem,
                                            certificate_chain=cert.cert_pem)

    async with CollectorService(config) as service:
        address = f"localhost:{service.grpc_port}"
        async with TestAgent(address, "fra-1", "eu", credentials=creds(good)) as agent:
            assert (await agent.send([agent.result("web")])).acked_seq == 1
        with pytest.raises(StreamEndedError) as ended:
            async with TestAgent(address, "fra-1", "eu", credentials=creds(other)):
                pass
        assert ended.value.code is S.PERMISSION_DENIED
        assert rejections(service, "identity_mismatch") == 1


# -- health, reflection, metrics, API --------------------------------------------------------


async def test_health_and_reflection_are_served(collector):
    async with grpc.aio.insecure_channel(collector.grpc_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service_name in ("", "probenet.v1.Ingest"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service_name),
                                     timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflect.ServerReflectionInfo(timeout=10)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        names = {s.name for s in reply.list_services_response.service}
        assert {"probenet.v1.Ingest", "grpc.health.v1.Health"} <= names


async def test_metrics_pass_promtool_and_speak_openmetrics(collector):
    promtool = need_binary("promtool", "prometheus")
    async with TestAgent(collector.grpc_address, "fra-1", "eu") as agent, \
            TestAgent(collector.grpc_address, "iad-1", "us") as other:
        for _ in range(2):
            await agent.send([agent.result("web", success=False, service="meta"),
                              agent.result("api", service="meta")])
            await other.send([other.result("web", success=False, service="meta"),
                              other.result("api", service="meta")])
        status, content_type, text = await http_get(collector.http.url + "/metrics")
        assert status == 200
        assert content_type.startswith("text/plain")
        for name in ("probe_success", "probe_duration_seconds", "probenet_region_up",
                     "probenet_target_state", "probenet_outage_active", "probenet_agent_up",
                     "probenet_agent_impaired", "probenet_region_isolated",
                     "probenet_target_flapping", "probenet_monitoring_degraded",
                     "probenet_ingest_results_total", "probenet_ingest_rejections_total",
                     "probenet_outage_detection_seconds", "probenet_outages_opened_total",
                     "probenet_build_info", "probenet_probe_failures_total",
                     "probenet_journal_commit_seconds"):
            assert f"# TYPE {name}" in text or f"# TYPE {name.removesuffix('_total')}" in text, \
                name
        lint = await asyncio.to_thread(subprocess.run, [promtool, "check", "metrics"],
                                       input=text, capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        assert lint.stdout.strip() == ""
        assert lint.stderr.strip() == ""

        status, content_type, text = await http_get(
            collector.http.url + "/metrics",
            accept="application/openmetrics-text; version=1.0.0")
        assert content_type.startswith("application/openmetrics-text")
        assert text.rstrip().endswith("# EOF")


async def test_per_kind_details_reach_metrics_under_blackbox_names(collector):
    details = pb.HttpDetails(http_version="HTTP/2", tls=pb.TlsFacts(
        earliest_cert_expiry=1_900_000_000, version="TLS 1.3", cipher="TLS_AES_128_GCM_SHA256"))
    async with TestAgent(collector.grpc_address, "fra-1", "eu") as agent:
        await agent.send([agent.result(
            "web", status_code=204, http=details,
            phases=[pb.PhaseDuration(name="connect", seconds=0.25)])])
    text = (await http_get(collector.http.url + "/metrics"))[2]
    labels = {"probe": "web", "agent": "fra-1", "region": "eu", "kind": "http"}
    assert metric_value(text, "probe_http_status_code", **labels) == 204
    assert metric_value(text, "probe_ssl_earliest_cert_expiry", **labels) == 1_900_000_000
    assert metric_value(text, "probe_http_duration_seconds", phase="connect", **labels) == 0.25


async def test_outages_query_errors_name_the_parameter(collector):
    for query, parameter in (("active=maybe", "active"), ("limit=0", "limit"),
                             ("limit=ten", "limit"), ("limit=100000", "limit")):
        status, content_type, body = await http_get(
            f"{collector.http.url}/api/v1/outages?{query}")
        assert status == 400, query
        assert content_type.startswith("application/json")
        assert json.loads(body)["parameter"] == parameter
    status, _, body = await http_get(collector.http.url + "/")
    assert status == 200
    assert "/api/v1/targets" in body
    assert (await http_json(collector.http.url + "/healthz")) == {"status": "ok"}


async def test_each_result_of_a_mixed_batch_keeps_its_own_details(collector):
    # The ingest keeps each result's wire bytes by position in the batch: a batch mixing
    # results with and without details must give every pair its own facts.
    async with TestAgent(collector.grpc_address, "fra-1", "eu") as agent:
        await agent.send([
            agent.result("edge", kind="tcp"),
            agent.result("dns", kind="dns", dns=pb.DnsDetails(answer_rrs=3, authority_rrs=1),
                         phases=[pb.PhaseDuration(name="request", seconds=0.125)]),
            agent.result("plain", kind="tcp"),
            agent.result("ping", kind="icmp", icmp=pb.IcmpDetails(
                sent=4, received=3, rtt_avg_seconds=0.002)),
            agent.result("web", status_code=200, http=pb.HttpDetails(tls=pb.TlsFacts(
                earliest_cert_expiry=1_950_000_000, version="TLS 1.2"))),
        ])
    text = (await http_get(collector.http.url + "/metrics"))[2]
    base = {"agent": "fra-1", "region": "eu"}
    assert metric_value(text, "probe_dns_answer_rrs", probe="dns", kind="dns", **base) == 3
    assert metric_value(text, "probe_dns_authority_rrs", probe="dns", kind="dns", **base) == 1
    assert metric_value(text, "probe_dns_duration_seconds", probe="dns", kind="dns",
                        phase="request", **base) == 0.125
    assert metric_value(text, "probenet_icmp_packet_loss_ratio", probe="ping", kind="icmp",
                        **base) == 0.25
    assert metric_value(text, "probe_ssl_earliest_cert_expiry", probe="web", kind="http",
                        **base) == 1_950_000_000
    assert metric_value(text, "probe_tls_version_info", probe="web", kind="http",
                        version="TLS 1.2", **base) == 1
    for probe in ("edge", "plain"):  # nothing kind-specific: no per-kind series
        assert f'probe="{probe}"' not in "\n".join(
            line for line in text.splitlines() if line.startswith(("probe_dns", "probenet_icmp")))


async def test_only_accepted_results_replace_a_pairs_details(collector):
    def dns(answers: int, **fields) -> dict:
        return {"kind": "dns", "dns": pb.DnsDetails(answer_rrs=answers), **fields}

    async def answers() -> float | None:
        text = (await http_get(collector.http.url + "/metrics"))[2]
        return metric_value(text, "probe_dns_answer_rrs", probe="ns", agent="fra-1")

    async with TestAgent(collector.grpc_address, "fra-1", "eu") as agent:
        await agent.send([agent.result("ns", **dns(1)), agent.result("ns", **dns(2))])
        assert await answers() == 2  # the latest of the batch
        resent = agent.result("ns", seq=2, **dns(3))  # a duplicate: acked, not applied
        rejected = agent.result("ns", **dns(4, duration_seconds=-1.0))  # bad_duration
        await agent.send([resent, rejected])
        assert await answers() == 2
        assert rejections(collector, "bad_duration") == 1
        await agent.send([agent.result("ns", kind="dns")])  # nothing kind-specific
        assert await answers() is None  # no stale details from an older result


async def test_without_kind_details_only_the_per_kind_families_are_missing(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config, kind_details=False) as service:
        async with TestAgent(service.grpc_address, "fra-1", "eu") as agent:
            await agent.send([agent.result("web", status_code=200, http=pb.HttpDetails(
                tls=pb.TlsFacts(earliest_cert_expiry=1_950_000_000)))])
        text = (await http_get(service.http.url + "/metrics"))[2]
    assert metric_value(text, "probe_success", probe="web", agent="fra-1") == 1
    assert "probe_http_status_code" not in text
    assert "probe_ssl_earliest_cert_expiry" not in text


async def test_a_batch_with_a_malformed_result_inside_is_rejected(collector):
    # A well-formed batch envelope around a result that is not protobuf (wire type 7).
    garbage = b"\x07\x01"
    results = b"\x0a" + bytes([len(garbage)]) + garbage
    data = b"\x12" + bytes([len(results)]) + results
    async with RawStream(collector.grpc_address) as raw:
        await raw.send(hello_bytes("fra-1", "eu"))
        assert (await raw.read()).WhichOneof("body") == "welcome"
        await raw.send(data)
        code, _ = await raw.outcome()
    assert code is S.INVALID_ARGUMENT
    assert rejections(collector, "malformed") == 1
    assert not list(collector.classifier.samples())
