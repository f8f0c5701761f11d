"""The plain sentence at the top of the status page, from the classifier's state (pure).

It answers the question an on-call engineer asks first: is anything down, where, since
when and how, and is it them or us?

    Everything is up.
    social: down in every region since 15:39 UTC, failing at login; our probes are healthy.
    ap-south: our probes there cannot reach anything; not an outage of your services.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from ..model import OutageKind, OutageRecord, Scope

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

    from ..model import AgentView, TargetView

# Unknown probes named one by one up to this many; beyond, counted.
MAX_NAMED_UNKNOWN = 3


class Level(StrEnum):
    """How bad the headline is (the page's banner colour and icon), worst first."""

    DEGRADED = "degraded"  # our monitoring is the problem
    GLOBAL = "global"
    REGIONAL = "regional"
    ISOLATED = "isolated"
    MAINTENANCE = "maintenance"
    UNKNOWN = "unknown"
    UP = "up"


_RANK = {level: rank for rank, level in enumerate(Level)}


@dataclass(frozen=True, slots=True)
class MaintenanceNote:
    """An active maintenance window, as the headline names it."""

    subject: str  # "social", "social-web, portal-login", "everything"
    until: float | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Headline:
    """The sentence and its level."""

    text: str
    level: Level

    def to_json(self) -> dict[str, str]:
        """As the page model's `headline`."""
        return {"text": self.text, "level": str(self.level)}


def clock_time(ts: float, now: float) -> str:
    """`15:39 UTC` today, `Dec 5 15:39 UTC` on another day (UTC both)."""
    moment = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    today = dt.datetime.fromtimestamp(now, tz=dt.UTC).date()
    if moment.date() == today:
        return moment.strftime("%H:%M UTC")
    return f"{moment.strftime('%b')} {moment.day} {moment.strftime('%H:%M UTC')}"


def region_label(region: str, names: Mapping[str, str]) -> str:
    """`Frankfurt (eu-central)` when the region has a display name, else `eu-central`."""
    name = names.get(region)
    return f"{name} ({region})" if name and name != region else region


def _join(words: Sequence[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} and {words[-1]}"


@dataclass(frozen=True, slots=True)
class _Group:
    """Open outages about one subject (a service, or a probe without one)."""

    subject: str
    probes: frozenset[str]
    scope: Scope
    regions: frozenset[str]
    started_at: float
    failing_at: str | None
    reason: str | None
    flapping: bool


def _groups(outages: Sequence[OutageRecord]) -> list[_Group]:
    """Probe and service records folded per subject: a service's probes under the service."""
    by_subject: dict[str, list[OutageRecord]] = {}
    for record in outages:
        if record.kind not in {OutageKind.PROBE, OutageKind.SERVICE}:
            continue
        subject = record.service or record.probe
        if subject is None:
            continue
        by_subject.setdefault(subject, []).append(record)
    groups = []
    for subject, records in by_subject.items():
        # The service record speaks for its probes; else the earliest probe record.
        main = min(records, key=lambda r: (r.kind != OutageKind.SERVICE, r.started_at, r.id))
        probes = {p for r in records for p in (*r.probes, *((r.probe,) if r.probe else ()))}
        groups.append(_Group(
            subject=subject,
            probes=frozenset(probes),
            scope=Scope.GLOBAL if any(r.scope == Scope.GLOBAL for r in records)
            else Scope.REGIONAL,
            regions=frozenset(region for r in records for region in r.regions),
            started_at=min(r.started_at for r in records),
            failing_at=main.step or main.phase,
            reason=None if main.step else main.reason,
            flapping=any(r.flapping for r in records)))
    groups.sort(key=lambda g: (g.scope != Scope.GLOBAL, g.started_at, g.subject))
    return groups


def _reporting_regions(group: _Group, targets: Sequence[TargetView]) -> frozenset[str]:
    """Regions with a verdict (up or down) for any of the group's probes."""
    return frozenset(region for target in targets if target.probe in group.probes
                     for region, verdict in target.regions.items() if verdict != "unknown")


def _outage_sentence(group: _Group, targets: Sequence[TargetView], names: Mapping[str, str],
                     now: float) -> str:
    reporting = _reporting_regions(group, targets) | group.regions
    down = sorted(group.regions)
    if group.scope == Scope.GLOBAL and set(down) >= reporting:
        where = "in every region"
    elif group.scope == Scope.GLOBAL:
        where = f"in {len(down)} of {len(reporting)} regions"
    else:
        where = "in " + _join([region_label(r, names) for r in down])
        if not down:
            where = "in some regions"
    text = f"{group.subject}: down {where} since {clock_time(group.started_at, now)}"
    if group.failing_at:
        text += f", failing at {group.failing_at}"
        if group.reason:
            text += f" ({group.reason})"
    if group.scope == Scope.REGIONAL and down:
        text += ", up elsewhere"
    if group.flapping:
        text += ", flapping"
    return text


def _fleet_clause(agents: Sequence[AgentView], isolated: Collection[str]) -> str:
    """`our probes are healthy`, or how many of them are not."""
    troubled = [a for a in agents if a.impaired or a.stale]
    if not troubled and not isolated:
        return "our probes are healthy"
    verb = "is" if len(troubled) == 1 else "are"
    return f"{len(troubled)} of our {len(agents)} probes {verb} impaired or silent"


def _maintenance_sentence(note: MaintenanceNote, now: float) -> str:
    text = f"{note.subject}: in planned maintenance"
    if note.until is not None:
        text += f" until {clock_time(note.until, now)}"
    if note.reason:
        text += f" ({note.reason})"
    return text + "."


def _unknown_sentence(unknown: Sequence[str]) -> str:
    if len(unknown) == 1:
        return f"{unknown[0]}: unknown, fewer than 2 regions report it."
    if len(unknown) <= MAX_NAMED_UNKNOWN:
        return f"{_join(list(unknown))}: unknown, fewer than 2 regions report them."
    return f"{len(unknown)} probes are unknown: fewer than 2 regions report them."


def headline(*, targets: Sequence[TargetView], outages: Sequence[OutageRecord],
             agents: Sequence[AgentView], isolated_regions: Collection[str],
             monitoring_degraded: bool, maintenance: Sequence[MaintenanceNote],
             region_names: Mapping[str, str], now: float) -> Headline:
    """The sentence for the page's current state, and its level.

    `outages` are the open records shown on the page; `targets` the probes shown;
    `maintenance` the windows active now.
    """
    sentences: list[str] = []
    levels: list[Level] = []
    if monitoring_degraded:
        sentences.append("Our monitoring is degraded: most of our probes are silent or "
                         "impaired, so the state of your services cannot be told.")
        levels.append(Level.DEGRADED)
    groups = _groups(outages)
    for i, group in enumerate(groups):
        text = _outage_sentence(group, targets, region_names, now)
        if i == len(groups) - 1 and not monitoring_degraded:
            text += f"; {_fleet_clause(agents, isolated_regions)}"
        sentences.append(text + ".")
        levels.append(Level.GLOBAL if group.scope == Scope.GLOBAL else Level.REGIONAL)
    if isolated_regions:
        where = ", ".join(sorted(isolated_regions))
        sentences.append(f"{where}: our probes there cannot reach anything; "
                         "not an outage of your services.")
        levels.append(Level.ISOLATED)
    for note in maintenance:
        sentences.append(_maintenance_sentence(note, now))
        levels.append(Level.MAINTENANCE)
    in_outage = {p for g in groups for p in g.probes} | {g.subject for g in groups}
    unknown = [t.probe for t in targets if t.state == "unknown" and t.probe not in in_outage]
    if unknown:
        sentences.append(_unknown_sentence(unknown))
        levels.append(Level.UNKNOWN)
    if not targets and not sentences:
        return Headline("No results yet: waiting for our probes to report.", Level.UNKNOWN)
    if not groups and not monitoring_degraded and any(t.state == "up" for t in targets):
        sentences.append("Everything else is up." if sentences else "Everything is up.")
    levels.append(Level.UP)
    return Headline(" ".join(sentences), min(levels, key=_RANK.__getitem__))
