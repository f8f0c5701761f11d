"""The HTTP surface against hostile clients, over real sockets on loopback: slowloris heads and
bodies are closed after their timeout, connections over the cap are closed at once, every
query string to the collector's endpoints is answered 200 or 400 (never 500), and a malformed
request is logged as a WARNING without a traceback while our own errors stay ERROR."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from probenet.collector.config import parse_config
from probenet.collector.server import CollectorService
from probenet.httpserve import HttpLimits, HttpSite, serve_app
from support.collector_client import collector_yaml

if TYPE_CHECKING:
    from collections.abc import Iterator

# Every wait in this file is bounded by this (a hung server fails the test, never hangs it).
DEADLINE_S = 20.0
TIMEOUT = aiohttp.ClientTimeout(total=DEADLINE_S)


def open_fds() -> int:
    """File descriptors this process holds now."""
    return len(list(Path("/proc/self/fd").iterdir()))


async def _hello(_request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def _echo_length(request: web.Request) -> web.Response:
    return web.Response(text=str(len(await request.read())))


async def _broken(_request: web.Request) -> web.Response:
    msg = "a bug in a handler"
    raise RuntimeError(msg)


def _app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", _hello)
    app.router.add_post("/echo", _echo_length)
    app.router.add_get("/broken", _broken)
    return app


async def _serve(limits: HttpLimits) -> HttpSite:
    return await serve_app(_app(), "127.0.0.1", 0, limits=limits)


async def _get(site: HttpSite, path: str = "/") -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, \
            session.get(f"http://127.0.0.1:{site.port}{path}") as response:
        return response.status, await response.text()


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    received = b""
    try:
        while chunk := await reader.read(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


async def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S} s: {what}"
        await asyncio.sleep(0.02)


# -- slowloris: heads that never complete --------------------------------------------------

SLOWLORIS_CONNECTIONS = 200


async def _slowloris(port: int, stop: asyncio.Event) -> tuple[bytes, int]:
    """One slowloris client: a partial head, then a header line every 0.2 s until closed.

    Returns what the server sent before closing (nothing expected) and how many header lines
    went out. Bounded: at most DEADLINE_S / 0.2 lines, and it stops once `stop` is set.
    """
    sent = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: probenet\r\n")
        await writer.drain()
        closed = asyncio.ensure_future(_read_until_closed(reader))
        for line in range(int(DEADLINE_S / 0.2)):
            done, _ = await asyncio.wait({closed}, timeout=0.2)
            if done or stop.is_set():
                break
            try:
                writer.write(b"X-Slow-%d: still here\r\n" % line)
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
        return await asyncio.wait_for(closed, DEADLINE_S), sent
    finally:
        writer.close()
        await _closed(writer)


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_slowloris_heads_are_closed_after_the_header_timeout_and_fds_freed():
    fds_before = open_fds()
    site = await _serve(HttpLimits(header_timeout_s=1.0, max_connections=1_000))
    try:
        stop = asyncio.Event()
        clients = [asyncio.ensure_future(_slowloris(site.port, stop))
                   for _ in range(SLOWLORIS_CONNECTIONS)]
        try:
            await _until(lambda: site.server.open_connections >= SLOWLORIS_CONNECTIONS // 2,
                         "slowloris connections accepted")
            # While they trickle, a well-behaved client is served.
            assert await _get(site) == (200, "hello")
            # Each keeps sending header lines, yet the server closes every one of them.
            outcomes = await asyncio.wait_for(asyncio.gather(*clients), DEADLINE_S * 2)
        finally:
            stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
        assert [received for received, _ in outcomes] == [b""] * SLOWLORIS_CONNECTIONS
        lines_sent = sorted(sent for _, sent in outcomes)
        assert lines_sent[0] >= 1, "closed while still sending its head, not before"
        assert lines_sent[-1] < DEADLINE_S / 0.2, "a slowloris outlived the test's bound"
        assert site.server.refused_connections == 0  # the timeout closed them, not the cap
        assert site.server.open_connections == 0
        assert await _get(site) == (200, "hello")
    finally:
        await site.runner.cleanup()
    # Server and client ends both released: nothing is left holding a descriptor.
    await _until(lambda: open_fds() <= fds_before, f"fds back to {fds_before}")


async def test_an_idle_connection_after_a_request_is_closed_after_the_header_timeout():
    site = await _serve(HttpLimits(header_timeout_s=1.0))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: probenet\r\n\r\n")
            await writer.drain()
            # The first answer arrives, then the idle connection is closed by the server.
            received = await asyncio.wait_for(_read_until_closed(reader), DEADLINE_S)
        finally:
            writer.close()
            await _closed(writer)
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert received.endswith(b"hello")
    finally:
        await site.runner.cleanup()


# -- slow bodies ---------------------------------------------------------------------------

async def test_a_body_that_does_not_arrive_in_time_is_answered_408_and_closed():
    # No lingering: the connection closes right after the 408 (the default drains for 10 s).
    site = await _serve(HttpLimits(body_timeout_s=1.0, linger_s=0.0))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        try:
            writer.write(b"POST /echo HTTP/1.1\r\nHost: probenet\r\n"
                         b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
            await writer.drain()
            closed = asyncio.ensure_future(_read_until_closed(reader))
            for _ in range(int(DEADLINE_S / 0.2)):  # a byte every 0.2 s: never 1,000 in time
                done, _ = await asyncio.wait({closed}, timeout=0.2)
                if done:
                    break
                try:
                    writer.write(b"x")
                    await writer.drain()
                except ConnectionError:
                    break
            received = await asyncio.wait_for(closed, DEADLINE_S)
        finally:
            writer.close()
            await _closed(writer)
        assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"request body not received in time" in received
        # A body that arrives whole is read by the handler as before.
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session, \
                session.post(f"http://127.0.0.1:{site.port}/echo", data=b"y" * 5000) as answer:
            assert (answer.status, await answer.text()) == (200, "5000")
    finally:
        await site.runner.cleanup()


# -- the connection cap --------------------------------------------------------------------

async def test_connections_over_the_cap_are_closed_at_once_and_counted(caplog):
    cap = 20
    site = await _serve(HttpLimits(header_timeout_s=DEADLINE_S * 3, max_connections=cap))
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(cap):
            _, writer = await asyncio.open_connection("127.0.0.1", site.port)
            held.append(writer)
        await _until(lambda: site.server.open_connections == cap, "the cap reached")

        refused: list[bytes] = []
        with caplog.at_level(logging.WARNING, logger="probenet.httpserve"):
            for _ in range(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
                try:
                    # Closed long before the (long) header timeout: refused at once.
                    refused.append(await asyncio.wait_for(_read_until_closed(reader),
                                                          DEADLINE_S))
                finally:
                    writer.close()
                    await _closed(writer)
        assert refused == [b""] * 5
        assert site.server.refused_connections == 5
        assert site.server.open_connections == cap
        warnings = [r for r in caplog.records if r.name == "probenet.httpserve"]
        assert [r.getMessage() for r in warnings] == [
            "HTTP connection cap reached: refusing new connections"]  # once per burst

        # One held connection goes away: a new client is served again.
        first = held.pop()
        first.close()
        await _closed(first)
        await _until(lambda: site.server.open_connections < cap, "a slot freed")
        assert await _get(site) == (200, "hello")
    finally:
        for writer in held:
            writer.close()
            await _closed(writer)
        await site.runner.cleanup()


def test_limits_that_would_disable_the_protection_are_refused():
    with pytest.raises(ValueError, match="timeouts must be > 0"):
        HttpLimits(header_timeout_s=0)
    with pytest.raises(ValueError, match="timeouts must be > 0"):
        HttpLimits(body_timeout_s=float("nan"))
    with pytest.raises(ValueError, match="max_connections must be >= 1"):
        HttpLimits(max_connections=0)


# -- logging: the client's fault is a warning, ours an error -------------------------------

async def test_an_over_long_request_line_is_400_and_a_warning_without_traceback(caplog):
    site = await _serve(HttpLimits())
    try:
        with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            try:
                writer.write(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: probenet\r\n\r\n")
                await writer.drain()
                received = await asyncio.wait_for(_read_until_closed(reader), DEADLINE_S)
            finally:
                writer.close()
                await _closed(writer)
            # (aiohttp answers a request line it could not read as HTTP/1.0.)
            assert received.split(b"\r\n")[0] in {b"HTTP/1.0 400 Bad Request",
                                                 b"HTTP/1.1 400 Bad Request"}

            # A handler's own bug still gives 500, logged at ERROR with its traceback.
            assert (await _get(site, "/broken"))[0] == 500
    finally:
        await site.runner.cleanup()
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    malformed = [r for r in records if "malformed" in r.getMessage()]
    assert len(malformed) == 1
    assert malformed[0].levelno == logging.WARNING
    assert malformed[0].exc_info is None
    assert "Got more than" in malformed[0].getMessage()
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)


# -- every query string to the collector's endpoints: 200 or 400 ---------------------------

# aiohttp's bound on the request line (its max_line_size, default); longer ones get 400.
REQUEST_LINE_MAX = 8190
# (`/` redirects to the status page: its two pages stand in for it.)
ENDPOINTS = ("/status", "/status/data.json", "/metrics", "/api/v1/targets", "/api/v1/outages",
             "/api/v1/agents", "/healthz", "/readyz")


class _CollectorInThread:
    """A real collector on its own event loop in a thread, so hypothesis drives it from a
    plain (synchronous) test with blocking HTTP requests."""

    def __init__(self, journal: str) -> None:
        self._config = parse_config(collector_yaml(journal))
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.port = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),),
                                        name="collector-under-test")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with CollectorService(self._config) as service:
                self.port = service.http.port
                self._started.set()
                await self._stop.wait()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._started.set()

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._started.wait(DEADLINE_S), "the collector did not start"
        assert self.error is None, self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(DEADLINE_S)
        assert not self._thread.is_alive(), "the collector did not stop"


@pytest.fixture(scope="module")
def collector(tmp_path_factory) -> Iterator[_CollectorInThread]:
    with _CollectorInThread(str(tmp_path_factory.mktemp("hardening") / "journal.db")) as running:
        yield running


def _request(port: int, target: str) -> tuple[int, bytes]:
    """GET `target`, sent as is (UTF-8) in the request line: (status, body up to 64 KiB).

    A raw socket, because HTTP clients refuse to send what a hostile one would.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
        sock.sendall(b"GET " + target.encode("utf-8", "surrogatepass") + b" HTTP/1.1\r\n"
                     b"Host: probenet\r\nAccept-Encoding: identity\r\n"
                     b"Connection: close\r\n\r\n")
        received = b""
        while len(received) < 65536 and (chunk := sock.recv(65536)):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_a_unicode_digit_limit_is_400_naming_the_parameter(collector):
    # The case: "²" passed str.isdigit() and then broke int(): 500.
    for value in ("²", "١٢", "9" * 5000, "0", "10001", "-1", " 5"):
        status, body = _request(collector.port,
                                "/api/v1/outages?limit=" + urllib.parse.quote(value))
        assert status == 400, (value, body)
        assert b'"parameter": "limit"' in body
        assert len(body) < 300  # the value is quoted, bounded
    status, body = _request(collector.port, "/api/v1/outages?active=maybe")
    assert (status, b'"parameter": "active"' in body) == (400, True)
    assert _request(collector.port, "/api/v1/outages?limit=10000&active=TRUE")[0] == 200


_QUERY_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#")
# Unicode digits and numbers ("²", "١٢", "Ⅻ"): what str.isdigit() or int() take and others not.
_UNICODE_NUMBER = st.text(st.characters(categories=("Nd", "No", "Nl")), min_size=1, max_size=6)
_VALUE = st.one_of(
    st.text(max_size=30).map(lambda text: urllib.parse.quote(text, safe="")),
    _UNICODE_NUMBER.map(lambda text: urllib.parse.quote(text, safe="")),
    st.sampled_from(["²", "١٢", "①", "Ⅻ", "½", "\N{MATHEMATICAL BOLD DIGIT NINE}",
                     "٣٠٠٠٠"]).map(urllib.parse.quote),
    _UNICODE_NUMBER,  # raw, as UTF-8 bytes in the request line
    st.integers(min_value=-(10**6), max_value=10**30).map(str),
    st.binary(max_size=30).map(lambda raw: urllib.parse.quote_from_bytes(raw, safe="")),
    st.text(_QUERY_CHARS, max_size=30),
    st.sampled_from(["true", "false", "TRUE", "1", "0", "", "%B2", "%C2%B2", "%", "%zz", "%ff",
                     "=", "&", ";", "+", "10000", "10001", "%205", "5%0A", "9" * 5000]),
)
_KEY = st.one_of(st.sampled_from(["limit", "active"]), _VALUE)
_QUERY = st.one_of(
    st.lists(st.tuples(st.sampled_from(["limit", "active"]), _VALUE), min_size=1,
             max_size=3).map(lambda pairs: "&".join(f"{key}={value}" for key, value in pairs)),
    st.lists(st.tuples(_KEY, _VALUE), max_size=4).map(
        lambda pairs: "&".join(f"{key}={value}" for key, value in pairs)),
    st.text(_QUERY_CHARS, max_size=200),
)
# Half the requests go to /api/v1/outages, the one endpoint that reads parameters.
_ENDPOINT = st.one_of(st.just("/api/v1/outages"), st.sampled_from(ENDPOINTS))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(endpoint=_ENDPOINT, query=_QUERY)
# The cases, always tried: a digit int() refuses, and more digits than int() takes.
@example(endpoint="/api/v1/outages", query="limit=%C2%B2")
@example(endpoint="/api/v1/outages", query="limit=" + "9" * 5000)
def test_no_query_string_gets_anything_but_200_or_400(collector, endpoint, query):
    target = f"{endpoint}?{query}"
    status, body = _request(collector.port, target)
    assert status in {200, 400}, (endpoint, query[:300], status, body[:300])
    if not query.isascii():
        return  # raw non-ASCII in the request line: aiohttp's parser may refuse it (400)
    if len(target) > REQUEST_LINE_MAX:
        # Refused by aiohttp's parser before any handler: the query string's length bound.
        assert (status, body[:13]) == (400, b"Got more than"), (query[:300], body[:300])
    elif status == 400:
        # Only /api/v1/outages reads parameters; its 400 names the one refused.
        assert endpoint == "/api/v1/outages", (endpoint, query[:300], body[:300])
        assert b'"parameter": "limit"' in body or b'"parameter": "active"' in body
