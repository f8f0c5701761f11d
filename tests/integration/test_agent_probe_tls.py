"""The tls probe against real local TLS servers with certificates from tests/certs.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import TYPE_CHECKING, Any

import pytest

from probenet.agent.config import ProbeSpec
from probenet.agent.probes import tls, tlsfacts
from probenet.agent.probes.attempt import run_attempt
from probenet.agent.probes.base import PhaseTracker, ProbeFailure, ProbeOutcome
from probenet.v1 import probenet_pb2 as pb
from support.certs import TestCA
from support.system import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ALL_LOOPBACK = ("localhost", "127.0.0.1", "::1")


class TlsServer:
    """A TLS server on loopback port 0 that records SNI names and peer addresses."""

    def __init__(self) -> None:
        self.port = 0
        self.server_names: list[str | None] = []
        self.peers: list[str] = []


@contextlib.asynccontextmanager
async def tls_server(context: ssl.SSLContext | None, host: str = "127.0.0.1",
                     greeting: bytes = b"", *, close_at_once: bool = False,
                     ) -> AsyncIterator[TlsServer]:
    """Serve `context` (None: plain TCP that sends `greeting`, or closes at once)."""
    state = TlsServer()
    if context is not None:
        def remember_sni(_obj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
            state.server_names.append(name)
        context.sni_callback = remember_sni

    open_writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_writers.add(writer)
        state.peers.append(writer.get_extra_info("peername")[0])
        try:
            if close_at_once:
                return
            if greeting:
                writer.write(greeting)
                await writer.drain()
            else:
                async with asyncio.timeout(5):
                    await reader.read()
        except (OSError, TimeoutError, ssl.SSLError):
            pass
        finally:
            writer.close()
            open_writers.discard(writer)

    server = await asyncio.start_server(handle, host, 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for writer in list(open_writers):  # 3.11's wait_closed does not wait for handlers
            writer.transport.abort()
        await server.wait_closed()


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("tls-ca"))


def spec(target: str, **tls_options: Any) -> ProbeSpec:
    return ProbeSpec(name="tls-check", kind="tls", target=target, interval="10s",
                     timeout="3s", tls=tls_options)


async def probe_once(probe: tls.TlsProbe) -> ProbeOutcome:
    async with asyncio.timeout(3):
        outcomes = await probe.run(PhaseTracker())
    assert len(outcomes) == 1
    return outcomes[0]


async def failure_of(probe: tls.TlsProbe) -> ProbeFailure:
    with pytest.raises(ProbeFailure) as caught:
        await probe_once(probe)
    return caught.value


def details_of(outcome: ProbeOutcome) -> pb.TlsFacts:
    assert isinstance(outcome.details, pb.TlsDetails)
    return outcome.details.tls


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize(("host", "target_host"), [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")])
async def test_valid_certificate_reports_expiry_version_and_cipher(ca, host, target_host):
    leaf = ca.issue(*ALL_LOOPBACK, days_valid=90)
    async with tls_server(leaf.server_context(), host) as server:
        probe = tls.build(spec(f"{target_host}:{server.port}", ca_file=str(ca.ca_file)),
                          source_address=None)
        outcome = await probe_once(probe)
    assert outcome.success, outcome.error
    assert outcome.address == host
    facts = details_of(outcome)
    # The leaf expires long before the CA: it is the earliest of the verified chain.
    assert facts.earliest_cert_expiry == int(leaf.not_after.timestamp())
    assert facts.version == "TLS 1.3"
    assert facts.cipher.startswith("TLS_")
    assert set(outcome.phases) == {"resolve", "connect", "tls"}


async def test_earliest_expiry_walks_the_verified_chain_up_to_the_ca(ca):
    leaf = ca.issue(*ALL_LOOPBACK, days_valid=5000)  # outlives the CA (10 years)
    async with tls_server(leaf.server_context()) as server:
        probe = tls.build(spec(f"127.0.0.1:{server.port}", ca_file=str(ca.ca_file)),
                          source_address=None)
        outcome = await probe_once(probe)
    assert details_of(outcome).earliest_cert_expiry == int(
        ca.cert.not_valid_after_utc.timestamp())


async def test_server_name_is_sent_as_sni_and_checked(ca):
    leaf = ca.issue("service.test")
    async with tls_server(leaf.server_context()) as server:
        probe = tls.build(spec(f"127.0.0.1:{server.port}", ca_file=str(ca.ca_file),
                               server_name="service.test"), source_address=None)
        outcome = await probe_once(probe)
    assert outcome.success, outcome.error
    assert server.server_names == ["service.test"]


async def test_tls_1_2_server_reports_its_version(ca):
    context = ca.issue(*ALL_LOOPBACK).server_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    async with tls_server(context) as server:
        probe = tls.build(spec(f"127.0.0.1:{server.port}", ca_file=str(ca.ca_file)),
                          source_address=None)
        outcome = await probe_once(probe)
    assert details_of(outcome).version == "TLS 1.2"
    assert "TLS_" not in details_of(outcome).cipher  # a TLS 1.2 suite name (ECDHE-...)


async def test_source_address_is_used(ca):
    async with tls_server(ca.issue(*ALL_LOOPBACK).server_context()) as server:
        probe = tls.build(spec(f"127.0.0.1:{server.port}", ca_file=str(ca.ca_file)),
                          source_address="127.0.0.2")
        outcome = await probe_once(probe)
    assert outcome.success, outcome.error
    assert server.peers == ["127.0.0.2"]


# --------------------------------------------------------------------------- certificate failures


async def test_expired_certificate(ca):
    async with tls_server(ca.issue(*ALL_LOOPBACK, expired=True).server_context()) as server:
        failure = await failure_of(tls.build(
            spec(f"127.0.0.1:{server.port}", ca_file=str(ca.ca_file)), source_address=None))
    assert (failure.phase, failure.reason) == ("tls", "tls_cert_expired")
    assert "expired" in failure.error


async def test_unknown_ca(ca, tmp_path):
    stranger = TestCA(tmp_path, name="Stranger CA")
    async with tls_server(stranger.issue(*ALL_LOOPBACK).server_context()) as server:
        failure = await failure_of(tls.build(
            spec(f"127.0.0.1:{server.port}", ca_file=str(ca.ca_file)), source_address=None))
    assert (failure.phase, failure.reason) == ("tls", "tls_cert_unknown_ca")


async def test_self_signed_against_the_system_store(ca):
    # No ca_file: the system store does not know our test CA.
    async with tls_server(ca.issue(*ALL_LOOPBACK).server_context()) as server:
        failure = await failure_of(tls.build(spec(f"127.0.0.1:{server.port}"),
                                             source_address=None))
    assert (failure.phase, failure.reason) == ("tls", "tls_cert_unknown_ca")


async def test_hostname_mismatch(ca):
    async with tls_server(ca.issue("other.example").server_context()) as server:
        failure = await failure_of(tls.build(
            spec(f"127.0.0.1:{server.port}", ca_file=str(ca.ca_file), server_name="wanted.test"),
            source_address=None))
    assert (failure.phase, failure.reason) == ("tls", "tls_hostname_mismatch")
    assert "wanted.test" in failure.error


async def test_ip_address_mismatch(ca):
    async with tls_server(ca.issue("localhost").server_context()) as server:
        failure = await failure_of(tls.build(
            spec(f"127.0.0.1:{server.port}", ca_file=str(ca.ca_file)), source_address=None))
    assert (failure.phase, failure.reason) == ("tls", "tls_hostname_mismatch")


async def test_insecure_skip_verify_still_reports_facts(ca, tmp_path):
    stranger = TestCA(tmp_path, name="Stranger CA")
    leaf = stranger.issue("elsewhere.example", days_valid=30)
    async with tls_server(leaf.server_context()) as server:
        outcome = await probe_once(tls.build(
            spec(f"127.0.0.1:{server.port}", insecure_skip_verify=True), source_address=None))
    assert outcome.success
    # Nothing was verified: the presented chain (leaf + stranger CA) counts.
    assert details_of(outcome).earliest_cert_expiry == int(leaf.not_after.timestamp())


@pytest.mark.parametrize(("min_days_valid", "success"), [(7, False), (2, True)])
async def test_min_days_valid(ca, min_days_valid, success):
    leaf = ca.issue(*ALL_LOOPBACK, days_valid=3)
    async with tls_server(leaf.server_context()) as server:
        outcome = await probe_once(tls.build(
            spec(f"127.0.0.1:{server.port}", ca_file=str(ca.ca_file),
                 min_days_valid=min_days_valid), source_address=None))
    assert outcome.success is success
    assert details_of(outcome).earliest_cert_expiry == int(leaf.not_after.timestamp())
    if not success:
        assert (outcome.failed_phase, outcome.reason) == ("validation", "tls_cert_expiring")
        assert "expires in 3.0 days" in outcome.error


# --------------------------------------------------------------------------- transport failures


async def test_plain_tcp_server_fails_the_handshake(ca):
    async with tls_server(None, greeting=b"HTTP/1.0 400 Bad Request\r\n\r\n") as server:
        failure = await failure_of(tls.build(
            spec(f"127.0.0.1:{server.port}", ca_file=str(ca.ca_file)), source_address=None))
    assert (failure.phase, failure.reason) == ("tls", "tls_handshake")


async def test_server_closing_at_once_fails_the_handshake(ca):
    async with tls_server(None, close_at_once=True) as server:
        failure = await failure_of(tls.build(
            spec(f"127.0.0.1:{server.port}", ca_file=str(ca.ca_file)), source_address=None))
    assert (failure.phase, failure.reason) == ("tls", "tls_handshake")


async def test_refused_port():
    port = free_port()
    failure = await failure_of(tls.build(spec(f"127.0.0.1:{port}"), source_address=None))
    assert (failure.phase, failure.reason) == ("connect", "connect_refused")
    assert f"127.0.0.1:{port}" in failure.error


async def test_nxdomain_fails_in_dns_phase():
    async def resolver(host: str, family: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    failure = await failure_of(tls.build(spec("nowhere.invalid:443"), source_address=None,
                                         resolver=resolver))
    assert (failure.phase, failure.reason) == ("dns", "dns_nxdomain")


def test_unreadable_ca_file_is_named_at_build(tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError, match=r"nope\.pem"):
        tls.build(spec("127.0.0.1:443", ca_file=str(missing)), source_address=None)


def test_garbage_ca_file_is_named_at_build(tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ValueError, match=r"garbage\.pem"):
        tls.build(spec("127.0.0.1:443", ca_file=str(garbage)), source_address=None)


# --------------------------------------------------------------------------- tlsfacts


def test_tls_version_names():
    assert tlsfacts.tls_version_name("TLSv1.3") == "TLS 1.3"
    assert tlsfacts.tls_version_name("TLSv1") == "TLS 1.0"
    assert tlsfacts.tls_version_name(None) == ""


def test_earliest_expiry_skips_garbage(ca):
    leaf = ca.issue("a.test", days_valid=10)
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_pem.decode())
    assert tlsfacts.earliest_expiry([b"garbage", der]) == int(leaf.not_after.timestamp())
    assert tlsfacts.earliest_expiry([]) == 0


def test_facts_of_no_ssl_object_are_empty():
    assert tlsfacts.facts_from_ssl_object(None) == pb.TlsFacts()


async def test_facts_from_a_blocking_ssl_socket(ca):
    # The http probe may hand an ssl.SSLSocket rather than an SSLObject.
    leaf = ca.issue(*ALL_LOOPBACK, days_valid=40)
    async with tls_server(leaf.server_context()) as server:
        def handshake() -> pb.TlsFacts:
            context = ca.client_context()
            with socket.create_connection(("127.0.0.1", server.port), timeout=3) as raw, \
                    context.wrap_socket(raw, server_hostname="localhost") as wrapped:
                return tlsfacts.facts_from_ssl_object(wrapped)

        facts = await asyncio.to_thread(handshake)
    assert facts.earliest_cert_expiry == int(leaf.not_after.timestamp())
    assert facts.version == "TLS 1.3"


def test_days_left_uses_the_injected_wall_clock(ca):
    probe = tls.TlsProbe("127.0.0.1", 1, context=ca.client_context(), server_name="x",
                         min_days_valid=10, wall_clock=lambda: 1_000_000.0)
    assert probe._validate(pb.TlsFacts(earliest_cert_expiry=1_000_000 + 9 * 86400))
    assert probe._validate(pb.TlsFacts(earliest_cert_expiry=1_000_000 + 11 * 86400)) is None
    assert probe._validate(pb.TlsFacts(earliest_cert_expiry=0)) is None  # unknown: no verdict


async def test_silent_server_times_out_in_tls_phase(ca):
    # Accepts TCP, never answers the ClientHello: the scheduler's deadline strikes in tls.
    async with tls_server(None) as server:
        probe = tls.build(spec(f"127.0.0.1:{server.port}", ca_file=str(ca.ca_file)),
                          source_address=None)
        (outcome,) = await run_attempt(probe, 0.5)
    assert (outcome.failed_phase, outcome.timeout_phase) == ("timeout", "tls")
    assert outcome.details is None
