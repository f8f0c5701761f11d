"""An HTTP answer a client stops taking is cut after the write timeout, over real sockets.

A client that requests a large answer (/metrics at size, a big JSON list) and never reads
held its connection, and the answer's buffered bytes, forever. `HttpLimits.write_timeout_s`
bounds it: no progress for that long and the connection is aborted, its memory freed, and
the abort counted and logged at INFO. A client that reads slowly but steadily is never cut,
however long its answer takes. (The collector's HTTP API is served by `serve_app` with the
default limits: a 30 s write timeout.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

from probenet.httpserve import HttpLimits, HttpSite, serve_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

DEADLINE_S = 20.0
WRITE_TIMEOUT_S = 0.5
STREAMED_BYTES = 64 * 1024 * 1024  # far beyond what loopback's socket buffers hold
WHOLE_BYTES = 16 * 1024 * 1024
SLOW_BYTES = 5 * 1024 * 1024 // 2
# The kernel doubles it: ~1.5 MiB, which frees room for more only once a third is sent.
SLOW_SNDBUF = 768 * 1024
CHUNK = b"x" * 65536


async def _streamed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(STREAMED_BYTES // len(CHUNK)):
        await response.write(CHUNK)
    await response.write_eof()
    return response


async def _whole(_request: web.Request) -> web.Response:
    # Handed to the socket in one write: it sits in the transport's buffer, not in a handler.
    return web.Response(body=b"y" * WHOLE_BYTES)


async def _slow(request: web.Request) -> web.Response:
    # A fixed, large kernel send buffer (Linux autotunes it up to 4 MiB alike): the socket
    # turns writable again only after ~0.5 MiB is taken, so the transport's own buffer
    # stands still for longer than the write timeout while the client reads.
    assert request.transport is not None
    request.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, SLOW_SNDBUF)
    return web.Response(body=b"z" * SLOW_BYTES)


@contextlib.asynccontextmanager
async def serving(limits: HttpLimits) -> AsyncIterator[HttpSite]:
    app = web.Application()
    app.router.add_get("/streamed", _streamed)
    app.router.add_get("/whole", _whole)
    app.router.add_get("/slow", _slow)
    site = await serve_app(app, "127.0.0.1", 0, limits=limits)
    try:
        yield site
    finally:
        await site.runner.cleanup()


def stalled_client(port: int, path: str, rcvbuf: int = 4096) -> socket.socket:
    """A blocking socket that sends a GET of `path` and then reads nothing (yet)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive window (set before connecting): the server's output backs up at once.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(DEADLINE_S)
    sock.connect(("127.0.0.1", port))
    # Connection: close, so that the end of the answer is the end of the connection.
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: probenet\r\nConnection: close\r\n\r\n"
                 .encode())
    return sock


def read_all(sock: socket.socket, *, pace_s: float = 0.0, chunk: int = 65536) -> int:
    """Bytes received until the server closes (a reset counts as closed)."""
    received = 0
    deadline = time.monotonic() + 60
    with contextlib.suppress(ConnectionResetError):
        while time.monotonic() < deadline and (data := sock.recv(chunk)):
            received += len(data)
            if pace_s:
                time.sleep(pace_s)
    return received


async def until(condition, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < DEADLINE_S, f"not within {DEADLINE_S} s: {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize(("path", "size"), [("/streamed", STREAMED_BYTES),
                                            ("/whole", WHOLE_BYTES)])
async def test_an_answer_the_client_stops_reading_is_cut_after_the_write_timeout(
        caplog, path, size):
    caplog.set_level(logging.DEBUG)
    async with serving(HttpLimits(write_timeout_s=WRITE_TIMEOUT_S)) as site:
        server = site.server
        sock = await asyncio.to_thread(stalled_client, site.port, path)
        try:
            await until(lambda: server.open_connections == 1, "the connection accepted")
            # Stalled from when the socket buffers fill; checked every write_timeout / 4.
            took = await until(lambda: server.open_connections == 0, "the stalled answer cut")
            assert took < WRITE_TIMEOUT_S * 1.25 + 2.0
            assert server.write_timeouts == 1
            received = await asyncio.to_thread(read_all, sock)
            assert 0 < received < size  # the head and what the buffers held, not the answer
        finally:
            sock.close()
        # A second client, which reads, is served as usual.
        sock = await asyncio.to_thread(stalled_client, site.port, path, 1 << 20)
        try:
            assert await asyncio.to_thread(read_all, sock) > size
        finally:
            sock.close()
        assert server.write_timeouts == 1
    cuts = [r for r in caplog.records if "not taken by their clients in time" in r.getMessage()]
    assert [(r.levelno, r.count) for r in cuts] == [(logging.INFO, 1)]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_slow_but_steady_reader_is_never_cut():
    timeout_s = 0.25
    async with serving(HttpLimits(write_timeout_s=timeout_s)) as site:
        sock = await asyncio.to_thread(stalled_client, site.port, "/slow", 65536)
        try:
            # At most 32 KiB every 0.03 s (~1 MiB/s): the answer takes over 2 s, eight
            # write timeouts; the kernel frees room for more every ~0.5 s only.
            started = time.monotonic()
            received = await asyncio.to_thread(read_all, sock, pace_s=0.03, chunk=32768)
            assert time.monotonic() - started > 6 * timeout_s
        finally:
            sock.close()
        assert received > SLOW_BYTES
        assert site.server.write_timeouts == 0


async def test_a_stalled_answer_is_cut_when_the_server_stops():
    # A write timeout longer than the test: the stop alone must free the connection.
    async with serving(HttpLimits(write_timeout_s=600)) as site:
        server = site.server
        sock = await asyncio.to_thread(stalled_client, site.port, "/whole")
        try:
            await until(lambda: server.open_connections == 1, "the connection accepted")
            await site.runner.cleanup()
            await until(lambda: server.open_connections == 0, "the connection freed")
        finally:
            sock.close()


def test_a_write_timeout_that_would_disable_it_is_refused():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="timeouts must be > 0"):
            HttpLimits(write_timeout_s=bad)

