"""A small website with a login journey, on loopback, for the `flow` probe's tests.

The journey (what a user does, and what a flow probe walks):

    GET  /          home page: a login form with a CSRF token in a hidden field, and the
                    same token in a pre-session cookie `csrftoken`; header X-Request-Id
    POST /login     form user, password, csrf (must equal the `csrftoken` cookie). Success:
                    an HttpOnly `session` cookie and 302 to /feed, or JSON
                    {"ok": true, "user": ..., "token": ...} when the request accepts JSON.
                    Bad credentials: 200 with an error page (that echoes the password
                    back, as careless sites do). Bad CSRF: 403.
    GET  /login     the login form again (where /feed sends visitors without a session)
    GET  /feed      "Welcome <user>" with a valid session, else 302 to /login
    GET  /api/me    {"user": {"name": ...}, "token": ...} with a session, else 401 JSON
    POST /api/login JSON {"user", "password"} -> {"token": ...} (200) or
                    {"error": ..., "password": <echoed>} (401)
    GET  /api/token?token=T   {"valid": true} when T is a token /api/me or /login gave
    GET  /sso       sets cookie `sso=1` and redirects (302) to /sso/done, which needs it
    GET  /loop      redirects to itself, forever
    GET  /redirect?to=URL   302 to any URL (another server: cross-site redirects)
    GET  /echo      200 with the request's method, headers, query and body as JSON

Faults are switches on `LoginJourney` that tests flip between runs (the server reads them
on every request):

    journey.login_fault = "error_page" | "server_error" | ""   # logins fail (200 page / 500)
    journey.forget_sessions = True     # the feed and /api/me no longer see any session
    journey.slow = {"/feed": 0.5}      # answer that path after a delay
    journey.hang = {"/login"}          # accept the request and never answer it
    journey.invalid_json = True        # /api/me answers `{"user": ` (application/json)
    journey.echo_header = True         # every response echoes a submitted password in a
                                       # header X-Echo (for redaction tests)

    async with LoginServer(LoginJourney(users={"probe-bot": "pw"})) as site:
        site.url("/")                  # "http://127.0.0.1:PORT/"
    async with LoginServer(journey, ssl_context=cert.server_context()) as site:  # https

`journey.requests` records every request (method, path, query, headers, cookies, body),
for tests that check what the probe sent. The journey logic (`LoginJourney.answer`) holds no
aiohttp objects, so the demo can serve the same journey from its own target.
"""

from __future__ import annotations

import asyncio
import html
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import parse_qsl

from aiohttp import web

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

LoginFault = Literal["", "error_page", "server_error"]

_FORM = """<!doctype html>
<html><head><title>Social</title></head><body>
<h1>Social</h1>
<form method="post" action="/login">
  <input type="hidden" name="csrf" value="{csrf}">
  <input name="user"> <input name="password" type="password">
  <button>Log in</button>
</form>
</body></html>
"""


@dataclass
class SeenRequest:
    """One request the server received."""

    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names (repeats joined with ", ")
    cookies: dict[str, str]
    body: str
    peer: str = ""  # the client's address
    at: float = field(default_factory=time.monotonic)

    @property
    def form(self) -> dict[str, str]:
        """The body's form fields."""
        return dict(parse_qsl(self.body))


@dataclass
class Answer:
    """What the journey answers: status, headers, cookies to set, body."""

    status: int = 200
    body: str = ""
    content_type: str = "text/html"
    headers: dict[str, str] = field(default_factory=dict)
    # name -> (value, httponly)
    cookies: dict[str, tuple[str, bool]] = field(default_factory=dict)


def _json(status: int, value: Any) -> Answer:
    return Answer(status, json.dumps(value), "application/json")


def _redirect(location: str, status: int = 302) -> Answer:
    return Answer(status, "", "text/plain", {"Location": location})


@dataclass
class LoginJourney:
    """The site's state and its fault switches; `answer` decides every response."""

    users: dict[str, str] = field(default_factory=lambda: {"probe-bot": "correct horse"})
    login_fault: LoginFault = ""
    forget_sessions: bool = False
    slow: dict[str, float] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    invalid_json: bool = False
    echo_header: bool = False
    sessions: dict[str, str] = field(default_factory=dict)  # session id -> user
    tokens: dict[str, str] = field(default_factory=dict)  # API token -> user
    requests: list[SeenRequest] = field(default_factory=list)

    def answer(self, request: SeenRequest) -> Answer:
        """The response to one request (the server adds X-Request-Id to each)."""
        route = _ROUTES.get((request.method, request.path)) or _ROUTES.get(("*", request.path))
        answer = route(self, request) if route else Answer(404, "not found", "text/plain")
        if self.echo_header:
            answer.headers["X-Echo"] = f"tried password={request.form.get('password', '')}"
        return answer

    def user(self, request: SeenRequest) -> str | None:
        """The user whose session the request carries, if any."""
        if self.forget_sessions:
            return None
        return self.sessions.get(request.cookies.get("session", ""))

    def _token(self, user: str) -> str:
        token = "tok-" + secrets.token_hex(8)
        self.tokens[token] = user
        return token

    # -- pages -----------------------------------------------------------------------------

    def _form(self, _request: SeenRequest) -> Answer:
        csrf = secrets.token_hex(8)
        answer = Answer(200, _FORM.format(csrf=csrf))
        answer.cookies["csrftoken"] = (csrf, False)
        return answer

    def _login(self, request: SeenRequest) -> Answer:
        if self.login_fault == "server_error":
            return Answer(500, "<h1>Internal Server Error</h1>")
        form = request.form
        if not form.get("csrf") or form.get("csrf") != request.cookies.get("csrftoken"):
            return Answer(403, "<h1>CSRF check failed</h1>")
        user, password = form.get("user", ""), form.get("password", "")
        if self.login_fault == "error_page" or self.users.get(user) != password:
            # Echoes what was typed, as a careless "sticky" form does.
            return Answer(200, (
                "<p class=error>Invalid user name or password.</p>"
                f'<input name=user value="{html.escape(user)}">'
                f'<input name=password value="{html.escape(password)}">'))
        session = secrets.token_hex(16)
        self.sessions[session] = user
        if "application/json" in request.headers.get("accept", ""):
            answer = _json(200, {"ok": True, "user": user, "token": self._token(user)})
        else:
            answer = _redirect("/feed")
        answer.cookies["session"] = (session, True)
        return answer

    def _feed(self, request: SeenRequest) -> Answer:
        user = self.user(request)
        return Answer(200, f"<p>Welcome {html.escape(user)}</p>") if user else _redirect(
            "/login")

    def _me(self, request: SeenRequest) -> Answer:
        user = self.user(request)
        if user is None:
            return _json(401, {"error": "not logged in"})
        if self.invalid_json:
            return Answer(200, '{"user": ', "application/json")
        return _json(200, {"user": {"name": user}, "token": self._token(user)})

    def _api_login(self, request: SeenRequest) -> Answer:
        try:
            data = json.loads(request.body)
        except ValueError:
            return _json(400, {"error": "body is not JSON"})
        if not isinstance(data, dict):
            return _json(400, {"error": "expected an object"})
        user, password = str(data.get("user", "")), str(data.get("password", ""))
        if self.login_fault == "server_error":
            return _json(500, {"error": "internal"})
        if self.login_fault == "error_page" or self.users.get(user) != password:
            return _json(401, {"error": "bad credentials", "password": password})
        return _json(200, {"token": self._token(user), "user": {"name": user}})

    def _token_check(self, request: SeenRequest) -> Answer:
        return _json(200, {"valid": request.query.get("token", "") in self.tokens})

    def _sso(self, _request: SeenRequest) -> Answer:
        answer = _redirect("/sso/done")
        answer.cookies["sso"] = ("1", False)
        return answer

    def _sso_done(self, request: SeenRequest) -> Answer:
        if request.cookies.get("sso") == "1":
            return Answer(200, "signed in")
        return Answer(403, "no sso cookie")

    def _loop(self, _request: SeenRequest) -> Answer:
        return _redirect("/loop")

    def _redirect_to(self, request: SeenRequest) -> Answer:
        return _redirect(request.query.get("to", "/"))

    def _echo(self, request: SeenRequest) -> Answer:
        return _json(200, {"method": request.method, "headers": request.headers,
                           "query": request.query, "body": request.body})


# (method or "*", path) -> the journey's handler
_ROUTES: dict[tuple[str, str], Callable[[LoginJourney, SeenRequest], Answer]] = {
    ("GET", "/"): LoginJourney._form, ("GET", "/login"): LoginJourney._form,
    ("POST", "/login"): LoginJourney._login, ("*", "/feed"): LoginJourney._feed,
    ("*", "/api/me"): LoginJourney._me,
    ("POST", "/api/login"): LoginJourney._api_login,
    ("GET", "/api/token"): LoginJourney._token_check,
    ("GET", "/sso"): LoginJourney._sso, ("GET", "/sso/done"): LoginJourney._sso_done,
    ("*", "/loop"): LoginJourney._loop, ("*", "/echo"): LoginJourney._echo,
    ("*", "/redirect"): LoginJourney._redirect_to,
}


class LoginServer:
    """Serves a LoginJourney on loopback (HTTPS with `ssl_context`); an async context manager."""

    def __init__(self, journey: LoginJourney | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        """Port 0 binds a free port; `port` after entering is the bound one."""
        self.journey = journey or LoginJourney()
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()  # set on exit: held requests end
        self.held = 0  # requests being held (journey.hang) right now
        self.request_ids: list[str] = []  # every X-Request-Id sent, in order

    def url(self, path: str = "/") -> str:
        """The URL of `path` on this server."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}{path}"

    async def __aenter__(self) -> Self:
        """Bind and serve."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Release held requests and stop (idempotent)."""
        self._release.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        journey = self.journey
        body = (await request.read()).decode("utf-8", errors="replace")
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        seen = SeenRequest(request.method, request.path, dict(request.query), headers,
                           dict(request.cookies), body, peer=request.remote or "")
        journey.requests.append(seen)
        if request.path in journey.hang:
            self.held += 1
            try:
                await self._release.wait()
            finally:
                self.held -= 1
            return web.Response(status=503, text="released")
        delay = journey.slow.get(request.path, 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        answer = journey.answer(seen)
        response = web.Response(status=answer.status, text=answer.body,
                                content_type=answer.content_type, headers=answer.headers)
        request_id = "req-" + secrets.token_hex(6)
        self.request_ids.append(request_id)
        response.headers["X-Request-Id"] = request_id
        for name, (value, httponly) in answer.cookies.items():
            response.set_cookie(name, value, path="/", httponly=httponly, samesite="Lax")
        return response
