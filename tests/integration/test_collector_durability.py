"""Acks follow durable application: the journal holds every watermark an agent was told.

The group commit (collector/ingest.py, collector/journal.py): an Ack, and the `acked_seq` of
a Welcome, goes out only once the journal has committed the watermark it reports. Shown
here over real gRPC: a second reader of the journal file already sees every acknowledged
seq; a Welcome that reports a seq still waiting for its commit waits for it too; commits are
grouped (one per interval, not one per batch); while the journal cannot commit, acks wait
(the failure logged once) and go out once it can; and after a `kill -9` of a real
collector process under load from pipelining agents, the journal's watermark of each agent
is at least the last seq acknowledged to it, and a full resend after the restart applies
nothing the agent was told is stored.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from probenet.collector.config import parse_config
from probenet.collector.errors import JournalError
from probenet.collector.journal import Journal
from probenet.collector.server import CollectorService
from probenet.v1 import probenet_pb2 as pb
from support.collector_client import (
    StreamEndedError,
    TestAgent,
    applied,
    counter,
    http_get,
    metric_value,
)
from support.collector_process import CollectorProcess

if TYPE_CHECKING:
    from pathlib import Path

PROBES = [f"p{i}" for i in range(20)]


def service_of(tmp_path: Path, commit_interval: str = "20ms") -> CollectorService:
    return CollectorService(parse_config(
        "listen: {grpc: '127.0.0.1:0', http: '127.0.0.1:0'}\n"
        f"journal: {{path: '{tmp_path / 'journal.db'}', commit_interval: {commit_interval}}}\n"
        "collector_id: test-collector\n"))


def stored(path: Path) -> dict[str, tuple[int, int]]:
    """The watermarks a second reader of the journal file sees (committed ones only)."""
    with Journal(path) as reader:
        return reader.watermarks()


async def test_every_ack_reports_a_watermark_the_journal_already_holds(tmp_path):
    async with service_of(tmp_path) as service, AsyncExitStack() as stack:
        fleet = [await stack.enter_async_context(
            TestAgent(service.grpc_address, f"a-{i}", f"r{i}", epoch=1)) for i in range(3)]
        for _ in range(10):
            for agent in fleet:
                ack = await agent.send(agent.results(PROBES))
                assert stored(tmp_path / "journal.db")[agent.agent_id] >= (1, ack.acked_seq)
    assert counter(service, "probenet_ingest_ack_delay_seconds_count") == 30


async def test_a_welcome_waits_for_the_commit_of_the_seq_it_reports(tmp_path):
    async with service_of(tmp_path, "1s") as service, \
            TestAgent(service.grpc_address, "fra-1", "eu", epoch=7) as first:
        # New probes: committed with their transitions. Then known probes: the first ack to
        # wait after a quiet spell is committed at once, and the next commit is 1 s later.
        assert (await first.send(first.results(PROBES))).acked_seq == 20
        assert (await first.send(first.results(PROBES))).acked_seq == 40
        await first.write(pb.AgentMessage(batch=pb.ResultBatch(results=first.results(PROBES))))
        await asyncio.sleep(0.2)  # applied; its Ack waits for the commit
        assert stored(tmp_path / "journal.db")["fra-1"] == (7, 40)
        # The same agent process reconnects: the new stream replaces the old one, and its
        # Welcome acknowledges 60 only once the journal holds it.
        async with TestAgent(service.grpc_address, "fra-1", "eu", epoch=7) as second:
            assert second.welcome is not None
            assert second.welcome.acked_seq == 60
            assert stored(tmp_path / "journal.db")["fra-1"] == (7, 60)


async def test_commits_are_grouped_across_agents_and_batches(tmp_path):
    async def pump(agent: TestAgent) -> None:
        for _ in range(20):
            await agent.send(agent.results(PROBES))

    async with service_of(tmp_path, "100ms") as service, AsyncExitStack() as stack:
        fleet = [await stack.enter_async_context(
            TestAgent(service.grpc_address, f"a-{i}", f"r{i % 3}", epoch=1))
            for i in range(6)]
        started = time.monotonic()
        await asyncio.gather(*(pump(agent) for agent in fleet))
        elapsed = time.monotonic() - started
        commits = counter(service, "probenet_journal_watermark_commit_seconds_count")
        # 120 batches, each acknowledged after a commit: at most one commit per interval
        # (plus the first, at once), not one per batch.
        assert commits <= elapsed / 0.1 + 2
        assert applied(service) == 6 * 20 * len(PROBES)


async def test_acks_wait_while_the_journal_cannot_commit_and_go_out_once_it_can(
        tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="probenet.collector.server")
    attempts = []

    def broken(watermarks):  # a fault injected into the journal: the disk refuses writes
        attempts.append(dict(watermarks))
        raise JournalError(str(tmp_path / "journal.db"), "watermark flush failed: disk full")

    async with service_of(tmp_path) as service, AsyncExitStack() as stack:
        fleet = [await stack.enter_async_context(
            TestAgent(service.grpc_address, f"a-{i}", f"r{i}", epoch=1)) for i in range(2)]
        for agent in fleet:  # known probes: the next batches change no target, no transition
            await agent.send(agent.results(PROBES))
        monkeypatch.setattr(service.journal, "flush_watermarks", broken)
        acks = []
        for agent in fleet:  # each batch asks for a commit: two attempts at least
            await agent.write(pb.AgentMessage(batch=pb.ResultBatch(
                results=agent.results(PROBES))))
            acks.append(asyncio.ensure_future(agent.read()))
            await asyncio.sleep(0.1)
        done, _ = await asyncio.wait(acks, timeout=0.5)
        assert done == set()  # no Ack for a watermark the journal does not hold
        assert len(attempts) >= 2
        assert stored(tmp_path / "journal.db") == {"a-0": (1, 20), "a-1": (1, 20)}
        monkeypatch.undo()
        async with asyncio.timeout(10):
            replies = await asyncio.gather(*acks)
        assert [r.ack.acked_seq for r in replies] == [40, 40]
        assert stored(tmp_path / "journal.db") == {"a-0": (1, 40), "a-1": (1, 40)}
    failures = [r for r in caplog.records if r.getMessage().startswith("watermark commit")]
    assert [(r.levelname, r.getMessage()) for r in failures] == [
        ("ERROR", "watermark commit failed: acks wait until one succeeds"),
        ("INFO", "watermark commits succeed again")]


# -- kill -9 of a real collector process under load ---------------------------------------


class PipeliningAgent:
    """A TestAgent that writes batches without waiting for each Ack (as a real agent does).

    At most `window` batches are unacknowledged at once; `last_ack` is the highest acked_seq
    received, `sent` the highest seq written.
    """

    def __init__(self, agent: TestAgent, window: int = 8) -> None:
        self.agent = agent
        self.window = asyncio.Semaphore(window)
        self.last_ack = 0
        self.sent = 0

    async def run(self, until: asyncio.Event, max_batches: int = 20_000) -> None:
        reader = asyncio.create_task(self._read())
        try:
            for _ in range(max_batches):
                await self.window.acquire()
                if until.is_set() or reader.done():
                    return
                results = self.agent.results(PROBES)
                await self.agent.write(pb.AgentMessage(batch=pb.ResultBatch(results=results)))
                self.sent = results[-1].seq
        except StreamEndedError:
            return
        finally:
            reader.cancel()
            await asyncio.wait([reader])

    async def _read(self) -> None:
        try:
            while True:
                message = await self.agent.read()
                self.last_ack = max(self.last_ack, message.ack.acked_seq)
                self.window.release()
        except StreamEndedError:
            self.window.release()  # the writer may wait for room: it sees the end


async def _load_then_kill(process: CollectorProcess, epochs: dict[str, int]
                          ) -> dict[str, tuple[int, int]]:
    """Pipelining agents until a `kill -9`; (last ack received, highest seq sent) by agent."""
    async with AsyncExitStack() as stack:
        agents = [PipeliningAgent(await stack.enter_async_context(
            TestAgent(process.grpc_address, agent_id, f"r{i}", epoch=epoch)))
            for i, (agent_id, epoch) in enumerate(epochs.items())]
        stop = asyncio.Event()
        load = [asyncio.create_task(a.run(stop)) for a in agents]
        await asyncio.sleep(1.5)
        assert all(a.last_ack for a in agents), "no Ack within 1.5 s of load"
        process.proc.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL
        stop.set()
        async with asyncio.timeout(30):
            await asyncio.gather(*load)
        return {a.agent.agent_id: (a.last_ack, a.sent) for a in agents}


async def test_after_kill_9_under_load_the_journal_holds_every_ack_and_nothing_is_applied_twice(
        tmp_path):
    process = CollectorProcess(tmp_path)
    epochs = {f"a-{i}": time.time_ns() + i for i in range(4)}
    try:
        await process.start()
        before = await _load_then_kill(process, epochs)
        journal = stored(tmp_path / "journal.db")
        for agent_id, (last_ack, sent) in before.items():
            assert journal[agent_id][0] == epochs[agent_id]
            # Every acknowledged seq is durable; nothing beyond what was sent is.
            assert last_ack <= journal[agent_id][1] <= sent, (agent_id, last_ack, sent)

        await process.start()
        resent = 0
        async with AsyncExitStack() as stack:
            for i, (agent_id, epoch) in enumerate(epochs.items()):
                agent = await stack.enter_async_context(
                    TestAgent(process.grpc_address, agent_id, f"r{i}", epoch=epoch))
                assert agent.welcome is not None
                assert agent.welcome.acked_seq == journal[agent_id][1]
                # Resend everything, from seq 1: only what the journal does not hold is
                # applied, every acknowledged result is a duplicate.
                sent = before[agent_id][1]
                for first in range(1, sent + 1, 1000):
                    batch = [agent.result(PROBES[seq % len(PROBES)], seq=seq)
                             for seq in range(first, min(first + 1000, sent + 1))]
                    ack = await agent.send(batch)
                assert ack.acked_seq == sent
                resent += sent
        text = (await http_get(process.url + "/metrics"))[2]
        fresh = sum(before[a][1] - journal[a][1] for a in epochs)
        assert metric_value(text, "probenet_ingest_results_total", outcome="applied") == fresh
        assert metric_value(text, "probenet_ingest_results_total",
                            outcome="duplicate") == resent - fresh
    finally:
        process.stop()
