"""A test agent that takes remote configuration: Hello with `remote_config`, reads pushes.

    async with ConfigAgent(service.grpc_address, "fra-1", "eu-central") as agent:
        config = await agent.probe_config()          # the ProbeConfig pushed after Welcome
        await agent.report(config.version, refused=[("ping", "no icmp privilege")])
        await agent.no_probe_config(within_s=0.5)    # nothing else pushed

A reader task files every CollectorMessage into a queue, so a wait for "nothing" never
cancels a read on the gRPC call. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Self

import grpc

from probenet.v1 import probenet_pb2 as pb
from support.collector_client import DEADLINE_S, StreamEndedError, TestAgent

if TYPE_CHECKING:
    from collections.abc import Sequence


class ConfigAgent(TestAgent):
    """One agent stream that says `remote_config` (or not) and collects what is pushed."""

    def __init__(self, address: str, agent_id: str, region: str, *,
                 labels: dict[str, str] | None = None, remote_config: bool = True,
                 config_version: str = "", token: str | None = None) -> None:
        """Connect on enter."""
        super().__init__(address, agent_id, region, token=token, interval_ms=1000,
                         labels=labels, remote_config=remote_config,
                         config_version=config_version)
        self.ended: StreamEndedError | None = None
        self._messages: asyncio.Queue[pb.CollectorMessage | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        """Open the stream, say Hello, wait for Welcome; then file every message."""
        await super().__aenter__()
        self._reader = asyncio.create_task(self._read_all(), name=f"read:{self.agent_id}")
        return self

    async def close(self) -> None:
        """Drop the channel and the reader (idempotent)."""
        await super().close()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read_all(self) -> None:
        try:
            while True:
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    break
                await self._messages.put(message)
        except grpc.aio.AioRpcError as exc:
            self.ended = StreamEndedError(exc.code(), exc.details())
        await self._messages.put(None)

    async def next_message(self, timeout_s: float = DEADLINE_S) -> pb.CollectorMessage:
        """The next collector message; StreamEndedError once the stream has ended."""
        async with asyncio.timeout(timeout_s):
            message = await self._messages.get()
        if message is None:
            await self._messages.put(None)
            raise self.ended or StreamEndedError(None, "stream ended")
        return message

    async def probe_config(self, timeout_s: float = DEADLINE_S) -> pb.ProbeConfig:
        """The next ProbeConfig pushed (AssertionError for any other message)."""
        message = await self.next_message(timeout_s)
        if message.WhichOneof("body") != "probe_config":
            raise AssertionError(f"expected ProbeConfig, got {message}")
        return message.probe_config

    async def no_probe_config(self, within_s: float) -> None:
        """Assert that nothing is pushed within `within_s` seconds."""
        try:
            message = await self.next_message(within_s)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing, got {message}")

    async def report(self, version: str, *, received_version: str | None = None,
                     error: str = "", refused: Sequence[tuple[str, str]] = (),
                     collector_id: str = "") -> None:
        """Send a ConfigStatus: `version` runs now (with its refused probes)."""
        await self.write(pb.AgentMessage(config_status=pb.ConfigStatus(
            version=version, collector_id=collector_id,
            received_version=version if received_version is None else received_version,
            error=error,
            refused=[pb.RefusedProbe(probe=p, reason=r) for p, r in refused])))
