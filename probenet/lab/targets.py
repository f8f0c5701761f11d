"""Local HTTP, TCP and DNS targets that fail on demand, chosen by the peer's source address.

Every demo agent binds its probes to its own loopback address (127.0.X.Y), so a target can
tell who is asking: the `FaultPolicy` gets the probe name and the peer's address and answers
with a `FaultMode` (or None: answer normally). One `FaultyTargets` serves many probes:

| mode    | HTTP `/p/{probe}` | TCP (a port per probe) | DNS `{probe}.probenet.test` |
| ------- | ----------------- | ---------------------- | --------------------------- |
| healthy | 200 `ok`          | banner `...ready`      | A 127.0.0.1 / AAAA ::1      |
| error   | 503               | reset before banner    | SERVFAIL                    |
| reset   | reset (RST)       | reset (RST)            | REFUSED                     |
| stall   | no response       | no banner              | no answer                   |

A login journey for `flow` probes lives under `/j/{probe}/` (see `LoginJourney`): the home
page (a login form with a CSRF token), `login` (POST: user, password, csrf; 303 to `feed`
with a session cookie) and `feed` (needs the session). The three modes above hit every page
of it; `deny_login` hits only the login step (it answers 200 with an error page and no
session, the way the seed's outage looked: pages load, nobody can log in) and leaves every
other target healthy.

A TCP probe only fails on a reset or stall when it waits for the banner: configure it with
`tcp: {expect: "ready"}` (the kernel completes the handshake before any process sees it, so
a connect alone always succeeds on loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import logging
import secrets
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Self, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from aiohttp import web

from probenet.httpserve import serve_app
from probenet.lifecycle import EnterOnce

from .errors import LifecycleError, TargetsError

log = logging.getLogger("probenet.lab.targets")

DNS_ZONE = dns.name.from_text("probenet.test.")
TCP_BANNER = b"probenet-demo ready\r\n"
_LINGER_RESET = struct.pack("ii", 1, 0)
_MAX_DNS_DATAGRAM = 4096


class FaultMode(StrEnum):
    """How a target misbehaves for one request (see the module docstring's table)."""

    ERROR = "error"
    RESET = "reset"
    STALL = "stall"
    DENY_LOGIN = "deny_login"


FaultPolicy = Callable[[str, str], FaultMode | None]
"""(probe name, peer address) -> the fault to inject, or None to answer normally."""


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """One request a target answered (or refused to answer), for tests and the demo's log."""

    probe: str
    peer: str
    protocol: str  # http | tcp | dns
    fault: FaultMode | None
    at: float


def _reset(sock: socket.socket | None) -> None:
    """Make the next close send a TCP RST instead of a FIN."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


class FaultyTargets:
    """HTTP, TCP and DNS servers on loopback that consult a `FaultPolicy` for every request.

    An async context manager: entering binds every server on port 0 (read the addresses back
    with `http_url`, `tcp_address`, `dns_server`), leaving ends every stalled request and
    closes every socket. `tcp_probes` names the probes that get their own TCP port.
    """

    def __init__(
        self,
        policy: FaultPolicy,
        *,
        tcp_probes: Iterable[str] = (),
        host: str = "127.0.0.1",
        max_stall_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        history: int = 100_000,
        login_user: str = "probe-bot",
        login_password: str | None = None,
    ) -> None:
        """Nothing is bound until the context is entered.

        The login journey accepts `login_user` with `login_password` (default: a random one,
        read it back as `login_password`, e.g. to write the agents' secret file).
        """
        self._policy = policy
        self.journey = LoginJourney(login_user, login_password or secrets.token_urlsafe(18))
        self._tcp_probes = tuple(dict.fromkeys(tcp_probes))
        self._host = host
        self._max_stall_s = max_stall_s
        self._clock = clock
        self._lifecycle = EnterOnce("FaultyTargets", LifecycleError)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._http_port = 0
        self._tcp_servers: dict[str, asyncio.Server] = {}
        self._dns_transport: asyncio.DatagramTransport | None = None
        self._dns_port = 0
        self._task_group: asyncio.TaskGroup | None = None
        self._server_tasks: list[asyncio.Task[Any]] = []
        self._connections: set[asyncio.Task[Any]] = set()
        self.history: deque[ServedRequest] = deque(maxlen=history)
        self.counts: Counter[tuple[str, FaultMode | None]] = Counter()
        self.malformed_dns = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Bind the HTTP, TCP and DNS servers."""
        self._lifecycle.enter()
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        log.info("targets listening", extra={
            "http": self.http_url(""), "dns": self.dns_server(),
            "tcp": {p: self.tcp_address(p) for p in self._tcp_probes}})
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_route("*", "/p/{probe}", self._http)
        app.router.add_get("/j/{probe}/", self._journey_home)
        app.router.add_post("/j/{probe}/login", self._journey_login)
        app.router.add_get("/j/{probe}/feed", self._journey_feed)
        try:
            # aiohttp's default wait: stalled requests end on `_closing` before cleanup.
            site = await serve_app(app, self._host, 0, shutdown_timeout_s=60.0,
                                   handler_cancellation=True)
        except OSError as exc:
            raise TargetsError(f"cannot bind the HTTP target on {self._host}: {exc}") from exc
        self._runner = site.runner
        self._http_port = site.port

        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        for probe in self._tcp_probes:
            try:
                server = await asyncio.start_server(
                    functools.partial(self._tcp, probe), self._host, 0)
            except OSError as exc:
                raise TargetsError(f"cannot bind the TCP target of {probe}: {exc}") from exc
            self._tcp_servers[probe] = server
            self._server_tasks.append(self._task_group.create_task(
                server.serve_forever(), name=f"tcp-target:{probe}"))

        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _DnsProtocol(self), local_addr=(self._host, 0))
        except OSError as exc:
            raise TargetsError(f"cannot bind the DNS target on {self._host}: {exc}") from exc
        self._dns_transport = transport
        self._dns_port = int(transport.get_extra_info("sockname")[1])

    async def __aexit__(self, *exc_info: object) -> None:
        """End stalled requests and close every server; safe to call more than once."""
        if not self._lifecycle.leave():
            return
        self._closing.set()
        if self._dns_transport is not None:
            self._dns_transport.close()
        for server in self._tcp_servers.values():
            server.close()
        if self._connections:
            await asyncio.wait(self._connections, timeout=5.0)
            for task in self._connections:
                task.cancel()
        if self._task_group is not None:
            for task in self._server_tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task_group.__aexit__(None, None, None)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- addresses -------------------------------------------------------------------------

    def http_url(self, probe: str) -> str:
        """The URL an http probe named `probe` should fetch ('' gives the index page)."""
        base = f"http://{self._host}:{self._http_port}/"
        return f"{base}p/{probe}" if probe else base

    def flow_url(self, probe: str) -> str:
        """The base URL of `probe`'s login journey (its home page)."""
        return f"http://{self._host}:{self._http_port}/j/{probe}/"

    @property
    def login_password(self) -> str:
        """The password the login journey accepts."""
        return self.journey.password

    def tcp_address(self, probe: str) -> str:
        """The `host:port` of `probe`'s own TCP target (it must be in `tcp_probes`)."""
        server = self._tcp_servers.get(probe)
        if server is None:
            raise TargetsError(f"no TCP target for probe {probe!r}: list it in tcp_probes")
        return f"{self._host}:{server.sockets[0].getsockname()[1]}"

    def dns_server(self) -> str:
        """The `host:port` of the DNS responder."""
        return f"{self._host}:{self._dns_port}"

    @staticmethod
    def dns_name(probe: str) -> str:
        """The name a dns probe named `probe` should resolve."""
        return f"{probe}.{DNS_ZONE.to_text()}".rstrip(".")

    # -- bookkeeping -----------------------------------------------------------------------

    def _decide(self, probe: str, peer: str, protocol: str) -> FaultMode | None:
        try:
            fault = self._policy(probe, peer)
        except Exception:
            log.exception("fault policy failed; answering normally",
                          extra={"probe": probe, "peer": peer})
            fault = None
        self.history.append(ServedRequest(probe, peer, protocol, fault, self._clock()))
        self.counts[probe, fault] += 1
        return fault

    def served(self, probe: str | None = None, since: float = 0.0) -> list[ServedRequest]:
        """Requests answered since `since` (unix seconds), for one probe or all."""
        # list() copies the deque atomically: tests read it from another thread.
        return [r for r in list(self.history)
                if r.at >= since and (probe is None or r.probe == probe)]

    async def _stall(self, still_open: Callable[[], bool]) -> None:
        """Wait until the peer gives up, the targets close, or max_stall_s passes."""
        deadline = time.monotonic() + self._max_stall_s
        while still_open() and not self._closing.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._closing.wait()

    # -- HTTP ------------------------------------------------------------------------------

    async def _index(self, _request: web.Request) -> web.Response:
        return web.Response(text="probenet demo targets: GET /p/{probe}\n")

    async def _http(self, request: web.Request) -> web.StreamResponse:
        probe = request.match_info["probe"]
        fault = self._decide(probe, request.remote or "", "http")
        if fault is None or fault is FaultMode.DENY_LOGIN:
            return web.Response(text=f"ok {probe}\n")
        return await self._http_fault(request, probe, fault)

    async def _http_fault(self, request: web.Request, probe: str,
                          fault: FaultMode) -> web.StreamResponse:
        """Answer with `fault` (error, reset or stall)."""
        if fault is FaultMode.ERROR:
            return web.Response(status=503, text=f"{probe} is unavailable\n")
        transport = request.transport
        if fault is FaultMode.RESET:
            if transport is not None:
                _reset(transport.get_extra_info("socket"))
                transport.abort()
            return web.Response(status=500)  # never sent: the connection is gone
        await self._stall(lambda: transport is not None and not transport.is_closing())
        if transport is not None:
            transport.abort()
        return web.Response(status=504)  # never sent

    # -- login journey ---------------------------------------------------------------------

    def _journey_fault(self, request: web.Request, step: str) -> tuple[str, FaultMode | None]:
        probe = request.match_info["probe"]
        fault = self._decide(probe, request.remote or "", "http")
        if fault is FaultMode.DENY_LOGIN and step != "login":
            fault = None
        return probe, fault

    async def _journey_home(self, request: web.Request) -> web.StreamResponse:
        probe, fault = self._journey_fault(request, "home")
        if fault is not None:
            return await self._http_fault(request, probe, fault)
        csrf = self.journey.new_csrf()
        response = web.Response(text=self.journey.home_page(probe, csrf),
                                content_type="text/html")
        response.set_cookie("csrf", csrf, path=f"/j/{probe}/", httponly=True, samesite="Lax")
        return response

    async def _journey_login(self, request: web.Request) -> web.StreamResponse:
        probe, fault = self._journey_fault(request, "login")
        if fault is not None and fault is not FaultMode.DENY_LOGIN:
            return await self._http_fault(request, probe, fault)
        form = await request.post()
        if fault is FaultMode.DENY_LOGIN:
            return web.Response(text=self.journey.error_page(), content_type="text/html")
        session = self.journey.log_in(
            str(form.get("user", "")), str(form.get("password", "")),
            str(form.get("csrf", "")), request.cookies.get("csrf", ""))
        if session is None:
            return web.Response(status=401, text=self.journey.error_page(),
                                content_type="text/html")
        response = web.Response(status=303, headers={"Location": f"/j/{probe}/feed"})
        response.set_cookie("session", session, path=f"/j/{probe}/", httponly=True,
                            samesite="Lax")
        return response

    async def _journey_feed(self, request: web.Request) -> web.StreamResponse:
        probe, fault = self._journey_fault(request, "feed")
        if fault is not None:
            return await self._http_fault(request, probe, fault)
        user = self.journey.user_of(request.cookies.get("session", ""))
        if user is None:
            return web.Response(status=302, headers={"Location": f"/j/{probe}/"})
        return web.Response(text=f"<h1>Welcome {html.escape(user)}</h1>\n",
                            content_type="text/html")

    # -- TCP -------------------------------------------------------------------------------

    async def _tcp(self, probe: str, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._tcp_session(probe, reader, writer)
        except (ConnectionError, OSError):
            pass  # the peer went away first: nothing to answer
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _tcp_session(self, probe: str, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        fault = self._decide(probe, str(peer[0]) if peer else "", "tcp")
        if fault in {FaultMode.ERROR, FaultMode.RESET}:
            _reset(writer.get_extra_info("socket"))
            writer.transport.abort()
            return
        if fault is FaultMode.STALL:
            eof = asyncio.ensure_future(reader.read())
            try:
                await self._stall(lambda: not eof.done())
            finally:
                eof.cancel()
            return
        writer.write(TCP_BANNER)
        await writer.drain()
        # Read what the client sends until it closes, so that closing never resets data
        # the client has not read yet; bounded, the client may just keep the socket open.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                while await reader.read(4096):
                    pass

    # -- DNS -------------------------------------------------------------------------------

    def _dns_answer(self, data: bytes, peer: str) -> bytes | None:
        """The reply to one DNS datagram, or None to stay silent."""
        if len(data) > _MAX_DNS_DATAGRAM:
            self.malformed_dns += 1
            return None
        try:
            query = dns.message.from_wire(data)
        except (dns.exception.DNSException, ValueError):
            self.malformed_dns += 1
            return None
        if query.flags & dns.flags.QR or len(query.question) != 1:
            self.malformed_dns += 1
            return None
        question = query.question[0]
        response = dns.message.make_response(query)
        qname = question.name
        if not qname.is_subdomain(DNS_ZONE) or qname == DNS_ZONE:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        probe = qname.relativize(DNS_ZONE).to_text()
        fault = self._decide(probe, peer, "dns")
        if fault is FaultMode.STALL:
            return None
        if fault is FaultMode.ERROR:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif fault is FaultMode.RESET:
            response.set_rcode(dns.rcode.REFUSED)
        elif question.rdtype in {dns.rdatatype.A, dns.rdatatype.AAAA}:
            address = "127.0.0.1" if question.rdtype == dns.rdatatype.A else "::1"
            response.answer.append(dns.rrset.from_text(
                qname, 5, dns.rdataclass.IN, question.rdtype, address))
        response.flags |= dns.flags.AA
        return response.to_wire()


class LoginJourney:
    """The state of the demo's login journey: one user, CSRF tokens and sessions (bounded).

    Not a security model: just enough for a probe to have to carry a cookie, a token read
    from a form, and a credential, the way a browser does.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, user: str, password: str) -> None:
        """Accept `user` with `password`."""
        self.user = user
        self.password = password
        self._csrf: dict[str, None] = {}
        self._sessions: dict[str, str] = {}

    @staticmethod
    def _remember(store: dict[str, Any], key: str, value: Any) -> None:
        store[key] = value
        while len(store) > LoginJourney.MAX_ENTRIES:
            del store[next(iter(store))]

    def new_csrf(self) -> str:
        """A fresh CSRF token for a home page."""
        token = secrets.token_hex(12)
        self._remember(self._csrf, token, None)
        return token

    def log_in(self, user: str, password: str, csrf: str, csrf_cookie: str) -> str | None:
        """A new session id for good credentials and a matching, known CSRF token."""
        if not csrf or csrf != csrf_cookie or csrf not in self._csrf:
            return None
        if not (secrets.compare_digest(user, self.user)
                and secrets.compare_digest(password.encode(), self.password.encode())):
            return None
        session = secrets.token_hex(16)
        self._remember(self._sessions, session, user)
        return session

    def user_of(self, session: str) -> str | None:
        """The user of a session id, or None."""
        return self._sessions.get(session)

    @staticmethod
    def home_page(probe: str, csrf: str) -> str:
        """The home page: a login form."""
        return (f"<html><body><h1>{html.escape(probe)}</h1>\n"
                f'<form method="post" action="/j/{html.escape(probe)}/login">\n'
                f'<input type="hidden" name="csrf" value="{csrf}">\n'
                '<input name="user"><input type="password" name="password">\n'
                "<button>Log in</button></form></body></html>\n")

    @staticmethod
    def error_page() -> str:
        """What a refused login shows."""
        return "<html><body><p>Something went wrong. Please log in again.</p></body></html>\n"


class _DnsProtocol(asyncio.DatagramProtocol):
    """Feeds datagrams to the targets' DNS logic; malformed input is counted and dropped."""

    def __init__(self, targets: FaultyTargets) -> None:
        self._targets = targets
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            reply = self._targets._dns_answer(data, str(addr[0]))  # noqa: SLF001
        except Exception:
            log.exception("DNS target failed on a datagram", extra={"peer": str(addr[0])})
            return
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)
