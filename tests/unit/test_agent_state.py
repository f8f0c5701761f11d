"""The agent's state file: epoch and seq kept, results committed before they are spooled,
compaction on acks, bounds counted, one process per file, a corrupt file moved aside."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import pytest

from probenet.agent.errors import StateError
from probenet.agent.spool import Spool
from probenet.agent.state import DurableSpools, StateFile, state_path
from probenet.v1 import probenet_pb2 as pb
from support.targets import wait_until


def row(seq: int, size: int = 10) -> tuple[int, bytes]:
    return seq, pb.ProbeResult(seq=seq, probe="p", error="x" * size).SerializeToString()


def state(tmp_path, **bounds) -> StateFile:
    bounds = {"max_results": 1000, "max_bytes": 1 << 20, **bounds}
    return StateFile(state_path(tmp_path, "fra-1"), **bounds)


def test_a_new_file_takes_the_new_epoch_and_a_reopened_one_keeps_it(tmp_path):
    first = state(tmp_path)
    restored = first.open(new_epoch=111)
    assert (restored.fresh, restored.epoch, restored.last_seq) == (True, 111, 0)
    first.commit([row(1), row(2), row(3)], 3, {"c1:1": 1})
    first.close()

    second = state(tmp_path)
    restored = second.open(new_epoch=222)
    assert (restored.fresh, restored.epoch, restored.last_seq) == (False, 111, 3)
    assert restored.acked == {"c1:1": 1}
    assert [seq for seq, _ in restored.results] == [2, 3]
    assert pb.ProbeResult.FromString(restored.results[0][1]).seq == 2
    second.close()


def test_results_every_collector_acknowledged_are_deleted(tmp_path):
    file = state(tmp_path)
    file.open(new_epoch=1)
    file.commit([row(seq) for seq in range(1, 11)], 10, {"a:1": 7, "b:1": 4})
    assert file.held[0] == 6  # 5..10: b has not acknowledged them
    file.commit([], 10, {"a:1": 10, "b:1": 9})
    assert file.held[0] == 1
    file.close()
    reopened = state(tmp_path)
    assert [seq for seq, _ in reopened.open(new_epoch=2).results] == [10]
    reopened.close()


def test_the_bounds_drop_the_oldest_and_say_how_many(tmp_path):
    by_count = state(tmp_path / "count", max_results=5)
    by_count.open(new_epoch=1)
    outcome = by_count.commit([row(seq) for seq in range(1, 9)], 8, {})
    assert (outcome.dropped_through, outcome.dropped) == (3, 3)
    assert by_count.held[0] == 5
    by_count.close()

    size = len(row(1, size=1000)[1])
    by_bytes = state(tmp_path / "bytes", max_bytes=3 * size)
    by_bytes.open(new_epoch=1)
    outcome = by_bytes.commit([row(seq, size=1000) for seq in range(1, 6)], 5, {})
    assert (outcome.dropped_through, outcome.dropped) == (2, 2)
    assert by_bytes.held == (3, 3 * size)
    by_bytes.close()


def test_a_second_process_cannot_take_the_same_file(tmp_path):
    first = state(tmp_path)
    first.open(new_epoch=1)
    with pytest.raises(StateError, match="in use by another agent process") as caught:
        state(tmp_path).open(new_epoch=2)
    assert caught.value.path.endswith("fra-1.spool")
    first.close()
    again = state(tmp_path)
    assert again.open(new_epoch=3).epoch == 1  # the lock went with the first
    again.close()


def test_a_corrupt_file_is_moved_aside_and_a_new_epoch_starts(tmp_path, caplog):
    path = state_path(tmp_path, "fra-1")
    path.write_bytes(b"not a database at all" * 100)
    file = state(tmp_path)
    restored = file.open(new_epoch=42)
    assert (restored.fresh, restored.epoch) == (True, 42)
    file.close()
    [aside] = tmp_path.glob("fra-1.spool.corrupt-*")
    assert aside.read_bytes().startswith(b"not a database")
    assert "moved aside" in caplog.text


def test_a_folder_that_cannot_be_made_is_an_error_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=r"agent state .*file"):
        state(blocker / "sub").open(new_epoch=1)


async def test_results_reach_the_spools_only_once_committed_and_come_back_after_a_crash(
        tmp_path):
    spools = {"a:1": Spool(100), "b:1": Spool(100)}
    durable = DurableSpools(state(tmp_path), spools)
    durable.restore(durable.state.open(new_epoch=7))
    for seq in range(1, 6):
        durable.stage(pb.ProbeResult(seq=seq, probe="p"))
    assert len(spools["a:1"]) == 0  # staged, not committed yet
    await wait_until(lambda: len(spools["a:1"]) == 5)
    assert len(spools["b:1"]) == 5
    with sqlite3.connect(durable.state.path) as db:  # another reader sees it committed
        assert db.execute("SELECT COUNT(*) FROM results").fetchone() == (5,)
    spools["a:1"].take(10)
    spools["a:1"].ack(4)
    spools["b:1"].take(10)
    spools["b:1"].ack(2)
    await durable.drain()
    durable.close()  # as a crash would leave it: 3..5 not acknowledged by b, 5 not by a

    again = {"a:1": Spool(100), "b:1": Spool(100)}
    durable = DurableSpools(state(tmp_path), again)
    restored = durable.state.open(new_epoch=8)
    assert (restored.epoch, restored.last_seq) == (7, 5)
    assert durable.restore(restored) == 4
    assert [r.seq for r in again["a:1"].take(10)] == [5]
    assert [r.seq for r in again["b:1"].take(10)] == [3, 4, 5]
    durable.stage(pb.ProbeResult(seq=6, probe="p"))  # numbering goes on after 5
    await durable.drain()
    assert again["a:1"].last_seq == 6
    durable.close()


async def test_a_failing_disk_keeps_results_flowing_in_memory_and_writes_them_later(
        tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="probenet.agent.state")
    spools = {"a:1": Spool(100)}
    durable = DurableSpools(state(tmp_path), spools)
    durable.restore(durable.state.open(new_epoch=7))
    real_commit = durable.state.commit
    failures = iter([sqlite3.OperationalError("database or disk is full")])

    def flaky_commit(*args):
        for exc in failures:
            raise exc
        return real_commit(*args)

    durable.state.commit = flaky_commit  # type: ignore[method-assign]
    durable.stage(pb.ProbeResult(seq=1, probe="p"))
    await wait_until(lambda: len(spools["a:1"]) == 1)
    assert "agent state write failed" in caplog.text
    durable.stage(pb.ProbeResult(seq=2, probe="p"))
    await durable.drain()
    assert "agent state writes work again" in caplog.text
    assert durable.state.held[0] == 2  # the failed commit's result was written after all
    durable.close()


async def test_acks_alone_are_committed_on_the_periodic_tick(tmp_path):
    spools = {"a:1": Spool(100)}
    durable = DurableSpools(state(tmp_path), spools, ack_every_s=0.02)
    durable.restore(durable.state.open(new_epoch=7))
    for seq in (1, 2, 3):
        durable.stage(pb.ProbeResult(seq=seq, probe="p"))
    await durable.drain()
    spools["a:1"].take(10)
    spools["a:1"].ack(3)
    ticker = asyncio.create_task(durable.run_acks())
    try:
        await wait_until(lambda: durable.state.held[0] == 0)
    finally:
        ticker.cancel()
    durable.close()


def test_the_write_ahead_log_stays_small(tmp_path):
    file = state(tmp_path, max_bytes=64 << 20, max_results=100_000)
    file.open(new_epoch=1)
    for start in range(1, 20_001, 100):  # ~4 MB of results, acknowledged as they go
        file.commit([row(seq, size=200) for seq in range(start, start + 100)], start + 99,
                    {"a:1": start + 99})
    wal = file.path.with_name(file.path.name + "-wal")
    assert wal.stat().st_size <= 2 << 20
    file.close()
