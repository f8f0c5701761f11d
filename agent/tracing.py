"""When the agent takes path traces, and how they reach the collector.

A probe with `trace: {on_failure: true}` gets one trace when one of its failures is
confirmed (a result with confirmed=true), at most one per `min_gap` per probe; a probe
with `trace: {every: 10m}` gets a baseline trace on that period (first at a random phase
within it). Traces run as background tasks of the Tracer's TaskGroup, at most
`max_concurrent` (4) at once and one per probe: a trace that would exceed either bound is
skipped and counted, never queued.

A trace is published through the same sink as probe results (`ResultFanout.publish`) as a
`pb.ProbeResult` of kind "trace": it gets its own sequence number and is spooled, resent
and acknowledged like results. probe/target/service are the traced probe's, `address` the
address traced, `success` whether the destination answered, `error` why no trace could be
taken, `details.trace` the PathTrace. The scheduler's run counters never see it.

What is traced: the failed result's `address` when it has one (the address that failed),
else the probe's host: http's URL host, tcp/tls/grpc's host, icmp's target, dns's server
(the system resolver's first nameserver when the probe sets none).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from probenet.addresses import split_host_port
from probenet.lifecycle import EnterOnce
from probenet.v1 import probenet_pb2 as pb

from .errors import LifecycleError
from .trace import TraceResult, trace

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from .config import ProbeSpec
    from .metrics import TraceCounters

log = logging.getLogger(__name__)

TRACE_KIND = "trace"
MAX_CONCURRENT_TRACES = 4


def system_nameserver(path: str = "/etc/resolv.conf") -> str:
    """The first nameserver of resolv.conf ("" when none can be read)."""
    try:
        with open(path, encoding="utf-8") as file:  # noqa: PTH123 - tiny file
            for line in file:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return parts[1]
    except OSError:
        return ""
    return ""


def trace_host(spec: ProbeSpec) -> str:
    """The host a probe's traces go to ("" when it has none)."""
    kind, target = spec.kind, spec.target
    if kind == "http":
        return urlsplit(target).hostname or ""
    if kind in {"tcp", "tls", "grpc"}:
        return split_host_port(target)[0]
    if kind == "icmp":
        return target
    if kind == "dns":
        server = spec.dns.server if spec.dns is not None else None
        return split_host_port(server, default_port=53)[0] if server else system_nameserver()
    return ""


def trace_result(spec: ProbeSpec, result: TraceResult, *, trigger: str,
                 timestamp_ms: int) -> pb.ProbeResult:
    """The wire message of one trace (seq 0: the fanout numbers it)."""
    message = pb.ProbeResult(
        probe=spec.name, target=spec.target, kind=TRACE_KIND, service=spec.service,
        success=result.reached, error=result.error, address=result.address,
        timestamp_ms=timestamp_ms, duration_seconds=result.duration_seconds)
    message.trace.CopyFrom(result.to_proto(trigger))
    return message


class Tracer:
    """Takes the agent's path traces; an async context manager (enter once)."""

    def __init__(self, specs: Callable[[], Mapping[str, ProbeSpec]], *,
                 sink: Callable[[pb.ProbeResult], None], source_address: str | None = None,
                 max_concurrent: int = MAX_CONCURRENT_TRACES,
                 counters: TraceCounters | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 run_trace: Callable[..., Awaitable[TraceResult]] = trace,
                 rng: random.Random | None = None) -> None:
        """`specs()` gives the probes running now, by name; `sink` publishes a trace."""
        self._specs = specs
        self.sink = sink
        self.source_address = source_address
        self.max_concurrent = max_concurrent
        self.counters = counters
        self._clock = clock
        self._wall_clock = wall_clock
        self._run_trace = run_trace
        self._rng = rng or random.Random()  # noqa: S311 - phases, not secrets
        self._last_failure_trace: dict[str, float] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._baselines: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lifecycle = EnterOnce("Tracer", LifecycleError)
        self.taken = 0

    async def __aenter__(self) -> Self:
        """Start the baseline timers."""
        self._lifecycle.enter()
        self._loop = asyncio.get_running_loop()
        tasks = asyncio.TaskGroup()
        await tasks.__aenter__()
        self._tasks = tasks
        self.sync()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop the timers and cancel traces in progress (idempotent)."""
        if not self._lifecycle.leave():
            return
        for _, handle in self._baselines.values():
            handle.cancel()
        self._baselines.clear()
        tasks, self._tasks = self._tasks, None
        if tasks is None:
            return
        for task in self._running.values():
            task.cancel()
        await tasks.__aexit__(None, None, None)

    @property
    def running(self) -> int:
        """Traces in progress."""
        return len(self._running)

    def sync(self) -> None:
        """Arm, re-arm or drop baseline timers after the probe set changed."""
        loop = self._loop
        if loop is None or self._tasks is None:
            return
        wanted: dict[str, float] = {}
        for name, spec in self._specs().items():
            options = spec.trace
            if options is not None and options.every is not None:
                wanted[name] = options.every
        for name in list(self._baselines):
            every, handle = self._baselines[name]
            if wanted.get(name) != every:
                handle.cancel()
                del self._baselines[name]
        for name, every in wanted.items():
            if name not in self._baselines:
                delay = every * self._rng.random()
                self._baselines[name] = (every, loop.call_later(delay, self._baseline, name))

    def _baseline(self, name: str) -> None:
        entry = self._baselines.get(name)
        if entry is None or self._loop is None:
            return
        every, _ = entry
        self._baselines[name] = (every, self._loop.call_later(every, self._baseline, name))
        spec = self._specs().get(name)
        if spec is not None:
            self._start(spec, "baseline", "")

    def observe(self, result: pb.ProbeResult) -> None:
        """See one published result: a confirmed failure may start a trace."""
        if result.kind == TRACE_KIND or result.success or not result.confirmed:
            return
        spec = self._specs().get(result.probe)
        if spec is None or spec.trace is None or not spec.trace.on_failure:
            return
        now = self._clock()
        last = self._last_failure_trace.get(spec.name)
        if last is not None and now - last < spec.trace.min_gap:
            self._skip("min_gap")
            return
        if self._start(spec, "failure", result.address):
            self._last_failure_trace[spec.name] = now

    def _skip(self, reason: str) -> None:
        if self.counters is not None:
            self.counters.skipped.labels(reason).inc()

    def _start(self, spec: ProbeSpec, trigger: str, address: str) -> bool:
        if self._tasks is None:
            return False
        if spec.name in self._running:
            self._skip("running")
            return False
        if len(self._running) >= self.max_concurrent:
            self._skip("max_concurrent")
            return False
        task = self._tasks.create_task(self._take(spec, trigger, address),
                                       name=f"trace:{spec.name}")
        self._running[spec.name] = task
        task.add_done_callback(functools.partial(self._finished, spec.name))
        return True

    def _finished(self, name: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(name, None)

    async def _take(self, spec: ProbeSpec, trigger: str, address: str) -> None:
        options = spec.trace
        assert options is not None
        host = address or trace_host(spec)
        started_ms = int(self._wall_clock() * 1000)
        kwargs: dict[str, Any] = {
            "method": options.method, "max_hops": options.max_hops,
            "probes_per_hop": options.probes_per_hop, "hop_timeout_s": options.hop_timeout,
            "total_timeout_s": max(options.hop_timeout * options.max_hops / 2, 5.0),
            "source_address": self.source_address}
        ip_family = getattr(spec.options, "ip_family", None)
        if ip_family is not None and not address:
            kwargs["family"] = ip_family
        try:
            if not host:
                result = TraceResult(target="", method=options.method,
                                     max_hops=options.max_hops,
                                     probes_per_hop=options.probes_per_hop,
                                     error="no host to trace to")
            else:
                result = await self._run_trace(host, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a trace never takes the agent down
            log.exception("path trace failed", extra={"probe": spec.name})
            result = TraceResult(target=host, method=options.method,
                                 max_hops=options.max_hops,
                                 probes_per_hop=options.probes_per_hop,
                                 error=f"trace failed: {exc}")
        self.taken += 1
        if self.counters is not None:
            outcome = "error" if result.error else (
                "reached" if result.reached else "not_reached")
            self.counters.taken.labels(trigger, outcome).inc()
        log.info("path trace taken", extra={
            "probe": spec.name, "trigger": trigger, "address": result.address,
            "reached": result.reached, "stop_reason": result.stop_reason,
            "hops": len(result.hops), "error": result.error})
        try:
            self.sink(trace_result(spec, result, trigger=trigger, timestamp_ms=started_ms))
        except Exception:
            log.exception("trace sink failed", extra={"probe": spec.name})
