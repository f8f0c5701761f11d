"""An agent's restart, even `kill -9`, loses no result and applies none twice.

The agent keeps its epoch, sequence and unacknowledged results in its state file
(agent/state.py); counted by sequence at the real collector.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import subprocess
import sys
from contextlib import AsyncExitStack

from prometheus_client import CollectorRegistry

from probenet.agent.config import parse_config as parse_agent_config
from probenet.agent.main import Agent
from probenet.agent.state import state_path
from probenet.collector.config import parse_config as parse_collector_config
from probenet.collector.server import CollectorService
from support.collector_client import collector_yaml
from support.system import ROOT, free_port
from support.targets import TcpTarget, wait_until

PROBES = 20


def agent_yaml(collector: str, target: str, *, interval: str = "100ms") -> str:
    probes = "\n".join(f"  - {{name: p{i}, kind: tcp, target: '{target}'}}"
                       for i in range(PROBES))
    return f"""
agent: {{id: fra-1, region: eu}}
collectors: [{{address: "{collector}"}}]
defaults: {{interval: {interval}, timeout: 80ms}}
stream: {{backoff_initial: 50ms, backoff_max: 300ms, linger: 20ms}}
probes:
{probes}
"""


def collector_config(tmp_path, port: int):
    return parse_collector_config(collector_yaml(
        str(tmp_path / "journal.db"), grpc_listen=f"127.0.0.1:{port}"))


def counted(service: CollectorService, outcome: str) -> float:
    return service.registry.get_sample_value("probenet_ingest_results_total",
                                             {"outcome": outcome}) or 0.0


def rejected(service: CollectorService) -> float:
    return sum(sample.value for metric in service.registry.collect()
               if metric.name == "probenet_ingest_rejections"
               for sample in metric.samples if sample.name.endswith("_total"))


def saved(tmp_path) -> tuple[int, int, int]:
    """(epoch, last_seq, results held) in the stopped agent's state file."""
    path = state_path(tmp_path / "agent.state", "fra-1")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        meta = dict(db.execute("SELECT key, value FROM meta"))
        [(held,)] = db.execute("SELECT COUNT(*) FROM results")
    return meta["epoch"], meta["last_seq"], held


class AgentProcess:
    """`probenet agent` as a child process, its log appended to agent.log."""

    def __init__(self, tmp_path) -> None:
        self.config = tmp_path / "agent.yaml"
        self.log = tmp_path / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from probenet.cli import main; main()", "agent",
                 "--config", str(self.config)], cwd=ROOT, stdout=log, stderr=log)

    async def stop(self, sig: signal.Signals) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        async with asyncio.timeout(30):
            while self.proc.poll() is None:
                await asyncio.sleep(0.02)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def test_kill_9_under_load_then_restart_loses_nothing_and_applies_nothing_twice(
        tmp_path):
    rng = random.Random(11)
    port = free_port()
    agent = AgentProcess(tmp_path)
    applied = duplicates = 0.0
    epochs = set()
    async with TcpTarget() as tcp, AsyncExitStack() as stack:
        stack.callback(agent.kill)
        agent.config.write_text(agent_yaml(f"127.0.0.1:{port}", tcp.address))
        first = await stack.enter_async_context(CollectorService(collector_config(tmp_path,
                                                                                  port)))
        agent.start()
        # Under load, with the collector up: killed at random moments, restarted at once.
        for _ in range(3):
            target = counted(first, "applied") + rng.randint(50, 300)
            await wait_until(lambda t=target: counted(first, "applied") >= t, 30)
            await agent.stop(signal.SIGKILL)
            epoch, last_seq, _held = saved(tmp_path)
            epochs.add(epoch)
            agent.start()
        # With the collector gone: everything it makes waits on disk, then a kill -9.
        await first.__aexit__(None, None, None)
        applied, duplicates = counted(first, "applied"), counted(first, "duplicate")
        assert rejected(first) == 0
        await wait_until(lambda: saved(tmp_path)[2] >= 100, 30)
        await agent.stop(signal.SIGKILL)
        epoch, waiting_seq, held = saved(tmp_path)
        epochs.add(epoch)
        assert held >= 100
        agent.start()
        second = await stack.enter_async_context(CollectorService(collector_config(tmp_path,
                                                                                   port)))
        await wait_until(lambda: counted(second, "applied") >= waiting_seq - applied, 30)
        assert await agent.stop(signal.SIGTERM) == 0  # a clean stop flushes what is left
        epoch, last_seq, held = saved(tmp_path)
        epochs.add(epoch)
        applied += counted(second, "applied")
        duplicates += counted(second, "duplicate")
        assert rejected(second) == 0
    log = agent.log.read_text()
    assert len(epochs) == 1, "a restart must continue the same epoch"
    assert log.count("agent state restored") == 4, log
    # Counted by sequence: the collector applies each (epoch, seq) once and drops repeats.
    assert applied == last_seq, f"{last_seq - applied:g} results lost"
    assert held == 0, "acknowledged results stay on disk after a clean stop"
    print(f"\nkill -9 x4: {last_seq} results made, {applied:g} applied, "
          f"{duplicates:g} resends dropped as duplicates")


async def test_an_agent_restarted_in_process_continues_its_epoch_and_resends(tmp_path):
    port = free_port()
    async with TcpTarget() as tcp:
        config = parse_agent_config(agent_yaml(f"127.0.0.1:{port}", tcp.address))
        first = Agent(config, state_dir=tmp_path, registry=CollectorRegistry())
        async with first:
            await wait_until(lambda: len(first.spools[0]) >= 30, 10)
            made = first.fanout.last_seq
        # Left without a flush (the collector was never up): all of it waits on disk.
        second = Agent(config, state_dir=tmp_path, epoch=1, registry=CollectorRegistry())
        async with CollectorService(collector_config(tmp_path, port)) as service, second:
            assert second.epoch == first.epoch  # taken from the file, not the argument
            state_metrics = {name: second.registry.get_sample_value(name) for name in (
                "probenet_agent_state_results", "probenet_agent_state_commits_total",
                "probenet_agent_state_write_failures_total")}
            assert state_metrics["probenet_agent_state_results"] >= made
            assert state_metrics["probenet_agent_state_write_failures_total"] == 0
            await wait_until(lambda: counted(service, "applied") >= made, 10)
            second.scheduler.stop()
            await second.scheduler.wait_idle(5)
            await second.durable.drain()
            assert await second.streams[0].flush(10)
            assert counted(service, "applied") == second.fanout.last_seq
            assert counted(service, "duplicate") == 0
        assert second.fanout.last_seq > made
