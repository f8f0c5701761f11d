"""One probe attempt under a hard deadline, turned into outcomes whatever happens.

The scheduler runs every attempt through `run_attempt`; probes that fan out over several
addresses (`all_addresses`) run each address through `probe_each_address`, so that each
address gets its own outcome, timeout included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .base import FAILURE_PHASES, PhaseTracker, ProbeFailure, ProbeOutcome

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from .base import Probe

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 512

# The reason of a deadline struck in a given phase; the phase itself goes to timeout_phase.
TIMEOUT_REASONS = {
    "dns": "dns_timeout",
    "connect": "connect_timeout",
    "response": "response_timeout",
}

# Per-address deadlines end a little before the attempt's own, so that each address reports
# its own timeout before the whole attempt is cut off.
_FANOUT_DEADLINE_SHARE = 0.9


def bounded(text: str) -> str:
    """Error text cut to MAX_ERROR_CHARS (it travels to the collector and into logs)."""
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def _in_step(tracker: PhaseTracker, text: str) -> str:
    """`text`, prefixed with the step the tracker is in (a `flow`), if any."""
    return f"step {tracker.step!r}: {text}" if tracker.step else text


def timeout_outcome(tracker: PhaseTracker, timeout_s: float, address: str = "") -> ProbeOutcome:
    """The outcome of a deadline struck while `tracker` was in its current phase (and step)."""
    phase = tracker.current if tracker.current in FAILURE_PHASES else "request"
    duration = tracker.finish()
    return ProbeOutcome(
        success=False, duration_seconds=duration, failed_phase="timeout", timeout_phase=phase,
        reason=TIMEOUT_REASONS.get(phase, "timeout"),
        error=_in_step(tracker,
                       f"no result within {timeout_s:g}s (deadline struck in phase {phase})"),
        phases=dict(tracker.durations), address=address, step=tracker.step)


def failure_outcome(tracker: PhaseTracker, failure: ProbeFailure,
                    address: str = "") -> ProbeOutcome:
    """The outcome of a ProbeFailure raised by a probe."""
    duration = tracker.finish()
    return ProbeOutcome(
        success=False, duration_seconds=duration, failed_phase=failure.phase,
        reason=failure.reason, error=bounded(_in_step(tracker, failure.error)),
        phases=dict(tracker.durations), address=address, step=tracker.step)


def error_outcome(tracker: PhaseTracker, exc: BaseException, address: str = "") -> ProbeOutcome:
    """The outcome of an unexpected exception inside a probe (a bug of ours: it is logged)."""
    phase = tracker.current if tracker.current in FAILURE_PHASES else "request"
    duration = tracker.finish()
    return ProbeOutcome(
        success=False, duration_seconds=duration, failed_phase=phase, reason="probe_error",
        error=bounded(_in_step(tracker, f"{type(exc).__name__}: {exc}")),
        phases=dict(tracker.durations), address=address, step=tracker.step)


async def run_attempt(probe: Probe, timeout_s: float, *,
                      probe_name: str = "") -> list[ProbeOutcome]:
    """Run `probe` once under a hard deadline of `timeout_s`; never raises (but cancels)."""
    tracker = PhaseTracker()
    try:
        async with asyncio.timeout(timeout_s) as deadline:
            outcomes = await probe.run(tracker)
    except ProbeFailure as failure:
        return [failure_outcome(tracker, failure)]
    except TimeoutError as exc:
        if deadline.expired():
            return [timeout_outcome(tracker, timeout_s)]
        log.warning("probe raised TimeoutError on its own", exc_info=True,
                    extra={"probe": probe_name})
        return [error_outcome(tracker, exc)]
    except Exception as exc:
        log.exception("probe raised an unexpected error", extra={"probe": probe_name})
        return [error_outcome(tracker, exc)]
    if not outcomes:
        return [error_outcome(tracker, RuntimeError("the probe returned no outcome"))]
    return list(outcomes)


async def probe_each_address(
        addresses: Sequence[str],
        probe_address: Callable[[str, PhaseTracker], Awaitable[ProbeOutcome | None]],
        tracker: PhaseTracker, timeout_s: float) -> list[ProbeOutcome]:
    """Probe every address concurrently, one outcome each.

    `probe_address` returns its outcome, or None for a plain success; a ProbeFailure it
    raises becomes a failed outcome.

    Each address gets its own PhaseTracker that starts with the shared resolve time, and its
    own deadline (a share of `timeout_s` minus the time already spent).
    """
    resolved = dict(tracker.durations)
    resolve_s = resolved.get("resolve", 0.0)
    tracker.enter("connect", "connect")
    remaining = max(0.0, timeout_s * _FANOUT_DEADLINE_SHARE - (time.perf_counter() - tracker.start))

    async def one(address: str) -> ProbeOutcome:
        own = PhaseTracker()
        own.durations.update(resolved)
        try:
            async with asyncio.timeout(remaining) as deadline:
                returned = await probe_address(address, own)
        except ProbeFailure as failure:
            outcome = failure_outcome(own, failure, address)
        except TimeoutError as exc:
            outcome = (timeout_outcome(own, timeout_s, address) if deadline.expired()
                       else error_outcome(own, exc, address))
        except Exception as exc:
            log.exception("probe raised an unexpected error", extra={"address": address})
            outcome = error_outcome(own, exc, address)
        else:
            outcome = returned or ProbeOutcome(success=True, duration_seconds=own.finish(),
                                               phases=dict(own.durations))
            outcome.address = address
        outcome.duration_seconds += resolve_s
        return outcome

    outcomes = await asyncio.gather(*(one(address) for address in addresses))
    return list(outcomes)
