"""The collector's value types: verdicts, target and agent views, outage records, transitions.

These are what the classifier hands out and what the journal, the HTTP API, the metrics and
the MQTT events consume. Times are float unix seconds internally and RFC 3339 UTC outside.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

# Index = the wire enum probenet.v1.Phase; value = the phase name used in JSON and labels.
PHASE_NAMES: tuple[str, ...] = (
    "", "dns", "connect", "tls", "request", "response", "validation", "timeout",
)


class RegionVerdict(StrEnum):
    """A region's verdict for one probe."""

    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"
    # A maintenance window covers the probe in this region: its results are no evidence.
    MAINTENANCE = "maintenance"


class TargetState(StrEnum):
    """A probe's state across the fleet (the `state` of /api/v1/targets)."""

    UP = "up"
    REGIONAL_OUTAGE = "regional_outage"
    GLOBAL_OUTAGE = "global_outage"
    UNKNOWN = "unknown"
    # Maintenance windows cover the probe in every region that reports it.
    MAINTENANCE = "maintenance"


class Scope(StrEnum):
    """How far an outage reaches."""

    REGIONAL = "regional"
    GLOBAL = "global"


def widest(*scopes: Scope) -> Scope:
    """The widest of `scopes`: global if any is global."""
    return Scope.GLOBAL if Scope.GLOBAL in scopes else Scope.REGIONAL


class OutageKind(StrEnum):
    """What an outage record is about."""

    PROBE = "probe"
    SERVICE = "service"
    REGION_ISOLATED = "region_isolated"
    MONITORING_DEGRADED = "monitoring_degraded"


class OutageEvent(StrEnum):
    """What happened to an outage record.

    `updated` (regions, phase, reason or step changed, scope unchanged) is journaled but is not one
    of the MQTT event names; the other three are published as DESIGN.md lists them.
    """

    OPENED = "opened"
    SCOPE_CHANGED = "scope_changed"
    UPDATED = "updated"
    RESOLVED = "resolved"


def rfc3339(ts: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC with millisecond precision (`2026-11-24T15:39:00.000Z`)."""
    if ts is None:
        return None
    moment = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_rfc3339(text: str | None) -> float | None:
    """Inverse of `rfc3339`."""
    if text is None:
        return None
    return dt.datetime.fromisoformat(text).timestamp()


@dataclass(frozen=True, slots=True)
class ClassificationParams:
    """The thresholds of DESIGN.md's classification table (defaults as documented there)."""

    global_ratio: float = 0.8
    min_regions: int = 2
    recover_after: int = 2
    stale_after_intervals: float = 3.0
    impaired_ratio: float = 0.5
    impaired_min_probes: int = 3
    # Flapping: more than `flap_max_changes` state changes within `flap_window_s`.
    flap_max_changes: int = 4
    flap_window_s: float = 1800.0
    # A `service` record opens when at least this many probes of one service are in outage.
    service_min_probes: int = 2
    # More than this share of all agents stale or impaired: monitoring_degraded.
    degraded_ratio: float = 0.5
    # Confirmed failures in a row a region's down vote needs when no other region sees the
    # probe down (a lone agent: at least 2). 1: a majority of confirmed failures suffices.
    regional_confirmations: int = 2
    # A new regional record waits at most this many probe intervals for the up regions to
    # report since the failure began (a global outage is then opened as global); 0: never.
    scope_hold_intervals: float = 1.0


@dataclass(frozen=True, slots=True)
class OutageRecord:
    """One outage, as journaled and served (JSON field names are the contract)."""

    id: str
    kind: OutageKind
    probe: str | None
    service: str | None
    region: str | None
    probes: tuple[str, ...]
    scope: Scope
    peak_scope: Scope
    regions: tuple[str, ...]
    regions_ever: tuple[str, ...]
    phase: str | None
    reason: str | None
    started_at: float
    detected_at: float
    ended_at: float | None = None
    # A probe record of a probe changing state too often: held open while it flaps (its
    # `regions` still only the regions down now), closed once it stops and stays up.
    flapping: bool = False
    # For a `flow` probe: the failing step seen most (with `phase` and `reason`, one
    # failure); None for other kinds. Last, with a default: records journaled before it
    # existed read as None.
    step: str | None = None

    # -- builders: each keeps the invariants peak_scope >= scope, regions_ever >= regions
    # (as sets), started_at <= detected_at <= ended_at, and sorted region and probe names.

    @classmethod
    def probe_outage(cls, outage_id: str, probe: str, *, service: str | None, scope: Scope,
                     regions: Iterable[str], phase: str | None, reason: str | None,
                     started_at: float, detected_at: float,
                     step: str | None = None) -> OutageRecord:
        """A new `probe` record: one probe down in `regions` (its first failure at `started_at`)."""
        return cls._opened(outage_id, OutageKind.PROBE, probe=probe, service=service,
                           scope=scope, regions=regions, phase=phase, reason=reason,
                           step=step, started_at=started_at, detected_at=detected_at)

    @classmethod
    def service_outage(cls, outage_id: str, service: str, *, probes: Iterable[str],
                       scope: Scope, regions: Iterable[str], regions_ever: Iterable[str],
                       phase: str | None, reason: str | None, started_at: float,
                       detected_at: float, step: str | None = None) -> OutageRecord:
        """A new `service` record: several probes of one service in outage at once.

        It inherits its probes' history: `regions_ever` and the earliest `started_at`.
        """
        return cls._opened(outage_id, OutageKind.SERVICE, service=service, probes=probes,
                           scope=scope, regions=regions, regions_ever=regions_ever,
                           phase=phase, reason=reason, step=step, started_at=started_at,
                           detected_at=detected_at)

    @classmethod
    def region_isolated(cls, outage_id: str, region: str, *, at: float,
                        started_at: float | None = None) -> OutageRecord:
        """A new `region_isolated` record: every agent of `region` is impaired.

        Detected `at`; started at `started_at` (when its agents' results date it), else `at`.
        """
        return cls._opened(outage_id, OutageKind.REGION_ISOLATED, region=region,
                           scope=Scope.REGIONAL, regions=(region,),
                           started_at=at if started_at is None else started_at,
                           detected_at=at)

    @classmethod
    def monitoring_degraded(cls, outage_id: str, regions: Iterable[str], *,
                            at: float) -> OutageRecord:
        """A new `monitoring_degraded` record: the fleet is the problem (in `regions`)."""
        return cls._opened(outage_id, OutageKind.MONITORING_DEGRADED, scope=Scope.GLOBAL,
                           regions=regions, started_at=at, detected_at=at)

    @classmethod
    def _opened(cls, outage_id: str, kind: OutageKind, *, scope: Scope, regions: Iterable[str],
                started_at: float, detected_at: float, probe: str | None = None,
                service: str | None = None, region: str | None = None,
                probes: Iterable[str] = (), regions_ever: Iterable[str] = (),
                phase: str | None = None, reason: str | None = None,
                step: str | None = None) -> OutageRecord:
        down = tuple(sorted(set(regions)))
        return cls(
            id=outage_id,
            kind=kind,
            probe=probe,
            service=service,
            region=region,
            probes=tuple(sorted(set(probes))),
            scope=scope,
            peak_scope=scope,
            regions=down,
            regions_ever=tuple(sorted(set(regions_ever).union(down))),
            phase=phase,
            reason=reason,
            started_at=min(started_at, detected_at),
            detected_at=detected_at,
            step=step,
        )

    def with_scope(self, scope: Scope) -> OutageRecord:
        """The record at `scope` now; `peak_scope` keeps the widest scope it ever had."""
        return replace(self, scope=scope, peak_scope=widest(scope, self.peak_scope))

    def with_regions(self, regions: Iterable[str]) -> OutageRecord:
        """The record with `regions` down now; `regions_ever` keeps every region it named."""
        down = tuple(sorted(set(regions)))
        return replace(self, regions=down,
                       regions_ever=tuple(sorted(set(self.regions_ever).union(down))))

    def with_probes(self, probes: Iterable[str]) -> OutageRecord:
        """A service record naming `probes` as involved."""
        return replace(self, probes=tuple(sorted(set(probes))))

    def with_failure(self, phase: str | None, reason: str | None,
                     step: str | None = None) -> OutageRecord:
        """The record showing `phase`, `reason` and `step` as the failure seen most."""
        if (phase, reason, step) == (self.phase, self.reason, self.step):
            return self
        return replace(self, phase=phase, reason=reason, step=step)

    def with_flapping(self, flapping: bool) -> OutageRecord:
        """The record marked as flapping (or not)."""
        return self if flapping == self.flapping else replace(self, flapping=flapping)

    def ended(self, at: float) -> OutageRecord:
        """The record resolved at `at`, never before it was detected (whatever the clock did)."""
        return replace(self, ended_at=max(at, self.detected_at))

    @property
    def active(self) -> bool:
        """True while the outage is open."""
        return self.ended_at is None

    def to_json(self) -> dict[str, Any]:
        """The record as DESIGN.md's JSON (times in RFC 3339 UTC)."""
        return {
            "id": self.id,
            "kind": str(self.kind),
            "probe": self.probe,
            "service": self.service,
            "region": self.region,
            "probes": list(self.probes),
            "scope": str(self.scope),
            "peak_scope": str(self.peak_scope),
            "regions": list(self.regions),
            "regions_ever": list(self.regions_ever),
            "phase": self.phase,
            "reason": self.reason,
            "step": self.step,
            "started_at": rfc3339(self.started_at),
            "detected_at": rfc3339(self.detected_at),
            "ended_at": rfc3339(self.ended_at),
            "flapping": self.flapping,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutageRecord:
        """Inverse of `to_json` (a record journaled before `step` existed has none)."""
        started = parse_rfc3339(data["started_at"])
        detected = parse_rfc3339(data["detected_at"])
        assert started is not None
        assert detected is not None
        return cls(
            id=data["id"],
            kind=OutageKind(data["kind"]),
            probe=data.get("probe"),
            service=data.get("service"),
            region=data.get("region"),
            probes=tuple(data.get("probes") or ()),
            scope=Scope(data["scope"]),
            peak_scope=Scope(data["peak_scope"]),
            regions=tuple(data.get("regions") or ()),
            regions_ever=tuple(data.get("regions_ever") or ()),
            phase=data.get("phase"),
            reason=data.get("reason"),
            started_at=started,
            detected_at=detected,
            ended_at=parse_rfc3339(data.get("ended_at")),
            flapping=bool(data.get("flapping", False)),
            step=data.get("step"),
        )


@dataclass(frozen=True, slots=True)
class OutageTransition:
    """An outage record changed: journal it, then publish it."""

    event: OutageEvent
    record: OutageRecord
    at: float


@dataclass(frozen=True, slots=True)
class TargetView:
    """A probe's fleet-wide view (an /api/v1/targets entry)."""

    probe: str
    target: str
    service: str | None
    kind: str
    state: TargetState
    regions: Mapping[str, RegionVerdict] = field(default_factory=dict)
    flapping: bool = False
    # The failing step of the probe's open outage (a `flow` probe's), else None.
    step: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as DESIGN.md's JSON."""
        return {
            "probe": self.probe,
            "target": self.target,
            "service": self.service,
            "kind": self.kind,
            "state": str(self.state),
            "regions": {r: str(v) for r, v in sorted(self.regions.items())},
            "flapping": self.flapping,
            "step": self.step,
        }


@dataclass(frozen=True, slots=True)
class TargetChange:
    """A probe's view changed (state or a region's verdict): the retained MQTT state."""

    view: TargetView
    at: float


@dataclass(frozen=True, slots=True)
class AgentConfigView:
    """An agent's remote configuration, as the collector with a fleet file knows it.

    `current` is None for an agent that does not take remote config (it runs no fleet set).
    """

    remote_config: bool
    version: str | None = None  # the set the agent runs (None: none)
    current: bool | None = None  # it runs the fleet's version for it
    error: str | None = None  # why the agent refused the pushed set whole
    refused: tuple[tuple[str, str], ...] = ()  # (probe, reason) it could not run

    def to_json(self) -> dict[str, Any]:
        """The /api/v1/agents fields."""
        return {
            "remote_config": self.remote_config,
            "config_version": self.version,
            "config_current": self.current,
            "config_error": self.error,
            "config_refused": [{"probe": p, "reason": r} for p, r in self.refused],
        }


@dataclass(frozen=True, slots=True)
class AgentView:
    """An agent as /api/v1/agents shows it."""

    id: str
    region: str
    connected: bool
    impaired: bool
    stale: bool
    last_seen: float | None
    labels: Mapping[str, str] = field(default_factory=dict)
    # With a fleet file only (collector/fleet.py): the agent's remote configuration.
    config: AgentConfigView | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as DESIGN.md's JSON (config fields only with a fleet file)."""
        entry = {
            "id": self.id,
            "region": self.region,
            "connected": self.connected,
            "impaired": self.impaired,
            "stale": self.stale,
            "last_seen": rfc3339(self.last_seen),
            "labels": dict(self.labels),
        }
        if self.config is not None:
            entry.update(self.config.to_json())
        return entry


Transition = OutageTransition | TargetChange
"""What the classifier emits, in order; the collector journals then publishes each."""


class AgentHealth(StrEnum):
    """An agent's health as the classifier sees it (logged at each change)."""

    OK = "ok"  # counted
    SUSPECT = "suspect"  # down on enough probes, not yet seen up elsewhere
    IMPAIRED = "impaired"  # its own network is broken: left out
    STALE = "stale"  # silent for stale_after_intervals: left out


@dataclass(frozen=True, slots=True)
class AgentHealthChange:
    """An agent's health changed, with the evidence (for the log; not journaled).

    `down` and `fresh` count the agent's fresh verdicts, of which down; `seen_up` how many
    of its down probes another region sees up (impairment's evidence, up to its threshold).
    """

    agent: str
    region: str
    health: AgentHealth
    previous: AgentHealth
    down: int
    fresh: int
    seen_up: int
    at: float


@dataclass(frozen=True, slots=True)
class JournaledTransition:
    """A transition after the journal committed it.

    `seq` increases per collector across restarts (the journal's event id) for outage
    transitions; it is 0 for TargetChange, which is not journaled.
    """

    seq: int
    transition: Transition


class TransitionSink(Protocol):
    """Where committed transitions go after the journal (MQTT publisher, demo, tests).

    `submit` must not block: a sink queues internally (bounded, counting what it drops).
    """

    def submit(self, items: Sequence[JournaledTransition]) -> None:
        """Take committed transitions, in order."""
