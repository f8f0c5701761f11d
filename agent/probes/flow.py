"""The `flow` probe: HTTP steps run in order with one cookie jar, as a user's journey.

Each step fills its `${name}` templates (variables, secrets, values extracted by earlier
steps), sends one request on a fresh connection (the `http` probe's `HttpConnector` and
`fetch`: same TLS options, ip_family and source address, redirects per step), checks the
final response, in this order: status, headers, body_regex, body_not_regex, json (a value,
or `{exists: ...}`), then extracts its variables, then checks max_duration. The first unmet
check ends the flow; the result names the failing step (`ProbeOutcome.step`) and carries
`pb.FlowDetails` with every step that ran.

Failure reasons (phase): those of `http` for transport (dns_*, connect_*, tls_*, response_*)
and for checks (http_status, header_mismatch, body_mismatch, body_forbidden_match,
too_many_redirects; validation), and: request_invalid (request: a URL that is no http(s)
URL after substitution, a header value with a line break), json_mismatch (a JSON check
failed), json_invalid (a json check or json extraction met a body that is not JSON),
extract_failed (an extraction source gave nothing), step_too_slow (max_duration); all
in validation. A deadline gives phase `timeout`, the phase in progress as timeout_phase and
the reason dns_timeout, connect_timeout, response_timeout or timeout. A bug of ours inside
a step is probe_error (logged with its traceback, scrubbed of secrets).

Redirects: cookies set by every hop are kept and sent on every hop. A redirect to another
site (scheme, host, port) does not carry the step's Authorization or Cookie header, nor any
header filled with a secret; one that turns the request into a bodiless GET drops the
body's Content-* headers. A URL is filled as written (a value may add path or query
parts); characters that cannot stand in a URL are percent-encoded, `query` values always.

Deadlines: a step's own `timeout` (default: what is left of the probe's), inside the
probe's `timeout`, which the flow enforces itself a little before the scheduler's hard
deadline (`_deadline_margin`), so that a flow out of time still reports every step that ran
and its details. Should the scheduler's deadline strike first anyway (a stalled event loop),
the running step's name is on the PhaseTracker and the scheduler's outcome carries it.

Secrets: read once, when the probe is built (an unchanged probe keeps its value across a
config reload). No text this module produces (errors, logs)
holds a secret's value: every error is passed through `Redactor`, which replaces each
secret in the forms it may take on the way (raw, percent-encoded, form-encoded, JSON-,
HTML- and repr-escaped, and the start of one cut off by an excerpt) with `[redacted]`.
Request contents are never logged. Values extracted at run time (a CSRF token, a session
id) are not secrets: they are substituted like variables and never logged, but a check's
error may quote a response's value.

Timing phases sum over the steps (and their redirects): resolve, connect, tls, processing,
transfer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import logging
import re
import time
import traceback
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, quote_plus, urlencode, urljoin, urlsplit, urlunsplit

from probenet.configfile import format_duration
from probenet.v1 import probenet_pb2 as pb

from ..config import JsonExists, read_secret
from ..jsonpath import MISSING, JsonPath
from ..results import PHASES
from ..templates import Template
from .attempt import TIMEOUT_REASONS, bounded
from .base import FAILURE_PHASES, PhaseTracker, ProbeFailure, ProbeOutcome
from .connect import literal_addresses
from .http import HttpConnector, HttpUrl, fetch, http_tls_context
from .resolve import Resolver, family_for, system_resolver

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from http.client import HTTPResponse
    from urllib.request import Request

    from ..config import ExtractRule, FlowOptions, FlowStepSpec, ProbeSpec
    from .httpclient import HttpResponse

__all__ = ["REDACTED", "FlowProbe", "Redactor", "build"]

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
_EXCERPT = 80
# The flow's own deadline comes this share of its timeout (at most _MAX_MARGIN_S) before the
# scheduler's, leaving it the time to build its outcome.
_MARGIN_SHARE = 0.1
_MAX_MARGIN_S = 0.1
# requests' requote_uri: what may stay as it is in a URL; the rest is percent-encoded, so a
# substituted value can never break the request line.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"
_BAD_HEADER_CHARS = re.compile(r"[\r\n\x00]")
_BAD_HOST_CHARS = re.compile(r"[\x00-\x20\x7f\"<>\\^`{|}/?#@]")
# A prefix this long of a secret, cut off by an excerpt, is redacted too.
_MIN_CUT_PREFIX = 4
_CUT_END = re.compile(r"['\"]|\.\.\.")
_MAX_LITERALS = 64
_BODY_HEADERS = frozenset({"content-type", "content-encoding", "content-language",
                           "content-location"})


# ------------------------------------------------------------------------------- redaction

class Redactor:
    """Replaces every secret value, in each form it may take in a text, with REDACTED.

    Besides whole values, the start of one (at least _MIN_CUT_PREFIX characters) that an
    excerpt cut off is removed: one that ends a text, or stands before a quote or `...`.
    """

    __slots__ = ("_forms", "_pattern")

    def __init__(self, secrets: Iterable[str]) -> None:
        """`secrets`: the values to hide (empty ones are ignored)."""
        forms: set[str] = set()
        for value in secrets:
            if value:
                forms.update(form for form in _secret_forms(value) if form)
        self._forms = sorted(forms, key=len, reverse=True)
        self._pattern = (re.compile("|".join(re.escape(form) for form in self._forms))
                         if forms else None)

    def __call__(self, text: str) -> str:
        """`text` without any secret."""
        if self._pattern is None or not text:
            return text
        text = self._pattern.sub(REDACTED, text)
        spans = sorted(self._cut_spans(text))
        if not spans:
            return text
        merged = [list(spans[0])]
        for start, end in spans[1:]:
            if start <= merged[-1][1]:  # overlapping starts of one secret: one marker
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out: list[str] = []
        pos = 0
        for start, end in merged:
            out.extend((text[pos:start], REDACTED))
            pos = end
        out.append(text[pos:])
        return "".join(out)

    def _cut_spans(self, text: str) -> set[tuple[int, int]]:
        """(start, end) of every proper prefix of a secret form that ends at a cut."""
        spans: set[tuple[int, int]] = set()
        ends = {len(text)} | {match.start() for match in _CUT_END.finditer(text)}
        for end in ends:
            for form in self._forms:
                if len(form) <= _MIN_CUT_PREFIX:
                    continue
                head = form[:_MIN_CUT_PREFIX]
                pos = text.find(head, max(0, end - len(form) + 1), end)
                while pos >= 0:
                    if form.startswith(text[pos:end]):
                        spans.add((pos, end))
                        break
                    pos = text.find(head, pos + 1, end)
        return spans


def _secret_forms(value: str) -> set[str]:
    """The forms a secret takes in URLs, forms, JSON, HTML and reprs, as sent or read back.

    Read back: headers are decoded as latin-1, so a UTF-8 secret echoed in a response header
    reads as mojibake; sent: a header value is encoded as latin-1 (`?` for what it lacks).
    """
    bases = {value, value.encode().decode("latin-1"),
             value.encode("latin-1", errors="replace").decode("latin-1")}
    forms: set[str] = set()
    for base in bases:
        forms.update((
            base, quote(base, safe=""), quote(base), quote(base, safe=_URL_SAFE),
            quote_plus(base), html.escape(base), html.escape(base, quote=False),
            json.dumps(base)[1:-1], json.dumps(base, ensure_ascii=False)[1:-1],
            repr(base)[1:-1], ascii(base)[1:-1], repr(base.encode())[2:-1]))
    return forms


# ------------------------------------------------------------------------------ cookie jar

class _JarRequest:
    """The part of urllib's Request that http.cookiejar reads (as requests' MockRequest)."""

    unverifiable = False

    def __init__(self, url: HttpUrl) -> None:
        self.url = url
        self.type = url.scheme
        self.host = url.host_header
        self.origin_req_host = url.host.lower()
        self.cookie: str | None = None

    def get_full_url(self) -> str:
        return self.url.text

    def get_header(self, name: str, default: str | None = None) -> str | None:
        return self.host if name.lower() == "host" else default

    def has_header(self, name: str) -> bool:
        return name.lower() == "cookie" and self.cookie is not None

    def add_unredirected_header(self, name: str, value: str) -> None:
        if name.lower() == "cookie":
            self.cookie = value


class _JarResponse:
    """The part of an HTTP response that http.cookiejar reads: its Set-Cookie lines."""

    def __init__(self, set_cookies: list[str]) -> None:
        self._set_cookies = set_cookies

    def info(self) -> _JarResponse:
        return self

    def get_all(self, name: str, default: list[str]) -> list[str]:
        return list(self._set_cookies) if name.lower() == "set-cookie" else default


class _Cookies:
    """One run's cookie jar and the policy it applies."""

    __slots__ = ("held", "jar", "policy")

    def __init__(self) -> None:
        self.policy = DefaultCookiePolicy()
        self.jar = CookieJar(self.policy)
        # Whether the jar ever held a cookie: most steps of most flows meet none, and asking
        # an empty jar still costs a pass over it (a measurable share of a loopback request).
        self.held = False

    def header_for(self, url: HttpUrl) -> str | None:
        """The Cookie header the jar sends to `url`, or None."""
        if not self.held:
            return None
        request = _JarRequest(url)
        self.jar.add_cookie_header(cast("Request", request))
        return request.cookie

    def take(self, url: HttpUrl, set_cookies: list[str]) -> None:
        """Keep the cookies of a response from `url`."""
        self.jar.extract_cookies(cast("HTTPResponse", _JarResponse(set_cookies)),
                                 cast("Request", _JarRequest(url)))
        self.held = self.held or len(self.jar) > 0

    def value(self, name: str, url: HttpUrl) -> str | None:
        """The value of cookie `name` the jar would send to `url`, else of any so named."""
        request = cast("Request", _JarRequest(url))
        policy = self.policy
        sendable: list[tuple[int, str]] = []
        others: list[str] = []
        for cookie in self.jar:
            if cookie.name != name or cookie.value is None:
                continue
            if (policy.domain_return_ok(cookie.domain, request)
                    and policy.path_return_ok(cookie.path, request)
                    and policy.return_ok(cookie, request)):
                sendable.append((len(cookie.path), cookie.value))
            else:
                others.append(cookie.value)
        if sendable:
            return max(sendable)[1]
        return others[-1] if others else None


class _StepHops:
    """One step's requests: its headers plus the jar's cookies; every response's cookies kept.

    A redirect to another site (scheme, host, port) does not carry the step's Authorization
    header nor any header filled with a secret; one that drops the body drops its headers.
    """

    def __init__(self, cookies: _Cookies, headers: dict[str, str], secret_headers: set[str],
                 origin: tuple[str, str, int], *, has_body: bool) -> None:
        self.cookies = cookies
        self.headers = headers
        self.secret_headers = secret_headers | {"authorization"}
        self.origin = origin
        self.has_body = has_body
        self.explicit_cookie = any(name.lower() == "cookie" for name in headers)

    def request_headers(self, url: HttpUrl, method: str,  # noqa: ARG002 - the body tells
                        has_body: bool) -> Mapping[str, str]:
        """The step's headers for this hop, with the jar's cookies."""
        other_site = url.origin != self.origin
        dropped: set[str] = set()
        if other_site:  # the step's own Cookie header was written for its own site too
            dropped |= self.secret_headers | {"cookie"}
        if self.has_body and not has_body:
            dropped |= _BODY_HEADERS
        headers = self.headers if not dropped else {
            name: value for name, value in self.headers.items() if name.lower() not in dropped}
        if self.explicit_cookie and not other_site:
            return headers  # the step's own Cookie header wins over the jar
        cookie = self.cookies.header_for(url)
        if cookie is None:
            return headers
        return {**{k: v for k, v in headers.items() if k.lower() != "cookie"},
                "Cookie": cookie}

    def response_received(self, url: HttpUrl, response: HttpResponse) -> None:
        """Keep the response's cookies (a redirect's too)."""
        if not response.set_cookies:
            return
        try:
            self.cookies.take(url, response.set_cookies)
        except Exception:  # not seen: http.cookiejar skips what it cannot parse
            log.warning("a response's cookies could not be read; they were ignored")


# ------------------------------------------------------------------------------- templates

def _compile_json(value: Any) -> Any:
    """A JSON-like value with every string (keys too) parsed into a Template."""
    if isinstance(value, str):
        return Template.parse(value)
    if isinstance(value, dict):
        return {Template.parse(str(key)): _compile_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_compile_json(item) for item in value]
    if isinstance(value, dt.date):  # YAML reads 2026-01-01 as a date: send what was written
        return value.isoformat()
    return value


def _fill_json(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, Template):
        return value.fill(values)
    if isinstance(value, dict):
        return {key.fill(values): _fill_json(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill_json(item, values) for item in value]
    return value


def _json_equal(found: Any, want: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0, containers compare item by item."""
    if isinstance(want, bool) or isinstance(found, bool):
        return isinstance(want, bool) and isinstance(found, bool) and want == found
    if isinstance(want, int | float) and isinstance(found, int | float):
        return bool(want == found)
    if isinstance(want, dict):
        return (isinstance(found, dict) and found.keys() == want.keys()
                and all(_json_equal(found[key], want[key]) for key in want))
    if isinstance(want, list):
        return (isinstance(found, list) and len(found) == len(want)
                and all(_json_equal(a, b) for a, b in zip(found, want, strict=True)))
    if isinstance(want, dt.date):
        want = want.isoformat()
    return type(found) is type(want) and bool(found == want)


def _json_text(value: Any) -> str:
    """A JSON value as a variable: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=_iso)


def _iso(value: Any) -> str:
    """YAML's dates and times (in a check's expected value) as JSON strings."""
    return value.isoformat() if isinstance(value, dt.date | dt.time) else str(value)


# ----------------------------------------------------------------------------------- steps

@dataclass(frozen=True, slots=True)
class _Extraction:
    name: str
    rule: ExtractRule
    regex: re.Pattern[str] | None
    path: JsonPath | None


@dataclass(slots=True)
class _StepPlan:
    """One step, compiled once when the probe is built."""

    spec: FlowStepSpec
    label: str  # "step 2/3 'login'"
    url: Template
    headers: list[tuple[str, Template]]
    secret_headers: set[str]  # lower-case names of headers filled with a secret
    query: list[tuple[Template, Template]]
    body: Template | None
    json_body: Any
    form: list[tuple[Template, Template]] | None
    body_regex: re.Pattern[str] | None
    forbidden: list[re.Pattern[str]]
    json_checks: list[tuple[JsonPath, Any]]
    header_checks: list[tuple[str, re.Pattern[str]]]
    extractions: list[_Extraction]

    @property
    def name(self) -> str:
        return self.spec.name


def _plan(spec: FlowStepSpec, number: int, count: int, flow: FlowOptions,
          secrets: set[str]) -> _StepPlan:
    request = spec.request
    merged = {name.lower(): (name, text) for name, text in flow.headers.items()}
    merged.update({name.lower(): (name, text) for name, text in request.headers.items()})
    headers = [(name, Template.parse(text)) for name, text in merged.values()]
    if request.json_body is not None and "content-type" not in merged:
        headers.append(("Content-Type", Template.parse("application/json")))
    if request.form is not None and "content-type" not in merged:
        headers.append(("Content-Type", Template.parse("application/x-www-form-urlencoded")))
    expect = spec.expect
    return _StepPlan(
        spec=spec, label=f"step {number}/{count} {spec.name!r}",
        url=Template.parse(request.url), headers=headers,
        secret_headers={name.lower() for name, template in headers
                        if secrets.intersection(template.names)},
        query=[(Template.parse(k), Template.parse(v)) for k, v in request.query.items()],
        body=Template.parse(request.body) if request.body is not None else None,
        json_body=_compile_json(request.json_body),
        form=None if request.form is None else [
            (Template.parse(k), Template.parse(v)) for k, v in request.form.items()],
        body_regex=re.compile(expect.body_regex) if expect.body_regex else None,
        forbidden=[re.compile(pattern) for pattern in expect.body_not_regex],
        json_checks=[(JsonPath.parse(path), want) for path, want in expect.json_checks.items()],
        header_checks=[(name.lower(), re.compile(pattern))
                       for name, pattern in expect.headers.items()],
        extractions=[_Extraction(name, rule,
                                 re.compile(rule.body_regex) if rule.body_regex else None,
                                 JsonPath.parse(rule.json_path) if rule.json_path else None)
                     for name, rule in spec.extract.items()])


def _check_duration(plan: _StepPlan, duration_s: float) -> None:
    limit = plan.spec.expect.max_duration
    if limit is not None and duration_s > limit:
        raise ProbeFailure("validation", "step_too_slow", (
            f"took {duration_s:.3f}s, more than max_duration {format_duration(limit)}"))


@dataclass(slots=True)
class _StepResult:
    """How one step ended."""

    name: str
    success: bool
    duration_seconds: float
    status_code: int = 0
    failed_phase: str = ""
    timeout_phase: str = ""
    reason: str = ""
    error: str = ""  # not yet redacted
    address: str = ""

    def wire(self) -> pb.FlowStep:
        """The step as the wire's FlowStep."""
        return pb.FlowStep(name=self.name, success=self.success,
                           duration_seconds=self.duration_seconds,
                           status_code=self.status_code,
                           failed_phase=PHASES.get(self.failed_phase, pb.PHASE_UNSPECIFIED),
                           reason=self.reason)


@dataclass(slots=True)
class _Response:
    """A step's final response, its body decoded once for every check that reads it."""

    response: HttpResponse
    url: HttpUrl
    _text: str | None = None
    _json: Any = field(default=MISSING)

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.response.text()
        return self._text

    def document(self) -> Any:
        """The body as JSON; ProbeFailure json_invalid if it is not."""
        if self._json is MISSING:
            try:
                self._json = json.loads(self.text)
            except (ValueError, RecursionError) as exc:
                detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deep"
                raise ProbeFailure("validation", "json_invalid",
                                  f"body is not JSON ({detail})") from None
        return self._json


# ----------------------------------------------------------------------------------- probe

class FlowProbe:
    """Run the steps of a flow in order; one outcome for the whole journey."""

    def __init__(self, target: str, options: FlowOptions, *, secrets: Mapping[str, str],
                 timeout_s: float, connector: HttpConnector, name: str = "") -> None:
        """`secrets` are the values already read; `connector` makes every connection."""
        self.name = name
        self.target = target
        HttpUrl(target)  # ValueError now rather than at every run
        self.options = options
        self.timeout_s = timeout_s
        self.connector = connector
        self.values: dict[str, str] = {**options.variables, **secrets}
        self._secrets = dict(secrets)
        self.redact = Redactor(secrets.values())
        count = len(options.steps)
        self.steps = [_plan(step, number, count, options, set(secrets))
                      for number, step in enumerate(options.steps, start=1)]
        # Hosts that are IP literals, as the http probe keeps its target's: parsing an
        # address on every request is a measurable share of a loopback request's cost.
        self._literals: dict[str, list[str] | None] = {}

    def inputs_changed(self) -> bool:
        """Whether a secret's source now holds another value (a rotated password).

        A reload rebuilds the probe then, though its config is unchanged.
        """
        for name, source in self.options.secrets.items():
            try:
                if read_secret(source) != self._secrets.get(name):
                    return True
            except ValueError:
                return True
        return False

    def _deadline_margin(self) -> float:
        return min(_MAX_MARGIN_S, self.timeout_s * _MARGIN_SHARE)

    async def run(self, tracker: PhaseTracker) -> Sequence[ProbeOutcome]:
        """Run the journey once: every step until the first that fails."""
        loop = asyncio.get_running_loop()
        budget_end = (loop.time() + self.timeout_s - self._deadline_margin()
                      - tracker.elapsed())
        values = dict(self.values)
        cookies = _Cookies()
        results: list[_StepResult] = []
        for plan in self.steps:
            # Left set when the run is cancelled: the scheduler's outcome names the step.
            tracker.step = plan.name
            result = await self._step(plan, values, cookies, tracker, budget_end)
            results.append(result)
            if not result.success:
                break
        return [self._outcome(tracker, results)]

    def _outcome(self, tracker: PhaseTracker, results: list[_StepResult]) -> ProbeOutcome:
        last = results[-1]
        failed = None if last.success else last
        details = pb.FlowDetails(steps=[result.wire() for result in results],
                                 failed_step_index=len(results) if failed else 0,
                                 step_count=len(self.steps))
        duration = tracker.finish()
        outcome = ProbeOutcome(success=failed is None, duration_seconds=duration,
                               phases=dict(tracker.durations), status_code=last.status_code,
                               address=last.address, details=details)
        if failed is not None:
            label = self.steps[len(results) - 1].label
            outcome.failed_phase = failed.failed_phase
            outcome.timeout_phase = failed.timeout_phase
            outcome.reason = failed.reason
            outcome.error = bounded(self.redact(f"{label}: {failed.error}"))
            outcome.step = failed.name
        return outcome

    async def _step(self, plan: _StepPlan, values: dict[str, str], cookies: _Cookies,
                    tracker: PhaseTracker, budget_end: float) -> _StepResult:
        """Run one step under its deadline; never raises but for cancellation."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        now = loop.time()
        own = plan.spec.timeout
        step_end = budget_end if own is None else min(budget_end, now + own)
        result = _StepResult(plan.name, success=False, duration_seconds=0.0)
        try:
            async with asyncio.timeout_at(step_end) as deadline:
                response = await self._exchange(plan, values, cookies, tracker, result)
            tracker.enter("validation")
            self._check(plan, response)
            extracted = self._extract(plan, response, cookies)
            result.duration_seconds = time.perf_counter() - started
            _check_duration(plan, result.duration_seconds)
        except ProbeFailure as failure:
            result.failed_phase, result.reason = failure.phase, failure.reason
            result.error = failure.error
        except TimeoutError as exc:
            if not deadline.expired():
                self._bug(plan, exc, tracker, result)
                return self._ended(result, started)
            phase = tracker.current if tracker.current in FAILURE_PHASES else "request"
            which = (f"the step's timeout ({format_duration(own)})"
                     if own is not None and step_end < budget_end
                     else f"the probe's timeout ({format_duration(self.timeout_s)})")
            result.failed_phase, result.timeout_phase = "timeout", phase
            result.reason = TIMEOUT_REASONS.get(phase, "timeout")
            result.error = f"no result within {which} (deadline struck in phase {phase})"
        except Exception as exc:  # a bug of ours
            self._bug(plan, exc, tracker, result)
        else:
            values.update(extracted)
            result.success = True
        return self._ended(result, started)

    @staticmethod
    def _ended(result: _StepResult, started: float) -> _StepResult:
        if not result.duration_seconds:
            result.duration_seconds = time.perf_counter() - started
        return result

    def _bug(self, plan: _StepPlan, exc: Exception, tracker: PhaseTracker,
             result: _StepResult) -> None:
        """An unexpected error: logged (its traceback without any secret), step failed."""
        text = self.redact("".join(traceback.format_exception(exc)))
        log.error("flow step raised an unexpected error: %s", text,
                  extra={"probe": self.name, "step": plan.name})
        result.failed_phase = (tracker.current if tracker.current in FAILURE_PHASES
                               else "request")
        result.reason = "probe_error"
        result.error = f"{type(exc).__name__}: {exc}"

    # -- the request -----------------------------------------------------------------------

    def _request(self, plan: _StepPlan, values: Mapping[str, str],
                 ) -> tuple[HttpUrl, dict[str, str], bytes | None]:
        """The step's URL, headers and body, filled; ProbeFailure request_invalid."""
        filled = quote(plan.url.fill(values), safe=_URL_SAFE)
        if plan.query:
            parts = urlsplit(filled)
            pairs = [(key.fill(values), value.fill(values)) for key, value in plan.query]
            query = urlencode(pairs, quote_via=quote)
            filled = urlunsplit(parts._replace(
                query=f"{parts.query}&{query}" if parts.query else query))
        try:
            url: HttpUrl | None = HttpUrl(urljoin(self.target, filled))
        except ValueError:
            url = None
        if url is None or _BAD_HOST_CHARS.search(url.host):
            raise ProbeFailure("request", "request_invalid", (
                f"url {plan.spec.request.url!r} does not give an http(s) URL with a host "
                "after substitution"))
        headers: dict[str, str] = {}
        for name, template in plan.headers:
            value = template.fill(values)
            if _BAD_HEADER_CHARS.search(value):
                raise ProbeFailure("request", "request_invalid", (
                    f"header {name!r} holds a line break or NUL after substitution"))
            headers[name] = value
        body: bytes | None = None
        if plan.body is not None:
            body = plan.body.fill(values).encode()
        elif plan.spec.request.json_body is not None:
            body = json.dumps(_fill_json(plan.json_body, values)).encode()
        elif plan.form is not None:
            body = urlencode([(k.fill(values), v.fill(values)) for k, v in plan.form]).encode()
        return url, headers, body

    async def _exchange(self, plan: _StepPlan, values: Mapping[str, str], cookies: _Cookies,
                        tracker: PhaseTracker, result: _StepResult) -> _Response:
        tracker.enter("request")
        url, headers, body = self._request(plan, values)
        request = plan.spec.request
        hops = _StepHops(cookies, headers, plan.secret_headers, url.origin,
                         has_body=body is not None)
        literal = self._literal(url.host)
        if literal is not None:
            tracker.enter("dns", "resolve")
            addresses = literal
        else:
            addresses = await self.connector.resolve(url, tracker)
        fetched = await fetch(self.connector, url, addresses, tracker, method=request.method,
                              headers=headers, body=body,
                              follow_redirects=request.follow_redirects,
                              max_redirects=request.max_redirects, hops=hops)
        result.status_code = fetched.response.status
        result.address = fetched.address
        if fetched.failure is not None:
            raise ProbeFailure("validation", *fetched.failure)
        return _Response(fetched.response, fetched.url)

    def _literal(self, host: str) -> list[str] | None:
        if host not in self._literals:
            if len(self._literals) >= _MAX_LITERALS:  # hosts may come from responses
                self._literals.clear()
            self._literals[host] = literal_addresses(host, self.connector.family)
        return self._literals[host]

    # -- the checks ------------------------------------------------------------------------

    def _shown(self, value: str) -> str:
        """A response's value quoted in an error: secrets out first, then cut."""
        return repr(self.redact(value)[:_EXCERPT])

    def _check(self, plan: _StepPlan, answer: _Response) -> None:
        """Raise ProbeFailure at the first expectation the response does not meet."""
        expect = plan.spec.expect
        response = answer.response
        if not expect.status_matches(response.status):
            raise ProbeFailure("validation", "http_status", (
                f"status {response.status} is not one of {', '.join(expect.status)}"))
        for name, pattern in plan.header_checks:
            value = response.headers.get(name)
            if value is None:
                raise ProbeFailure("validation", "header_mismatch", f"header {name!r} missing")
            if not pattern.search(value):
                raise ProbeFailure("validation", "header_mismatch", (
                    f"header {name!r} value {self._shown(value)} does not match "
                    f"{pattern.pattern!r}"))
        if plan.body_regex is not None and not plan.body_regex.search(answer.text):
            raise ProbeFailure("validation", "body_mismatch",
                              f"body does not match {plan.body_regex.pattern!r}")
        for pattern in plan.forbidden:
            if pattern.search(answer.text):
                raise ProbeFailure("validation", "body_forbidden_match",
                                  f"body matches {pattern.pattern!r}")
        for path, want in plan.json_checks:
            self._check_json(path, want, answer.document())

    def _check_json(self, path: JsonPath, want: Any, document: Any) -> None:
        found = path.find(document)
        if isinstance(want, JsonExists):
            if (found is not MISSING) != want.exists:
                state = "missing" if found is MISSING else "present"
                raise ProbeFailure("validation", "json_mismatch", (
                    f"JSON {path} is {state} (expected exists: {str(want.exists).lower()})"))
            return
        if found is MISSING:
            raise ProbeFailure("validation", "json_mismatch", f"JSON {path} is missing")
        if not _json_equal(found, want):
            raise ProbeFailure("validation", "json_mismatch", (
                f"JSON {path} is {self._shown(_json_text(found))}, expected "
                f"{self._shown(_json_text(want))}"))

    def _extract(self, plan: _StepPlan, answer: _Response, cookies: _Cookies) -> dict[str, str]:
        """The step's extracted variables; ProbeFailure extract_failed for one that is absent."""
        found: dict[str, str] = {}
        for extraction in plan.extractions:
            rule = extraction.rule
            value: str | None = None
            if extraction.regex is not None:
                match = extraction.regex.search(answer.text)
                if match is not None:
                    value = match.group(1) if extraction.regex.groups else match.group()
                where = f"body_regex {extraction.regex.pattern!r} does not match"
            elif extraction.path is not None:
                item = extraction.path.find(answer.document())
                value = None if item is MISSING else _json_text(item)
                where = f"JSON {extraction.path} is missing"
            elif rule.header is not None:
                value = answer.response.headers.get(rule.header.lower())
                where = f"header {rule.header!r} missing"
            else:
                assert rule.cookie is not None
                value = cookies.value(rule.cookie, answer.url)
                where = f"no cookie {rule.cookie!r}"
            if value is None:
                raise ProbeFailure("validation", "extract_failed",
                                  f"cannot extract {extraction.name!r}: {where}")
            found[extraction.name] = value
        return found


def build(spec: ProbeSpec, *, source_address: str | None,
          resolver: Resolver = system_resolver) -> FlowProbe:
    """Build a `flow` probe: read its secrets, compile its steps; ValueError if unusable."""
    options = spec.flow
    if options is None:  # pragma: no cover - the config always sets the probe's own options
        raise ValueError("flow options missing")
    secrets: dict[str, str] = {}
    for name, source in options.secrets.items():
        try:
            value = read_secret(source)
        except ValueError as exc:
            raise ValueError(f"secret {name!r}: {exc}") from None
        if not value:
            raise ValueError(f"secret {name!r} is empty")
        secrets[name] = value
    tls = options.tls
    context = http_tls_context(spec.target, tls)
    connector = HttpConnector(
        source_address=source_address, family=family_for(options.ip_family, source_address),
        ssl_context=context, server_name=tls.server_name if tls else None,
        server_name_host=HttpUrl(spec.target).host.lower(), resolver=resolver)
    return FlowProbe(spec.target, options, secrets=secrets, timeout_s=spec.timeout,
                     connector=connector, name=spec.name)
