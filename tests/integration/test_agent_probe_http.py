"""The http probe against real HTTP/HTTPS servers on loopback: success and every failure."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from probenet.agent.probes import build_probe
from probenet.agent.probes.attempt import run_attempt
from support.certs import TestCA
from support.probe_runs import probe_once, probe_spec
from support.targets import HttpRoute, HttpTarget, TcpTarget, UnacceptingListener, closed_port

if TYPE_CHECKING:
    from probenet.agent.config import ProbeSpec


def spec_for(target: str, options: str = "", *, timeout: str = "2s",
             extra: str = "") -> ProbeSpec:
    return probe_spec("http", "web", target, options, timeout=timeout, extra=extra)


async def test_success_reports_status_phases_and_details():
    async with HttpTarget({"/": HttpRoute(200, "hello world")}) as web:
        outcome = await probe_once(spec_for(web.url("/")))
    assert outcome.success, outcome
    assert outcome.status_code == 200
    assert outcome.failed_phase == ""
    assert set(outcome.phases) >= {"resolve", "connect", "processing", "transfer"}
    assert "tls" not in outcome.phases
    assert outcome.details.content_length == len("hello world")
    assert outcome.details.http_version == "1.1"
    assert outcome.address == "127.0.0.1"
    assert web.requests[0].headers["connection"] == "close"


async def test_each_probe_uses_a_fresh_connection():
    async with HttpTarget() as web:
        probe = build_probe(spec_for(web.url("/")), source_address=None)
        for _ in range(3):
            [outcome] = await run_attempt(probe, 2.0)
            assert outcome.success
        assert web.connections == 3


async def test_chunked_body_matches_regex():
    route = HttpRoute(200, "status: all systems operational", chunked=True)
    async with HttpTarget({"/status": route}) as web:
        outcome = await probe_once(spec_for(web.url("/status"),
                                            '{body_regex: "systems operational"}'))
    assert outcome.success, outcome
    assert outcome.details.content_length == len(route.body)


async def test_https_success_times_tls_and_reports_facts(tmp_path):
    ca = TestCA(tmp_path)
    cert = ca.issue("localhost", "127.0.0.1")
    async with HttpTarget(ssl_context=cert.server_context()) as web:
        outcome = await probe_once(spec_for(web.url("/"), f'{{tls: {{ca_file: "{ca.ca_file}"}}}}'))
    assert outcome.success, outcome
    assert outcome.phases["tls"] > 0
    assert outcome.details.tls.version.startswith("TLS")
    assert outcome.details.tls.earliest_cert_expiry == int(cert.not_after.timestamp())


async def test_https_unknown_ca_fails_in_tls(tmp_path):
    cert = TestCA(tmp_path, name="Stranger CA").issue("127.0.0.1")
    trusted = TestCA(tmp_path / "trusted")
    async with HttpTarget(ssl_context=cert.server_context()) as web:
        outcome = await probe_once(spec_for(web.url("/"),
                                            f'{{tls: {{ca_file: "{trusted.ca_file}"}}}}'))
    assert (outcome.failed_phase, outcome.reason) == ("tls", "tls_cert_unknown_ca")


async def test_https_expired_certificate(tmp_path):
    ca = TestCA(tmp_path)
    cert = ca.issue("127.0.0.1", expired=True)
    async with HttpTarget(ssl_context=cert.server_context()) as web:
        outcome = await probe_once(spec_for(web.url("/"), f'{{tls: {{ca_file: "{ca.ca_file}"}}}}'))
    assert (outcome.failed_phase, outcome.reason) == ("tls", "tls_cert_expired")


async def test_https_hostname_mismatch(tmp_path):
    ca = TestCA(tmp_path)
    cert = ca.issue("other.example.test")
    async with HttpTarget(ssl_context=cert.server_context()) as web:
        outcome = await probe_once(spec_for(web.url("/"), f'{{tls: {{ca_file: "{ca.ca_file}"}}}}'))
    assert (outcome.failed_phase, outcome.reason) == ("tls", "tls_hostname_mismatch")


async def test_https_against_a_server_that_hangs_up_is_a_handshake_failure():
    async with TcpTarget("accept") as tcp:
        outcome = await probe_once(spec_for(f"https://{tcp.address}/"))
    assert (outcome.failed_phase, outcome.reason) == ("tls", "tls_handshake")


async def test_https_against_a_silent_plain_server_times_out_in_tls():
    async with HttpTarget() as web:
        outcome = await probe_once(spec_for(web.url("/").replace("http:", "https:"),
                                            timeout="500ms"))
    assert (outcome.failed_phase, outcome.timeout_phase) == ("timeout", "tls")


async def test_connection_refused():
    outcome = await probe_once(spec_for(f"http://127.0.0.1:{closed_port()}/"))
    assert (outcome.success, outcome.failed_phase, outcome.reason) == (
        False, "connect", "connect_refused")


async def test_timeout_while_connecting():
    with UnacceptingListener() as (host, port):
        outcome = await probe_once(spec_for(f"http://{host}:{port}/", timeout="500ms"))
    assert (outcome.failed_phase, outcome.timeout_phase, outcome.reason) == (
        "timeout", "connect", "connect_timeout")
    assert outcome.duration_seconds >= 0.45


async def test_timeout_while_waiting_for_the_response():
    async with HttpTarget({"/slow": HttpRoute(delay_s=30)}) as web:
        outcome = await probe_once(spec_for(web.url("/slow"), timeout="500ms"))
    assert (outcome.failed_phase, outcome.timeout_phase, outcome.reason) == (
        "timeout", "response", "response_timeout")
    assert outcome.phases["processing"] >= 0.4


async def test_reset_instead_of_response():
    async with HttpTarget({"/": HttpRoute(behaviour="reset")}) as web:
        outcome = await probe_once(spec_for(web.url("/")))
    assert (outcome.failed_phase, outcome.reason) == ("response", "response_reset")


async def test_reset_in_the_middle_of_the_body():
    async with HttpTarget({"/": HttpRoute(behaviour="reset_mid_body")}) as web:
        outcome = await probe_once(spec_for(web.url("/")))
    assert (outcome.failed_phase, outcome.reason) == ("response", "response_reset")


async def test_garbage_reply_is_invalid_not_a_crash():
    async with HttpTarget({"/": HttpRoute(behaviour="garbage")}) as web:
        outcome = await probe_once(spec_for(web.url("/")))
    assert (outcome.failed_phase, outcome.reason) == ("response", "response_invalid")


async def test_closed_without_response():
    async with HttpTarget({"/": HttpRoute(behaviour="close")}) as web:
        outcome = await probe_once(spec_for(web.url("/")))
    assert (outcome.failed_phase, outcome.reason) == ("response", "response_reset")


async def test_wrong_status_keeps_the_status_code():
    async with HttpTarget({"/": HttpRoute(503, "down")}) as web:
        outcome = await probe_once(spec_for(web.url("/")))
    assert (outcome.failed_phase, outcome.reason, outcome.status_code) == (
        "validation", "http_status", 503)


@pytest.mark.parametrize(("expect", "status", "success"), [
    ('["200"]', 200, True), ('["200"]', 204, False), ('["4xx"]', 404, True),
    ('["2xx", "301"]', 301, True), ('["2xx", "301"]', 302, False)])
async def test_expect_status_codes_and_classes(expect, status, success):
    async with HttpTarget({"/": HttpRoute(status, "")}) as web:
        outcome = await probe_once(spec_for(
            web.url("/"), f"{{expect_status: {expect}, follow_redirects: false}}"))
    assert outcome.success is success
    assert outcome.status_code == status


async def test_body_mismatch():
    async with HttpTarget({"/": HttpRoute(200, "maintenance page")}) as web:
        outcome = await probe_once(spec_for(web.url("/"), '{body_regex: "welcome"}'))
    assert (outcome.failed_phase, outcome.reason) == ("validation", "body_mismatch")


async def test_forbidden_body_match():
    async with HttpTarget({"/": HttpRoute(200, "Fatal error: database down")}) as web:
        outcome = await probe_once(spec_for(web.url("/"), '{fail_if_body_matches: ["Fatal"]}'))
    assert (outcome.failed_phase, outcome.reason) == ("validation", "body_forbidden_match")


async def test_header_expectation():
    route = HttpRoute(200, "x", headers={"X-Served-By": "edge-fra"})
    async with HttpTarget({"/": route}) as web:
        good = await probe_once(spec_for(web.url("/"), '{expect_headers: {x-served-by: "^edge-"}}'))
        bad = await probe_once(spec_for(web.url("/"), '{expect_headers: {x-served-by: "^core-"}}'))
        missing = await probe_once(spec_for(web.url("/"), '{expect_headers: {x-cache: "HIT"}}'))
    assert good.success
    assert (bad.reason, missing.reason) == ("header_mismatch", "header_mismatch")


async def test_redirects_followed_counted_and_limited():
    routes = {
        "/a": HttpRoute(302, "", headers={"Location": "/b"}),
        "/b": HttpRoute(301, "", headers={"Location": "/c"}),
        "/c": HttpRoute(200, "landed"),
        "/loop": HttpRoute(302, "", headers={"Location": "/loop"}),
    }
    async with HttpTarget(routes) as web:
        followed = await probe_once(spec_for(web.url("/a"), '{body_regex: "landed"}'))
        not_followed = await probe_once(spec_for(web.url("/a"),
                                                 "{follow_redirects: false}"))
        looped = await probe_once(spec_for(web.url("/loop"), "{max_redirects: 3}"))
    assert followed.success, followed
    assert followed.details.redirects == 2
    assert (not_followed.success, not_followed.status_code) == (True, 302)
    assert (looped.failed_phase, looped.reason) == ("validation", "too_many_redirects")
    assert looped.details.redirects == 3


async def test_method_headers_body_and_bearer_auth(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    async with HttpTarget() as web:
        outcome = await probe_once(spec_for(
            web.url("/api?x=1"),
            f'{{method: post, body: "ping", headers: {{X-Probe: "yes"}}, '
            f'auth: {{bearer_token_file: "{token}"}}}}'))
        request = web.requests[0]
    assert outcome.success
    assert (request.method, request.path) == ("POST", "/api?x=1")
    assert request.headers["x-probe"] == "yes"
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["content-length"] == "4"


async def test_source_address_is_used():
    async with HttpTarget() as web:
        outcome = await probe_once(spec_for(web.url("/")), source_address="127.0.0.2")
        assert outcome.success
        assert web.peers == ["127.0.0.2"]


async def test_all_addresses_gives_one_outcome_per_address():
    async with HttpTarget(host="127.0.0.1") as web:
        spec = spec_for(f"http://localhost:{web.port}/", extra="    all_addresses: true")
        probe = build_probe(spec, source_address=None)
        outcomes = await run_attempt(probe, spec.timeout)
    addresses = {o.address for o in outcomes}
    assert "127.0.0.1" in addresses
    by_address = {o.address: o for o in outcomes}
    assert by_address["127.0.0.1"].success
    # localhost may also resolve to ::1, where nothing listens: refused, on its own outcome
    for address, outcome in by_address.items():
        if address != "127.0.0.1":
            assert outcome.reason == "connect_refused"


async def test_unknown_host_fails_in_dns():
    outcome = await probe_once(spec_for("http://no-such-host.invalid/"))
    assert outcome.failed_phase in {"dns", "timeout"}
    assert outcome.reason.startswith("dns_")


async def test_probe_runs_are_independent_under_concurrency():
    async with HttpTarget({"/slow": HttpRoute(delay_s=0.3)}) as web:
        probe = build_probe(spec_for(web.url("/slow")), source_address=None)
        results = await asyncio.gather(*(run_attempt(probe, 5.0) for _ in range(20)))
    assert all(r[0].success for r in results)
