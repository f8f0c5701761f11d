"""The grpc probe against real grpc.aio servers serving the standard health service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from probenet.agent.config import ProbeSpec
from probenet.agent.errors import ProbeBuildError
from probenet.agent.probes import build_probe
from probenet.agent.probes import grpc as grpc_probe
from probenet.agent.probes.attempt import run_attempt
from probenet.agent.probes.base import PhaseTracker, ProbeOutcome
from probenet.v1 import probenet_pb2 as pb
from support.certs import TestCA
from support.system import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from support.certs import IssuedCert

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


class RecordingHealth(health.aio.HealthServicer):
    """The reference async health servicer, remembering each caller's address."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[str] = []

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
        self.peers.append(context.peer())
        return await super().Check(request, context)


class HealthServer:
    """A running grpc.aio server: its port and its health servicer."""

    def __init__(self, port: int, servicer: RecordingHealth) -> None:
        self.port = port
        self.health = servicer


@contextlib.asynccontextmanager
async def health_server(host: str = "127.0.0.1", *, cert: IssuedCert | None = None,
                        client_ca: TestCA | None = None,
                        with_health: bool = True) -> AsyncIterator[HealthServer]:
    server = grpc.aio.server()
    servicer = RecordingHealth()
    if with_health:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"[{host}]:0" if ":" in host else f"{host}:0"
    if cert is None:
        port = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials(
            [(cert.key_pem, cert.chain_pem)],
            root_certificates=client_ca.ca_pem if client_ca else None,
            require_client_auth=client_ca is not None)
        port = server.add_secure_port(address, credentials)
    await server.start()
    try:
        yield HealthServer(port, servicer)
    finally:
        await server.stop(grace=None)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("grpc-ca"))


def spec(target: str, **grpc_options: Any) -> ProbeSpec:
    return ProbeSpec(name="grpc-health", kind="grpc", target=target, interval="10s",
                     timeout="3s", grpc=grpc_options)


async def probe_once(probe: grpc_probe.GrpcProbe) -> ProbeOutcome:
    async with asyncio.timeout(3):
        outcomes = await probe.run(PhaseTracker())
    assert len(outcomes) == 1
    return outcomes[0]


def status_of(outcome: ProbeOutcome) -> str:
    assert isinstance(outcome.details, pb.GrpcDetails)
    return outcome.details.serving_status


# --------------------------------------------------------------------------- plaintext


@pytest.mark.parametrize(("host", "target_host"), [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")])
async def test_serving_server(host, target_host):
    async with health_server(host) as server:
        outcome = await probe_once(grpc_probe.build(spec(f"{target_host}:{server.port}"),
                                                    source_address=None))
    assert outcome.success, outcome.error
    assert status_of(outcome) == "SERVING"
    assert outcome.address == host
    assert set(outcome.phases) == {"resolve", "connect", "request"}


async def test_named_service_not_serving():
    async with health_server() as server:
        await server.health.set("shop.Checkout", NOT_SERVING)
        outcome = await probe_once(grpc_probe.build(
            spec(f"127.0.0.1:{server.port}", service="shop.Checkout"), source_address=None))
    assert not outcome.success
    assert (outcome.failed_phase, outcome.reason) == ("validation", "grpc_not_serving")
    assert status_of(outcome) == "NOT_SERVING"
    assert "shop.Checkout" in outcome.error


async def test_named_service_serving():
    async with health_server() as server:
        await server.health.set("shop.Checkout", SERVING)
        outcome = await probe_once(grpc_probe.build(
            spec(f"127.0.0.1:{server.port}", service="shop.Checkout"), source_address=None))
    assert outcome.success
    assert status_of(outcome) == "SERVING"


async def test_unknown_service():
    async with health_server() as server:
        outcome = await probe_once(grpc_probe.build(
            spec(f"127.0.0.1:{server.port}", service="no.such.Service"), source_address=None))
    assert not outcome.success
    assert (outcome.failed_phase, outcome.reason) == ("validation", "grpc_service_unknown")
    assert status_of(outcome) == "SERVICE_UNKNOWN"


async def test_server_without_health_service():
    async with health_server(with_health=False) as server:
        outcome = await probe_once(grpc_probe.build(spec(f"127.0.0.1:{server.port}"),
                                                    source_address=None))
    assert (outcome.success, outcome.reason) == (False, "grpc_unimplemented")
    assert outcome.details is None


async def test_nothing_listening_is_unavailable_in_connect_phase():
    port = free_port()
    probe = grpc_probe.build(spec(f"127.0.0.1:{port}"), source_address=None)
    with pytest.raises(grpc_probe.ProbeFailure) as caught:
        await probe_once(probe)
    assert (caught.value.phase, caught.value.reason) == ("connect", "grpc_unavailable")
    assert f"127.0.0.1:{port}" in caught.value.error
    assert "refused" in caught.value.error.lower()


async def test_every_run_opens_a_fresh_connection():
    async with health_server() as server:
        probe = grpc_probe.build(spec(f"127.0.0.1:{server.port}"), source_address=None)
        for _ in range(3):
            assert (await probe_once(probe)).success
    # Three calls from three different client ports: no connection was reused.
    assert len(server.health.peers) == 3
    assert len(set(server.health.peers)) == 3


async def test_server_going_down_between_runs():
    async with health_server() as server:
        probe = grpc_probe.build(spec(f"127.0.0.1:{server.port}"), source_address=None)
        assert (await probe_once(probe)).success
    with pytest.raises(grpc_probe.ProbeFailure) as caught:
        await probe_once(probe)
    assert caught.value.reason == "grpc_unavailable"


# --------------------------------------------------------------------------- TLS


async def test_tls_with_test_ca(ca):
    async with health_server(cert=ca.issue("localhost", "127.0.0.1")) as server:
        outcome = await probe_once(grpc_probe.build(
            spec(f"127.0.0.1:{server.port}", tls={"ca_file": str(ca.ca_file)}),
            source_address=None))
    assert outcome.success, outcome.error
    assert status_of(outcome) == "SERVING"


async def test_tls_server_name_override(ca):
    async with health_server(cert=ca.issue("health.internal")) as server:
        outcome = await probe_once(grpc_probe.build(
            spec(f"127.0.0.1:{server.port}",
                 tls={"ca_file": str(ca.ca_file), "server_name": "health.internal"}),
            source_address=None))
    assert outcome.success, outcome.error


async def test_tls_unknown_ca_is_unavailable(ca, tmp_path):
    stranger = TestCA(tmp_path, name="Stranger CA")
    async with health_server(cert=stranger.issue("localhost", "127.0.0.1")) as server:
        probe = grpc_probe.build(
            spec(f"127.0.0.1:{server.port}", tls={"ca_file": str(ca.ca_file)}),
            source_address=None)
        with pytest.raises(grpc_probe.ProbeFailure) as caught:
            await probe_once(probe)
    assert (caught.value.phase, caught.value.reason) == ("connect", "grpc_unavailable")


async def test_plaintext_probe_against_tls_server_is_unavailable(ca):
    async with health_server(cert=ca.issue("localhost", "127.0.0.1")) as server:
        probe = grpc_probe.build(spec(f"127.0.0.1:{server.port}"), source_address=None)
        with pytest.raises(grpc_probe.ProbeFailure) as caught:
            await probe_once(probe)
    assert caught.value.reason == "grpc_unavailable"


async def test_mutual_tls(ca, tmp_path):
    client = ca.issue("agent-1", client=True)
    async with health_server(cert=ca.issue("127.0.0.1"), client_ca=ca) as server:
        with_cert = grpc_probe.build(spec(f"127.0.0.1:{server.port}", tls={
            "ca_file": str(ca.ca_file), "cert_file": str(client.cert_file),
            "key_file": str(client.key_file)}), source_address=None)
        without_cert = grpc_probe.build(spec(
            f"127.0.0.1:{server.port}", tls={"ca_file": str(ca.ca_file)}), source_address=None)
        assert (await probe_once(with_cert)).success
        with pytest.raises(grpc_probe.ProbeFailure) as caught:
            await probe_once(without_cert)
    assert caught.value.reason == "grpc_unavailable"


# --------------------------------------------------------------------------- build


def test_insecure_skip_verify_is_refused_at_build_naming_the_probe():
    with pytest.raises(ProbeBuildError) as caught:
        build_probe(spec("127.0.0.1:50051", tls={"insecure_skip_verify": True}),
                    source_address=None)
    assert caught.value.probe == "grpc-health"
    assert "ca_file" in str(caught.value)


def test_missing_ca_file_is_named_at_build(tmp_path):
    missing = tmp_path / "absent-ca.pem"
    with pytest.raises(ProbeBuildError, match=r"absent-ca\.pem"):
        build_probe(spec("127.0.0.1:50051", tls={"ca_file": str(missing)}),
                    source_address=None)


def test_source_address_is_not_applied_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="probenet.agent.probes.grpc"):
        grpc_probe.build(spec("127.0.0.1:50051"), source_address="127.0.0.2")
    assert any("cannot bind a source address" in r.getMessage() for r in caplog.records)


def test_targets_name_one_resolved_address():
    assert grpc_probe.grpc_target("127.0.0.1", 80) == "ipv4:127.0.0.1:80"
    assert grpc_probe.grpc_target("::1", 80) == "ipv6:[::1]:80"


# --------------------------------------------------------------------------- deadlines


async def test_silent_server_times_out_in_connect_phase():
    # Accepts TCP but never speaks HTTP/2: the scheduler's deadline strikes while connecting.
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        probe = grpc_probe.build(spec(f"127.0.0.1:{port}"), source_address=None)
        (outcome,) = await run_attempt(probe, 0.5)
    finally:
        server.close()
        for writer in accepted:
            writer.transport.abort()
        await server.wait_closed()
    assert (outcome.failed_phase, outcome.timeout_phase) == ("timeout", "connect")


async def test_slow_health_answer_times_out_in_request_phase():
    class SlowHealth(RecordingHealth):
        async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802
            await asyncio.sleep(2)
            return await super().Check(request, context)

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(SlowHealth(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        probe = grpc_probe.build(spec(f"127.0.0.1:{port}"), source_address=None)
        (outcome,) = await run_attempt(probe, 0.5)
    finally:
        await server.stop(grace=None)
    assert (outcome.failed_phase, outcome.timeout_phase) == ("timeout", "request")
