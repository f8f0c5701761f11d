"""Issue 11: one agent cut off from its collector for 60 s, by nftables between namespaces.

Real processes: `probenet collector` in this namespace, listening for gRPC on the host side of
a veth pair (plaintext, `insecure: true`: the link is private to the test), and
`probenet agent` inside a namespace of its own (tests/support/netns.py). Every 500 ms the
agent probes a TCP server on the host side of the link (failing while it is cut) and its own
metrics endpoint inside its namespace (answering throughout), so it keeps producing results
while it cannot deliver them. The cut drops every packet over the link, both ways, without a
word: no RST, no ICMP; both ends must find out by themselves (keepalive).

After the heal the agent must be connected again within its backoff cap plus its keepalive
detection time plus a few seconds, and every result it produced must be applied exactly once:
the collector's applied count equals the agent's count of results and the last sequence
number the collector stored. Since the collector applies a result only when its seq is above
the agent's watermark, which only rises, applied seqs are distinct; N of them, none above N,
are 1..N: no gap and no double application. Resent results the collector already had are
counted as duplicates, never applied.

Run with `-s` (or read the `-rA` report) for the measured figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from probenet.collector.journal import Journal
from probenet.lab.client import CollectorApi
from probenet.lab.errors import ApiError
from probenet.lab.fleet import pick_free_port, probenet_command
from support.collector_client import metric_value
from support.netns import install_partition, namespace_link, remove_partition, require_netns
from support.processes import ChildProcess
from support.targets import TcpTarget

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
    from pathlib import Path

    from support.netns import NamespaceLink

pytestmark = [pytest.mark.needs_root, pytest.mark.slow,
              # Nominally about 75 s; the deadlines below add up to more when things go wrong,
              # so that a failure reports what it measured rather than a bare timeout.
              pytest.mark.timeout(200)]

AGENT_ID = "part-1"
PARTITION_S = 60.0
INTERVAL_S = 0.5
KEEPALIVE_S = 10.0  # the shortest the collector's ping policy permits
KEEPALIVE_TIMEOUT_S = 2.0
BACKOFF_MAX_S = 2.0
CONNECT_TIMEOUT_S = 2.0
SLACK_S = 5.0  # "a few seconds": scheduling, a handshake, the Welcome
RECONNECT_BOUND_S = BACKOFF_MAX_S + KEEPALIVE_S + KEEPALIVE_TIMEOUT_S + SLACK_S
DETECTION_BOUND_S = KEEPALIVE_S + KEEPALIVE_TIMEOUT_S + SLACK_S
AGENT_METRICS_PORT = 9465  # inside the agent's own, fresh namespace: always free
STARTUP_S = 30.0

T = TypeVar("T")


# --------------------------------------------------------------------------- configs


def collector_config(link: NamespaceLink, grpc_port: int, http_port: int,
                     journal: Path) -> dict[str, Any]:
    """gRPC on the link's host side, the API on loopback, one registered agent."""
    return {
        "listen": {"grpc": f"{link.host_address}:{grpc_port}", "http": f"127.0.0.1:{http_port}"},
        # Plaintext on a non-loopback address: the link exists only for this test.
        "insecure": True,
        "agents": [{"id": AGENT_ID, "region": "eu-central"}],
        "journal": {"path": str(journal)},
        "collector_id": "partition-test",
    }


def agent_config(link: NamespaceLink, grpc_port: int, target: str, *,
                 probing: bool = True) -> dict[str, Any]:
    """The agent inside the namespace; `probing=False` is the same agent with no probes."""
    metrics_address = f"{link.address}:{AGENT_METRICS_PORT}"
    probes = [
        {"name": "host-tcp", "kind": "tcp", "target": target},
        {"name": "self-http", "kind": "http", "target": f"http://{metrics_address}/metrics"},
    ]
    return {
        "agent": {"id": AGENT_ID, "region": "eu-central", "labels": {"network": "netns"}},
        "collectors": [{
            "address": f"{link.host_address}:{grpc_port}",
            "connect_timeout": f"{CONNECT_TIMEOUT_S:g}s",
            "keepalive": f"{KEEPALIVE_S:g}s", "keepalive_timeout": f"{KEEPALIVE_TIMEOUT_S:g}s"}],
        "defaults": {"interval": f"{INTERVAL_S * 1000:g}ms", "timeout": "400ms"},
        "stream": {"backoff_initial": "200ms", "backoff_max": f"{BACKOFF_MAX_S:g}s",
                   "linger": "20ms"},
        "metrics": {"listen": metrics_address},
        "probes": probes if probing else [],
    }


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- readings


def sample_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every sample `name` matching `labels` in exposition `text`."""
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v
                                              for k, v in labels.items()))


@dataclass
class Rig:
    """The link, both processes, and readers of what each one says."""

    link: NamespaceLink
    collector: ChildProcess
    agent: ChildProcess
    api: CollectorApi
    http: aiohttp.ClientSession
    agent_yaml: Path
    grpc_port: int
    target: str
    journal: Path

    @property
    def agent_metrics_url(self) -> str:
        return f"http://{self.link.address}:{AGENT_METRICS_PORT}/metrics"

    async def ingested(self, outcome: str) -> int:
        text = await self.api.metrics()
        return int(metric_value(text, "probenet_ingest_results_total", outcome=outcome) or 0)

    async def streams_opened(self) -> int:
        text = await self.api.metrics()
        return int(metric_value(text, "probenet_agent_streams_opened_total") or 0)

    async def connected(self) -> bool:
        return any(a.id == AGENT_ID and a.connected for a in await self.api.agents())

    async def agent_metrics(self) -> str:
        async with self.http.get(self.agent_metrics_url) as response:
            assert response.status == 200, f"agent metrics: HTTP {response.status}"
            return await response.text()

    async def produced(self) -> int:
        """Results the agent made so far: one per probe outcome, each numbered in turn."""
        return int(sample_sum(await self.agent_metrics(), "probenet_agent_probe_runs_total"))


async def poll(check: Callable[[], Awaitable[T | None]], timeout_s: float, what: str, *,
               alive: Sequence[ChildProcess], poll_s: float = 0.1) -> T:
    """Await `check` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        for child in alive:
            child.check_alive()
        try:
            value = await check()
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            last_error, value = exc, None
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            logs = "".join(f"\n--- {c.name} log:\n{c.log_tail()}" for c in alive)
            pytest.fail(f"timed out after {timeout_s:g}s waiting for {what}{detail}{logs}")
        await asyncio.sleep(poll_s)


def stream_log(path: Path) -> Iterator[dict[str, Any]]:
    """The agent's stream state changes, from its JSON log lines."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            continue  # grpc's own stderr lines, if any
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("logger") == "probenet.agent.stream" and "state" in record:
                yield record


def first_change(path: Path, since: float, **fields: str) -> float | None:
    """Seconds from wall time `since` to the first stream change with `fields` after it."""
    for record in stream_log(path):
        at = datetime.fromisoformat(record["ts"]).timestamp()
        if at >= since and all(record.get(k) == v for k, v in fields.items()):
            return at - since
    return None


# --------------------------------------------------------------------------- figures


@dataclass
class Figures:
    """What one run measured: printed, then asserted."""

    agent_noticed_s: float | None = None  # cut -> the agent's stream left `connected`
    collector_noticed_s: float | None = None  # cut -> /api/v1/agents: not connected
    reconnect_s: float | None = None  # heal -> a new stream, connected (collector's view)
    agent_reconnect_s: float | None = None  # heal -> the agent logged `connected`
    catch_up_s: float | None = None  # heal -> everything made until the reconnect applied
    produced_unsent: int = 0  # made between the cut and the reconnect
    produced: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    last_seq: int | None = None  # the collector's stored watermark for the agent
    dropped: int = 0  # by the agent, its buffer full
    agent_streams: int = 0  # streams the agent established in all
    exits: dict[str, int | None] = field(default_factory=dict)

    def report(self) -> str:
        def secs(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}s"

        return (f"partition {PARTITION_S:g}s: agent noticed after {secs(self.agent_noticed_s)}"
                f", collector after {secs(self.collector_noticed_s)}; reconnected "
                f"{secs(self.reconnect_s)} after the heal (agent's log "
                f"{secs(self.agent_reconnect_s)}; bound {RECONNECT_BOUND_S:g}s), caught up "
                f"after {secs(self.catch_up_s)}; results produced {self.produced} "
                f"({self.produced_unsent} between cut and reconnect), applied {self.applied}, "
                f"duplicates {self.duplicates}, rejected {self.rejected}, last seq "
                f"{self.last_seq}, dropped {self.dropped}; agent streams {self.agent_streams}; "
                f"exit statuses {self.exits}")


# --------------------------------------------------------------------------- the run


@pytest.fixture
def link():
    require_netns()
    with namespace_link("part") as made:
        yield made


@contextlib.asynccontextmanager
async def started(link: NamespaceLink, tmp_path: Path) -> AsyncIterator[Rig]:
    """Target, collector and agent up; the agent streaming, 10 results applied."""
    grpc_port = pick_free_port(link.host_address)
    http_port = pick_free_port()
    journal = tmp_path / "journal.db"
    async with contextlib.AsyncExitStack() as stack:
        target = await stack.enter_async_context(TcpTarget(host=link.host_address))
        collector_yaml = write_yaml(tmp_path / "collector.yaml",
                                    collector_config(link, grpc_port, http_port, journal))
        agent_yaml = write_yaml(tmp_path / "agent.yaml",
                                agent_config(link, grpc_port, target.address))
        collector = await stack.enter_async_context(ChildProcess(
            "collector", [*probenet_command(), "collector", "--config", str(collector_yaml)],
            tmp_path / "collector.log"))
        api = await stack.enter_async_context(
            CollectorApi(f"http://127.0.0.1:{http_port}", timeout_s=3.0))
        http = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3.0)))
        await poll(api.ready, STARTUP_S, "the collector's /readyz", alive=[collector])
        # Entered last, so it stops first: the agent never outlives its collector.
        agent = await stack.enter_async_context(ChildProcess(
            "agent", [*link.exec_prefix(), *probenet_command(), "agent", "--config",
                      str(agent_yaml), "--log-format", "json"], tmp_path / "agent.log"))
        rig = Rig(link, collector, agent, api, http, agent_yaml, grpc_port, target.address,
                  journal)

        async def streaming() -> bool:
            return await rig.connected() and await rig.ingested("applied") >= 10

        await poll(streaming, STARTUP_S, "the agent streaming", alive=[collector, agent])
        yield rig


async def cut(rig: Rig, figures: Figures) -> tuple[int, float]:
    """The partition, for PARTITION_S; return the streams opened before it and its end."""
    alive = [rig.collector, rig.agent]
    opened_before = await rig.streams_opened()
    applied_before = await rig.ingested("applied")
    install_partition(rig.link)
    cut_at, cut_wall = time.monotonic(), time.time()
    try:
        while (left := cut_at + PARTITION_S - time.monotonic()) > 0:
            for child in alive:
                child.check_alive()
            if figures.collector_noticed_s is None:
                with contextlib.suppress(ApiError):
                    if not await rig.connected():
                        figures.collector_noticed_s = time.monotonic() - cut_at
            await asyncio.sleep(min(0.5, max(0.0, left)))
    finally:
        remove_partition(rig.link)
    healed_at, healed_wall = time.monotonic(), time.time()
    figures.agent_noticed_s = first_change(rig.agent.log_path, cut_wall, previous="connected")

    async def reconnected() -> bool:
        return await rig.streams_opened() > opened_before and await rig.connected()

    # Past the bound too: a slow reconnect is measured and reported, not just timed out.
    await poll(reconnected, RECONNECT_BOUND_S + 15, "the reconnect after the heal",
               alive=alive)
    figures.reconnect_s = time.monotonic() - healed_at
    figures.agent_reconnect_s = first_change(rig.agent.log_path, healed_wall,
                                             state="connected")
    produced = await rig.produced()
    figures.produced_unsent = produced - applied_before

    async def caught_up() -> bool:
        return await rig.ingested("applied") >= produced

    await poll(caught_up, 15, "the buffered results applied", alive=alive)
    figures.catch_up_s = time.monotonic() - healed_at
    return opened_before, healed_at


async def quiesce(rig: Rig) -> int:
    """Reload the agent with no probes; once it is idle and acked, return what it made."""
    alive = [rig.collector, rig.agent]
    write_yaml(rig.agent_yaml, agent_config(rig.link, rig.grpc_port, rig.target,
                                            probing=False))
    rig.agent.send_signal(signal.SIGHUP)

    async def no_probes() -> bool:
        return sample_sum(await rig.agent_metrics(), "probenet_agent_probes") == 0

    await poll(no_probes, 10, "the agent reloaded without probes", alive=alive)
    previous: list[int] = []

    async def idle() -> int | None:
        # A run in progress when the probes went away still ends with a result (at most a
        # timeout and a confirmation, under a second): wait until the count holds still.
        text = await rig.agent_metrics()
        runs = int(sample_sum(text, "probenet_agent_probe_runs_total"))
        settled = previous and previous[-1] == runs
        previous.append(runs)
        if settled and sample_sum(text, "probenet_agent_buffer_results") == 0:
            return runs
        return None

    return await poll(idle, 10, "the agent idle with nothing unacknowledged", alive=alive,
                      poll_s=1.0)


async def run(rig: Rig, figures: Figures) -> None:
    alive = [rig.collector, rig.agent]
    await cut(rig, figures)
    figures.produced = await quiesce(rig)

    async def all_applied() -> bool:
        return await rig.ingested("applied") >= figures.produced

    await poll(all_applied, 10, "every result applied", alive=alive)
    figures.applied = await rig.ingested("applied")
    figures.duplicates = await rig.ingested("duplicate")
    figures.rejected = await rig.ingested("rejected")
    text = await rig.agent_metrics()
    figures.dropped = int(sample_sum(text, "probenet_agent_results_dropped_total"))
    figures.agent_streams = int(sample_sum(text, "probenet_agent_collector_reconnects_total"))
    # Stop both (the agent first), so the collector writes its watermarks back.
    figures.exits["agent"] = await rig.agent.stop()
    figures.exits["collector"] = await rig.collector.stop()
    with Journal(rig.journal) as journal:
        watermark = journal.watermarks().get(AGENT_ID)
    figures.last_seq = None if watermark is None else watermark[1]


async def test_an_agent_partitioned_for_60s_reconnects_in_bound_and_replays_once(
        link, tmp_path):
    figures = Figures()
    async with started(link, tmp_path) as rig:
        try:
            await run(rig, figures)
        finally:
            print(figures.report())
    assert figures.agent_noticed_s is not None, "the agent never noticed the cut"
    assert figures.agent_noticed_s <= DETECTION_BOUND_S
    assert figures.collector_noticed_s is not None, "the collector never noticed the cut"
    assert figures.reconnect_s is not None
    assert figures.reconnect_s <= RECONNECT_BOUND_S
    # It kept probing while cut off (nominally 2 probes every 0.5 s; failing runs take longer).
    assert figures.produced_unsent >= PARTITION_S
    assert figures.dropped == 0
    assert figures.rejected == 0
    assert figures.applied == figures.produced
    assert figures.last_seq == figures.produced
    assert figures.agent_streams == 2  # the first, and the one after the heal: none while cut
    assert figures.exits == {"agent": 0, "collector": 0}
