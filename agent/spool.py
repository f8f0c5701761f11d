"""The bounded in-memory buffer of results a collector has not acknowledged yet.

One Spool per collector stream. Results enter in sequence order (the agent numbers them);
a cumulative ack drops everything up to a sequence number; a reconnect rewinds, so that
everything unacknowledged is sent again (the collector deduplicates by sequence). When the
buffer is full the oldest result is dropped and counted: never silently.

Sharding by probe (agent/config.py): a spool may take only some results (`takes`, e.g. a
`ProbeShards.taker(shard)`): the others are skipped. The collector then sees gaps in the
sequence, which it accepts; and a spool holding nothing counts every skipped result as
acknowledged, so the agent's state file is compacted past them (an idle shard does not
hold it back).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from probenet.sharding import ShardCache

if TYPE_CHECKING:
    from collections.abc import Callable

    from probenet.v1 import probenet_pb2 as pb

_FRAMING_BYTES = 8  # a repeated field's tag and length prefix, generously


class ProbeShards(ShardCache):
    """Each probe's shard, computed once per name and shared by every spool of the agent."""

    def taker(self, shard: int) -> Callable[[pb.ProbeResult], bool]:
        """Whether a result (or path trace, named after its probe) belongs to `shard`."""
        return lambda result: self.of(result.probe) == shard


class Spool:
    """Unacknowledged results in sequence order: those sent on this stream, then the rest."""

    def __init__(self, max_results: int, *,
                 takes: Callable[[pb.ProbeResult], bool] | None = None) -> None:
        """Hold at most `max_results`; beyond that the oldest are dropped and counted.

        `takes`: which results this spool holds (None: all); the others are skipped.
        """
        if max_results < 1:
            raise ValueError("max_results must be at least 1")
        self.max_results = max_results
        self.takes = takes
        self.offered_seq = 0  # the newest result added or skipped
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
        """Append a result (its `seq` after every held one); drop the oldest when full.

        A result this spool does not take is skipped (and acknowledged when nothing is held).
        """
        if self.takes is not None and not self.takes(result):
            self.offered_seq = max(self.offered_seq, result.seq)
            if not self._sent and not self._unsent:
                self.acked_seq = max(self.acked_seq, result.seq)
            return
        if result.seq <= self.last_seq:
            raise ValueError(f"seq {result.seq} is not after {self.last_seq}")
        self.last_seq = result.seq
        self.offered_seq = max(self.offered_seq, result.seq)
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
        if self.takes is not None and not self._sent and not self._unsent:
            # Nothing held: every later result offered was skipped, so none is outstanding.
            self.acked_seq = max(seq, self.offered_seq)
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
