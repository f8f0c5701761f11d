"""The one small interface every probe kind implements, and the one result type it returns.

A probe is built once from its config (`ProbeSpec` in agent.config) and run many times.
`run` returns one `ProbeOutcome` per probed address (one, unless `all_addresses` is set).
A probe reports where it is through its `PhaseTracker`, so that when the scheduler's hard
deadline strikes, the result says `timeout` *and* the phase it was in (and, for a `flow`,
the step it was in).

Failure phases (the wire's `failed_phase`): dns, connect, tls, request, response,
validation, timeout. Timing phases (the `phases` durations, blackbox_exporter's `phase`
label): resolve, connect, tls, processing, transfer (http); resolve, setup, rtt (icmp).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

FAILURE_PHASES = ("dns", "connect", "tls", "request", "response", "validation", "timeout")


@dataclass(slots=True)
class ProbeOutcome:
    """What one probe run found out about one address."""

    success: bool
    duration_seconds: float
    failed_phase: str = ""  # one of FAILURE_PHASES, "" on success
    timeout_phase: str = ""  # with failed_phase == "timeout": the phase in progress
    reason: str = ""  # machine-readable: connect_refused, dns_nxdomain, http_status, ...
    error: str = ""  # human-readable, bounded
    phases: dict[str, float] = field(default_factory=dict)  # timing phase -> seconds
    status_code: int = 0
    address: str = ""
    details: Any = None  # a probenet.v1 *Details message for kind-specific metrics, or None
    step: str = ""  # a failed `flow`: the name of the failing step


class ProbeFailure(Exception):  # noqa: N818 - it is an outcome, not an error of ours
    """Raised inside a probe to end it as a failure in a given phase, with a reason."""

    def __init__(self, phase: str, reason: str, error: str = "") -> None:
        """`phase` is one of FAILURE_PHASES; `reason` is machine-readable."""
        super().__init__(error or reason)
        self.phase = phase
        self.reason = reason
        self.error = error or reason


class PhaseTracker:
    """Which phase a probe run is in, and how long each timing phase took."""

    __slots__ = ("_clock", "_started", "_timing", "current", "durations", "start", "step")

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        """Start the run now."""
        self._clock = clock
        self.start: float = clock()
        self.current = "dns"
        # A `flow` names the step it is in, so that an outcome made from the tracker alone
        # (the scheduler's deadline, an unexpected error) still names it.
        self.step = ""
        self.durations: dict[str, float] = {}
        self._timing = ""
        self._started = self.start

    def enter(self, phase: str, timing: str | None = None) -> None:
        """Enter failure phase `phase`; time it under `timing` (default: none)."""
        now = self._clock()
        if self._timing:
            self.durations[self._timing] = self.durations.get(self._timing, 0.0) + (
                now - self._started)
        self.current = phase
        self._timing = timing or ""
        self._started = now

    def elapsed(self) -> float:
        """Seconds since the run started (no phase is closed)."""
        return self._clock() - self.start

    def finish(self) -> float:
        """Close the running timing phase; return the total elapsed seconds."""
        self.enter(self.current)
        return self._clock() - self.start


class Probe(Protocol):
    """One configured probe; `run` may be called concurrently with itself never."""

    async def run(self, tracker: PhaseTracker) -> Sequence[ProbeOutcome]:
        """Probe once. Raise ProbeFailure (or return failed outcomes) to report a failure."""
        ...
