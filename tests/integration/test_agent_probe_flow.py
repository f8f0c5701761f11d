"""The `flow` probe against a real login site on loopback (support/login_server.py).

A journey (home page with a CSRF form, login, feed behind a session cookie, JSON API) over
HTTP and HTTPS; a failure at each step for each kind of expectation; extraction by each
method; secrets absent from logs, results and metrics; redirects; step and probe deadlines;
a step that never answers; and the agent process running a flow.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import secrets
import signal
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from probenet.agent.config import ProbeSpec, parse_config
from probenet.agent.metrics import ProbeCounters
from probenet.agent.probes import build_probe
from probenet.agent.probes.attempt import run_attempt
from probenet.agent.probes.flow import REDACTED
from probenet.agent.probes.flow import build as build_flow
from probenet.agent.results import to_wire
from probenet.agent.scheduler import Scheduler
from probenet.collector.config import parse_config as parse_collector_config
from probenet.collector.server import CollectorService
from probenet.v1 import probenet_pb2 as pb
from support.certs import TestCA
from support.collector_client import collector_yaml
from support.login_server import LoginJourney, LoginServer
from support.probe_runs import probe_once
from support.system import ROOT
from support.targets import closed_port, wait_until

if TYPE_CHECKING:
    from probenet.agent.probes.base import ProbeOutcome

PASSWORD = "correct horse"

HEAD = """\
agent: {id: t-1, region: test}
collectors: [{address: "127.0.0.1:1"}]
probes:
"""

LOGIN = """\
variables: {user: probe-bot}
secrets: {password: {env: FLOW_TEST_PASSWORD}}
steps:
  - name: home
    request: {url: /}
    expect: {status: ["200"], body_regex: 'name="csrf"'}
    extract: {csrf: {body_regex: 'name="csrf" value="([^"]+)"'}}
  - name: login
    request:
      method: POST
      url: /login
      form: {user: "${user}", password: "${password}", csrf: "${csrf}"}
    expect: {status: ["200"], body_regex: "Welcome probe-bot"}
  - name: me
    request: {url: /api/me}
    expect: {json: {"$.user.name": probe-bot, "$.token": {exists: true}}}
"""


def flow_spec(target: str, flow: str, *, timeout: str = "3s", name: str = "social-login",
              extra: str = "") -> ProbeSpec:
    """The spec of one flow probe, written as a user's agent.yaml would."""
    text = HEAD + f"""\
  - name: {name}
    kind: flow
    target: "{target}"
    interval: 10m
    timeout: {timeout}
{extra}    flow:
""" + textwrap.indent(textwrap.dedent(flow), "      ")
    return parse_config(text).probes[0]


def steps_of(outcome: ProbeOutcome) -> list[tuple[str, bool, int]]:
    return [(step.name, step.success, step.status_code) for step in outcome.details.steps]


@pytest.fixture(autouse=True)
def password(monkeypatch):
    monkeypatch.setenv("FLOW_TEST_PASSWORD", PASSWORD)
    return PASSWORD


@pytest.fixture
async def site():
    async with LoginServer(LoginJourney(users={"probe-bot": PASSWORD})) as server:
        yield server


# ---------------------------------------------------------------------------- the journey

async def test_the_login_journey_succeeds_over_http(site):
    spec = flow_spec(site.url("/"), LOGIN)
    outcome = await probe_once(spec)
    assert outcome.success, outcome
    assert (outcome.step, outcome.failed_phase, outcome.reason, outcome.error) == ("", "", "", "")
    assert steps_of(outcome) == [("home", True, 200), ("login", True, 200), ("me", True, 200)]
    assert (outcome.details.failed_step_index, outcome.details.step_count) == (0, 3)
    assert outcome.status_code == 200
    assert set(outcome.phases) >= {"resolve", "connect", "processing", "transfer"}
    assert outcome.duration_seconds >= sum(s.duration_seconds for s in outcome.details.steps)
    # What the site saw: the CSRF token of the form and its cookie, the 302 to /feed followed
    # with the session cookie set by the redirect itself, the API called with the session.
    seen = [(r.method, r.path) for r in site.journey.requests]
    assert seen == [("GET", "/"), ("POST", "/login"), ("GET", "/feed"), ("GET", "/api/me")]
    login, feed, me = site.journey.requests[1:]
    assert login.form["csrf"] == login.cookies["csrftoken"]
    assert login.form["password"] == PASSWORD
    assert login.headers["content-type"] == "application/x-www-form-urlencoded"
    assert feed.cookies["session"] in site.journey.sessions
    assert me.cookies["session"] == feed.cookies["session"]
    wire = to_wire(spec, outcome, confirmed=False, timestamp_ms=1)
    assert (wire.kind, wire.step, wire.WhichOneof("details")) == ("flow", "", "flow")
    assert [s.name for s in wire.flow.steps] == ["home", "login", "me"]


async def test_the_login_journey_succeeds_over_https(tmp_path):
    ca = TestCA(tmp_path)
    cert = ca.issue("localhost", "127.0.0.1")
    journey = LoginJourney(users={"probe-bot": PASSWORD})
    async with LoginServer(journey, ssl_context=cert.server_context()) as site:
        spec = flow_spec(site.url("/"), LOGIN + f'tls: {{ca_file: "{ca.ca_file}"}}\n')
        outcome = await probe_once(spec)
    assert outcome.success, outcome
    assert outcome.phases["tls"] > 0
    assert [r.path for r in journey.requests] == ["/", "/login", "/feed", "/api/me"]


async def test_https_with_an_unknown_ca_fails_at_the_first_step_in_tls(tmp_path):
    cert = TestCA(tmp_path, name="Stranger CA").issue("127.0.0.1")
    trusted = TestCA(tmp_path / "trusted")
    async with LoginServer(ssl_context=cert.server_context()) as site:
        spec = flow_spec(site.url("/"), LOGIN + f'tls: {{ca_file: "{trusted.ca_file}"}}\n')
        outcome = await probe_once(spec)
    assert (outcome.step, outcome.failed_phase, outcome.reason) == (
        "home", "tls", "tls_cert_unknown_ca")
    assert outcome.error.startswith("step 1/3 'home': TLS handshake with 127.0.0.1:")
    assert steps_of(outcome) == [("home", False, 0)]
    assert outcome.details.steps[0].failed_phase == pb.PHASE_TLS


async def test_every_run_starts_with_an_empty_cookie_jar(site):
    probe = build_probe(flow_spec(site.url("/"), LOGIN), source_address=None)
    for _ in range(2):
        [outcome] = await run_attempt(probe, 3.0)
        assert outcome.success, outcome
    homes = [r for r in site.journey.requests if r.path == "/"]
    assert [r.cookies for r in homes] == [{}, {}]


async def test_the_source_address_is_used_for_every_step(site):
    outcome = await probe_once(flow_spec(site.url("/"), LOGIN), source_address="127.0.0.2")
    assert outcome.success, outcome
    assert {r.peer for r in site.journey.requests} == {"127.0.0.2"}


# ------------------------------------------------------------- failures, step by step

# name -> (journey faults, flow text, failing step, its index, reason)
FAILURES = {
    "status": ({"login_fault": "server_error"}, LOGIN, "login", 2, "http_status"),
    "body_regex": ({"login_fault": "error_page"}, LOGIN, "login", 2, "body_mismatch"),
    "body_not_regex": ({}, LOGIN.replace(
        """body_regex: 'name="csrf"'}""", """body_not_regex: ["Log in"]}"""),
        "home", 1, "body_forbidden_match"),
    "header regex": ({}, LOGIN.replace(
        'expect: {json: {"$.user.name": probe-bot, "$.token": {exists: true}}}',
        'expect: {headers: {X-Request-Id: "^trace-"}}'), "me", 3, "header_mismatch"),
    "header missing": ({}, LOGIN.replace(
        'expect: {json: {"$.user.name": probe-bot, "$.token": {exists: true}}}',
        'expect: {headers: {X-Served-By: "edge"}}'), "me", 3, "header_mismatch"),
    "json equals": ({}, LOGIN.replace('"$.user.name": probe-bot', '"$.user.name": someone'),
                    "me", 3, "json_mismatch"),
    "json exists": ({}, LOGIN.replace('"$.token": {exists: true}', '"$.email": {exists: true}'),
                    "me", 3, "json_mismatch"),
    "json must not exist": ({}, LOGIN.replace('"$.token": {exists: true}',
                                              '"$.token": {exists: false}'),
                            "me", 3, "json_mismatch"),
    "json_invalid": ({"invalid_json": True}, LOGIN, "me", 3, "json_invalid"),
    "max_duration": ({"slow": {"/api/me": 0.3}}, LOGIN.replace(
        '"$.token": {exists: true}}}', '"$.token": {exists: true}}, max_duration: 100ms}'),
        "me", 3, "step_too_slow"),
    "extract_failed": ({}, LOGIN.replace(
        """extract: {csrf: {body_regex: 'name="csrf" value="([^"]+)"'}}""",
        """extract: {csrf: {body_regex: 'name="csrf" value="([^"]+)"'}, rid: {header: X-Nope}}"""),
        "home", 1, "extract_failed"),
    "session lost": ({"forget_sessions": True}, LOGIN, "login", 2, "body_mismatch"),
}


@pytest.mark.parametrize("case", FAILURES)
async def test_a_failure_names_its_step_phase_and_reason(case, site):
    faults, flow, step, index, reason = FAILURES[case]
    for key, value in faults.items():
        setattr(site.journey, key, value)
    spec = flow_spec(site.url("/"), flow)
    outcome = await probe_once(spec)
    assert (outcome.success, outcome.step, outcome.failed_phase, outcome.reason) == (
        False, step, "validation", reason), outcome
    assert outcome.error.startswith(f"step {index}/3 {step!r}: "), outcome.error
    details = outcome.details
    assert (details.failed_step_index, details.step_count, len(details.steps)) == (index, 3, index)
    assert all(s.success for s in details.steps[:-1])
    failed = details.steps[-1]
    assert (failed.name, failed.success, failed.failed_phase, failed.reason) == (
        step, False, pb.PHASE_VALIDATION, reason)
    assert outcome.status_code == failed.status_code > 0
    wire = to_wire(spec, outcome, confirmed=False, timestamp_ms=1)
    assert (wire.step, wire.failed_phase, wire.reason) == (step, pb.PHASE_VALIDATION, reason)
    assert wire.flow.failed_step_index == index


async def test_failure_messages_say_what_was_expected(site):
    site.journey.login_fault = "server_error"
    status = await probe_once(flow_spec(site.url("/"), LOGIN))
    site.journey.login_fault = ""
    wrong = await probe_once(flow_spec(
        site.url("/"), LOGIN.replace('"$.user.name": probe-bot', '"$.user.name": someone')))
    missing = await probe_once(flow_spec(
        site.url("/"), LOGIN.replace('"$.token": {exists: true}', '"$.email": {exists: true}')))
    assert status.error == "step 2/3 'login': status 500 is not one of 200"
    assert status.status_code == 500
    assert wrong.error == "step 3/3 'me': JSON $.user.name is 'probe-bot', expected 'someone'"
    assert missing.error == "step 3/3 'me': JSON $.email is missing (expected exists: true)"


async def test_json_checks_compare_types_strictly(site):
    flow = """\
steps:
  - name: echo
    request: {method: POST, url: /echo, json: {n: 1, flag: true, none: null}}
    expect: {json: {"$.body": '{"n": 1, "flag": true, "none": null}', "$.method": POST}}
  - name: types
    request: {url: "/api/token?token=x"}
    expect: {json: {"$.valid": 0}}
"""
    outcome = await probe_once(flow_spec(site.url("/"), flow))
    # false is not 0 (Python would say False == 0)
    assert (outcome.step, outcome.reason) == ("types", "json_mismatch"), outcome
    assert outcome.error.endswith("JSON $.valid is 'false', expected '0'")


# --------------------------------------------------------------------------- extraction

async def test_extraction_by_each_method_feeds_later_steps(site):
    flow = """\
variables: {user: probe-bot}
secrets: {password: {env: FLOW_TEST_PASSWORD}}
steps:
  - name: home
    request: {url: /}
    extract:
      csrf: {body_regex: 'name="csrf" value="([^"]+)"'}
      request_id: {header: X-Request-Id}
      pre: {cookie: csrftoken}
  - name: login
    request:
      method: POST
      url: /login
      headers: {Accept: application/json}
      form: {user: "${user}", password: "${password}", csrf: "${csrf}"}
    expect: {status: ["200"], json: {"$.ok": true}}
    extract: {token: {json: "$.token"}, session: {cookie: session}}
  - name: check
    request:
      url: /echo?from=${pre}
      headers: {X-Trace: "${request_id}", X-Session: "${session}"}
      query: {token: "${token}"}
  - name: token
    request: {url: /api/token, query: {token: "${token}"}}
    expect: {json: {"$.valid": true}}
"""
    outcome = await probe_once(flow_spec(site.url("/"), flow))
    assert outcome.success, outcome
    home, login, check, _ = site.journey.requests
    assert login.form["csrf"] == login.cookies["csrftoken"]  # body_regex
    assert check.headers["x-trace"] == site.request_ids[0]  # header of the home page
    assert home.cookies == {}
    assert check.query["from"] == check.cookies["csrftoken"] == login.cookies["csrftoken"]
    assert check.query["token"] in site.journey.tokens  # json
    assert check.headers["x-session"] == check.cookies["session"]  # cookie (HttpOnly)
    assert check.cookies["session"] in site.journey.sessions


async def test_extracted_json_values_that_are_not_strings_become_json_text(site):
    flow = """\
steps:
  - name: echo
    request: {method: POST, url: /echo, json: {list: [1, "a"], n: 2.5, ok: false}}
    extract:
      body: {json: "$.body"}
      method: {json: "$.method"}
  - name: again
    request: {method: POST, url: /echo, body: "${body}|${method}"}
"""
    outcome = await probe_once(flow_spec(site.url("/"), flow))
    assert outcome.success, outcome
    again = site.journey.requests[1]
    assert json.loads(again.body.split("|")[0]) == {"list": [1, "a"], "n": 2.5, "ok": False}
    assert again.body.endswith("|POST")


async def test_request_bodies_queries_and_headers_are_filled_and_encoded(site):
    flow = """\
variables: {odd: "a b&c=d/é"}
headers: {X-Flow: flow, X-Both: flow}
steps:
  - name: json
    request: {method: PUT, url: /echo, headers: {X-Both: step}, json: {"k-${odd}": ["${odd}", 1]}}
  - name: form
    request: {method: POST, url: /echo, form: {"${odd}": "${odd}"}}
  - name: raw
    request:
      method: POST
      url: /echo?fixed=1
      query: {"${odd}": "${odd}"}
      headers: {Content-Type: text/plain}
      body: "raw ${odd} $${odd}"
"""
    outcome = await probe_once(flow_spec(site.url("/"), flow))
    assert outcome.success, outcome
    put, post, raw = site.journey.requests
    assert put.method == "PUT"
    assert put.headers["content-type"] == "application/json"
    assert json.loads(put.body) == {"k-a b&c=d/é": ["a b&c=d/é", 1]}
    assert (put.headers["x-flow"], put.headers["x-both"]) == ("flow", "step")
    assert post.headers["content-type"] == "application/x-www-form-urlencoded"
    assert post.form == {"a b&c=d/é": "a b&c=d/é"}
    assert raw.query == {"fixed": "1", "a b&c=d/é": "a b&c=d/é"}
    assert raw.body == "raw a b&c=d/é ${odd}"
    assert raw.headers["content-type"] == "text/plain"


async def test_a_substituted_url_or_header_that_cannot_be_sent_fails_the_request(site):
    flow = """\
steps:
  - name: echo
    request: {url: "/echo?v=a%0D%0AX-Injected:%201&next=ftp://elsewhere/"}
    extract: {v: {json: "$.query.v"}, next: {json: "$.query.next"}}
  - name: header
    request: {url: /echo, headers: {X-V: "${v}"}}
"""
    header = await probe_once(flow_spec(site.url("/"), flow))
    scheme = await probe_once(flow_spec(site.url("/"), flow.replace(
        'request: {url: /echo, headers: {X-V: "${v}"}}', 'request: {url: "${next}"}')))
    assert (header.step, header.failed_phase, header.reason) == (
        "header", "request", "request_invalid")
    assert header.error == ("step 2/2 'header': header 'X-V' holds a line break or NUL after "
                            "substitution")
    assert (scheme.step, scheme.failed_phase, scheme.reason) == (
        "header", "request", "request_invalid")
    assert len(site.journey.requests) == 2  # neither second step sent anything


# ---------------------------------------------------------------------------- redirects

async def test_redirects_keep_the_cookies_they_set(site):
    flow = """\
steps:
  - name: sso
    request: {url: /sso}
    expect: {status: ["200"], body_regex: "signed in"}
"""
    outcome = await probe_once(flow_spec(site.url("/"), flow))
    assert outcome.success, outcome
    assert [(r.path, r.cookies) for r in site.journey.requests] == [
        ("/sso", {}), ("/sso/done", {"sso": "1"})]


async def test_a_redirect_not_followed_is_checked_as_it_is(site):
    flow = LOGIN.replace(
        '    expect: {status: ["200"], body_regex: "Welcome probe-bot"}\n',
        "      follow_redirects: false\n"
        '    expect: {status: ["302"], headers: {Location: ^/feed$}}\n'
        "  - name: feed\n"
        "    request: {url: /feed}\n"
        '    expect: {status: ["200"], body_regex: Welcome}\n')
    outcome = await probe_once(flow_spec(site.url("/"), flow))
    assert outcome.success, outcome
    assert steps_of(outcome)[1:3] == [("login", True, 302), ("feed", True, 200)]
    # the session cookie came with the 302 that was not followed, and was kept
    assert site.journey.requests[2].cookies["session"] in site.journey.sessions


async def test_a_redirect_loop_fails_with_too_many_redirects(site):
    flow = """\
steps:
  - name: home
    request: {url: /}
  - name: loop
    request: {url: /loop, max_redirects: 3}
"""
    outcome = await probe_once(flow_spec(site.url("/"), flow))
    assert (outcome.step, outcome.failed_phase, outcome.reason) == (
        "loop", "validation", "too_many_redirects")
    assert outcome.error == "step 2/2 'loop': more than 3 redirects"
    assert [r.path for r in site.journey.requests] == ["/"] + ["/loop"] * 4


async def test_a_redirect_to_another_site_does_not_carry_secrets(site):
    async with LoginServer(host="127.0.0.2") as other:
        flow = f"""\
secrets: {{password: {{env: FLOW_TEST_PASSWORD}}}}
steps:
  - name: away
    request:
      url: /redirect?to={quote(other.url("/echo"), safe="")}
      headers:
        Authorization: "Basic ${{password}}"
        X-Key: "k-${{password}}"
        Cookie: own=1
        X-Plain: v
"""
        outcome = await probe_once(flow_spec(site.url("/"), flow))
        assert outcome.success, outcome
        first, = site.journey.requests
        second, = other.journey.requests
    assert first.headers["authorization"] == f"Basic {PASSWORD}"
    assert first.headers["x-key"] == f"k-{PASSWORD}"
    assert first.cookies == {"own": "1"}
    assert second.headers["x-plain"] == "v"
    assert "authorization" not in second.headers
    assert "x-key" not in second.headers
    assert "cookie" not in second.headers


# ---------------------------------------------------------------------------- deadlines

async def test_a_step_timeout_ends_that_step_in_its_phase(site):
    site.journey.slow["/api/me"] = 5.0
    flow = LOGIN.replace("    request: {url: /api/me}\n",
                         "    request: {url: /api/me}\n    timeout: 300ms\n")
    outcome = await probe_once(flow_spec(site.url("/"), flow, timeout="3s"))
    assert (outcome.step, outcome.failed_phase, outcome.timeout_phase, outcome.reason) == (
        "me", "timeout", "response", "response_timeout")
    assert outcome.error == ("step 3/3 'me': no result within the step's timeout (300ms) "
                             "(deadline struck in phase response)")
    me = outcome.details.steps[-1]
    assert (me.name, me.failed_phase, me.reason) == ("me", pb.PHASE_TIMEOUT, "response_timeout")
    assert me.duration_seconds >= 0.25


async def test_a_step_that_never_answers_is_cut_by_the_probe_timeout(site):
    site.journey.hang.add("/login")
    outcome = await probe_once(flow_spec(site.url("/"), LOGIN, timeout="1s"))
    assert (outcome.step, outcome.failed_phase, outcome.timeout_phase, outcome.reason) == (
        "login", "timeout", "response", "response_timeout")
    assert outcome.error == ("step 2/3 'login': no result within the probe's timeout (1s) "
                             "(deadline struck in phase response)")
    assert steps_of(outcome) == [("home", True, 200), ("login", False, 0)]
    assert outcome.details.failed_step_index == 2
    assert site.held == 1  # the server accepted the request and holds it
    assert outcome.status_code == 0  # the failing step got no response


async def test_the_schedulers_deadline_names_the_step_in_progress(site):
    # The attempt's deadline (0.4s) strikes long before the flow's own (3s): the outcome
    # made by run_attempt from the tracker alone still names the step.
    site.journey.hang.add("/login")
    probe = build_probe(flow_spec(site.url("/"), LOGIN, timeout="3s"), source_address=None)
    [outcome] = await run_attempt(probe, 0.4)
    assert (outcome.step, outcome.failed_phase, outcome.timeout_phase, outcome.reason) == (
        "login", "timeout", "response", "response_timeout")
    assert outcome.error.startswith("step 'login': no result within 0.4s")


async def test_a_flow_through_the_scheduler_reports_its_step_on_the_wire(site):
    site.journey.hang.add("/api/me")
    spec = flow_spec(site.url("/"), LOGIN, timeout="800ms")
    results: list[pb.ProbeResult] = []
    registry = CollectorRegistry()
    scheduler = Scheduler([spec], sink=results.append, confirm_failures=False,
                          counters=ProbeCounters(registry))
    async with scheduler:
        await scheduler.run_now(spec.name)
    [result] = results
    assert (result.probe, result.kind, result.success, result.step) == (
        "social-login", "flow", False, "me")
    assert (result.failed_phase, result.timeout_phase) == (pb.PHASE_TIMEOUT, pb.PHASE_RESPONSE)
    assert [s.name for s in result.flow.steps] == ["home", "login", "me"]
    assert (result.flow.failed_step_index, result.flow.step_count) == (3, 3)
    assert registry.get_sample_value("probenet_agent_probe_failures_total", {
        "kind": "flow", "phase": "timeout", "reason": "response_timeout"}) == 1.0


async def test_a_step_to_a_closed_port_fails_in_connect(site):
    flow = LOGIN.replace("request: {url: /api/me}",
                         f'request: {{url: "http://127.0.0.1:{closed_port()}/api/me"}}')
    outcome = await probe_once(flow_spec(site.url("/"), flow))
    assert (outcome.step, outcome.failed_phase, outcome.reason) == (
        "me", "connect", "connect_refused")
    assert outcome.details.steps[-1].failed_phase == pb.PHASE_CONNECT


# ------------------------------------------------------------------------------ secrets

def _forms(value: str) -> set[str]:
    return {value, quote(value, safe=""), quote(value), quote_plus(value), html.escape(value),
            json.dumps(value)[1:-1], repr(value)[1:-1]}


def _assert_secret_absent(secret: str, spec: ProbeSpec, outcomes: list[ProbeOutcome],
                          texts: list[str]) -> None:
    for outcome in outcomes:
        wire = to_wire(spec, outcome, confirmed=True, timestamp_ms=1).SerializeToString()
        for form in _forms(secret):
            assert form not in outcome.error, (form, outcome.error)
            assert form.encode() not in wire, form
            for text in texts:
                assert form not in text, (form, text)


@pytest.mark.parametrize("padding", [0, 40, 70])
async def test_secrets_never_appear_in_errors_results_or_logs(padding, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="probenet")
    # Characters that every encoding changes: the secret's forms differ from its value.
    secret = f"pw-{secrets.token_urlsafe(12)} &é'\"<>%+/" + "x" * padding
    monkeypatch.setenv("FLOW_TEST_PASSWORD", secret)
    journey = LoginJourney(users={"probe-bot": secret}, echo_header=True)
    async with LoginServer(journey) as site:
        spec = flow_spec(site.url("/"), LOGIN)
        success = await probe_once(spec)  # the secret went out in a form and came back
        journey.login_fault = "error_page"  # the error page echoes the password
        page = await probe_once(spec)
        # The same page checked on the header echoing the password: the error quotes it.
        echoed = await probe_once(flow_spec(site.url("/"), LOGIN.replace(
            'expect: {status: ["200"], body_regex: "Welcome probe-bot"}',
            'expect: {status: ["200"], headers: {X-Echo: "^never$"}}')))
        # A JSON API echoing it; the URL and query carrying it.
        api = await probe_once(flow_spec(site.url("/"), """\
            secrets: {password: {env: FLOW_TEST_PASSWORD}}
            steps:
              - name: api
                request: {method: POST, url: /api/login, json: {user: x, password: "${password}"}}
                expect: {status: ["401"], json: {"$.password": "nope"}}
            """))
        query = await probe_once(flow_spec(site.url("/"), """\
            secrets: {password: {env: FLOW_TEST_PASSWORD}}
            steps:
              - name: echo
                request: {url: "/echo?raw=${password}", query: {pw: "${password}"}}
                expect: {json: {"$.query.pw": "nope"}}
            """))
    assert success.success, success
    assert journey.requests[1].form["password"] == secret  # it was really sent
    assert (page.step, page.reason) == ("login", "body_mismatch")
    assert (echoed.step, echoed.reason) == ("login", "header_mismatch")
    assert (api.step, api.reason) == ("api", "json_mismatch")
    assert (query.step, query.reason) == ("echo", "json_mismatch")
    # The errors that quote the response show where the secret was, without it.
    assert REDACTED in echoed.error
    assert api.error == f"step 1/1 'api': JSON $.password is '{REDACTED}', expected 'nope'"
    assert REDACTED in query.error
    logs = [record.getMessage() for record in caplog.records] + [caplog.text]
    logs += [repr(record.__dict__) for record in caplog.records]
    _assert_secret_absent(secret, spec, [success, page, echoed, api, query], logs)


async def test_secrets_stay_out_of_logs_and_metrics_when_a_step_breaks(site, monkeypatch,
                                                                        caplog):
    # A bug inside a step (here: a resolver that raises, its message holding the secret) is
    # logged with its traceback and reported as probe_error, both without the secret.
    caplog.set_level(logging.DEBUG, logger="probenet")
    secret = f"s-{secrets.token_hex(8)}"
    monkeypatch.setenv("FLOW_TEST_PASSWORD", secret)

    async def broken_resolver(host: str, family: int) -> list[str]:
        raise RuntimeError(f"resolver exploded on {host} while the secret was {secret}")

    spec = flow_spec(site.url("/"), """\
        secrets: {password: {env: FLOW_TEST_PASSWORD}}
        steps:
          - name: away
            request: {url: "http://login.example.test/?pw=${password}"}
        """)
    probe = build_flow(spec, source_address=None, resolver=broken_resolver)
    registry = CollectorRegistry()
    results: list[pb.ProbeResult] = []
    scheduler = Scheduler([spec], sink=results.append, confirm_failures=False,
                          counters=ProbeCounters(registry), build=lambda _spec: probe)
    async with scheduler:
        await scheduler.run_now(spec.name)
    [result] = results
    assert (result.step, result.reason) == ("away", "probe_error")
    assert f"secret was {REDACTED}" in result.error
    assert any("flow step raised an unexpected error" in r.getMessage() for r in caplog.records)
    assert secret.encode() not in result.SerializeToString()
    assert secret not in caplog.text
    assert secret.encode() not in generate_latest(registry)


# ------------------------------------------------------------------------ the agent process

async def test_the_agent_process_runs_a_flow(tmp_path):
    secret = f"agent-{secrets.token_hex(8)}"
    (tmp_path / "social.secret").write_text(secret + "\n")
    journey = LoginJourney(users={"probe-bot": secret})
    collector_config = parse_collector_config(collector_yaml(str(tmp_path / "j.db")))
    async with LoginServer(journey) as site, CollectorService(collector_config) as collector:
        flow = LOGIN.replace("{env: FLOW_TEST_PASSWORD}", "{file: social.secret}")
        config = tmp_path / "agent.yaml"
        config.write_text(f"""\
agent: {{id: fra-1, region: eu}}
collectors: [{{address: "{collector.grpc_address}"}}]
stream: {{backoff_initial: 50ms, backoff_max: 500ms, linger: 20ms}}
probes:
  - name: social-login
    kind: flow
    target: "{site.url('/')}"
    interval: 300ms
    timeout: 250ms
    flow:
{textwrap.indent(flow, "      ")}""")
        check = subprocess.run(
            [sys.executable, "-c", "from probenet.cli import main; main()", "check",
             str(config)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert check.returncode == 0, check.stderr
        log = tmp_path / "agent.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from probenet.cli import main; main()", "agent",
                 "--config", str(config), "--log-level", "debug"],
                cwd=ROOT, stdout=out, stderr=out)
        try:
            await wait_until(lambda: sum(r.path == "/api/me" for r in journey.requests) >= 2, 60)
            journey.login_fault = "error_page"
            await wait_until(lambda: (collector.registry.get_sample_value(
                "probenet_ingest_results_total", {"outcome": "applied"}) or 0) >= 4, 30)
            failed_logins = len([r for r in journey.requests if r.path == "/login"])
            await wait_until(lambda: len([r for r in journey.requests
                                          if r.path == "/login"]) >= failed_logins + 2, 30)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 30)
    text = log.read_text()
    assert code == 0, text
    assert secret not in text
    logins = [r for r in journey.requests if r.path == "/login"]
    assert all(r.form["password"] == secret for r in logins)
    assert journey.sessions  # the agent logged in for real
