"""A fleet of agents on the real probenet.v1 protocol, for the collector benchmarks.

`load_process` runs a slice of a fleet (`FleetShape`): each agent on its own gRPC channel
and TCP connection, saying Hello, then sending each of its probes once per interval in
small batches with a window of batches in flight (as an agent's stream does), timing every
Ack; `Fleet` starts such processes and collects what they saw. The results are what an
agent sends for an https target (`https_result`): timing phases, HTTP and TLS facts.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import grpc
from procs import DEADLINE_S, expect, percentile, pin, raise_fd_limit

from probenet.v1 import probenet_pb2 as pb

METHOD = "/probenet.v1.Ingest/Stream"


HTTP_PHASES = (("resolve", 0.0004), ("connect", 0.002), ("tls", 0.004),
               ("processing", 0.008), ("transfer", 0.0005))
HTTP_FACTS: dict[str, Any] = {
    "phases": [pb.PhaseDuration(name=name, seconds=seconds) for name, seconds in HTTP_PHASES],
    "http": pb.HttpDetails(http_version="HTTP/2", redirects=0, content_length=5120,
                           tls=pb.TlsFacts(earliest_cert_expiry=1_800_000_000,
                                           version="TLS 1.3", cipher="TLS_AES_128_GCM_SHA256")),
}
"""What an agent's https result carries: every timing phase and the HTTP/TLS facts."""

FAILING_EVERY = 100  # 1 % of the probes fail (unconfirmed: they change no verdict)


def https_result(probe: int, *, interval_ms: int, seq: int = 0,
                 timestamp_ms: int = 0) -> pb.ProbeResult:
    """Probe number `probe`'s result, as an agent sends it for an https target.

    Every hundredth probe fails to connect (a first, unconfirmed failure, as an agent
    sends before its re-probe): no HTTP details, the phase and reason instead.
    """
    failing = probe % FAILING_EVERY == FAILING_EVERY - 1
    common: dict[str, Any] = {
        "seq": seq, "probe": f"probe-{probe:05d}", "target": f"https://t{probe}.example/",
        "kind": "http", "service": f"svc-{probe % 50}", "interval_ms": interval_ms,
        "timestamp_ms": timestamp_ms or int(time.time() * 1000)}
    if failing:
        return pb.ProbeResult(**common, success=False, confirmed=False,
                              failed_phase=pb.PHASE_CONNECT, reason="connect_timeout",
                              duration_seconds=5.0,
                              phases=[pb.PhaseDuration(name="resolve", seconds=0.0004)])
    return pb.ProbeResult(**common, success=True, duration_seconds=0.0149, status_code=200,
                          **HTTP_FACTS)


@dataclass(frozen=True)
class FleetShape:
    """A fleet: `agents` agents over `regions` regions, each with `probes` probes.

    Every agent runs the same probes (each target is seen from every region), once per
    `interval_s`, sending what is due every `tick_s` as one batch (cut at `max_batch`),
    with at most `window` batches waiting for their Ack, as an agent's stream does.
    """

    agents: int
    probes: int
    regions: int
    interval_s: float = 10.0
    tick_s: float = 1.0
    window: int = 4
    max_batch: int = 500
    prefix: str = "bench"

    @property
    def pairs(self) -> int:
        """(probe, agent) pairs: series of every per-agent family."""
        return self.agents * self.probes

    @property
    def results_per_s(self) -> float:
        """The offered rate once every agent runs its schedule."""
        return self.pairs / self.interval_s

    def agent_id(self, index: int) -> str:
        """Agent `index`'s id (regions round-robin, so each region gets its share)."""
        return f"{self.prefix}-{self.region(index)}-{index // self.regions:03d}"

    def region(self, index: int) -> str:
        """Agent `index`'s region."""
        return f"region-{index % self.regions:02d}"


@dataclass
class LoadFigures:
    """What one load process saw: an entry per acknowledged batch, and the failures."""

    ack_at: array[float] = field(default_factory=lambda: array("d"))
    latency_s: array[float] = field(default_factory=lambda: array("d"))
    results: array[int] = field(default_factory=lambda: array("l"))
    sent_results: int = 0
    connected: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain lists, for the pipe."""
        return {"ack_at": self.ack_at.tolist(), "latency_s": self.latency_s.tolist(),
                "results": self.results.tolist(), "sent_results": self.sent_results,
                "connected": self.connected, "errors": self.errors[:20]}


class _Schedule:
    """When paced sending starts, and in which mode (shared by the agents of one process).

    `flat`: send as fast as the window allows (the collector's capacity), else on the
    schedule. Each change of mode moves `base` and bumps `generation`, so that every agent
    starts its schedule afresh from there.
    """

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.base = 0.0
        self.flat = False
        self.generation = 0
        self.stop = asyncio.Event()

    def change(self, *, flat: bool) -> None:
        """Switch mode; the schedule restarts 0.1 s from now."""
        self.flat = flat
        self.base = time.monotonic() + 0.1
        self.generation += 1


class _Agent:
    """One agent stream: Hello, batches with a window in flight, Acks timed per batch."""

    def __init__(self, address: str, shape: FleetShape, index: int,
                 figures: LoadFigures) -> None:
        self.shape = shape
        self.index = index
        self.figures = figures
        # A local subchannel pool: one TCP connection per agent, as real agents have
        # (by default grpc shares one connection among channels with the same target).
        self.channel = grpc.aio.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)])
        self.call: Any = None
        self.epoch = time.time_ns() + index
        self.seq = 0
        self.window = asyncio.Semaphore(shape.window)
        self.in_flight: deque[tuple[int, float, int]] = deque()  # (last seq, sent at, results)
        self.drained = asyncio.Event()  # set while nothing is in flight
        self.drained.set()
        self.ended = ""  # why the collector ended the stream, once it did
        self.slices = self._slices()

    def _slices(self) -> list[list[pb.AgentMessage]]:
        """Per tick of the interval, the batches of the probes due then (seqs patched later)."""
        shape = self.shape
        ticks = max(1, round(shape.interval_s / shape.tick_s))
        interval_ms = int(shape.interval_s * 1000)
        slices = []
        for tick in range(ticks):
            due = range(tick * shape.probes // ticks, (tick + 1) * shape.probes // ticks)
            batches = [pb.AgentMessage(batch=pb.ResultBatch(results=[
                https_result(probe, interval_ms=interval_ms)
                for probe in due[first:first + shape.max_batch]]))
                for first in range(0, len(due), shape.max_batch)]
            slices.append(batches)
        return slices

    async def connect(self) -> None:
        """Open the stream, say Hello, wait for Welcome."""
        shape = self.shape
        self.call = self.channel.stream_stream(METHOD)()
        await self.call.write(pb.AgentMessage(hello=pb.Hello(
            agent_id=shape.agent_id(self.index), region=shape.region(self.index),
            epoch=self.epoch, interval_ms=int(shape.interval_s * 1000),
            probe_count=shape.probes, version="bench")).SerializeToString())
        async with asyncio.timeout(DEADLINE_S):
            reply = await self.call.read()
        if reply is grpc.aio.EOF:
            raise RuntimeError(f"agent {self.index}: stream ended before Welcome "
                               f"({await self.call.code()}: {await self.call.details()})")

    async def read_acks(self) -> None:
        """Match each cumulative Ack to the batches it covers; free their window slots.

        The stream ending (or failing) here is the collector's doing: it is recorded, and
        the sender fails at its next batch instead of waiting for Acks that cannot come.
        """
        try:
            await self._read_acks()
        except grpc.aio.AioRpcError as exc:
            self.ended = f"{exc.code().name}: {exc.details()}"
        else:
            self.ended = f"{await self.call.code()}: {await self.call.details()}"
        self.figures.errors.append(f"agent {self.index}: stream ended: {self.ended}")
        for _ in self.in_flight:
            self.window.release()
        self.drained.set()

    async def _read_acks(self) -> None:
        figures, in_flight = self.figures, self.in_flight
        while True:
            reply = await self.call.read()
            if reply is grpc.aio.EOF:
                return
            acked = pb.CollectorMessage.FromString(reply).ack.acked_seq
            now = time.monotonic()
            while in_flight and in_flight[0][0] <= acked:
                _, sent_at, count = in_flight.popleft()
                figures.ack_at.append(now)
                figures.latency_s.append(now - sent_at)
                figures.results.append(count)
                self.window.release()
            if not in_flight:
                self.drained.set()

    async def send(self, message: pb.AgentMessage) -> None:
        """Number the batch's results, stamp them now, write it once the window allows."""
        await self.window.acquire()
        if self.ended:
            raise RuntimeError(f"the stream ended ({self.ended})")
        now_ms = int(time.time() * 1000)
        results = message.batch.results
        for result in results:
            self.seq += 1
            result.seq = self.seq
            result.timestamp_ms = now_ms
        data = message.SerializeToString()
        self.in_flight.append((self.seq, time.monotonic(), len(results)))
        self.drained.clear()
        self.figures.sent_results += len(results)
        await self.call.write(data)

    async def fill(self) -> None:
        """Every probe once, as fast as the window allows (a collector filled at once)."""
        for batches in self.slices:
            for message in batches:
                await self.send(message)

    async def settle(self) -> None:
        """Wait until every batch sent so far is acknowledged."""
        async with asyncio.timeout(DEADLINE_S * 4):
            await self.drained.wait()

    async def paced(self, schedule: _Schedule) -> None:
        """Each tick, the probes due then; late ticks are sent at once (an agent's spool).

        In flat mode, tick after tick without waiting (the window still bounds it).
        """
        shape, ticks = self.shape, len(self.slices)
        await schedule.go.wait()
        phase = shape.tick_s * self.index / shape.agents  # agents spread over a tick
        generation, start, tick = -1, 0.0, 0
        while not schedule.stop.is_set():
            if generation != schedule.generation:
                generation = schedule.generation
                start = schedule.base + phase - tick * shape.tick_s
            delay = start + tick * shape.tick_s - time.monotonic()
            if delay > 0 and not schedule.flat:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await schedule.stop.wait()
                continue  # the mode may have changed meanwhile
            for message in self.slices[tick % ticks]:
                await self.send(message)
            tick += 1

    async def close(self) -> None:
        """End the stream and the channel."""
        if self.call is not None:
            with contextlib.suppress(Exception):
                await self.call.done_writing()
            self.call.cancel()
        await self.channel.close(grace=None)


async def _run_agent(agent: _Agent, schedule: _Schedule, *, fill: bool,
                     ready: asyncio.Queue[str | None]) -> None:
    """One agent, from Hello to the end of the run; failures land in the figures.

    Puts exactly one entry on `ready`: None once connected (and filled), else the error.
    """
    reader: asyncio.Task[None] | None = None
    reported = False
    try:
        await agent.connect()
        agent.figures.connected += 1
        reader = asyncio.create_task(agent.read_acks(), name=f"acks-{agent.index}")
        if fill:
            await agent.fill()
            await agent.settle()
        reported = True
        await ready.put(None)
        await agent.paced(schedule)
        await agent.settle()
    except Exception as exc:
        cause = (f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError)
                 else f"{type(exc).__name__}: {exc}")
        error = f"agent {agent.index}: {cause}"
        if reported:
            agent.figures.errors.append(error)
        else:
            await ready.put(error)
    finally:
        if reader is not None:
            reader.cancel()
        await agent.close()


@dataclass(frozen=True)
class LoadPart:
    """Which agents of a fleet one load process runs, and how."""

    first: int
    count: int
    fill: bool
    max_seconds: float


def load_process(conn: Any, cpu: int, address: str, shape: FleetShape, part: LoadPart) -> None:
    """Agents `part.first` .. of `shape`, until told "stop" (or `part.max_seconds`).

    Pipe: sends {"ready": connected, "errors": [...]} once every agent said Hello (and, with
    `fill`, had every probe acknowledged once), then runs the schedule; "flat" and "paced"
    switch the mode (each answered {"mode": ...}); "stop" ends the run, answered with
    LoadFigures.as_dict().
    """
    pin(cpu)
    raise_fd_limit()

    async def main() -> LoadFigures:
        figures = LoadFigures()
        schedule = _Schedule()
        ready: asyncio.Queue[str | None] = asyncio.Queue()
        agents = [_Agent(address, shape, i, figures)
                  for i in range(part.first, part.first + part.count)]
        tasks = [asyncio.create_task(_run_agent(agent, schedule, fill=part.fill, ready=ready),
                                     name=f"agent-{agent.index}") for agent in agents]
        errors = [error for _ in agents if (error := await ready.get()) is not None]
        conn.send({"ready": figures.connected, "errors": errors[:20]})
        schedule.change(flat=False)
        schedule.go.set()
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + part.max_seconds
        while await loop.run_in_executor(None, conn.poll, max(0.0, deadline - time.monotonic())):
            command = conn.recv()
            if command == "stop":
                break
            schedule.change(flat=command == "flat")
            conn.send({"mode": command})
        schedule.stop.set()
        async with asyncio.timeout(DEADLINE_S * 5):
            await asyncio.gather(*tasks, return_exceptions=True)
        return figures

    conn.send(asyncio.run(main()).as_dict())


@dataclass
class Fleet:
    """Load processes driving one fleet; `start` returns once every agent is connected."""

    ctx: Any
    cpu: int
    address: str
    shape: FleetShape
    processes: int
    fill: bool = False
    max_seconds: float = 900.0
    _running: list[tuple[Any, Any]] = field(default_factory=list)

    def start(self) -> dict[str, Any]:
        """Start the processes; {"connected": n, "errors": [...]} once all are ready."""
        per = math.ceil(self.shape.agents / self.processes)
        for first in range(0, self.shape.agents, per):
            parent, child = self.ctx.Pipe()
            proc = self.ctx.Process(
                target=load_process, daemon=True,
                args=(child, self.cpu, self.address, self.shape,
                      LoadPart(first, min(per, self.shape.agents - first), self.fill,
                               self.max_seconds)))
            proc.start()
            self._running.append((proc, parent))
        connected, errors = 0, []
        for proc, parent in self._running:
            ready = expect(parent, "load process ready", DEADLINE_S * 8, proc)
            connected += ready["ready"]
            errors += ready["errors"]
        return {"connected": connected, "errors": errors}

    def mode(self, name: str) -> None:
        """"flat" (as fast as the windows allow) or "paced" (the fleet's schedule)."""
        for _, parent in self._running:
            parent.send(name)
        for proc, parent in self._running:
            expect(parent, f"load mode {name}", DEADLINE_S, proc)

    def stop(self) -> dict[str, Any]:
        """Stop every process; their figures merged."""
        for _, parent in self._running:
            parent.send("stop")
        merged: dict[str, Any] = {"ack_at": [], "latency_s": [], "results": [],
                                  "sent_results": 0, "connected": 0, "errors": []}
        for proc, parent in self._running:
            figures = expect(parent, "load figures", DEADLINE_S * 6, proc)
            for key in ("ack_at", "latency_s", "results", "errors"):
                merged[key] += figures[key]
            merged["sent_results"] += figures["sent_results"]
            merged["connected"] += figures["connected"]
            proc.join(DEADLINE_S)
        self._running.clear()
        return merged


def acks_between(figures: dict[str, Any], start: float, end: float) -> dict[str, float]:
    """Results acknowledged in [start, end) and the Ack latency of those batches."""
    latencies = [lat for at, lat in zip(figures["ack_at"], figures["latency_s"], strict=True)
                 if start <= at < end]
    results = sum(n for at, n in zip(figures["ack_at"], figures["results"], strict=True)
                  if start <= at < end)
    return {"results": float(results), "results_per_s": results / (end - start),
            "batches": float(len(latencies)), "ack_p50_s": percentile(latencies, 0.5),
            "ack_p99_s": percentile(latencies, 0.99),
            "ack_max_s": max(latencies, default=0.0)}


def ack_latency_split(figures: dict[str, Any], start: float, end: float,
                      busy: list[tuple[float, float]]) -> dict[str, dict[str, float]]:
    """Ack latency of the batches acknowledged in [start, end), split by when each was sent:
    while one of the `busy` (start, end) intervals ran (e.g. a scrape), or outside them."""
    parts: dict[str, list[float]] = {"during": [], "outside": []}
    for at, latency in zip(figures["ack_at"], figures["latency_s"], strict=True):
        if start <= at < end:
            sent = at - latency
            inside = any(b_start <= sent < b_end for b_start, b_end in busy)
            parts["during" if inside else "outside"].append(latency)
    return {name: {"batches": float(len(values)), "ack_p50_s": percentile(values, 0.5),
                   "ack_p99_s": percentile(values, 0.99), "ack_max_s": max(values, default=0.0)}
            for name, values in parts.items()}
