"""Serve an aiohttp application on a socket we bind ourselves, so the bound port is known.

One way for every HTTP server of probenet (collector API, agent metrics, lab targets):
bind `host:port` (port 0: the kernel picks one; IPv4, IPv6 or a name), then run aiohttp's
`SockSite` on that socket. The address comes from our own socket, never from aiohttp's
private attributes.

Every server is hardened against clients that hold resources without finishing a request
(`HttpLimits`):

- **request head timeout**: a connection must complete each request head (request line and
  headers) within `header_timeout_s` of connecting or of its previous answer, or it is
  closed. This is aiohttp's keep-alive timer, which aiohttp arms at `connection_made` and
  which closes a connection still waiting for a complete head; the same bound closes idle
  keep-alive connections (an idle connection holds a descriptor just as a slow one does).
- **body timeout**: a request's body must arrive whole within `body_timeout_s` of its head
  (408 otherwise). A body that was not read whole (the handler ignored it, or it timed out)
  is drained for at most `linger_s` (aiohttp's lingering time; 0: none), so the client can
  read the answer; then the connection is closed.
- **write timeout**: a connection whose answer makes no progress for `write_timeout_s` (its
  output is buffered and the client has taken none of it: it stopped reading, or reads
  nothing while its window is full) is aborted, and its buffer freed (counted in
  `HttpServer.write_timeouts`, logged at INFO at most once per check). Progress is the
  client taking bytes: the kernel's send queue of the socket shrinking (Linux, `SIOCOUTQ`:
  the kernel's own buffer of a few MiB frees room only in large steps, so the transport's
  buffer alone would make a slow reader look stalled), the transport's buffer shrinking,
  or aiohttp's writer resumed after a pause. A reader that is slow but steady is never cut,
  however long the answer. This bounds a streamed answer waiting for the client (/metrics
  at size) and an answer already handed whole to the transport, which a close alone would
  keep until it is sent.
- **connection cap**: beyond `max_connections` open connections, a new one is closed at once
  (counted in `HttpServer.refused_connections`, logged once per burst).
- **quiet client errors**: a malformed request (over-long request line or header, bad
  method, bad framing) is answered 400 by aiohttp and logged at WARNING without a traceback:
  it is the client's fault, not ours. A client gone mid-answer (it closed, or the write
  timeout cut it: the handler's next write raises ConnectionResetError) is logged at DEBUG.
  Exceptions raised by our handlers stay at ERROR with their traceback.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import termios
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware
    from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

_BACKLOG = 128

# Defaults: generous for a real client (Prometheus sends its scrape request at once), short
# enough that 1,000 stalled connections free their descriptors within seconds.
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
WRITE_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 1_000
LINGER_S = 10.0  # aiohttp's default
# The ioctl for the bytes a socket's send queue holds (Linux; elsewhere absent: unused).
_SIOCOUTQ: int | None = getattr(termios, "TIOCOUTQ", None)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one client connection may hold: see the module docstring for each bound."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    linger_s: float = LINGER_S
    write_timeout_s: float = WRITE_TIMEOUT_S

    def __post_init__(self) -> None:
        """Refuse bounds that would disable the protection or refuse every client."""
        if not self.linger_s >= 0:
            msg = f"HttpLimits: linger_s must be >= 0, not {self.linger_s!r}"
            raise ValueError(msg)
        timeouts = (self.header_timeout_s, self.body_timeout_s, self.write_timeout_s)
        if not all(timeout > 0 for timeout in timeouts):
            msg = f"HttpLimits: timeouts must be > 0, not {timeouts!r}"
            raise ValueError(msg)
        if self.max_connections < 1:
            msg = f"HttpLimits: max_connections must be >= 1, not {self.max_connections!r}"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class HttpSite:
    """A running aiohttp application: `runner.cleanup()` stops it; `host`, `port` are bound."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def server(self) -> HttpServer:
        """The connection-level server (open and refused connection counts)."""
        server = self.runner.server
        if not isinstance(server, HttpServer):
            msg = "HttpSite.server: the runner is stopped"
            raise TypeError(msg)
        return server


class _ClientErrorsAsWarnings(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, with malformed requests logged as WARNING without traceback.

    aiohttp answers a request its parser refuses (an `HttpProcessingError` with a 4xx code:
    over-long line, bad header, bad framing) with 400 and logs it through `logger.exception`.
    Only those records are demoted; everything else passes unchanged.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Demote a client's protocol error or departure; pass everything else through."""
        exc = kwargs.get("exc_info")
        if level >= logging.ERROR and isinstance(exc, ConnectionResetError):
            # A handler's write to a connection the client closed, or the write timeout cut.
            remote = args[0] if len(args) == 1 else None
            self.logger.debug("HTTP client gone before the answer was written: %s", exc,
                              extra={"remote": remote})
            return
        if (level >= logging.ERROR and isinstance(exc, HttpProcessingError)
                and 400 <= exc.code < 500):
            # aiohttp's call is ("Error handling request from %s", remote, exc_info=exc).
            remote = args[0] if len(args) == 1 else None
            self.logger.warning("malformed HTTP request answered %s: %s", exc.code,
                                exc.message, extra={"remote": remote})
            return
        # Straight to the logger: the records stay aiohttp's own (no adapter context added).
        self.logger.log(level, msg, *args, **kwargs)


class _RefusedConnection(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is made (a reset, the fd freed)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Abort at once; nothing is read or written."""
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        else:
            transport.close()


class _RequestHandler(web.RequestHandler):
    """aiohttp's protocol for one connection, counting the client's drains of its output.

    asyncio calls `resume_writing` when the output buffer falls below the low-water mark
    after it had risen above the high-water mark: the client is reading.
    """

    __slots__ = ("drained",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As aiohttp's."""
        super().__init__(*args, **kwargs)
        self.drained = 0

    def resume_writing(self) -> None:
        """Count the drain, then let aiohttp resume its writer."""
        self.drained += 1
        super().resume_writing()


@dataclass(frozen=True, slots=True)
class _Marks:
    """What shows a connection's output moving: buffered bytes, kernel queue, drains."""

    buffered: int  # in the transport's buffer
    queued: int | None  # in the kernel's send queue (None: unknown)
    drained: int  # times aiohttp's writer was resumed

    def progressed_since(self, before: _Marks) -> bool:
        """True when the client took bytes since `before` (a growing buffer is no progress)."""
        return (self.buffered < before.buffered or self.drained != before.drained
                or (self.queued is not None and before.queued is not None
                    and self.queued < before.queued))


def _kernel_queue(transport: asyncio.Transport) -> int | None:
    """Bytes in the socket's send queue, not yet taken by the peer (None where unknown)."""
    sock = transport.get_extra_info("socket")
    if _SIOCOUTQ is None or sock is None:
        return None
    try:
        answer = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    return int(struct.unpack("i", answer)[0])


class HttpServer(web.Server):
    """aiohttp's server with a cap on open connections and a write timeout.

    The count includes connections accepted but not yet made (asyncio accepts a burst of
    connections before any `connection_made` runs), so the cap holds exactly. Every
    `write_timeout_s / 4`, while connections are open, each one's output buffer is checked
    for progress (module docstring).
    """

    def __init__(self, handler: Any, *, max_connections: int,
                 write_timeout_s: float = WRITE_TIMEOUT_S, **kwargs: Any) -> None:
        """`handler` and `kwargs` as `web.Server`'s; `max_connections` the cap."""
        super().__init__(handler, **kwargs)
        self._max_connections = max_connections
        self._accepted: set[RequestHandler] = set()
        self._refusing = False
        self.refused_connections = 0
        self._write_timeout_s = write_timeout_s
        # Kept here, not read from the handler: aiohttp drops its reference at close(),
        # while the transport still holds the output it could not send.
        self._transports: dict[RequestHandler, asyncio.Transport] = {}
        # Connections with output pending: (progress marks, since when they stand still).
        self._pending: dict[RequestHandler, tuple[_Marks, float]] = {}
        self._write_check: asyncio.TimerHandle | None = None
        self.write_timeouts = 0

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed."""
        return len(self._accepted)

    def __call__(self) -> RequestHandler:
        """A protocol for a new connection: aiohttp's, or a refusal over the cap."""
        if len(self._accepted) >= self._max_connections:
            self.refused_connections += 1
            if not self._refusing:  # once per burst: an attack must not flood the log
                self._refusing = True
                log.warning("HTTP connection cap reached: refusing new connections",
                            extra={"max_connections": self._max_connections})
            # Typed as aiohttp's protocol, but asyncio asks only for a Protocol here.
            return _RefusedConnection()  # type: ignore[return-value]
        self._refusing = False
        # aiohttp's own `__call__`, with our protocol class (its options are the server's).
        handler = _RequestHandler(self, loop=self._loop, **self._kwargs)
        self._accepted.add(handler)
        return handler

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        """Remember the transport; check writes while any connection is open."""
        super().connection_made(handler, transport)
        self._transports[handler] = transport
        if self._write_check is None:
            self._write_check = self._loop.call_later(self._write_timeout_s / 4,
                                                      self._check_writes)

    def connection_lost(self, handler: RequestHandler,
                        exc: BaseException | None = None) -> None:
        """Forget the connection, then let aiohttp do the same."""
        self._accepted.discard(handler)
        self._transports.pop(handler, None)
        self._pending.pop(handler, None)
        super().connection_lost(handler, exc)

    def _check_writes(self) -> None:
        """Abort every connection whose output made no progress for `write_timeout_s`."""
        now = self._loop.time()
        pending: dict[RequestHandler, tuple[_Marks, float]] = {}
        aborted = 0
        for handler, transport in list(self._transports.items()):
            size = transport.get_write_buffer_size()
            if not size:
                continue  # all handed to the kernel: the keep-alive timeout bounds the rest
            marks = _Marks(size, _kernel_queue(transport),
                           handler.drained if isinstance(handler, _RequestHandler) else 0)
            seen = self._pending.get(handler)
            if seen is None or marks.progressed_since(seen[0]):
                pending[handler] = (marks, now)  # the clock (re)starts
            elif now - seen[1] >= self._write_timeout_s:
                transport.abort()  # frees the buffer; aiohttp sees the connection lost
                aborted += 1
            else:
                pending[handler] = (marks, seen[1])
        self._pending = pending
        if aborted:
            self.write_timeouts += aborted
            log.info("HTTP answers not taken by their clients in time: connections closed",
                     extra={"count": aborted, "write_timeout_s": self._write_timeout_s,
                            "total": self.write_timeouts})
        self._write_check = None
        if self._transports:
            self._write_check = self._loop.call_later(self._write_timeout_s / 4,
                                                      self._check_writes)

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's signature
        """Shut down as aiohttp does, then abort what still holds unsent output.

        aiohttp closes each connection, and a close waits for the output to be sent: a
        client that stopped reading would keep its socket after the server stopped.
        """
        if self._write_check is not None:
            self._write_check.cancel()
            self._write_check = None
        await super().shutdown(timeout)
        for transport in list(self._transports.values()):
            if transport.get_write_buffer_size():
                transport.abort()


class _HardenedAppRunner(web.AppRunner):
    """An AppRunner whose server is an `HttpServer` (aiohttp builds a plain `web.Server`)."""

    __slots__ = ("_max_connections", "_write_timeout_s")

    def __init__(self, app: web.Application, *, max_connections: int,
                 write_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections
        self._write_timeout_s = write_timeout_s

    async def _make_server(self) -> web.Server:
        # aiohttp's own step starts and freezes the application; its server is only a recipe
        # (handler, request factory, protocol options) copied into ours, it holds nothing.
        # (Our options are the runner's; the application's `handler_args`, unused here, and
        # its debug flag, off, are left out.)
        recipe = await super()._make_server()
        options = {k: v for k, v in self._kwargs.items() if k != "handler_cancellation"}
        return HttpServer(recipe.request_handler, max_connections=self._max_connections,
                          write_timeout_s=self._write_timeout_s,
                          request_factory=recipe.request_factory,
                          handler_cancellation=recipe.handler_cancellation, **options)


def _body_deadline(body_timeout_s: float) -> Middleware:
    """Middleware: a request's body is read whole within `body_timeout_s`, or 408.

    The body is read before the handler runs (bounded by the application's client_max_size,
    413 beyond), so `request.read()`/`json()` in the handler return at once.
    """
    @web.middleware
    async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            try:
                async with asyncio.timeout(body_timeout_s):
                    await request.read()
            except TimeoutError:
                log.warning("HTTP request body not received in time", extra={
                    "path": request.path, "remote": request.remote,
                    "body_timeout_s": body_timeout_s})
                answer = web.HTTPRequestTimeout(text="request body not received in time")
                answer.force_close()
                raise answer from None
        return await handler(request)

    return body_deadline


def listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket listening on `host:port`, with SO_REUSEADDR (OSError if not).

    `host` is an IPv4 or IPv6 address (without brackets) or a name (its first address).
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_app(app: web.Application, host: str, port: int, *,
                    shutdown_timeout_s: float = 1.0,
                    handler_cancellation: bool = False,
                    limits: HttpLimits | None = None) -> HttpSite:
    """Bind `host:port` and serve `app` there; OSError when it cannot bind.

    `shutdown_timeout_s` bounds how long `runner.cleanup()` waits for requests in progress;
    `handler_cancellation` cancels a handler whose client went away (aiohttp's option);
    `limits` bound what a client connection may hold (defaults: `HttpLimits()`). `app` gets
    the body-deadline middleware (first, so it wraps all others): it must not be frozen yet.
    """
    limits = limits or HttpLimits()
    app.middlewares.insert(0, _body_deadline(limits.body_timeout_s))
    sock = listening_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    runner = _HardenedAppRunner(
        app, max_connections=limits.max_connections, write_timeout_s=limits.write_timeout_s,
        access_log=None, handle_signals=False,
        shutdown_timeout=shutdown_timeout_s, handler_cancellation=handler_cancellation,
        keepalive_timeout=limits.header_timeout_s, lingering_time=limits.linger_s,
        logger=_ClientErrorsAsWarnings(server_logger, {}))
    try:
        await runner.setup()
        await web.SockSite(runner, sock, backlog=_BACKLOG).start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    return HttpSite(runner, str(bound_host), int(bound_port))
