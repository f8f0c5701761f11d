"""The agent's own Prometheus metrics, and the optional `/metrics` endpoint serving them.

Counters are incremented where things happen (probe runs, failures by phase and reason,
skipped runs); values that already live somewhere (buffer depth, dropped results, stream
state) are read at scrape time by a custom collector. The registry is always passed in.

| metric | labels | meaning |
| --- | --- | --- |
| probenet_agent_probe_runs_total | kind, result | probe runs (result: success/failure) |
| probenet_agent_probe_failures_total | kind, phase, reason | failed runs |
| probenet_agent_probe_runs_skipped_total | kind | runs skipped: the previous one still ran |
| probenet_agent_probes | (none) | probes configured |
| probenet_agent_buffer_results | collector | results not yet acknowledged |
| probenet_agent_buffer_capacity_results | collector | the buffer's bound |
| probenet_agent_results_dropped_total | collector | results dropped when the buffer overflowed |
| probenet_agent_collector_connected | collector | 1 while the stream is established |
| probenet_agent_collector_state | collector, state | connecting/connected/backoff/closed |
| probenet_agent_collector_reconnects_total | collector | streams (re)opened |
| probenet_agent_results_sent_total | collector | results written to the stream (resends too) |
| probenet_agent_probe_next_run_timestamp_seconds | probe | next firing (a kept probe's stays) |
| probenet_agent_remote_config_info | version, collector | 1 while a pushed probe set runs |
| probenet_agent_remote_probes | (none) | pushed probes running |
| probenet_agent_remote_config_refused_probes | (none) | pushed probes the agent refused |
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Protocol, Self

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, StateSetMetricFamily
from prometheus_client.registry import Collector

from probenet.addresses import format_host, split_listen
from probenet.httpserve import serve_app
from probenet.lifecycle import EnterOnce

from .errors import LifecycleError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

STREAM_STATES = ("connecting", "connected", "backoff", "closed")


class ProbeCounters:
    """Counters of probe runs, incremented by the scheduler."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register the counters in `registry`."""
        self.runs = Counter("probenet_agent_probe_runs", "Probe runs, by kind and result.",
                            ["kind", "result"], registry=registry)
        self.failures = Counter("probenet_agent_probe_failures",
                                "Failed probe runs, by kind, failed phase and reason.",
                                ["kind", "phase", "reason"], registry=registry)
        self.skipped = Counter("probenet_agent_probe_runs_skipped",
                               "Runs skipped because the probe's previous run was still going.",
                               ["kind"], registry=registry)
        self._success: dict[str, Callable[[], None]] = {}
        self._failure: dict[str, Callable[[], None]] = {}

    def count(self, kind: str, success: bool, phase: str = "", reason: str = "") -> None:
        """Count one run (cheap on the hot path: label children are cached)."""
        cache = self._success if success else self._failure
        inc = cache.get(kind)
        if inc is None:
            inc = self.runs.labels(kind, "success" if success else "failure").inc
            cache[kind] = inc
        inc()
        if not success:
            self.failures.labels(kind, phase, reason).inc()


class TraceCounters:
    """Counters of path traces (agent/tracing.py); traces are never probe runs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register the counters in `registry`."""
        self.taken = Counter("probenet_agent_traces",
                             "Path traces taken, by trigger (failure, baseline) and result "
                             "(reached, not_reached, error).",
                             ["trigger", "result"], registry=registry)
        self.skipped = Counter("probenet_agent_traces_skipped",
                               "Path traces not taken, by reason (min_gap, running, "
                               "max_concurrent).", ["reason"], registry=registry)


class StreamView(Protocol):
    """What the scrape-time collector reads from a stream client."""

    @property
    def address(self) -> str:
        """The collector's address."""
        ...

    @property
    def state(self) -> str:
        """One of STREAM_STATES."""
        ...

    @property
    def buffered(self) -> int:
        """Results not yet acknowledged."""
        ...

    @property
    def capacity(self) -> int:
        """The buffer's bound."""
        ...

    @property
    def dropped(self) -> int:
        """Results dropped on overflow."""
        ...

    @property
    def reconnects(self) -> int:
        """Streams opened."""
        ...

    @property
    def results_sent(self) -> int:
        """Results written to streams."""
        ...


class AgentStateCollector(Collector):
    """Reads buffer, stream and probe-count values at scrape time."""

    def __init__(self, streams: Callable[[], Sequence[StreamView]],
                 probe_count: Callable[[], int]) -> None:
        """`streams` and `probe_count` are called on every scrape (they follow reloads)."""
        self._streams = streams
        self._probe_count = probe_count

    def collect(self) -> Iterator[Metric]:
        """Yield the current values."""
        yield GaugeMetricFamily("probenet_agent_probes", "Probes configured.",
                                value=self._probe_count())
        depth = GaugeMetricFamily("probenet_agent_buffer_results",
                                  "Results buffered, not yet acknowledged by the collector.",
                                  labels=["collector"])
        capacity = GaugeMetricFamily("probenet_agent_buffer_capacity_results",
                                     "The bound of the result buffer.", labels=["collector"])
        dropped = CounterMetricFamily("probenet_agent_results_dropped",
                                      "Results dropped because the buffer was full.",
                                      labels=["collector"])
        connected = GaugeMetricFamily("probenet_agent_collector_connected",
                                      "1 while the stream to the collector is established.",
                                      labels=["collector"])
        state = StateSetMetricFamily("probenet_agent_collector_state",
                                     "State of the stream to the collector.",
                                     labels=["collector"])
        reconnects = CounterMetricFamily("probenet_agent_collector_reconnects",
                                         "Streams opened to the collector.",
                                         labels=["collector"])
        sent = CounterMetricFamily("probenet_agent_results_sent",
                                   "Results written to the stream (resends included).",
                                   labels=["collector"])
        for stream in self._streams():
            labels = [stream.address]
            depth.add_metric(labels, stream.buffered)
            capacity.add_metric(labels, stream.capacity)
            dropped.add_metric(labels, stream.dropped)
            connected.add_metric(labels, 1.0 if stream.state == "connected" else 0.0)
            state.add_metric(labels, {s: s == stream.state for s in STREAM_STATES})
            reconnects.add_metric(labels, stream.reconnects)
            sent.add_metric(labels, stream.results_sent)
        yield from (depth, capacity, dropped, connected, state, reconnects, sent)


class RemoteConfigView(Protocol):
    """What `RemoteConfigCollector` reads from the agent (agent/main.py)."""

    def remote_summary(self) -> tuple[str, str, int, int]:
        """(version, collector id, probes running, probes refused); version "" when none."""
        ...

    def next_runs(self) -> dict[str, float]:
        """Each probe's next firing, unix seconds."""
        ...


class RemoteConfigCollector(Collector):
    """The pushed probe set the agent runs, and every probe's next firing."""

    def __init__(self, agent: RemoteConfigView) -> None:
        """Read `agent` on every scrape."""
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        """Yield the current values."""
        version, collector, running, refused = self._agent.remote_summary()
        info = GaugeMetricFamily("probenet_agent_remote_config_info",
                                 "1 for the pushed probe set the agent runs (none: no series).",
                                 labels=["version", "collector"])
        if version:
            info.add_metric([version, collector], 1.0)
        yield info
        yield GaugeMetricFamily("probenet_agent_remote_probes",
                                "Probes of the pushed set the agent runs.", value=running)
        yield GaugeMetricFamily("probenet_agent_remote_config_refused_probes",
                                "Probes of the pushed set the agent refused (see its log and "
                                "the collector's status).", value=refused)
        next_run = GaugeMetricFamily("probenet_agent_probe_next_run_timestamp_seconds",
                                     "When the probe fires next (unix seconds); unchanged "
                                     "by a reload that keeps the probe.", labels=["probe"])
        for name, when in self._agent.next_runs().items():
            next_run.add_metric([name], when)
        yield next_run


class StateView(Protocol):
    """What `StateFileCollector` reads from the agent's durable spool (agent/state.py)."""

    @property
    def held(self) -> tuple[int, int]:
        """(results, bytes) in the state file."""
        ...

    @property
    def commits(self) -> int:
        """Transactions committed (or attempted)."""
        ...

    @property
    def write_failures(self) -> int:
        """Commits that failed (the results stayed in memory)."""
        ...


class StateFileCollector(Collector):
    """The agent's state file: results and bytes held, commits, failed writes."""

    def __init__(self, state: StateView) -> None:
        """Read `state` on every scrape."""
        self._state = state

    def collect(self) -> Iterator[Metric]:
        """Yield the current values."""
        results, size = self._state.held
        yield GaugeMetricFamily("probenet_agent_state_results",
                                "Results in the state file, not acknowledged by every collector.",
                                value=results)
        yield GaugeMetricFamily("probenet_agent_state_bytes",
                                "Bytes of results in the state file.", value=size)
        yield CounterMetricFamily("probenet_agent_state_commits",
                                  "Transactions committed to the state file.",
                                  value=self._state.commits)
        yield CounterMetricFamily("probenet_agent_state_write_failures",
                                  "Commits to the state file that failed (disk full, I/O error).",
                                  value=self._state.write_failures)


class MetricsServer:
    """Serves `registry` on `http://listen/metrics` (async context manager; port 0 allowed)."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        """`listen` is `host:port`."""
        self.listen = listen
        self.registry = registry
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._lifecycle = EnterOnce("MetricsServer", LifecycleError)

    @property
    def url(self) -> str:
        """The metrics URL (with the bound port)."""
        host, _ = split_listen(self.listen)
        return f"http://{format_host(host)}:{self.port}/metrics"

    async def _metrics(self, request: web.Request) -> web.Response:
        del request
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def __aenter__(self) -> Self:
        """Bind and serve."""
        self._lifecycle.enter()
        host, port = split_listen(self.listen)
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        site = await serve_app(app, host, port)
        self.port = site.port
        self._runner = site.runner
        log.info("metrics listening", extra={"url": self.url})
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop serving (idempotent)."""
        if not self._lifecycle.leave():
            return
        runner, self._runner = self._runner, None
        if runner is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(2):
                    await runner.cleanup()
