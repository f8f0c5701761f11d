"""The demo's live terminal view, rendered from the collector's API JSON (pure: no I/O).

Three tables under a header: probe x region with each probe's state (and, for a flow probe
in outage, the step that fails), open outages (scope, regions, step, phase, duration), and
agent health. Words stay in the cells next to the colours
("down", "global_outage", "impaired") so the view reads on a monochrome terminal and can be
checked as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Sequence

    from probenet.lab.snapshot import AgentEntry, FleetSnapshot, OutageEntry, TargetEntry

    from .schedule import SchedulePosition

STATE_STYLES = {
    "up": "green",
    "regional_outage": "bold yellow",
    "global_outage": "bold white on red",
    "unknown": "dim",
}
VERDICT_STYLES = {"up": "green", "down": "bold red", "unknown": "dim"}
VERDICT_MARKS = {"up": "● up", "down": "✖ down", "unknown": "? unknown"}
HEALTH_STYLES = {"ok": "green", "impaired": "bold magenta", "stale": "yellow",
                 "disconnected": "red"}


@dataclass(frozen=True, slots=True)
class DemoStatus:
    """What the header shows besides the collector's data."""

    api_url: str
    position: SchedulePosition | None = None
    phase_count: int = 0
    error: str | None = None  # the last failure to read the API, if the last poll failed


def format_seconds(seconds: float) -> str:
    """`4.2s`, `1m05s`, `2h03m`: short durations for table cells."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _since(moment: dt.datetime | None, now: float) -> float | None:
    return None if moment is None else now - moment.timestamp()


def header(status: DemoStatus) -> Text:
    """The phase line and the collector's URLs."""
    text = Text()
    text.append("probenet demo", style="bold")
    if status.position is None:
        text.append("  starting: waiting for the fleet to connect", style="dim")
    else:
        pos = status.position
        text.append(f"  phase {pos.index + 1}/{status.phase_count} ", style="bold cyan")
        text.append(f"[{pos.phase.name}] ", style="cyan")
        text.append(pos.phase.title)
        text.append(f"  ({format_seconds(pos.remaining_s)} left, cycle {pos.cycle + 1})",
                    style="dim")
    text.append(f"\nstatus page {status.api_url}/status", style="bold")
    text.append(f"\nmetrics {status.api_url}/metrics   api {status.api_url}/api/v1/targets "
                f"· /api/v1/outages · /api/v1/agents", style="dim")
    if status.error:
        text.append(f"\ncollector API: {status.error}", style="bold red")
    return text


def targets_table(targets: Sequence[TargetEntry], regions: Sequence[str]) -> Table:
    """Probe x region, with each probe's fleet-wide state."""
    table = Table(title="targets: probe x region", title_justify="left", expand=False)
    table.add_column("probe", no_wrap=True)
    table.add_column("service", style="dim")
    table.add_column("kind", style="dim")
    for region in regions:
        table.add_column(region, no_wrap=True)
    table.add_column("state", no_wrap=True)
    for target in sorted(targets, key=lambda t: (t.service or "", t.probe)):
        cells: list[RenderableType] = [target.probe, target.service or "", target.kind]
        for region in regions:
            verdict = target.regions.get(region, "unknown")
            cells.append(Text(VERDICT_MARKS.get(verdict, verdict),
                              style=VERDICT_STYLES.get(verdict, "")))
        state = Text(target.state, style=STATE_STYLES.get(target.state, ""))
        if target.step and target.state != "up":
            state.append(f" at {target.step}", style=STATE_STYLES.get(target.state, ""))
        if target.flapping:
            state.append(" flapping", style="bold yellow")
        cells.append(state)
        table.add_row(*cells)
    return table


def outages_table(outages: Sequence[OutageEntry], now: float) -> Table:
    """Open outages: what, scope, regions, step, phase and reason, how long, detected after."""
    table = Table(title=f"open outages ({len(outages)})", title_justify="left")
    for name in ("id", "kind", "about", "scope", "regions", "step", "phase", "reason", "for",
                 "detected in"):
        table.add_column(name, no_wrap=name not in {"regions", "about"})
    if not outages:
        table.add_row("-", "", Text("none", style="green"), "", "", "", "", "", "", "")
    for outage in sorted(outages, key=lambda o: o.started_at):
        scope_style = "bold red" if outage.scope == "global" else "bold yellow"
        about = outage.subject
        if outage.kind == "service" and outage.probes:
            about += f" ({', '.join(outage.probes)})"
        duration = _since(outage.started_at, now) or 0.0
        table.add_row(
            outage.id[:8], outage.kind, about, Text(outage.scope, style=scope_style),
            ", ".join(outage.regions) or "-", outage.step or "-", outage.phase or "-",
            outage.reason or "-",
            format_seconds(duration), format_seconds(outage.detection_seconds))
    return table


def agents_table(agents: Sequence[AgentEntry], now: float) -> Table:
    """Each agent's region, connection and health."""
    table = Table(title="agents", title_justify="left")
    for name in ("agent", "region", "connected", "health", "last seen"):
        table.add_column(name, no_wrap=True)
    for agent in sorted(agents, key=lambda a: (a.region, a.id)):
        seen = _since(agent.last_seen, now)
        table.add_row(
            agent.id, agent.region,
            Text("yes" if agent.connected else "no",
                 style="green" if agent.connected else "red"),
            Text(agent.health, style=HEALTH_STYLES.get(agent.health, "")),
            "-" if seen is None else f"{format_seconds(seen)} ago")
    return table


def render_dashboard(snapshot: FleetSnapshot | None, status: DemoStatus,
                     now: float) -> RenderableType:
    """The whole live view."""
    parts: list[RenderableType] = [header(status)]
    if snapshot is None:
        parts.append(Text("waiting for the collector's first answer...", style="dim"))
        return Group(*parts)
    parts.append(targets_table(snapshot.targets, snapshot.regions))
    parts.append(outages_table(snapshot.outages, now))
    parts.append(agents_table(snapshot.agents, now))
    return Group(*parts)
