"""The unacknowledged-results buffer: order, acks, rewind on reconnect, counted overflow."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probenet.agent.spool import Spool
from probenet.v1 import probenet_pb2 as pb


def result(seq: int) -> pb.ProbeResult:
    return pb.ProbeResult(seq=seq, probe="p", kind="tcp", success=True)


def seqs(batch):
    return [r.seq for r in batch]


def test_take_ack_and_rewind():
    spool = Spool(10)
    for seq in range(1, 6):
        spool.add(result(seq))
    assert seqs(spool.take(2)) == [1, 2]
    assert seqs(spool.take(10)) == [3, 4, 5]
    assert spool.take(10) == []
    assert spool.ack(3) == 3
    assert len(spool) == 2
    spool.rewind()  # a new stream: 4 and 5 were never acknowledged
    assert seqs(spool.take(10)) == [4, 5]
    assert spool.ack(5) == 2
    assert len(spool) == 0


def test_ack_is_cumulative_and_ignores_the_past():
    spool = Spool(10)
    for seq in range(1, 4):
        spool.add(result(seq))
    spool.take(10)
    assert spool.ack(2) == 2
    assert spool.ack(1) == 0
    assert spool.ack(2) == 0
    assert seqs(spool.take(10)) == []
    spool.rewind()
    assert seqs(spool.take(10)) == [3]


def test_ack_beyond_what_was_sent_drops_unsent_too():
    # Welcome.acked_seq after a reconnect may cover results this stream never sent
    spool = Spool(10)
    for seq in range(1, 6):
        spool.add(result(seq))
    assert spool.ack(4) == 4
    assert seqs(spool.take(10)) == [5]


def test_overflow_drops_the_oldest_and_counts_it():
    spool = Spool(3)
    for seq in range(1, 6):
        spool.add(result(seq))
    assert spool.dropped == 2
    assert seqs(spool.take(10)) == [3, 4, 5]
    spool.add(result(6))  # the oldest sent-but-unacked goes first
    assert spool.dropped == 3
    spool.rewind()
    assert seqs(spool.take(10)) == [4, 5, 6]


def test_sequence_must_increase():
    spool = Spool(3)
    spool.add(result(5))
    with pytest.raises(ValueError):
        spool.add(result(5))


def test_take_respects_a_byte_budget():
    spool = Spool(100)
    for seq in range(1, 51):
        spool.add(pb.ProbeResult(seq=seq, probe="p" * 100, kind="http"))
    size = spool._unsent[0].ByteSize() + 8
    batch = spool.take(100, max_bytes=size * 10)
    assert len(batch) == 10
    # a single oversized result still goes alone rather than blocking the stream
    assert len(spool.take(100, max_bytes=1)) == 1


async def test_wait_unsent_wakes_on_add():
    spool = Spool(3)
    waiter = asyncio.create_task(spool.wait_unsent())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    spool.add(result(1))
    await asyncio.wait_for(waiter, 2)


@given(st.lists(st.sampled_from(["add", "take", "ack", "rewind"]), max_size=200),
       st.integers(min_value=1, max_value=20))
def test_matches_a_simple_model(operations, capacity):
    """Held results are always the newest unacknowledged ones, in order; drops are counted."""
    spool = Spool(capacity)
    model: list[int] = []  # unacknowledged, not dropped
    dropped = 0
    next_seq = 1
    sent: list[int] = []
    for operation in operations:
        if operation == "add":
            spool.add(result(next_seq))
            model.append(next_seq)
            next_seq += 1
            if len(model) > capacity:
                model.pop(0)
                dropped += 1
        elif operation == "take":
            sent += seqs(spool.take(3))
        elif operation == "ack" and sent:
            spool.ack(sent[-1])
            model = [s for s in model if s > sent[-1]]
        elif operation == "rewind":
            spool.rewind()
        assert [r.seq for r in (*spool._sent, *spool._unsent)] == model
        assert spool.dropped == dropped
