"""A loopback TCP proxy that can cut a path silently, the way a network partition does.

No root needed: it sits between a client and a server and, on `partition()`, stops moving
bytes in both directions without closing any socket (no FIN, no RST: the peers see nothing
but silence, as behind a dead link or a dropped NAT entry). Connections accepted meanwhile
are held too, never connected onward. `heal()` lets bytes flow again:

    async with BlackholeProxy(service.grpc_address) as proxy:
        agent_connects_to(proxy.address)
        proxy.partition()
        ...                                # the agent must notice by itself
        proxy.heal()                       # held connections resume, like TCP after a heal
        proxy.heal(revive_held=False)      # or: they stay dead; only new ones work

`revive_held=False` is the harder heal: the path works again but the old connections never
do (their state is gone somewhere on the way), so only a client that opens a new connection
recovers. `accepted` and `opened_upstream` count connections, so a test can show that one
was made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Self

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_CLOSE_TIMEOUT_S = 2.0


class _Path:
    """One proxied connection's gate: bytes move only while it is open."""

    def __init__(self, flowing: bool) -> None:
        self.open = asyncio.Event()
        if flowing:
            self.open.set()
        self.dead = False  # cut for good: a heal without revival leaves it shut


class BlackholeProxy:
    """Forwards TCP from a loopback port to `upstream` ("host:port"); cuts it on command."""

    def __init__(self, upstream: str, *, host: str = "127.0.0.1") -> None:
        """Nothing is bound until the proxy is entered (port 0: see `address`)."""
        upstream_host, _, port = upstream.rpartition(":")
        self.upstream_host = upstream_host.strip("[]")
        self.upstream_port = int(port)
        self.host = host
        self.port = 0
        self.accepted = 0  # connections from clients
        self.opened_upstream = 0  # connections made onward to `upstream`
        self.partitioned = False
        self._paths: set[_Path] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._closed = asyncio.Event()

    @property
    def address(self) -> str:
        """`host:port` the clients connect to."""
        return f"{self.host}:{self.port}"

    def partition(self) -> None:
        """Stop every byte, both ways, on every connection, now and new; close nothing."""
        self.partitioned = True
        for path in self._paths:
            path.open.clear()
        log.info("proxy partitioned", extra={"proxy": self.address,
                                             "connections": len(self._paths)})

    def heal(self, *, revive_held: bool = True) -> None:
        """Let bytes flow again; with `revive_held=False` only new connections work."""
        self.partitioned = False
        for path in self._paths:
            if revive_held:
                path.open.set()
            else:
                path.dead = True
        log.info("proxy healed", extra={"proxy": self.address, "revive_held": revive_held})

    async def __aenter__(self) -> Self:
        """Start listening on `address`."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop listening and drop every connection (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Wake every held connection into failing (cancelling a connection handler of
        # asyncio.start_server makes asyncio log an error).
        self._closed.set()
        for path in self._paths:
            path.open.set()
        for writer in list(self._writers):
            writer.transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await server.wait_closed()
                if self._handlers:
                    await asyncio.wait(list(self._handlers))

    async def _handle(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self.accepted += 1
        path = _Path(flowing=not self.partitioned)
        self._paths.add(path)
        self._writers.add(client_writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            await self._wait_open(path)  # accepted during a partition: held, not connected
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port)
            self.opened_upstream += 1
            self._writers.add(upstream_writer)
            pumps = [asyncio.create_task(self._pump(path, client_reader, upstream_writer)),
                     asyncio.create_task(self._pump(path, upstream_reader, client_writer))]
            try:
                # Either side ending ends the connection (no half-close: gRPC never needs it).
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (ConnectionError, OSError) as exc:
            log.info("proxy connection failed", extra={"proxy": self.address,
                                                       "error": str(exc)})
        finally:
            self._paths.discard(path)
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.transport.abort()

    async def _wait_open(self, path: _Path) -> None:
        await path.open.wait()
        if path.dead:
            await self._closed.wait()  # never again: only closing the proxy ends it
        if self._closed.is_set():
            raise ConnectionAbortedError(f"proxy {self.address} closed")

    async def _pump(self, path: _Path, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                # Gate both before reading (leave the bytes in the sender's socket) and
                # before writing (a read already under way when the cut came is held).
                await self._wait_open(path)
                data = await reader.read(_CHUNK)
                if not data:
                    return
                await self._wait_open(path)
                writer.write(data)
                await writer.drain()
