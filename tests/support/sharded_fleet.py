"""A sharded fleet as real processes: collector groups by shard, agents in several regions.

    fleet = ShardedFleet(workdir, agents=AGENTS, probes=PROBES, collectors=COLLECTORS,
                         shards=2, interval_s=1.0, faults=FaultTable(...))
    fleet.start()                       # targets, every collector, every agent; all connected
    fleet.get_json("a1", "/api/v1/fleet/targets")
    fleet.stop_collector("b1"); fleet.start_collector("b1")
    fleet.stop()                        # every child: SIGTERM, then SIGKILL

The fault-injecting targets (probenet.lab.targets) run on an event loop in a background
thread and consult the `FaultTable` the test edits (support.e2e_fleet). Each collector gets
`sharding: {shard, shards, peers}` listing every other group's collectors; each agent lists
every collector with its shard, and `shards`. Configs are built with probenet.lab.fleet's
writers (the same files the demo and the e2e scenarios use), then given their sharding keys.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from probenet.lab.fleet import (
    AgentSeat,
    FleetPlan,
    ProbePlan,
    agent_config,
    collector_config,
    log_tail,
    pick_free_port,
    probenet_command,
)
from probenet.lab.targets import FaultyTargets
from support.e2e_fleet import wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from support.e2e_fleet import FaultTable


@dataclass(frozen=True, slots=True)
class CollectorSeat:
    """One collector process: its name, its group (shard) and its loopback ports."""

    name: str
    shard: int
    grpc_port: int
    http_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def collector_seats(layout: dict[str, int]) -> tuple[CollectorSeat, ...]:
    """Collector name -> shard, each with two fresh loopback ports."""
    return tuple(CollectorSeat(name, shard, pick_free_port(), pick_free_port())
                 for name, shard in layout.items())


class ShardedFleet:
    """Targets on a background loop; collectors and agents as child processes."""

    def __init__(self, workdir: Path, *, agents: tuple[AgentSeat, ...],
                 probes: tuple[ProbePlan, ...], collectors: tuple[CollectorSeat, ...],
                 shards: int, interval_s: float, faults: FaultTable,
                 collector_settings: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.agents = agents
        self.probes = probes
        self.collectors = {c.name: c for c in collectors}
        self.shards = shards
        self.faults = faults
        self.plan = FleetPlan(agents=agents, probes=probes, interval_s=interval_s,
                              http_port=0, grpc_port=0, tokens=False,
                              collector_settings=collector_settings or {})
        self.targets: FaultyTargets | None = None
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._configs: dict[str, Path] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sharded-targets",
                                        daemon=True)
        self._stop_targets: asyncio.Event | None = None
        self._targets_life: concurrent.futures.Future[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> None:
        """Targets, then every collector (ready), then every agent (connected everywhere)."""
        self._thread.start()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._targets_life = asyncio.run_coroutine_threadsafe(self._serve_targets(ready),
                                                              self._loop)
        ready.result(30)
        self._write_configs()
        for name in self.collectors:
            self.start_collector(name, wait=False)
        for name in self.collectors:
            self.wait_ready(name, timeout_s)
        for seat in self.agents:
            self._spawn(seat.id, "agent")
        for name in self.collectors:
            self.wait_agents_connected(name, timeout_s)

    async def _serve_targets(self, ready: concurrent.futures.Future[None]) -> None:
        self._stop_targets = asyncio.Event()
        try:
            async with FaultyTargets(self.faults, tcp_probes=self.plan.tcp_probes) as targets:
                self.targets = targets
                ready.set_result(None)
                await self._stop_targets.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    def stop(self) -> None:
        """Stop every child (agents first), then the targets; idempotent."""
        for name in [a.id for a in self.agents] + list(self.collectors):
            self._terminate(name)
        if self._stop_targets is not None:
            self._loop.call_soon_threadsafe(self._stop_targets.set)
        if self._targets_life is not None:
            with contextlib.suppress(Exception):
                self._targets_life.result(30)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()

    # -- config files ----------------------------------------------------------------------

    def _write_configs(self) -> None:
        assert self.targets is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        for seat in self.collectors.values():
            folder = self.workdir / seat.name
            folder.mkdir(exist_ok=True)
            plan = dataclasses.replace(self.plan, http_port=seat.http_port,
                                       grpc_port=seat.grpc_port)
            config = collector_config(plan, folder)
            peers = [{"shard": shard, "urls": [c.url for c in self.collectors.values()
                                               if c.shard == shard]}
                     for shard in range(self.shards) if shard != seat.shard]
            config["sharding"] = {"shard": seat.shard, "shards": self.shards,
                                  "peers": peers, "timeout": "1s"}
            self._configs[seat.name] = self._dump(folder / "collector.yaml", config)
        for agent in self.agents:
            config = agent_config(self.plan, agent, self.targets, self.workdir)
            config["collectors"] = [{"address": c.grpc_address, "shard": c.shard}
                                    for c in self.collectors.values()]
            config["shards"] = self.shards
            # Quick reconnects after a collector comes back (the default caps at 10 s).
            config["stream"] = {"backoff_initial": "100ms", "backoff_max": "1s"}
            config["agent"]["state_dir"] = str(self.workdir / "state" / agent.id)
            self._configs[agent.id] = self._dump(self.workdir / f"agent-{agent.id}.yaml",
                                                 config)

    @staticmethod
    def _dump(path: Path, data: dict[str, Any]) -> Path:
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    # -- children --------------------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def _spawn(self, name: str, subcommand: str) -> None:
        old = self._children.get(name)
        assert old is None or old.poll() is not None, f"{name} is already running"
        env = dict(os.environ, PROBENET_DEMO_PARENT=str(os.getpid()), PYTHONUNBUFFERED="1")
        with self.log_path(name).open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting {name}\n".encode())
            log.flush()
            self._children[name] = subprocess.Popen(
                [*probenet_command(), subcommand, "--config", str(self._configs[name])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)

    def _terminate(self, name: str, grace_s: float = 10.0) -> None:
        process = self._children.get(name)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def check_alive(self, *names: str) -> None:
        """AssertionError with the log's tail when one of `names` (default: all) exited."""
        for name in names or tuple(self._children):
            process = self._children[name]
            code = process.poll()
            assert code is None, (f"{name} exited with status {code}:\n"
                                  f"{log_tail(self.log_path(name))}")

    def start_collector(self, name: str, *, wait: bool = True) -> None:
        """Start (again) one collector; with `wait`, until it answers /readyz."""
        self._spawn(name, "collector")
        if wait:
            self.wait_ready(name)

    def stop_collector(self, name: str) -> None:
        """SIGTERM one collector and wait for it to exit."""
        self._terminate(name)

    # -- HTTP, synchronously ----------------------------------------------------------------

    def get(self, name: str, path: str) -> tuple[int, bytes]:
        """(status, body) of GET `path` on collector `name` (an HTTP error is an answer)."""
        url = self.collectors[name].url + path
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, bytes(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_json(self, name: str, path: str) -> Any:
        """The JSON body of GET `path` (AssertionError unless 200)."""
        status, body = self.get(name, path)
        assert status == 200, f"{name} {path}: {status} {body[:500]!r}"
        return json.loads(body)

    def metric(self, name: str, metric: str, **labels: str) -> float | None:
        """One sample of collector `name`'s /metrics, or None when absent."""
        _, body = self.get(name, "/metrics")
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == metric and all(sample.labels.get(k) == v
                                                  for k, v in labels.items()):
                    return float(sample.value)
        return None

    def wait_ready(self, name: str, timeout_s: float = 60.0) -> None:
        def ready() -> bool:
            self.check_alive(name)
            return self.get(name, "/readyz")[0] == 200
        wait_until(ready, timeout_s, f"collector {name} to answer /readyz", poll_s=0.1)

    def wait_agents_connected(self, name: str, timeout_s: float = 60.0) -> None:
        """Until collector `name` lists every agent connected and fresh."""
        seen: list[Any] = []

        def connected() -> bool:
            self.check_alive(name)
            seen[:] = self.get_json(name, "/api/v1/agents")
            fine = {a["id"] for a in seen if a["connected"] and not a["stale"]}
            return fine == {a.id for a in self.agents}
        try:
            wait_until(connected, timeout_s, f"every agent connected to {name}", poll_s=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last /api/v1/agents: {seen}") from None
