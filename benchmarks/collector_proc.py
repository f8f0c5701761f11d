"""The collector under test, in its own process, driven through a pipe.

`collector_process` runs the real `CollectorService` (its config as text through
`parse_config`, so new config sections are picked up as they land) and answers commands:
counters read cheaply, the longest event-loop lag seen by a watch task of its own, the
collector's own `probenet_event_loop_lag_seconds` histogram, and the page's render timed
against `prometheus_client.generate_latest` over the same series. `Collector` is the
parent's handle on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from http_watch import count_series
from procs import (
    DEADLINE_S,
    PeerError,
    core_times,
    cpu_seconds,
    expect,
    pin,
    raise_fd_limit,
    rss_bytes,
)

LAG_FAMILY = "probenet_event_loop_lag_seconds"  # the collector's own loop-lag histogram


def collector_config(folder: str, extra_config: str = "") -> str:
    """A collector config on loopback ports chosen by the kernel, journal in `folder`."""
    return ("listen: {grpc: '127.0.0.1:0', http: '127.0.0.1:0'}\n"
            f"journal: {{path: '{folder}/journal.db'}}\ncollector_id: bench\n{extra_config}")


def family_samples(registry: Any, name: str) -> list[Any]:
    """Samples of the one family registered under `name`, or [] when none is.

    `registry.get_sample_value` would collect every family, i.e. render every pair: far
    too dear to read a counter during a benchmark. The name map is private, but it is the
    only way to reach one collector of a registry.
    """
    collector = registry._names_to_collectors.get(name)  # noqa: SLF001 - see docstring
    if collector is None:
        return []
    return [sample for family in collector.collect() for sample in family.samples]


def _sample(registry: Any, name: str, labels: dict[str, str] | None = None) -> float:
    for sample in family_samples(registry, name):
        if sample.name == name and (labels is None or all(
                sample.labels.get(k) == v for k, v in labels.items())):
            return float(sample.value)
    return 0.0


def lag_buckets(registry: Any) -> dict[str, float] | None:
    """The collector's loop-lag histogram as {le: cumulative count}, None when absent."""
    samples = family_samples(registry, f"{LAG_FAMILY}_bucket")
    buckets = {s.labels["le"]: float(s.value) for s in samples
               if s.name == f"{LAG_FAMILY}_bucket" and s.labels.get("le")}
    return buckets or None


def highest_new_bucket(before: dict[str, float] | None,
                       after: dict[str, float] | None) -> str:
    """The upper bound of the highest bucket that gained observations (e.g. "<= 0.05")."""
    if before is None or after is None:
        return "n/a"
    bounds = sorted(after, key=float)
    gained = [(b, after[b] - before.get(b, 0.0)) for b in bounds]
    previous, highest = 0.0, ""
    for bound, cumulative in gained:
        if cumulative > previous:  # this bucket itself gained something
            highest = bound
        previous = cumulative
    return f"<= {highest}" if highest else "none"


class _LagWatch:
    """The longest event-loop lag: a task asks for 10 ms of sleep and notes the overshoot."""

    def __init__(self) -> None:
        self.longest_s = 0.0

    async def run(self, period_s: float = 0.01) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(period_s)
            self.longest_s = max(self.longest_s, loop.time() - before - period_s)

    def take(self) -> float:
        longest, self.longest_s = self.longest_s, 0.0
        return longest


def _time_renders(service: Any, budget_s: float) -> dict[str, Any]:
    """The page's own render and generate_latest over the same series, alternated.

    Best of up to three each, within `budget_s` (at least one each). Without `service.page`
    (older code) /metrics is generate_latest over the service's registry itself: the page
    is then reported as such.
    """
    from prometheus_client import generate_latest  # noqa: PLC0415 - child process only

    page = getattr(service, "page", None)
    renders: dict[str, Any] = {}
    if page is not None:
        renders["page"] = page.render
        reference = page.reference_registry()
        renders["generate_latest"] = lambda: generate_latest(reference)
    else:
        renders["generate_latest"] = lambda: generate_latest(service.registry)
    best: dict[str, float] = {}
    series: dict[str, int] = {}
    sizes: dict[str, int] = {}
    started = time.perf_counter()
    rounds = 0
    while rounds < 3 and (rounds == 0 or time.perf_counter() - started < budget_s):
        for name, render in renders.items():
            begin = time.perf_counter()
            body = render()
            took = time.perf_counter() - begin
            best[name] = min(best.get(name, math.inf), took)
            series[name], sizes[name] = count_series(body), len(body)
            del body
        rounds += 1
    return {"page_api": page is not None, "rounds": rounds, "best_s": best,
            "series": series, "bytes": sizes}


def collector_process(conn: Any, cpu: int, folder: str, extra_config: str = "",
                      kind_details: bool = True) -> None:
    """The real CollectorService, driven by commands on `conn`.

    Sends {"grpc", "http"} once listening (or {"error"} when the config is refused), then
    answers: "stats" (counters, open streams, pairs, the lag watch's longest lag since the
    last "stats", the loop-lag histogram's buckets, CPU seconds and RSS of the process),
    ("render", budget_s) (see `_time_renders`), "stop".
    """
    pin(cpu)
    raise_fd_limit()
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from probenet.collector.config import parse_config  # noqa: PLC0415
    from probenet.collector.server import CollectorService  # noqa: PLC0415
    from probenet.configfile import ConfigError  # noqa: PLC0415

    try:
        config = parse_config(collector_config(folder, extra_config))
    except ConfigError as exc:
        conn.send({"error": "; ".join(str(issue) for issue in exc.issues)})
        return

    async def main() -> None:
        registry = CollectorRegistry()
        watch = _LagWatch()
        async with CollectorService(config, registry=registry,
                                    kind_details=kind_details) as service:
            watcher = asyncio.create_task(watch.run(), name="bench-lag-watch")
            conn.send({"grpc": service.grpc_address, "http": service.http.url})
            loop = asyncio.get_running_loop()
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command == "stop":
                    break
                if isinstance(command, tuple) and command[0] == "render":
                    conn.send(_time_renders(service, command[1]))
                    continue
                outcome = "probenet_ingest_results_total"
                conn.send({
                    "applied": _sample(registry, outcome, {"outcome": "applied"}),
                    "duplicate": _sample(registry, outcome, {"outcome": "duplicate"}),
                    "rejected": _sample(registry, outcome, {"outcome": "rejected"}),
                    "streams": _sample(registry, "probenet_agent_streams"),
                    "pairs": sum(1 for _ in service.classifier.samples()),
                    "longest_lag_s": watch.take(), "lag_buckets": lag_buckets(registry),
                    "cpu_s": cpu_seconds(os.getpid()), "rss_bytes": rss_bytes(os.getpid()),
                    "at": time.monotonic()})
            watcher.cancel()

    asyncio.run(main())
    conn.send("stopped")


@dataclass
class Collector:
    """A collector child process: `start`, then `grpc` and `http` are its addresses."""

    ctx: Any
    cpu: int
    folder: str
    extra_config: str = ""
    kind_details: bool = True
    proc: Any = None
    conn: Any = None
    grpc: str = ""
    http: str = ""
    refused: str = ""

    def start(self) -> bool:
        """Start and wait until listening; False (and `refused`) when the config is refused."""
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(
            target=collector_process, daemon=True,
            args=(child, self.cpu, self.folder, self.extra_config, self.kind_details))
        self.proc.start()
        try:
            ready = expect(self.conn, "collector addresses", DEADLINE_S * 2, self.proc)
        except PeerError as exc:
            self.refused = exc.error
            self.proc.join(DEADLINE_S)
            return False
        self.grpc, self.http = ready["grpc"], ready["http"]
        return True

    def stats(self, timeout_s: float = DEADLINE_S * 8) -> dict[str, Any]:
        """Counters, lag, CPU and RSS, read inside the collector; each core's busy time."""
        self.conn.send("stats")
        stats = dict(expect(self.conn, "collector stats", timeout_s, self.proc))
        stats["cores"] = {cpu: core_times(cpu) for cpu in range(os.cpu_count() or 1)}
        return stats

    def render(self, budget_s: float) -> dict[str, Any]:
        """Page render vs generate_latest, timed inside the collector."""
        self.conn.send(("render", budget_s))
        return dict(expect(self.conn, "render timings", budget_s * 4 + DEADLINE_S * 8,
                           self.proc))

    def wait_pairs(self, pairs: int, timeout_s: float) -> dict[str, Any]:
        """Poll stats until the classifier holds `pairs` pairs (or RuntimeError)."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            if stats["pairs"] >= pairs:
                return stats
            if time.monotonic() > deadline:
                raise RuntimeError(f"benchmark: {stats['pairs']} of {pairs} pairs after "
                                   f"{timeout_s:g} s")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the service (drain, close) and the process."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError, RuntimeError):
            self.conn.send("stop")
            expect(self.conn, "collector stopped", DEADLINE_S * 2)
        self.proc.join(DEADLINE_S)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc = None
