"""A minimal collector for agent tests of remote configuration: real gRPC on loopback.

`PushingCollector` serves `probenet.v1.Ingest/Stream` on 127.0.0.1, port 0: it answers each
Hello with a Welcome, acknowledges every batch, records hellos, results and ConfigStatus
messages, and sends the ProbeConfig messages (or raw bytes) the test controls: `offer` sets
the one sent after every Welcome, `push` sends to the streams open now.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any, Self

import grpc

from probenet.v1 import probenet_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

Outgoing = pb.CollectorMessage | bytes


def probe_config(document: dict[str, Any] | str, *, issued_at_ms: int | None = None,
                 source: str = "fleet.yaml", version: str | None = None) -> pb.ProbeConfig:
    """A ProbeConfig for `document` (a dict is written as JSON); version = its SHA-256."""
    import hashlib  # noqa: PLC0415 - only here

    text = document if isinstance(document, str) else json.dumps(document, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return pb.ProbeConfig(
        version=digest if version is None else version, document=text, source=source,
        issued_at_ms=int(time.time() * 1000) if issued_at_ms is None else issued_at_ms)


def _serialize(message: Outgoing) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


class PushingCollector:
    """The test's collector (async context manager); see the module docstring."""

    def __init__(self, collector_id: str = "push-test", *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        """Listen on `host`, at `port` (0: any free one; `port` is the bound one after start)."""
        self.collector_id = collector_id
        self.host = host
        self.port = port
        self.hellos: list[pb.Hello] = []
        self.results: list[pb.ProbeResult] = []
        self.statuses: list[pb.ConfigStatus] = []
        self.offered: pb.ProbeConfig | None = None
        self._queues: set[asyncio.Queue[Outgoing]] = set()
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        """`host:port` to put in an agent's collectors."""
        return f"{self.host}:{self.port}"

    @property
    def streams(self) -> int:
        """Streams open now."""
        return len(self._queues)

    def offer(self, config: pb.ProbeConfig | None) -> None:
        """Send `config` after every Welcome from now on (None: send nothing)."""
        self.offered = config

    def push(self, message: pb.ProbeConfig | bytes) -> None:
        """Send a ProbeConfig (or raw CollectorMessage bytes) to every open stream."""
        out: Outgoing = message if isinstance(message, bytes) else pb.CollectorMessage(
            probe_config=message)
        for queue in self._queues:
            queue.put_nowait(out)

    def probes_seen(self) -> set[str]:
        """Names of the probes whose results arrived."""
        return {r.probe for r in self.results}

    def statuses_for(self, received_version: str) -> list[pb.ConfigStatus]:
        """The ConfigStatus messages answering `received_version`."""
        return [s for s in self.statuses if s.received_version == received_version]

    async def __aenter__(self) -> Self:
        """Bind and serve."""
        handler = grpc.method_handlers_generic_handler("probenet.v1.Ingest", {
            "Stream": grpc.stream_stream_rpc_method_handler(
                self._stream, request_deserializer=pb.AgentMessage.FromString,
                response_serializer=_serialize)})
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        await server.start()
        self._server = server
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop at once (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(None)

    async def _stream(self, requests: AsyncIterator[pb.AgentMessage],
                      context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Outgoing]:
        iterator = aiter(requests)
        first = await anext(iterator)
        if first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Hello first")
        hello = first.hello
        self.hellos.append(hello)
        queue: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._queues.add(queue)
        reader = asyncio.create_task(self._read(iterator, hello.epoch, queue))
        try:
            yield pb.CollectorMessage(welcome=pb.Welcome(
                collector_id=self.collector_id, version="test", acked_seq=0,
                max_batch_results=500, max_message_bytes=4 << 20))
            if self.offered is not None:
                yield pb.CollectorMessage(probe_config=self.offered)
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait([getter, reader], return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    return
                yield getter.result()
        finally:
            self._queues.discard(queue)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                await reader

    async def _read(self, iterator: AsyncIterator[pb.AgentMessage], epoch: int,
                    queue: asyncio.Queue[Outgoing]) -> None:
        async for message in iterator:
            body = message.WhichOneof("body")
            if body == "batch":
                results = list(message.batch.results)
                self.results.extend(results)
                if results:
                    queue.put_nowait(pb.CollectorMessage(ack=pb.Ack(
                        epoch=epoch, acked_seq=max(r.seq for r in results))))
            elif body == "config_status":
                status = pb.ConfigStatus()
                status.CopyFrom(message.config_status)
                self.statuses.append(status)
