"""Real `probenet collector` and `probenet agent` processes for the fleet-file push tests.

    async with PushCollector(tmp_path / "a", fleet_yaml(...)) as collector, \\
            PushAgent(tmp_path / "fra-1", "fra-1", "eu", [collector]) as agent:
        entry = await collector.wait_agent("fra-1", lambda e: e.get("config_current"))
        runs = await agent.next_runs()            # probe -> next run (unix seconds)

Each collector has its own folder (config, fleet file, journal, log) and fixed loopback ports;
each agent its own folder (config, state folder, log) and its own `/metrics` port. Every
wait has a deadline and fails with the tail of the child's log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Self, TypeVar

import yaml

from probenet.lab.fleet import probenet_command
from support.collector_client import http_get, http_json
from support.processes import ChildProcess
from support.system import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

WAIT_S = 30.0
T = TypeVar("T")


def fleet_yaml(probes: Sequence[dict[str, Any]], *, interval: str = "500ms",
               timeout: str = "300ms") -> str:
    """A fleet file's text: `defaults` and `probes` (selectors stay on each probe)."""
    return yaml.safe_dump({"defaults": {"interval": interval, "timeout": timeout},
                           "probes": list(probes)}, sort_keys=False)


def http_probe(name: str, url: str, **extra: Any) -> dict[str, Any]:
    """An `http` probe entry expecting 2xx."""
    return {"name": name, "kind": "http", "target": url,
            "http": {"expect_status": ["2xx"]}, **extra}


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample `name` in exposition `text`: (labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    return [(dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]


async def wait_for(read: Callable[[], Any], accept: Callable[[T], bool], what: str,
                      log_tails: Callable[[], str], timeout_s: float = WAIT_S) -> T:
    """Poll `await read()` until `accept(value)`; AssertionError naming `what` after a while."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = await read()
        except (OSError, TimeoutError) as exc:
            last = exc
        else:
            if accept(last):
                return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout_s:g}s (last: {last!r})\n"
                                 f"{log_tails()}")
        await asyncio.sleep(0.1)


class PushCollector:
    """`probenet collector` with a fleet file, as a child process on fixed loopback ports."""

    def __init__(self, folder: Path, fleet_text: str, *, collector_id: str = "col-a",
                 watch_interval: str | None = None, extra: dict[str, Any] | None = None,
                 fleet_mtime: float | None = None) -> None:
        """Write the config and the fleet file; nothing starts until entered (or `start`)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.collector_id = collector_id
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.fleet_path = folder / "fleet.yaml"
        self.config_path = folder / "collector.yaml"
        self.log_path = folder / "collector.log"
        self.write_fleet(fleet_text, mtime=fleet_mtime)
        fleet: dict[str, Any] = {"probes_file": str(self.fleet_path)}
        if watch_interval is not None:
            fleet["watch_interval"] = watch_interval
        config: dict[str, Any] = {
            "listen": {"grpc": self.grpc_address, "http": f"127.0.0.1:{self.http_port}"},
            "journal": {"path": str(folder / "journal.db")},
            "collector_id": collector_id,
            "fleet": fleet,
            **(extra or {}),
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.child: ChildProcess | None = None

    @property
    def grpc_address(self) -> str:
        """Where agents connect."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        """The HTTP base URL."""
        return f"http://127.0.0.1:{self.http_port}"

    def write_fleet(self, text: str, *, mtime: float | None = None) -> None:
        """Replace the fleet file (atomically); with `mtime`, set its modification time."""
        scratch = self.fleet_path.with_suffix(".tmp")
        scratch.write_text(text, encoding="utf-8")
        if mtime is not None:
            os.utime(scratch, (mtime, mtime))
        scratch.replace(self.fleet_path)

    def log_tail(self) -> str:
        """The end of the collector's log."""
        return f"--- {self.collector_id} log ---\n" + (
            self.child.log_tail() if self.child else "(not started)")

    async def start(self) -> None:
        """Start the collector and wait for `/readyz`."""
        self.child = ChildProcess(self.collector_id, [
            *probenet_command(), "collector", "--config", str(self.config_path)],
            self.log_path)
        await self.child.__aenter__()

        async def ready() -> int:
            assert self.child is not None
            self.child.check_alive()
            status, _, _ = await http_get(self.url + "/readyz")
            return status

        await wait_for(ready, lambda status: status == 200, f"{self.collector_id} ready",
                       self.log_tail, timeout_s=60)

    async def stop(self) -> None:
        """Stop the collector (SIGTERM, then SIGKILL)."""
        if self.child is not None:
            await self.child.stop()

    def reload(self) -> None:
        """SIGHUP: re-read the fleet file."""
        assert self.child is not None
        self.child.send_signal(signal.SIGHUP)

    async def __aenter__(self) -> Self:
        """Start."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop."""
        await self.stop()

    async def agents(self) -> list[dict[str, Any]]:
        """`/api/v1/agents`."""
        data = await http_json(self.url + "/api/v1/agents")
        assert isinstance(data, list)
        return data

    async def agent(self, agent_id: str) -> dict[str, Any] | None:
        """The `/api/v1/agents` entry of `agent_id` (None when absent)."""
        return next((e for e in await self.agents() if e.get("id") == agent_id), None)

    async def wait_agent(self, agent_id: str, accept: Callable[[dict[str, Any]], bool],
                         what: str = "", *, extra_logs: Callable[[], str] = lambda: "",
                         timeout_s: float = WAIT_S) -> dict[str, Any]:
        """Wait until the agent's `/api/v1/agents` entry satisfies `accept`; return it."""
        def tails() -> str:
            return self.log_tail() + "\n" + extra_logs()

        entry: dict[str, Any] = await wait_for(
            lambda: self.agent(agent_id), lambda e: e is not None and bool(accept(e)),
            f"{self.collector_id}: agent {agent_id} {what}", tails, timeout_s)
        return entry

    async def metrics(self) -> str:
        """The collector's `/metrics` text."""
        status, _, body = await http_get(self.url + "/metrics")
        assert status == 200, body
        return body


class PushAgent:
    """`probenet agent` listing one or more collectors, as a child process."""

    def __init__(self, folder: Path, agent_id: str, region: str,
                 collectors: Sequence[PushCollector], *, remote_config: bool = True,
                 source_address: str = "127.0.0.1", labels: dict[str, str] | None = None,
                 local_probes: Sequence[dict[str, Any]] = ()) -> None:
        """Write the config: identity, collectors, state folder, metrics port."""
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.agent_id = agent_id
        self.metrics_port = free_port()
        self.config_path = folder / "agent.yaml"
        self.log_path = folder / "agent.log"
        self.state_dir = folder / "state"
        identity: dict[str, Any] = {"id": agent_id, "region": region,
                                    "labels": dict(labels or {}),
                                    "source_address": source_address,
                                    "state_dir": str(self.state_dir)}
        config: dict[str, Any] = {
            "agent": identity,
            "collectors": [{"address": c.grpc_address} for c in collectors],
            "stream": {"backoff_initial": "50ms", "backoff_max": "500ms", "linger": "20ms"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
        }
        if remote_config:
            config["remote_config"] = True
        if local_probes:
            config["defaults"] = {"interval": "500ms", "timeout": "300ms"}
            config["probes"] = list(local_probes)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.child: ChildProcess | None = None

    def log_tail(self) -> str:
        """The end of the agent's log."""
        return f"--- {self.agent_id} log ---\n" + (
            self.child.log_tail() if self.child else "(not started)")

    async def start(self) -> None:
        """Start the agent and wait until its `/metrics` answers."""
        self.child = ChildProcess(self.agent_id, [
            *probenet_command(), "agent", "--config", str(self.config_path)], self.log_path)
        await self.child.__aenter__()
        await wait_for(self.metrics, bool, f"{self.agent_id} /metrics",
                       self.log_tail, timeout_s=60)

    async def stop(self) -> None:
        """Stop the agent (SIGTERM, then SIGKILL)."""
        if self.child is not None:
            await self.child.stop()

    async def __aenter__(self) -> Self:
        """Start."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop."""
        await self.stop()

    async def metrics(self) -> str:
        """The agent's own `/metrics` text."""
        assert self.child is not None
        self.child.check_alive()
        status, _, body = await http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        assert status == 200, body
        return body

    async def next_runs(self) -> dict[str, float]:
        """probe -> its next scheduled run (unix seconds), from the agent's metrics."""
        text = await self.metrics()
        return {labels["probe"]: value for labels, value in
                samples(text, "probenet_agent_probe_next_run_timestamp_seconds")}

    async def remote_config(self) -> dict[str, str] | None:
        """The labels of `probenet_agent_remote_config_info` (version, collector), or None."""
        found = [labels for labels, value in
                 samples(await self.metrics(), "probenet_agent_remote_config_info") if value]
        return found[0] if found else None

    async def runs(self) -> float:
        """Probe runs so far, every kind and result (`probenet_agent_probe_runs_total`)."""
        return sum(value for _, value in
                   samples(await self.metrics(), "probenet_agent_probe_runs_total"))
