"""The collector's `/api/v1/*` JSON, parsed into typed values the demo and its tests read."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from .errors import ApiError

EntryT = TypeVar("EntryT", bound=BaseModel)


class _Entry(BaseModel):
    # The API may grow fields (DESIGN.md: "more may be added"): ignore what we do not show.
    model_config = ConfigDict(extra="ignore", frozen=True)


class TargetEntry(_Entry):
    """One `/api/v1/targets` entry: a probe's fleet-wide state and each region's verdict."""

    probe: str
    target: str
    service: str | None = None
    kind: str
    state: str  # up | regional_outage | global_outage | unknown
    regions: dict[str, str]  # region -> up | down | unknown
    flapping: bool = False
    step: str | None = None  # a flow probe in outage: the step that fails


class OutageEntry(_Entry):
    """One `/api/v1/outages` record (DESIGN.md's outage record)."""

    id: str
    kind: str  # probe | service | region_isolated | monitoring_degraded
    probe: str | None = None
    service: str | None = None
    region: str | None = None
    probes: list[str] = []
    scope: str  # regional | global
    peak_scope: str
    regions: list[str] = []
    regions_ever: list[str] = []
    phase: str | None = None
    reason: str | None = None
    step: str | None = None  # flow probes: the failing step seen most
    started_at: dt.datetime
    detected_at: dt.datetime
    ended_at: dt.datetime | None = None

    @property
    def active(self) -> bool:
        """True while the outage is open."""
        return self.ended_at is None

    @property
    def subject(self) -> str:
        """What the outage is about, in a few words (`social-web`, `service social`)."""
        if self.kind == "probe":
            return self.probe or "?"
        if self.kind == "service":
            return f"service {self.service}"
        if self.kind == "region_isolated":
            return f"region {self.region}"
        return self.kind

    @property
    def detection_seconds(self) -> float:
        """`detected_at - started_at`: how long the fault took to be classified."""
        return (self.detected_at - self.started_at).total_seconds()

    def summary_json(self) -> dict[str, Any]:
        """The fields the demo's summary reports."""
        return {
            "id": self.id, "kind": self.kind, "probe": self.probe, "service": self.service,
            "region": self.region, "probes": self.probes, "scope": self.scope,
            "peak_scope": self.peak_scope, "regions_ever": self.regions_ever,
            "phase": self.phase, "reason": self.reason, "step": self.step,
            "started_at": self.started_at.isoformat(),
            "detected_at": self.detected_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "detection_seconds": round(self.detection_seconds, 3),
        }


class AgentEntry(_Entry):
    """One `/api/v1/agents` entry."""

    id: str
    region: str
    connected: bool
    impaired: bool
    stale: bool
    last_seen: dt.datetime | None = None

    @property
    def health(self) -> str:
        """One word: `impaired`, `stale`, `disconnected` or `ok` (worst first)."""
        if self.impaired:
            return "impaired"
        if self.stale:
            return "stale"
        if not self.connected:
            return "disconnected"
        return "ok"


_ADAPTERS: dict[type[BaseModel], TypeAdapter[Any]] = {}


def parse_entries(model: type[EntryT], data: Any, path: str) -> list[EntryT]:
    """Validate an API list; raise ApiError naming the path and the first bad field."""
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(list[model])  # type: ignore[valid-type]
    try:
        entries: list[EntryT] = adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise ApiError(path, f"unexpected JSON at {where or 'top level'}: {first['msg']}") \
            from exc
    return entries


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """What the collector said at one moment: targets, open outages and agents."""

    targets: list[TargetEntry] = field(default_factory=list)
    outages: list[OutageEntry] = field(default_factory=list)
    agents: list[AgentEntry] = field(default_factory=list)
    taken_at: float = 0.0

    @property
    def regions(self) -> list[str]:
        """Every region named by an agent or a target, sorted."""
        names = {a.region for a in self.agents}
        for target in self.targets:
            names.update(target.regions)
        return sorted(names)
