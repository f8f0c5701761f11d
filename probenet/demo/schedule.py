"""Phases of faults played in a loop, and the fault policy that applies the current phase.

A `Schedule` is a list of `Phase`s of equal length (`phase_seconds`, derived from the probe
interval so that each phase lasts long enough to be detected and recovered). Each phase
holds `Fault`s: which probes fail, from which regions or agents, and how. `ScheduledFaults`
is the `FaultPolicy` the targets consult: it maps the peer's address to an agent and asks the
phase playing now. Everything here is pure but for the clock, which is injected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import DemoError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from probenet.lab.fleet import AgentSeat
    from probenet.lab.targets import FaultMode

PHASE_INTERVALS = 10
"""Each phase lasts this many probe intervals: about 2 to detect, 2 to recover, and margin."""


@dataclass(frozen=True, slots=True)
class Fault:
    """Probes that fail with `mode` from the given regions or agents (empty: from all)."""

    probes: frozenset[str]
    mode: FaultMode
    regions: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()

    def applies(self, probe: str, seat: AgentSeat) -> bool:
        """True if this fault hits `probe` when `seat` probes it."""
        return (probe in self.probes
                and (not self.regions or seat.region in self.regions)
                and (not self.agents or seat.id in self.agents))


@dataclass(frozen=True, slots=True)
class Phase:
    """One step of the story: a name (machine), a title (people), and its faults."""

    name: str
    title: str
    faults: tuple[Fault, ...] = ()

    def fault_for(self, probe: str, seat: AgentSeat) -> FaultMode | None:
        """The fault `seat` meets when probing `probe` during this phase (first match)."""
        for fault in self.faults:
            if fault.applies(probe, seat):
                return fault.mode
        return None


@dataclass(frozen=True, slots=True)
class SchedulePosition:
    """Where the schedule is: cycle (from 0), phase index, the phase, and time left in it."""

    cycle: int
    index: int
    phase: Phase
    elapsed_s: float
    remaining_s: float


class Schedule:
    """Phases of `phase_seconds` each, played in a loop."""

    def __init__(self, phases: Sequence[Phase], phase_seconds: float) -> None:
        """At least one phase, and a positive phase length."""
        if not phases:
            raise DemoError("a schedule needs at least one phase")
        if phase_seconds <= 0:
            raise DemoError("phase_seconds must be positive")
        self.phases = tuple(phases)
        self.phase_seconds = phase_seconds

    @classmethod
    def for_interval(cls, phases: Sequence[Phase], interval_s: float) -> Schedule:
        """A schedule whose phases last PHASE_INTERVALS probe intervals each."""
        return cls(phases, PHASE_INTERVALS * interval_s)

    @property
    def cycle_seconds(self) -> float:
        """Length of one full loop of the phases."""
        return self.phase_seconds * len(self.phases)

    def at(self, elapsed_s: float) -> SchedulePosition:
        """The position `elapsed_s` seconds after the schedule started."""
        elapsed_s = max(elapsed_s, 0.0)
        step = int(elapsed_s // self.phase_seconds)
        cycle, index = divmod(step, len(self.phases))
        in_phase = elapsed_s - step * self.phase_seconds
        return SchedulePosition(cycle, index, self.phases[index], in_phase,
                                self.phase_seconds - in_phase)


class ScheduledFaults:
    """The demo's `FaultPolicy`: the current phase's fault for the agent at the peer address.

    Before `start()` nothing fails (the fleet is still connecting). Peers that are not a
    fleet agent (a curl from the user, say) are always answered normally.
    """

    def __init__(self, schedule: Schedule, agents_by_address: Mapping[str, AgentSeat],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`agents_by_address` maps each agent's source address to its seat."""
        self.schedule = schedule
        self._agents = dict(agents_by_address)
        self._clock = clock
        self._started_at: float | None = None

    def start(self) -> None:
        """Start the schedule's clock now."""
        self._started_at = self._clock()

    @property
    def elapsed_s(self) -> float:
        """Seconds since `start()` (0 before)."""
        return 0.0 if self._started_at is None else self._clock() - self._started_at

    def position(self) -> SchedulePosition | None:
        """Where the schedule is now, or None before `start()`."""
        if self._started_at is None:
            return None
        return self.schedule.at(self.elapsed_s)

    def __call__(self, probe: str, peer: str) -> FaultMode | None:
        """The fault to inject for `probe` asked by `peer` now."""
        position = self.position()
        seat = self._agents.get(peer)
        if position is None or seat is None:
            return None
        return position.phase.fault_for(probe, seat)
