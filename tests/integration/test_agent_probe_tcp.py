"""The tcp probe against real TCP servers on loopback: connect, line exchange, failures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probenet.agent.probes import build_probe
from probenet.agent.probes.attempt import run_attempt
from support.probe_runs import probe_once, probe_spec
from support.targets import TcpTarget, UnacceptingListener, closed_port, wait_until

if TYPE_CHECKING:
    from probenet.agent.config import ProbeSpec


def spec_for(target: str, options: str = "", *, timeout: str = "2s",
             extra: str = "") -> ProbeSpec:
    return probe_spec("tcp", "edge", target, options, timeout=timeout, extra=extra)


async def test_connect_success():
    async with TcpTarget("accept") as tcp:
        outcome = await probe_once(spec_for(tcp.address))
        await wait_until(lambda: tcp.connections == 1)
    assert outcome.success, outcome
    assert outcome.phases["connect"] > 0
    assert outcome.address == "127.0.0.1"


async def test_connect_success_over_ipv6():
    async with TcpTarget("accept", host="::1") as tcp:
        outcome = await probe_once(spec_for(tcp.address))
    assert outcome.success, outcome
    assert outcome.address == "::1"


async def test_refused():
    outcome = await probe_once(spec_for(f"127.0.0.1:{closed_port()}"))
    assert (outcome.success, outcome.failed_phase, outcome.reason) == (
        False, "connect", "connect_refused")


async def test_timeout_while_connecting():
    with UnacceptingListener() as (host, port):
        outcome = await probe_once(spec_for(f"{host}:{port}", timeout="400ms"))
    assert (outcome.failed_phase, outcome.timeout_phase, outcome.reason) == (
        "timeout", "connect", "connect_timeout")


async def test_send_and_expect_a_line():
    async with TcpTarget("echo") as tcp:
        good = await probe_once(spec_for(tcp.address, r'{send: "PING\n", expect: "^PING"}'))
        bad = await probe_once(spec_for(tcp.address, r'{send: "PING\n", expect: "^PONG"}',
                                        timeout="500ms"))
    assert good.success, good
    assert "request" in good.phases
    # the echo server keeps the connection open: no matching line before the deadline
    assert (bad.failed_phase, bad.timeout_phase, bad.reason) == (
        "timeout", "response", "response_timeout")


async def test_banner_expectation():
    async with TcpTarget("banner", banner=b"220 smtp ready\r\n") as tcp:
        good = await probe_once(spec_for(tcp.address, '{expect: "^220 "}'))
    assert good.success, good


async def test_expect_mismatch_when_the_server_closes():
    async with TcpTarget("accept") as tcp:
        outcome = await probe_once(spec_for(tcp.address, '{expect: "^220"}'))
    assert (outcome.failed_phase, outcome.reason) == ("response", "response_reset")


async def test_reset_while_waiting_for_a_line():
    async with TcpTarget("reset") as tcp:
        outcome = await probe_once(spec_for(tcp.address, '{expect: "^220"}'))
    assert (outcome.failed_phase, outcome.reason) == ("response", "response_reset")


async def test_stalled_server_times_out_in_response():
    async with TcpTarget("stall") as tcp:
        outcome = await probe_once(spec_for(tcp.address, '{expect: "^220"}', timeout="300ms"))
    assert (outcome.failed_phase, outcome.timeout_phase) == ("timeout", "response")


async def test_expect_mismatch_with_lines_then_close():
    async with TcpTarget("banner", banner=b"554 go away\r\n") as tcp:
        outcome = await probe_once(spec_for(tcp.address, r'{send: "QUIT\n", expect: "^220"}'))
    # the banner server echoes our QUIT and keeps the line open; close comes from the deadline
    assert not outcome.success
    assert outcome.failed_phase in {"timeout", "validation"}


async def test_source_address_is_used():
    async with TcpTarget("accept") as tcp:
        outcome = await probe_once(spec_for(tcp.address), source_address="127.0.0.3")
        assert outcome.success
        await wait_until(lambda: tcp.peers == ["127.0.0.3"])


async def test_unusable_source_address_is_reported_in_connect():
    async with TcpTarget("accept") as tcp:
        outcome = await probe_once(spec_for(tcp.address), source_address="192.0.2.77")
    assert (outcome.failed_phase, outcome.reason) == ("connect", "connect_unreachable")
    assert "192.0.2.77" in outcome.error


async def test_tls_handshake_failure():
    async with TcpTarget("accept") as plain:
        outcome = await probe_once(spec_for(plain.address, "{tls: true}"))
    assert (outcome.failed_phase, outcome.reason) == ("tls", "tls_handshake")


async def test_all_addresses():
    async with TcpTarget("accept") as tcp:
        spec = spec_for(f"localhost:{tcp.port}", extra="    all_addresses: true")
        outcomes = await run_attempt(build_probe(spec, source_address=None), spec.timeout)
    by_address = {o.address: o for o in outcomes}
    assert by_address["127.0.0.1"].success
    for address, outcome in by_address.items():
        if address != "127.0.0.1":
            assert outcome.reason == "connect_refused"
