"""Serve an aiohttp application on a socket we bind ourselves, so the bound port is known.

One way for every HTTP server of probenet (collector API, agent metrics, lab targets):
bind `host:port` (port 0: the kernel picks one; IPv4, IPv6 or a name), then run aiohttp's
`SockSite` on that socket. The address comes from our own socket, never from aiohttp's
private attributes.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from aiohttp import web

_BACKLOG = 128


@dataclass(frozen=True, slots=True)
class HttpSite:
    """A running aiohttp application: `runner.cleanup()` stops it; `host`, `port` are bound."""

    runner: web.AppRunner
    host: str
    port: int


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
                    handler_cancellation: bool = False) -> HttpSite:
    """Bind `host:port` and serve `app` there; OSError when it cannot bind.

    `shutdown_timeout_s` bounds how long `runner.cleanup()` waits for requests in progress;
    `handler_cancellation` cancels a handler whose client went away (aiohttp's option).
    """
    sock = listening_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=shutdown_timeout_s,
                           handler_cancellation=handler_cancellation)
    try:
        await runner.setup()
        await web.SockSite(runner, sock, backlog=_BACKLOG).start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    return HttpSite(runner, str(bound_host), int(bound_port))
