"""Processes of the benchmarks: pinning, /proc figures, pipes with deadlines.

Every part of a benchmark that stands for something outside the collector runs in its own
process (multiprocessing's spawn context), pinned to one core with `pin()`. Times passed
between processes are `time.monotonic()` (CLOCK_MONOTONIC: one clock for every process on
Linux), so the parent can cut every process's samples into the same windows.
"""

from __future__ import annotations

import math
import os
import resource
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
DEADLINE_S = 30.0  # every single network or pipe wait of a benchmark process


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid`."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def core_times(cpu: int) -> tuple[float, float]:
    """(busy, total) jiffies of core `cpu` since boot, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + values[4]  # idle + iowait
            return float(sum(values) - idle), float(sum(values))
    raise RuntimeError(f"benchmark: no cpu{cpu} line in /proc/stat")


def busy_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Share of the time a core was busy between two `core_times` reads."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def pin(cpu: int) -> None:
    """Run this process (and the threads it starts from now on) on `cpu` only."""
    os.sched_setaffinity(0, {cpu})


def raise_fd_limit() -> None:
    """Soft open-file limit up to the hard one: a thousand streams need as many sockets."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpus() -> tuple[int, int]:
    """(collector cpu, load cpu): the first and the last this process may use."""
    available = sorted(os.sched_getaffinity(0))
    return available[0], available[-1]


class PeerError(RuntimeError):
    """A benchmark process answered with {"error": ...}; `error` holds it."""

    def __init__(self, what: str, error: str) -> None:
        super().__init__(f"benchmark: {what}: {error}")
        self.error = error


def expect(conn: Any, what: str, timeout_s: float, proc: Any = None) -> Any:
    """The next message on a pipe, or RuntimeError naming what did not come in time.

    With `proc` (the process at the other end), a process that ended is reported at once;
    an answer {"error": ...} raises PeerError.
    """
    deadline = time.monotonic() + timeout_s
    while not conn.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
        if proc is not None and not proc.is_alive() and not conn.poll(0):
            raise RuntimeError(f"benchmark: the process that was to send {what} ended "
                               f"(exit code {proc.exitcode})")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"benchmark: no {what} within {timeout_s:g} s")
    message = conn.recv()
    if isinstance(message, dict) and "error" in message:
        raise PeerError(what, message["error"])
    return message


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank), 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]
