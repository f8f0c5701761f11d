"""What the demo tells its user: events from successive API snapshots, and the final summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .table import format_seconds

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from probenet.lab.snapshot import FleetSnapshot, OutageEntry


@dataclass(frozen=True, slots=True)
class DemoEvent:
    """One change seen between two snapshots (`event` is a stable name, for logs)."""

    event: str  # outage_opened | outage_scope_changed | outage_resolved | agent_health |
    #             target_state | outage_paths
    message: str
    fields: dict[str, Any]


def _label(outage: OutageEntry) -> str:
    """`probe social-web`, `service social`, `region ap-south`, `monitoring_degraded`."""
    return f"probe {outage.subject}" if outage.kind == "probe" else outage.subject


def _outage_fields(outage: OutageEntry) -> dict[str, Any]:
    return {"id": outage.id, "kind": outage.kind, "about": outage.subject,
            "scope": outage.scope, "regions": ",".join(outage.regions),
            "phase": outage.phase or "", "reason": outage.reason or "",
            "step": outage.step or ""}


def _still_up(outage: OutageEntry, snapshot: FleetSnapshot) -> str:
    """For a flow probe failing at a step: "; social's other probes still up (...)"."""
    if outage.kind != "probe" or not outage.step or not outage.service:
        return ""
    siblings = sorted(t.probe for t in snapshot.targets
                      if t.service == outage.service and t.probe != outage.probe)
    up = [name for name in siblings
          if any(t.probe == name and t.state == "up" for t in snapshot.targets)]
    if not siblings or up != siblings:
        return ""
    return f"; {outage.service}'s pages still up ({', '.join(up)})"


class FleetObserver:
    """Turns successive snapshots into events, and remembers which agents were impaired."""

    def __init__(self) -> None:
        """Nothing seen yet: the first snapshot reports every non-healthy thing as new."""
        self._open: dict[str, OutageEntry] = {}
        self._health: dict[str, str] = {}
        self._states: dict[str, str] = {}
        self.impaired_agents: dict[str, str] = {}  # agent id -> region, ever impaired
        self.seen_outages: dict[str, OutageEntry] = {}  # id -> latest open view
        self._path_texts: dict[str, str] = {}  # outage id -> last path summary reported

    def paths(self, outage: OutageEntry, detail: Mapping[str, Any]) -> DemoEvent | None:
        """The path summary of an open outage (its /api/v1/outages/{id}), when it changed.

        None until traces exist (`paths.summary.text`), and for a sentence already told.
        """
        paths = detail.get("paths") or {}
        text = (paths.get("summary") or {}).get("text") if isinstance(paths, dict) else None
        if not text or not paths.get("regions") or self._path_texts.get(outage.id) == text:
            return None
        self._path_texts[outage.id] = text
        return DemoEvent("outage_paths", f"outage {_label(outage)}: {text}",
                         {**_outage_fields(outage), "paths": text})

    def update(self, snapshot: FleetSnapshot) -> list[DemoEvent]:
        """The events between the previous snapshot and this one."""
        events: list[DemoEvent] = []
        now_open = {o.id: o for o in snapshot.outages}
        for outage_id, outage in now_open.items():
            before = self._open.get(outage_id)
            self.seen_outages[outage_id] = outage
            if before is None:
                at_step = f"at step {outage.step}, " if outage.step else ""
                events.append(DemoEvent(
                    "outage_opened",
                    f"outage opened: {_label(outage)}, {outage.scope} "
                    f"({', '.join(outage.regions) or '-'}), {at_step}phase "
                    f"{outage.phase or '-'}, "
                    f"detected {format_seconds(outage.detection_seconds)} after the first "
                    f"failure{_still_up(outage, snapshot)}", _outage_fields(outage)))
            elif before.scope != outage.scope:
                events.append(DemoEvent(
                    "outage_scope_changed",
                    f"outage {_label(outage)}: scope {before.scope} -> {outage.scope} "
                    f"({', '.join(outage.regions) or '-'})", _outage_fields(outage)))
        for outage_id, outage in self._open.items():
            if outage_id not in now_open:
                events.append(DemoEvent(
                    "outage_resolved", f"outage resolved: {_label(outage)}",
                    _outage_fields(outage)))
        self._open = now_open

        for agent in snapshot.agents:
            health = agent.health
            if health == "impaired":
                self.impaired_agents[agent.id] = agent.region
            if self._health.get(agent.id, "ok") != health:
                events.append(DemoEvent(
                    "agent_health", f"agent {agent.id} ({agent.region}): {health}",
                    {"agent": agent.id, "region": agent.region, "health": health}))
            self._health[agent.id] = health

        for target in snapshot.targets:
            before_state = self._states.get(target.probe)
            if before_state is None and target.state in {"up", "unknown"}:
                self._states[target.probe] = target.state
                continue  # a probe seen for the first time, with nothing to report
            before_state = before_state or "up"
            if before_state != target.state:
                down = sorted(r for r, v in target.regions.items() if v == "down")
                events.append(DemoEvent(
                    "target_state",
                    f"target {target.probe}: {before_state} -> {target.state}"
                    + (f" (down in {', '.join(down)})" if down else ""),
                    {"probe": target.probe, "state": target.state, "before": before_state,
                     "down_regions": ",".join(down)}))
            self._states[target.probe] = target.state
        return events


@dataclass(slots=True)
class DemoSummary:
    """What was classified during the run: every outage record, every impaired agent."""

    outages: Sequence[OutageEntry]
    impaired_agents: dict[str, str]
    phases_played: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def lines(self) -> list[str]:
        """The summary as text, one line each."""
        played = ", ".join(self.phases_played) or "none"
        out = [f"summary after {format_seconds(self.elapsed_s)}: phases played: {played}"]
        out.append(f"outages opened: {len(self.outages)}")
        for o in sorted(self.outages, key=lambda o: o.started_at):
            about = o.probe or o.service or o.region or o.kind
            if o.kind == "service" and o.probes:
                about += f" ({', '.join(o.probes)})"
            ended = "still open" if o.ended_at is None else \
                f"lasted {format_seconds((o.ended_at - o.started_at).total_seconds())}"
            out.append(f"  {o.kind:<8} {about:<40} peak {o.peak_scope:<8} regions "
                       f"{', '.join(o.regions_ever) or '-'}; "
                       + (f"step {o.step}, " if o.step else "")
                       + f"phase {o.phase or '-'}, "
                       f"reason {o.reason or '-'}; detected in "
                       f"{format_seconds(o.detection_seconds)}, {ended}")
        if self.impaired_agents:
            agents = ", ".join(f"{a} ({r})" for a, r in sorted(self.impaired_agents.items()))
            out.append(f"agents impaired: {agents}")
        else:
            out.append("agents impaired: none")
        return out

    def to_json(self) -> dict[str, Any]:
        """The summary as one JSON object (the demo prints it as its last line)."""
        return {
            "elapsed_s": round(self.elapsed_s, 1),
            "phases_played": self.phases_played,
            "outages": [o.summary_json() for o in self.outages],
            "impaired_agents": [{"id": a, "region": r}
                                for a, r in sorted(self.impaired_agents.items())],
        }
