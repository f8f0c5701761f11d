"""The `tcp` probe: connect to `host:port` (optionally TLS), optionally exchange a line.

With `send`, that text is written; with `expect`, a reply line must match that regex.

Success = connected (and, with `expect`, a line matching it read). Failure reasons:
dns_* (phase dns); connect_refused, connect_reset, connect_timeout, connect_unreachable,
connect_error (connect); tls_* (tls, with `tls: true`); response_reset (response: the peer
closed or reset before a matching line); tcp_expect_mismatch (validation).
Timing phases: resolve, connect, tls, request (send and read the reply).
With `all_addresses`, every address the name resolves to is probed, one outcome each.
"""

from __future__ import annotations

import re
import ssl
from typing import TYPE_CHECKING

from probenet.addresses import format_host_port, split_host_port

from .attempt import probe_each_address
from .base import PhaseTracker, ProbeFailure, ProbeOutcome
from .connect import (
    close_stream,
    connect_socket,
    literal_addresses,
    open_stream,
)
from .resolve import Resolver, family_for, resolve_addresses, system_resolver
from .tls import client_context, handshake_failure

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Sequence

    from ..config import IpFamily, ProbeSpec

_MAX_LINE_BYTES = 64 * 1024
_EXCERPT = 120


class TcpProbe:
    """Connect to `host:port`; optionally exchange one line."""

    def __init__(self, host: str, port: int, *, source_address: str | None = None,
                 send: str | None = None, expect: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, ip_family: IpFamily | None = None,
                 all_addresses: bool = False, timeout_s: float = 5.0,
                 resolver: Resolver = system_resolver) -> None:
        """`send` is written as is (add the line ending yourself); `expect` is a regex."""
        self.host = host
        self.port = port
        self._where = format_host_port(host, port)  # for error messages
        self.source_address = source_address
        self.send = send.encode() if send is not None else None
        self.expect = re.compile(expect.encode()) if expect is not None else None
        self.ssl_context = ssl_context
        self.family = family_for(ip_family, source_address)
        self._literal = literal_addresses(host, self.family)
        self.all_addresses = all_addresses
        self.timeout_s = timeout_s
        self.resolver = resolver

    async def run(self, tracker: PhaseTracker) -> Sequence[ProbeOutcome]:
        """Probe once (every address with all_addresses)."""
        tracker.enter("dns", "resolve")
        addresses = self._literal or await resolve_addresses(
            self.host, ip_family=self.family, resolver=self.resolver)
        if self.all_addresses:
            return await probe_each_address(addresses, self._probe_address, tracker,
                                            self.timeout_s)
        await self._probe_address(addresses[0], tracker)
        return [ProbeOutcome(success=True, duration_seconds=tracker.finish(),
                             phases=dict(tracker.durations), address=addresses[0])]

    async def _probe_address(self, address: str, tracker: PhaseTracker) -> None:
        tracker.enter("connect", "connect")
        sock = await connect_socket(address, self.port, source_address=self.source_address)
        if self.ssl_context is None and self.send is None and self.expect is None:
            sock.close()
            return
        if self.ssl_context is not None:
            tracker.enter("tls", "tls")
            try:
                reader, writer = await open_stream(sock, ssl_context=self.ssl_context,
                                                   server_hostname=self.host)
            except (ssl.SSLError, ConnectionError, EOFError) as exc:
                raise handshake_failure(exc, self._where) from exc
        else:
            reader, writer = await open_stream(sock, limit=_MAX_LINE_BYTES)
        try:
            await self._exchange(reader, writer, tracker)
        finally:
            await close_stream(writer)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        tracker: PhaseTracker) -> None:
        tracker.enter("request", "request")
        if self.send is not None:
            try:
                writer.write(self.send)
                await writer.drain()
            except (ConnectionError, ssl.SSLError) as exc:
                raise ProbeFailure("request", "connect_reset",
                                   f"sending to {self._where}: {exc}") from exc
        if self.expect is None:
            return
        tracker.enter("response", "request")
        seen = b""
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # a line longer than the limit
                line = await reader.read(_MAX_LINE_BYTES)
            except (ConnectionError, ssl.SSLError) as exc:
                raise ProbeFailure("response", "response_reset",
                                   f"reading from {self._where}: {exc}") from exc
            if not line:
                if seen:
                    excerpt = seen[:_EXCERPT].decode(errors="replace")
                    raise ProbeFailure("validation", "tcp_expect_mismatch",
                                       f"no line matched {self.expect.pattern.decode()!r} "
                                       f"(read {excerpt!r})")
                raise ProbeFailure("response", "response_reset",
                                   f"{self._where} closed before sending a line")
            if self.expect.search(line):
                return
            seen += line
            if len(seen) > _MAX_LINE_BYTES:
                excerpt = seen[:_EXCERPT].decode(errors="replace")
                raise ProbeFailure("validation", "tcp_expect_mismatch",
                                   f"no line matched {self.expect.pattern.decode()!r} "
                                   f"(read {excerpt!r})")


def build(spec: ProbeSpec, *, source_address: str | None,
          resolver: Resolver = system_resolver) -> TcpProbe:
    """Build a `tcp` probe from its spec."""
    options = spec.tcp
    host, port = split_host_port(spec.target)
    context = client_context(None) if options is not None and options.tls else None
    return TcpProbe(
        host, port, source_address=source_address,
        send=options.send if options else None, expect=options.expect if options else None,
        ssl_context=context, ip_family=options.ip_family if options else None,
        all_addresses=spec.all_addresses, timeout_s=spec.timeout, resolver=resolver)
