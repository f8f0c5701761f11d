"""`probenet check` of `flow` probes: a valid journey passes; each mistake is reported at
its `file:line:col` (undefined names, JSON paths, regexes, secrets, step names, timeouts,
bodies, extraction sources)."""

from __future__ import annotations

import pytest

from probenet.agent.config import FlowOptions, JsonExists, load_config
from probenet.cli import check

HEAD = """\
agent: {id: fra-1, region: eu-central}
collectors: [{address: "127.0.0.1:7070"}]
probes:
  - name: social-login
    kind: flow
    target: https://social.example.test/
    timeout: 5s
    flow:
"""  # the flow's own keys start on line 9, indented by 6

VALID = HEAD + """\
      variables: {user: probe-bot}
      secrets:
        password: {file: secrets/social}
        api_key: {env: PROBENET_TEST_FLOW_KEY}
      headers: {X-Api-Key: "${api_key}"}
      tls: {ca_file: ca.pem, server_name: social.example.test}
      steps:
        - name: home
          request: {url: /}
          expect: {status: ["200"], headers: {content-type: "^text/html"}}
          extract:
            csrf: {body_regex: 'name="csrf" value="([^"]+)"'}
            request_id: {header: X-Request-Id}
            pre: {cookie: csrftoken}
        - name: login
          request:
            method: POST
            url: /login
            form: {user: "${user}", password: "${password}", csrf: "${csrf}"}
            follow_redirects: false
          expect: {status: ["302"], body_not_regex: ["Invalid"]}
          timeout: 2s
        - name: me
          request: {url: "/api/me", query: {trace: "${request_id}"}, headers: {Accept: text/json}}
          expect:
            json: {"$.user.name": probe-bot, "$.token": {exists: true}, "$.banned": {exists: false}}
            max_duration: 1s
          extract: {token: {json: "$.token"}}
        - name: api
          request: {method: POST, url: "https://a.test/", json: {t: "${token}", n: [1, "${user}"]}}
"""


@pytest.fixture
def write(tmp_path, monkeypatch):
    """Write a config (and its secret file) into tmp_path; return its path."""
    monkeypatch.setenv("PROBENET_TEST_FLOW_KEY", "k-123")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "social").write_text("hunter2\n")

    def write_config(text: str):
        path = tmp_path / "agent.yaml"
        path.write_text(text)
        return path
    return write_config


def problems(path, capsys) -> list[str]:
    code = check([path])
    lines = capsys.readouterr().err.splitlines()
    assert (code == 1) == bool(lines)
    return [line.removeprefix(f"{path}:") for line in lines]


def test_a_valid_journey_passes(write, capsys):
    path = write(VALID)
    assert check([path]) == 0
    assert f"{path}: ok (agent config)" in capsys.readouterr().out
    flow = load_config(path).probes[0].flow
    assert isinstance(flow, FlowOptions)
    assert flow.secrets["password"].file == str(path.parent / "secrets" / "social")
    login = flow.steps[1]
    assert (login.request.method, login.request.follow_redirects, login.timeout) == (
        "POST", False, 2.0)
    me = flow.steps[2].expect
    assert me.json_checks["$.user.name"] == "probe-bot"
    assert me.json_checks["$.token"] == JsonExists(exists=True)
    assert flow.steps[3].request.json_body == {"t": "${token}", "n": [1, "${user}"]}


def test_the_secret_value_is_never_printed(write, capsys, tmp_path):
    path = write(VALID.replace("timeout: 2s", "timeout: 9s"))
    assert check([path]) == 1
    captured = capsys.readouterr()
    assert "hunter2" not in captured.err + captured.out
    assert "k-123" not in captured.err + captured.out


def _replace(old: str, new: str) -> str:
    assert VALID.count(old) == 1, old
    return VALID.replace(old, new)


# (config, expected "line:col: message fragment"); a problem with a mapping's key (a JSON
# path, a variable name) is matched by its line only: "line:*: fragment".
CASES = {
    "undefined variable in a url": (
        _replace("request: {url: /}", 'request: {url: "/${where}"}'),
        ("17:26: step 'home': ${where} is not defined: set it in variables or secrets, or "
         "extract it in an earlier step")),
    "variable used before the step that extracts it": (
        _replace('query: {trace: "${request_id}"}', 'query: {trace: "${token}"}'),
        "32:52: step 'me': ${token} is not defined"),
    "undefined variable in a form field": (
        _replace('csrf: "${csrf}"', 'csrf: "${csfr}"'),
        "27:68: step 'login': ${csfr} is not defined"),
    "undefined variable in a flow header": (
        _replace('{X-Api-Key: "${api_key}"}', '{X-Api-Key: "${apikey}"}'),
        "13:28: header 'X-Api-Key': ${apikey} is not defined for step 'home'"),
    "undefined variable in a json body": (
        _replace('n: [1, "${user}"]', 'n: [1, "${usr}"]'),
        "38:65: step 'api': ${usr} is not defined"),
    "unclosed placeholder": (
        _replace("request: {url: /}", "request: {url: '/${oops'}"),
        "17:26: probes[0].flow.steps[0].request.url: unclosed '${' at offset 1"),
    "bad JSON path in a check": (
        _replace('"$.banned": {exists: false}', '"$.banned[*]": {exists: false}'),
        "34:*: probes[0].flow.steps[2].expect.json.$.banned[*]"),
    "bad JSON path in an extraction": (
        _replace('token: {json: "$.token"}', 'token: {json: "token"}'),
        ("36:35: probes[0].flow.steps[2].extract.token.json: invalid JSON path 'token': it must "
         "start with $")),
    "bad body regex": (
        _replace('body_not_regex: ["Invalid"]', 'body_not_regex: ["(Invalid"]'),
        "29:54: probes[0].flow.steps[1].expect.body_not_regex[0]: invalid regular expression"),
    "bad header regex": (
        _replace('content-type: "^text/html"', 'content-type: "[text"'),
        ("18:61: probes[0].flow.steps[0].expect.headers.content-type: invalid regular "
         "expression")),
    "bad extraction regex": (
        _replace("""'name="csrf" value="([^"]+)"'""", """'name="csrf" value="([^"]+"'"""),
        "20:32: probes[0].flow.steps[0].extract.csrf.body_regex: invalid regular expression"),
    "missing secret file": (
        _replace("{file: secrets/social}", "{file: secrets/nope}"),
        "11:26: secret 'password': cannot read"),
    "unset environment secret": (
        _replace("{env: PROBENET_TEST_FLOW_KEY}", "{env: PROBENET_TEST_FLOW_UNSET}"),
        "12:24: secret 'api_key': environment variable PROBENET_TEST_FLOW_UNSET is not set"),
    "secret with both sources": (
        _replace("{file: secrets/social}", "{file: secrets/social, env: X}"),
        "11:19: probes[0].flow.secrets.password: set exactly one of file or env"),
    "variable and secret of one name": (
        _replace("{user: probe-bot}", "{user: probe-bot, password: x}"),
        "11:19: 'password' is both a variable and a secret"),
    "extraction over a secret": (
        _replace("pre: {cookie: csrftoken}", "password: {cookie: csrftoken}"),
        "22:23: step 'home': 'password' would overwrite a secret"),
    "duplicate step names": (
        _replace("- name: me", "- name: home"),
        "31:17: duplicate step name 'home' (first at steps[0])"),
    "step timeout over the probe's": (
        _replace("timeout: 2s", "timeout: 6s"),
        "30:20: step 'login': timeout (6s) exceeds the probe's timeout (5s)"),
    "max_duration over the probe's timeout": (
        _replace("max_duration: 1s", "max_duration: 10s"),
        "35:27: step 'me': max_duration exceeds the probe's timeout (5s)"),
    "two bodies": (
        _replace("            url: /login\n", "            url: /login\n            body: x\n"),
        ("25:13: probes[0].flow.steps[1].request: set one of body, json or form, not body and "
         "form")),
    "extraction with two sources": (
        _replace("request_id: {header: X-Request-Id}",
                 "request_id: {header: X-Request-Id, cookie: rid}"),
        ("21:25: probes[0].flow.steps[0].extract.request_id: set exactly one of body_regex, "
         "json, header or cookie (got header, cookie)")),
    "extraction without a source": (
        _replace("request_id: {header: X-Request-Id}", "request_id: {}"),
        ("21:25: probes[0].flow.steps[0].extract.request_id: set exactly one of body_regex, "
         "json, header or cookie")),
    "bad variable name": (
        _replace("{user: probe-bot}", "{user-name: probe-bot}"),
        "9:*: probes[0].flow.variables.user-name"),
    "absolute url with another scheme": (
        _replace('url: "https://a.test/"', 'url: "ftp://a.test/"'),
        "38:40: probes[0].flow.steps[3].request.url: invalid URL 'ftp://a.test/'"),
    "unknown key in a step": (
        _replace("          timeout: 2s", "          timeout: 2s\n          expects: {}"),
        "31:11: unknown key 'expects' (did you mean 'expect'?)"),
    "bad status": (
        _replace('status: ["302"]', 'status: ["6xx"]'),
        "29:29: probes[0].flow.steps[1].expect.status[0]: invalid status '6xx'"),
}


def _matches(line: str, expected: str) -> bool:
    row, col, fragment = expected.split(":", 2)
    if col == "*":
        return line.startswith(f"{row}:") and line.split(":", 2)[2].startswith(fragment)
    return line.startswith(expected)


@pytest.mark.parametrize("case", CASES)
def test_each_mistake_is_reported_at_its_position(case, write, capsys):
    text, expected = CASES[case]
    found = problems(write(text), capsys)
    assert any(_matches(line, expected) for line in found), found


def test_every_problem_is_reported_at_once(write, capsys):
    text = (VALID.replace("{file: secrets/social}", "{file: secrets/nope}")
            .replace("- name: me", "- name: home")
            .replace("timeout: 2s", "timeout: 6s"))
    found = problems(write(text), capsys)
    assert len(found) == 3, found


def test_too_many_steps(write, capsys):
    steps = "".join(f"        - {{name: s{i}}}\n" for i in range(51))
    found = problems(write(HEAD + "      steps:\n" + steps), capsys)
    assert any(line.startswith("10:9: probes[0].flow.steps:") and "at most 50" in line
               for line in found), found


def test_flow_options_on_another_kind_are_refused(write, capsys):
    text = VALID.replace("kind: flow", "kind: http").replace(
        "target: https://social.example.test/", "target: https://social.example.test/")
    found = problems(write(text), capsys)
    assert any("flow options do not apply to a http probe" in line for line in found), found


def test_an_empty_secret_file_is_refused(write, capsys, tmp_path):
    path = write(VALID)
    (tmp_path / "secrets" / "social").write_text("  \n")
    found = problems(path, capsys)
    assert any(line.startswith("11:26: secret 'password': the secret is empty")
               for line in found), found
