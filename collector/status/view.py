"""The status page's model: what the page shows, built from classifier snapshots and config.

`build_page` is pure: it takes the snapshots (targets, open outages, agents, maintenance
windows, uptime reports) and the config, and returns the page model as JSON-ready data, the
one thing both the HTML and `/status/data.json` are made from. Public filtering happens
here, on the server: a public page's model holds only the listed services, no agent ids or
labels and no targets' URLs, so neither the HTML nor the JSON can leak them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..model import OutageKind, Scope, parse_rfc3339, rfc3339
from .headline import MaintenanceNote, headline, region_label

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping, Sequence

    from ..config import RegionPlace, StatusPageConfig
    from ..model import AgentConfigView, AgentView, OutageRecord, TargetView

# A target's `state` (TargetState values; `maintenance` while a window covers the probe).
STATE_WORDS = {
    "up": "Up",
    "regional_outage": "Regional outage",
    "global_outage": "Global outage",
    "unknown": "Unknown",
    "maintenance": "Maintenance",
}
# A region's cell for one probe (RegionVerdict values), and the map's extra states.
VERDICT_WORDS = {
    "up": "Up",
    "down": "Down",
    "unknown": "Unknown",
    "maintenance": "Maintenance",
    "isolated": "Isolated",
}
HEALTH_WORDS = {
    "ok": "Healthy",
    "impaired": "Impaired (its own network)",
    "stale": "Silent",
    "disconnected": "Disconnected",
}
# Worst first: a service shows its worst probe's state.
_STATE_ORDER = ("global_outage", "regional_outage", "maintenance", "unknown", "up")
_VERDICT_ORDER = ("isolated", "down", "maintenance", "unknown", "up")
ALL = "all"
NO_SERVICE = ""  # the group of probes without a service


def state_of(states: Iterable[str]) -> str:
    """The worst of `states` (`unknown` for none)."""
    found = set(states)
    return next((s for s in _STATE_ORDER if s in found), "unknown")


def _verdict_of(verdicts: Iterable[str]) -> str:
    found = set(verdicts)
    return next((v for v in _VERDICT_ORDER if v in found), "unknown")


@dataclass(frozen=True, slots=True)
class StatusInputs:
    """One snapshot of everything the page shows (taken between two classifier batches)."""

    targets: Sequence[TargetView]
    outages: Sequence[OutageRecord]  # the open ones
    agents: Sequence[AgentView]  # seen agents and registered never-seen ones
    isolated_regions: Collection[str]
    monitoring_degraded: bool
    now: float
    # Maintenance windows as `MaintenanceWindow.to_json(now)` gives them.
    maintenance: Sequence[Mapping[str, Any]] = ()
    # probe -> `UptimeReport.to_json()` (availability, seconds, regions, daily).
    uptime: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StatusSettings:
    """The config the page follows: `status_page` and `regions`."""

    page: StatusPageConfig
    regions: Mapping[str, RegionPlace]

    def shows_service(self, service: str | None) -> bool:
        """True when a probe of `service` (None: no service) is on the page."""
        if not self.page.services:
            return True
        return service is not None and service in self.page.services

    def region_names(self) -> dict[str, str]:
        """Region id -> display name, for the configured names."""
        return {rid: place.name for rid, place in self.regions.items() if place.name}


def _shown_outage(record: OutageRecord, settings: StatusSettings) -> bool:
    if record.kind in {OutageKind.PROBE, OutageKind.SERVICE}:
        return settings.shows_service(record.service)
    return True  # region_isolated, monitoring_degraded: about our fleet, no agent in them


def _covered(window: Mapping[str, Any], probe: str, service: str | None,
             region: str | None = None) -> bool:
    """True when `window` covers `probe` (of `service`), in `region` when one is given."""
    probes = window.get("probes") or []
    services = window.get("services") or []
    regions = window.get("regions") or []
    if probe not in probes and (not service or service not in services):
        return False
    return not (region is not None and regions and region not in regions)


def _window(window: Mapping[str, Any], settings: StatusSettings,
            shown_probes: Collection[str]) -> dict[str, Any] | None:
    """A maintenance window as the page shows it; None when it is about nothing shown."""
    services = list(window.get("services") or [])
    probes = list(window.get("probes") or [])
    if settings.page.services:
        listed = settings.page.services
        services = [s for s in services if s in listed]
        probes = [p for p in probes if p in shown_probes]
        if (window.get("services") or window.get("probes")) and not services and not probes:
            return None
    subject = ", ".join(services + probes) or "everything"
    regions = list(window.get("regions") or [])
    return {
        "id": str(window.get("id", "")),
        "subject": subject,
        "services": services,
        "probes": probes,
        "regions": regions,
        "start": window.get("start"),
        "end": window.get("end"),
        "reason": window.get("reason"),
        "state": str(window.get("state", "planned")),
    }


def _probe_entry(target: TargetView, public: bool, windows: Sequence[Mapping[str, Any]],
                 isolated: Collection[str]) -> dict[str, Any]:
    regions: dict[str, str] = {}
    for region, verdict in sorted(target.regions.items()):
        value = str(verdict)
        if any(w.get("state") == "active" and _covered(w, target.probe, target.service, region)
               for w in windows) and value != "down":
            value = "maintenance"
        if region in isolated and value == "unknown":
            value = "isolated"
        regions[region] = value
    entry: dict[str, Any] = {
        "probe": target.probe,
        "service": target.service,
        "kind": target.kind,
        "state": str(target.state),
        "regions": regions,
        "flapping": target.flapping,
        "step": target.step,
    }
    if any(w.get("state") == "active" and _covered(w, target.probe, target.service)
           for w in windows) and entry["state"] in {"up", "unknown"}:
        entry["state"] = "maintenance"
    if not public:
        entry["target"] = target.target
    return entry


def _outage_entry(record: OutageRecord, names: Mapping[str, str]) -> dict[str, Any]:
    if record.kind == OutageKind.REGION_ISOLATED:
        subject = f"{region_label(record.region or '', names)}: our probes cannot reach anything"
    elif record.kind == OutageKind.MONITORING_DEGRADED:
        subject = "Our monitoring is degraded"
    elif record.kind == OutageKind.SERVICE:
        count = len(record.probes)
        subject = f"{record.service} ({count} probe{'' if count == 1 else 's'})"
    elif record.service:
        subject = f"{record.service}: {record.probe}"
    else:
        subject = record.probe or ""
    return {
        "id": record.id,
        "kind": str(record.kind),
        "subject": subject,
        "probe": record.probe,
        "service": record.service,
        "region": record.region,
        "probes": list(record.probes),
        "scope": str(record.scope),
        "regions": list(record.regions),
        "phase": record.phase,
        "step": record.step,
        "reason": record.reason,
        "flapping": record.flapping,
        "started_at": rfc3339(record.started_at),
        "detected_at": rfc3339(record.detected_at),
        "detect_seconds": round(record.detected_at - record.started_at, 1),
    }


def config_words(config: AgentConfigView) -> dict[str, Any]:
    """An agent's probe set in words (with a fleet file): current or outdated, refusals."""
    version = (config.version or "")[:12]
    if not config.remote_config:
        state, words = "local", "local config only (remote_config off)"
    elif config.current:
        state, words = "current", f"current set ({version})"
    elif config.version:
        state, words = "outdated", f"outdated: runs {version}, not the fleet's current set"
    else:
        state, words = "outdated", "outdated: runs no fleet set yet"
    if config.error:
        words += f"; refused the pushed set: {config.error}"
    return {"state": state, "words": words,
            "refused": [f"{probe}: {reason}" for probe, reason in config.refused]}


def _health(agent: AgentView) -> str:
    if agent.stale and not agent.connected:
        return "disconnected"
    if agent.stale:
        return "stale"
    if agent.impaired:
        return "impaired"
    return "ok" if agent.connected else "disconnected"


def _regions(settings: StatusSettings, targets: Sequence[Mapping[str, Any]],
             agents: Sequence[AgentView]) -> list[dict[str, Any]]:
    ids = set(settings.regions)
    ids.update(r for t in targets for r in t["regions"])
    ids.update(a.region for a in agents)
    out = []
    for rid in sorted(ids):
        place = settings.regions.get(rid)
        out.append({
            "id": rid,
            "name": (place.name if place and place.name else rid),
            "location": list(place.location) if place and place.location else None,
        })
    return out


def _region_health(regions: Sequence[Mapping[str, Any]], agents: Sequence[AgentView],
                   isolated: Collection[str]) -> dict[str, dict[str, Any]]:
    health: dict[str, dict[str, Any]] = {}
    for region in regions:
        members = [a for a in agents if a.region == region["id"]]
        states = [_health(a) for a in members]
        health[region["id"]] = {
            "agents": len(members),
            "healthy": states.count("ok"),
            "impaired": states.count("impaired"),
            "silent": len(members) - states.count("ok") - states.count("impaired"),
            "isolated": region["id"] in isolated,
        }
    return health


def map_states(probes: Sequence[Mapping[str, Any]], regions: Sequence[Mapping[str, Any]],
               isolated: Collection[str]) -> dict[str, dict[str, str]]:
    """Selection -> region -> state, for the map: `all`, `service:S`, `probe:P`.

    A region is `isolated` when it is, else the worst verdict of the selected probes there.
    """
    selections: dict[str, list[Mapping[str, Any]]] = {ALL: list(probes)}
    for probe in probes:
        selections.setdefault(f"service:{probe['service'] or NO_SERVICE}", []).append(probe)
        selections[f"probe:{probe['probe']}"] = [probe]
    states: dict[str, dict[str, str]] = {}
    for key, chosen in selections.items():
        states[key] = {
            region["id"]: "isolated" if region["id"] in isolated else _verdict_of(
                p["regions"].get(region["id"], "unknown") for p in chosen)
            for region in regions}
    return states


def build_page(inputs: StatusInputs, settings: StatusSettings) -> dict[str, Any]:
    """The page model (JSON-ready), filtered for a public page when configured so."""
    public = settings.page.public
    isolated = sorted(inputs.isolated_regions)
    names = settings.region_names()
    targets = [t for t in inputs.targets if settings.shows_service(t.service)]
    shown_probes = {t.probe for t in targets}
    windows = [w for w in (_window(raw, settings, shown_probes) for raw in inputs.maintenance)
               if w is not None]
    probes = [_probe_entry(t, public, windows, isolated) for t in targets]
    outages = [r for r in inputs.outages if _shown_outage(r, settings)]
    regions = _regions(settings, probes, inputs.agents)
    services: dict[str, list[dict[str, Any]]] = {}
    for probe in probes:
        services.setdefault(probe["service"] or NO_SERVICE, []).append(probe)
    notes = [MaintenanceNote(w["subject"], parse_rfc3339(w["end"]) if w["end"] else None,
                             w["reason"]) for w in windows if w["state"] == "active"]
    top = headline(targets=targets, outages=outages, agents=inputs.agents,
                   isolated_regions=isolated, monitoring_degraded=inputs.monitoring_degraded,
                   maintenance=notes, region_names=names, now=inputs.now)
    model: dict[str, Any] = {
        "title": settings.page.title,
        "public": public,
        "headline": top.to_json(),
        "regions": regions,
        "services": [{"name": name or None, "label": name or "Probes without a service",
                      "state": state_of(p["state"] for p in members), "probes": members}
                     for name, members in sorted(services.items(),
                                                 key=lambda item: (not item[0], item[0]))],
        # Ours last (isolated region, degraded monitoring); global first, then by start.
        "outages": [_outage_entry(r, names) for r in sorted(
            outages, key=lambda r: (r.kind not in {OutageKind.PROBE, OutageKind.SERVICE},
                                    r.scope != Scope.GLOBAL, r.started_at, r.id))],
        "maintenance": windows,
        "isolated_regions": isolated,
        "monitoring_degraded": inputs.monitoring_degraded,
        "region_health": _region_health(regions, inputs.agents, isolated),
        "map": map_states(probes, regions, isolated),
        "uptime": {p: _uptime_entry(inputs.uptime[p]) for p in sorted(shown_probes)
                   if p in inputs.uptime},
    }
    if not public:
        model["agents"] = [{"id": a.id, "region": a.region, "health": _health(a),
                            "connected": a.connected, "last_seen": rfc3339(a.last_seen),
                            **({"config": config_words(a.config)} if a.config else {})}
                           for a in sorted(inputs.agents, key=lambda a: (a.region, a.id))]
    return model


def _uptime_entry(report: Mapping[str, Any]) -> dict[str, Any]:
    """A probe's uptime report, cut to what the bars show (no per-region detail)."""
    daily = [{"date": str(day.get("date")), "availability": day.get("availability"),
              "seconds": dict(day.get("seconds") or {})}
             for day in report.get("daily") or []]
    return {"availability": report.get("availability"), "daily": daily}


def paths_view(paths: Mapping[str, Any] | None, *, public: bool) -> dict[str, Any] | None:
    """What an outage page shows of its path traces (`paths` of /api/v1/outages/{id}).

    A public page gets the summary sentence without addresses (hop addresses are the
    network's, and an operator's internal hops are no one else's business) and nothing
    per agent; otherwise the sentence and, per region, the hop list of each agent's trace.
    """
    if not paths:
        return None
    summary = paths.get("summary") or {}
    if public:
        text = summary.get("public_text") or summary.get("text") or ""
        return {"text": text, "regions": []} if text else None
    regions = []
    for region, entry in sorted((paths.get("regions") or {}).items()):
        agents = []
        for agent, taken in sorted((entry.get("agents") or {}).items()):
            trace = taken.get("trace") or {}
            agents.append({
                "agent": agent, "trigger": taken.get("trigger"), "taken_at": taken.get(
                    "taken_at"), "reached": bool(trace.get("reached")),
                "hops": [hop.get("address") or "*" for hop in trace.get("hops") or []]})
        regions.append({"region": region, "last_hop": entry.get("last_hop"),
                        "reached": bool(entry.get("reached")), "agents": agents})
    return {"text": summary.get("text") or "", "regions": regions}
