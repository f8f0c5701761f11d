"""TCP connections for probes: fresh sockets bound to the source address, and errors.

Connect errors become probe failures (phase `connect` and a reason); streams are closed
politely but never wait long for the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from typing import TYPE_CHECKING

from probenet.addresses import format_host_port

from .base import ProbeFailure
from .resolve import ip_literal

if TYPE_CHECKING:
    from ..config import IpFamily

_CLOSE_GRACE_S = 0.5

_CONNECT_REASONS = {
    errno.ECONNREFUSED: "connect_refused",
    errno.ECONNRESET: "connect_reset",
    errno.ECONNABORTED: "connect_reset",
    errno.ETIMEDOUT: "connect_timeout",
    errno.EHOSTUNREACH: "connect_unreachable",
    errno.ENETUNREACH: "connect_unreachable",
    errno.EHOSTDOWN: "connect_unreachable",
    errno.ENETDOWN: "connect_unreachable",
    errno.EADDRNOTAVAIL: "connect_unreachable",
}


def literal_addresses(host: str, ip_family: IpFamily | None) -> list[str] | None:
    """`[host]` when it is an IP literal of the wanted family (resolving it is a no-op).

    Probes compute this once at build time: parsing the address on every run is a
    measurable share of a loopback probe's cost.
    """
    literal = ip_literal(host)
    if literal is None:
        return None
    if ip_family is not None and (literal.version == 6) != (ip_family == "ip6"):
        return None  # let resolve_addresses report the family mismatch
    return [str(literal)]


def connect_failure(exc: OSError, where: str) -> ProbeFailure:
    """Translate a failed TCP connect into a ProbeFailure in phase `connect`."""
    reason = _CONNECT_REASONS.get(exc.errno or 0, "connect_error")
    if isinstance(exc, ConnectionRefusedError):
        reason = "connect_refused"
    elif isinstance(exc, ConnectionResetError | ConnectionAbortedError):
        reason = "connect_reset"
    detail = exc.strerror or str(exc) or type(exc).__name__
    return ProbeFailure("connect", reason, f"connect to {where}: {detail}")


async def connect_socket(address: str, port: int, *,
                         source_address: str | None = None) -> socket.socket:
    """A non-blocking TCP socket connected to `address:port` (an IP), bound to the source.

    Raises ProbeFailure in phase `connect`; the socket is closed on any failure, and on
    cancellation (the probe's deadline).
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source_address is not None:
            try:
                sock.bind((source_address, 0))
            except OSError as exc:
                detail = exc.strerror or str(exc)
                raise ProbeFailure("connect", "connect_unreachable",
                                   f"cannot bind source address {source_address}: {detail}",
                                   ) from exc
        try:
            await asyncio.get_running_loop().sock_connect(sock, (address, port))
        except OSError as exc:
            raise connect_failure(exc, format_host_port(address, port)) from exc
    except BaseException:
        sock.close()
        raise
    return sock


async def open_stream(sock: socket.socket, *, ssl_context: ssl.SSLContext | None = None,
                      server_hostname: str | None = None,
                      limit: int = 2**16) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Wrap a connected socket in asyncio streams, doing the TLS handshake if asked.

    TLS errors propagate as they are (ssl.SSLError, ConnectionError); the caller translates
    them. The socket is closed on failure.
    """
    try:
        return await asyncio.open_connection(
            sock=sock, ssl=ssl_context, limit=limit,
            server_hostname=server_hostname if ssl_context is not None else None,
            ssl_handshake_timeout=None if ssl_context is None else 3600.0)
    except BaseException:
        sock.close()
        raise


async def close_stream(writer: asyncio.StreamWriter) -> None:
    """Close politely (TLS close_notify) but never wait long for the peer."""
    is_tls = writer.get_extra_info("sslcontext") is not None
    writer.close()
    if not is_tls:
        return
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        async with asyncio.timeout(_CLOSE_GRACE_S):
            await writer.wait_closed()
    writer.transport.abort()
