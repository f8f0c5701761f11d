"""The bounded in-memory buffer of results a collector has not acknowledged yet.

One Spool per collector stream. Results enter in sequence order (the agent numbers them);
a cumulative ack drops everything up to a sequence number; a reconnect rewinds, so that
everything unacknowledged is sent again (the collector deduplicates by sequence). When the
buffer is full the oldest result is dropped and counted: never silently.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from probenet.v1 import probenet_pb2 as pb

_FRAMING_BYTES = 8  # a repeated field's tag and length prefix, generously


class Spool:
    """Unacknowledged results in sequence order: those sent on this stream, then the rest."""

    def __init__(self, max_results: int) -> None:
        """Hold at most `max_results`; beyond that the oldest are dropped and counted."""
        if max_results < 1:
            raise ValueError("max_results must be at least 1")
        self.max_results = max_results
        self._sent: deque[pb.ProbeResult] = deque()  # sent on this stream, not acked
        self._unsent: deque[pb.ProbeResult] = deque()
        self.acked_seq = 0  # everything <= this was acknowledged
        self.last_seq = 0  # the newest result added
        self.dropped = 0  # results dropped because the buffer was full
        self._added = asyncio.Event()

    def __len__(self) -> int:
        """Results held (sent or not) that are not acknowledged."""
        return len(self._sent) + len(self._unsent)

    @property
    def unsent(self) -> int:
        """Results not sent on the current stream yet."""
        return len(self._unsent)

    def add(self, result: pb.ProbeResult) -> None:
        """Append a result (its `seq` after every held one); drop the oldest when full."""
        if result.seq <= self.last_seq:
            raise ValueError(f"seq {result.seq} is not after {self.last_seq}")
        self.last_seq = result.seq
        self._unsent.append(result)
        if len(self) > self.max_results:
            (self._sent or self._unsent).popleft()
            self.dropped += 1
        self._added.set()

    def ack(self, seq: int) -> int:
        """Drop every result with seq <= `seq` (a cumulative ack); return how many."""
        if seq <= self.acked_seq:
            return 0
        self.acked_seq = seq
        count = 0
        for queue in (self._sent, self._unsent):
            while queue and queue[0].seq <= seq:
                queue.popleft()
                count += 1
        return count

    def drop_through(self, seq: int) -> int:
        """Drop every result with seq <= `seq` as lost (the disk bound); count and return."""
        count = 0
        for queue in (self._sent, self._unsent):
            while queue and queue[0].seq <= seq:
                queue.popleft()
                count += 1
        self.dropped += count
        return count

    def rewind(self) -> None:
        """A new stream: everything unacknowledged is unsent again, oldest first."""
        self._unsent.extendleft(reversed(self._sent))
        self._sent.clear()

    def take(self, limit: int, max_bytes: int | None = None) -> list[pb.ProbeResult]:
        """Up to `limit` unsent results (within `max_bytes` encoded); they become sent."""
        batch: list[pb.ProbeResult] = []
        size = 0
        while self._unsent and len(batch) < limit:
            result = self._unsent[0]
            if max_bytes is not None:
                size += result.ByteSize() + _FRAMING_BYTES
                if batch and size > max_bytes:
                    break
            batch.append(self._unsent.popleft())
        self._sent.extend(batch)
        return batch

    async def wait_unsent(self) -> None:
        """Return once there is something unsent."""
        while not self._unsent:
            self._added.clear()
            await self._added.wait()
