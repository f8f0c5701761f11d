"""The status page's HTML, rendered on the server from the page model (pure).

Every dynamic part of `/status` is a fragment (`fragments`) with a stable element id; the
full page holds them, and `/status/data.json` carries them too, so the script only swaps
fragments in and never builds markup itself. No inline script or style anywhere (the page's
Content-Security-Policy forbids both): states are classes, icons are an inline SVG sprite,
and every state is said in words next to its icon.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from .headline import clock_time
from .view import ALL, HEALTH_WORDS, NO_SERVICE, STATE_WORDS, VERDICT_WORDS, paths_view
from .worldmap import world_map

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

from ..model import parse_rfc3339

UPTIME_DAYS = 90
LEVEL_WORDS = {
    "up": "All systems up",
    "global": "Global outage",
    "regional": "Regional outage",
    "isolated": "A region of ours is cut off",
    "maintenance": "Planned maintenance",
    "unknown": "Unknown",
    "degraded": "Monitoring degraded",
}
_ICONS = {
    "up": "M3 8.5l3 3 7-7",
    "down": "M4 4l8 8M12 4l-8 8",
    "regional": "M8 1.5L15 14H1zM8 6v4M8 11.5v1",
    "unknown": "M5.5 6a2.5 2.5 0 1 1 3.5 2.3c-.6.3-1 .8-1 1.5V11M8 13v.5",
    "maintenance": "M8 2a6 6 0 1 0 0 12a6 6 0 1 0 0-12M8 5v3l2 2",
    "isolated": "M8 2a6 6 0 1 0 0 12a6 6 0 1 0 0-12M3.8 3.8l8.4 8.4",
    "degraded": "M8 2v8M8 13v.5",
}
# A state or level -> its icon.
_ICON_OF = {
    "up": "up", "ok": "up",
    "down": "down", "global_outage": "down", "global": "down", "disconnected": "down",
    "regional_outage": "regional", "regional": "regional", "impaired": "regional",
    "unknown": "unknown", "stale": "unknown",
    "maintenance": "maintenance", "planned": "maintenance", "active": "maintenance",
    "ended": "up",
    "isolated": "isolated",
    "degraded": "degraded",
}
SPRITE = ('<svg class="sprite" aria-hidden="true" focusable="false">'
          + "".join(f'<symbol id="i-{name}" viewBox="0 0 16 16"><path d="{path}"/></symbol>'
                    for name, path in _ICONS.items())
          + "</svg>")
STATIC = "/status/static"


def icon(state: str) -> str:
    """The inline icon of a state (decorative: the word next to it says the state)."""
    name = _ICON_OF.get(state, "unknown")
    return f'<svg class="ic" aria-hidden="true" focusable="false"><use href="#i-{name}"/></svg>'


def badge(state: str, words: str) -> str:
    """A state in words with its icon, coloured by class."""
    return f'<span class="badge st-{escape(state)}">{icon(state)}{escape(words)}</span>'


def when(text: str | None, now: float) -> str:
    """An RFC 3339 time as a `<time>` element saying `15:39 UTC` (or `Dec 5 15:39 UTC`)."""
    ts = parse_rfc3339(text)
    if ts is None or text is None:
        return "&mdash;"
    return f'<time datetime="{escape(text)}">{escape(clock_time(ts, now))}</time>'


def _region_names(model: Mapping[str, Any]) -> dict[str, str]:
    return {r["id"]: r["name"] for r in model["regions"]}


def _regions_text(regions: Sequence[str], names: Mapping[str, str]) -> str:
    if not regions:
        return "&mdash;"
    return ", ".join(escape(names.get(r, r)) for r in regions)


# -- fragments ----------------------------------------------------------------------------


def headline_html(model: Mapping[str, Any]) -> str:
    """The banner: level in words, icon, and the sentence."""
    top = model["headline"]
    level = top["level"]
    return (f'<div class="banner lv-{escape(level)}">{icon(level)}'
            f'<p><strong class="level">{escape(LEVEL_WORDS.get(level, level))}.</strong> '
            f'<span id="headline-text">{escape(top["text"])}</span></p></div>')


def outages_html(model: Mapping[str, Any], now: float) -> str:
    """The open outages: what, scope, regions, failing at, since, detected how fast."""
    outages = model["outages"]
    if not outages:
        return '<h2>Open outages</h2><p class="none">No open outage.</p>'
    names = _region_names(model)
    rows = []
    for o in outages:
        scope = "global" if o["scope"] == "global" else "regional"
        kind = o["kind"]
        if kind == "region_isolated":
            scope_badge = badge("isolated", "Region cut off")
        elif kind == "monitoring_degraded":
            scope_badge = badge("degraded", "Our side")
        else:
            scope_badge = badge(f"{scope}_outage", scope.capitalize())
        failing = o["step"] or o["phase"]
        failing_text = (f"step {escape(failing)}" if o["step"] else escape(failing or "")) \
            if failing else "&mdash;"
        if o["reason"]:
            failing_text += f' <span class="reason">({escape(o["reason"])})</span>'
        flapping = ' <span class="tag">flapping</span>' if o["flapping"] else ""
        rows.append(
            f'<tr data-outage="{escape(o["id"])}">'
            f'<th scope="row"><a href="/status/outages/{escape(o["id"])}">'
            f'{escape(o["subject"])}</a>{flapping}</th>'
            f'<td>{scope_badge}</td><td>{_regions_text(o["regions"], names)}</td>'
            f'<td>{failing_text}</td><td>{when(o["started_at"], now)}</td>'
            f'<td>{o["detect_seconds"]:g} s</td></tr>')
    return ('<h2>Open outages</h2><div class="scroll"><table class="outages">'
            '<thead><tr><th scope="col">What</th><th scope="col">Scope</th>'
            '<th scope="col">Regions down</th><th scope="col">Failing at</th>'
            '<th scope="col">Since</th><th scope="col">Detected in</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def maintenance_html(model: Mapping[str, Any], now: float) -> str:
    """Maintenance windows: active and planned (ended ones are left out)."""
    windows = [w for w in model["maintenance"] if w["state"] != "ended"]
    if not windows:
        return '<h2>Maintenance</h2><p class="none">No maintenance planned.</p>'
    names = _region_names(model)
    items = []
    for w in sorted(windows, key=lambda w: (w["state"] != "active", w["start"] or "")):
        state_words = "In maintenance now" if w["state"] == "active" else "Planned"
        regions = f' in {_regions_text(w["regions"], names)}' if w["regions"] else ""
        reason = f': {escape(w["reason"])}' if w["reason"] else ""
        items.append(
            f'<li data-window="{escape(w["id"])}">{badge("maintenance", state_words)} '
            f'<strong>{escape(w["subject"])}</strong>{regions}, '
            f'{when(w["start"], now)} to {when(w["end"], now)}{reason}</li>')
    return f'<h2>Maintenance</h2><ul class="windows">{"".join(items)}</ul>'


def services_html(model: Mapping[str, Any]) -> str:
    """The table: a row per probe under its service, a cell per region."""
    regions = model["regions"]
    if not model["services"]:
        return '<h2>Services</h2><p class="none">No probe has reported yet.</p>'
    head = "".join(f'<th scope="col" title="{escape(r["id"])}">{escape(r["name"])}</th>'
                   for r in regions)
    bodies = []
    for service in model["services"]:
        state = service["state"]
        rows = [(f'<tr class="svc"><th scope="rowgroup" colspan="{len(regions) + 2}">'
                 f'{escape(service["label"])} {badge(state, STATE_WORDS.get(state, state))}'
                 f'</th></tr>')]
        for probe in service["probes"]:
            target = (f'<span class="target">{escape(probe["target"])}</span>'
                      if "target" in probe else "")
            step = (f'<span class="tag">failing at {escape(probe["step"])}</span>'
                    if probe["step"] else "")
            flapping = '<span class="tag">flapping</span>' if probe["flapping"] else ""
            cells = []
            for r in regions:
                verdict = probe["regions"].get(r["id"])
                where = escape(r["id"])
                if verdict is None:
                    cells.append(f'<td class="cell na" data-region="{where}">&ndash;</td>')
                else:
                    cells.append(f'<td class="cell" data-region="{where}">'
                                 f'{badge(verdict, VERDICT_WORDS.get(verdict, verdict))}</td>')
            rows.append(
                f'<tr data-probe="{escape(probe["probe"])}"><th scope="row">'
                f'<span class="probe">{escape(probe["probe"])}</span> '
                f'<span class="kind">{escape(probe["kind"])}</span>{target}{step}{flapping}</th>'
                f'<td>{badge(probe["state"], STATE_WORDS.get(probe["state"], probe["state"]))}'
                f'</td>{"".join(cells)}</tr>')
        bodies.append(f'<tbody>{"".join(rows)}</tbody>')
    return ('<h2>Services</h2><div class="scroll"><table class="services"><thead><tr>'
            f'<th scope="col">Probe</th><th scope="col">State</th>{head}</tr></thead>'
            f'{"".join(bodies)}</table></div>')


def _bar_class(day: Mapping[str, Any]) -> tuple[str, float]:
    """A day's bar: its class and height (0..1): the height says it without colour."""
    availability = day.get("availability")
    seconds = day.get("seconds") or {}
    if availability is None:
        if seconds.get("maintenance"):
            return ("ub-maint", 1.0)
        return ("ub-none", 0.15)
    if availability >= 0.999:
        return ("ub-up", 1.0)
    if availability >= 0.99:
        return ("ub-minor", 0.7)
    return ("ub-major", 0.4)


def _day_title(day: Mapping[str, Any]) -> str:
    availability = day.get("availability")
    seconds = day.get("seconds") or {}
    parts = [str(day.get("date"))]
    parts.append("no data" if availability is None else f"{availability * 100:.2f}% up")
    outage = (seconds.get("regional_outage") or 0) + (seconds.get("global_outage") or 0)
    for key, value in (("in outage", outage), ("in maintenance", seconds.get("maintenance")),
                       ("unknown", seconds.get("unknown"))):
        if value:
            parts.append(f"{value / 60:.0f} min {key}")
    return ", ".join(parts)


def uptime_bars(days: Sequence[Mapping[str, Any]]) -> str:
    """A probe's last UPTIME_DAYS days as bars (oldest left), each with its tooltip."""
    days = list(days)[-UPTIME_DAYS:]
    width = 3
    rects = []
    offset = UPTIME_DAYS - len(days)
    for i, day in enumerate(days):
        cls, height = _bar_class(day)
        h = round(20 * height, 1)
        rects.append(f'<rect class="{cls}" x="{(offset + i) * width}" y="{20 - h:g}" '
                     f'width="{width - 1}" height="{h:g}"><title>{escape(_day_title(day))}'
                     f'</title></rect>')
    return (f'<svg class="bars" viewBox="0 0 {UPTIME_DAYS * width} 20" '
            f'preserveAspectRatio="none" aria-hidden="true">{"".join(rects)}</svg>')


def uptime_html(model: Mapping[str, Any]) -> str:
    """The last 90 days per probe (from the journal), with the availability in words."""
    uptime = model["uptime"]
    if not uptime:
        return (f'<h2>Last {UPTIME_DAYS} days</h2>'
                '<p class="none">No uptime history yet.</p>')
    items = []
    for probe, report in uptime.items():
        availability = report.get("availability")
        words = "no data" if availability is None else f"{availability * 100:.3f}% up"
        items.append(f'<li><span class="probe">{escape(probe)}</span> '
                     f'<span class="avail">{escape(words)}</span>'
                     f'{uptime_bars(report.get("daily") or [])}</li>')
    return (f'<h2>Last {UPTIME_DAYS} days</h2>'
            '<p class="legend">Full bar: up all day (blue: maintenance); shorter: some '
            'downtime (70%: under 1%, 40%: more); stub: no data. Hover a day for its '
            'figures.</p>'
            f'<ul class="uptime">{"".join(items)}</ul>')


def fleet_html(model: Mapping[str, Any]) -> str:
    """Our probes per region: how many are healthy (no agent names on a public page)."""
    items = []
    for region in model["regions"]:
        health = model["region_health"].get(region["id"])
        if not health or not health["agents"]:
            continue
        if health["isolated"]:
            state, words = "isolated", "cut off: cannot reach anything"
        elif health["healthy"] == health["agents"]:
            state, words = "up", "all healthy"
        elif health["healthy"]:
            state, words = "regional_outage", (f'{health["healthy"]} of {health["agents"]} '
                                               "healthy")
        else:
            state, words = "down", "none healthy"
        items.append(f'<li>{badge(state, words)} <strong>{escape(region["name"])}</strong>: '
                     f'{health["agents"]} probe{"s" if health["agents"] != 1 else ""}</li>')
    if not items:
        return '<h2>Our probes</h2><p class="none">No probe agent yet.</p>'
    more = "" if model["public"] else ' <a href="/status/agents">Every agent</a>'
    return f'<h2>Our probes</h2><ul class="fleet">{"".join(items)}</ul>{more}'


def map_html(model: Mapping[str, Any], selection: str) -> str:
    """The map for one selection (`all`, `service:S`, `probe:P`)."""
    states = model["map"].get(selection) or model["map"].get(ALL, {})
    return world_map(model["regions"], states, VERDICT_WORDS)


def region_list(model: Mapping[str, Any], selection: str) -> str:
    """The map's regions as text (what the map says, for a phone and a screen reader)."""
    states = model["map"].get(selection) or model["map"].get(ALL, {})
    items = []
    for region in model["regions"]:
        state = states.get(region["id"], "unknown")
        items.append(f'<li data-region="{escape(region["id"])}">{escape(region["name"])} '
                     f'{badge(state, VERDICT_WORDS.get(state, state))}</li>')
    return f'<ul class="region-list" aria-label="Regions">{"".join(items)}</ul>'


def map_options(model: Mapping[str, Any], selection: str) -> str:
    """The selector's options: everything, each service, each probe."""
    options = [(ALL, "All services")]
    for service in model["services"]:
        key = f'service:{service["name"] or NO_SERVICE}'
        options.append((key, f'Service: {service["label"]}'))
        options.extend((f'probe:{p["probe"]}', f'Probe: {p["probe"]}')
                       for p in service["probes"])
    return "".join(f'<option value="{escape(k)}"{" selected" if k == selection else ""}>'
                   f'{escape(text)}</option>' for k, text in options)


def fragments(model: Mapping[str, Any], now: float) -> dict[str, str]:
    """The dynamic parts of /status by element id (what data.json carries)."""
    return {
        "headline": headline_html(model),
        "outages": outages_html(model, now),
        "maintenance": maintenance_html(model, now),
        "services": services_html(model),
        "uptime": uptime_html(model),
        "fleet": fleet_html(model),
    }


# -- pages --------------------------------------------------------------------------------


def _document(title: str, body: str, *, live: bool) -> str:
    script = f'<script src="{STATIC}/status.js" defer></script>' if live else ""
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)}</title>'
            f'<link rel="stylesheet" href="{STATIC}/status.css">'
            f'<link rel="icon" href="{STATIC}/favicon.svg" type="image/svg+xml">'
            f'{script}</head><body>{SPRITE}{body}</body></html>')


def _header(model: Mapping[str, Any], current: str) -> str:
    links = [("/status", "Status")]
    if not model["public"]:
        links.append(("/status/agents", "Agents"))
    current_mark = ' aria-current="page"'
    nav = "".join(f'<a href="{href}"{current_mark if href == current else ""}>{text}</a>'
                  for href, text in links)
    return (f'<header><h1><a href="/status">{escape(model["title"])}</a></h1>'
            f'<nav aria-label="Pages">{nav}</nav></header>')


def page_html(model: Mapping[str, Any], *, selection: str, now: float) -> str:
    """The whole /status page, current without any script."""
    parts = fragments(model, now)
    selection = selection if selection in model["map"] else ALL
    sections = (
        f'<section id="headline" class="headline" aria-live="polite">{parts["headline"]}'
        '</section>'
        f'<section id="outages" aria-live="polite">{parts["outages"]}</section>'
        f'<section id="maintenance">{parts["maintenance"]}</section>'
        f'<section id="services">{parts["services"]}</section>'
        '<section id="regions"><h2>Regions</h2>'
        '<form id="map-form" method="get" action="/status">'
        '<label for="map-select">Show the regions of</label> '
        f'<select id="map-select" name="map">{map_options(model, selection)}</select> '
        '<button type="submit">Show</button></form>'
        f'<div id="map" class="map">{map_html(model, selection)}</div>'
        f'<div id="region-list">{region_list(model, selection)}</div>'
        '<p class="legend">Circle: up. Square with a cross: down. Ring: unknown. '
        'Diamond: maintenance. Triangle: our probes there are cut off.</p></section>'
        f'<section id="uptime">{parts["uptime"]}</section>'
        f'<section id="fleet">{parts["fleet"]}</section>')
    api = "" if model["public"] else (
        '<p class="legend">For machines: <a href="/api/v1/targets">/api/v1/targets</a>, '
        '<a href="/api/v1/outages?active=true">/api/v1/outages</a>, '
        '<a href="/api/v1/agents">/api/v1/agents</a>, <a href="/api/v1/maintenance">'
        '/api/v1/maintenance</a>, <a href="/metrics">/metrics</a>.</p>')
    footer = ('<footer><p id="live" class="live" data-state="static">'
              f'Times in UTC. This page updates itself every second while open.</p>{api}'
              '</footer>')
    return _document(model["title"], f'{_header(model, "/status")}<main>{sections}</main>'
                     f'{footer}', live=True)


def _config_cell(config: Mapping[str, Any] | None) -> str:
    """An agent's probe set in words: current or outdated, and the probes it refused."""
    if config is None:
        return "<td></td>"
    refused = "".join(f"<li>{escape(line)}</li>" for line in config["refused"])
    refused_html = f'<p>Refused probes:</p><ul class="refused">{refused}</ul>' if refused else ""
    return (f'<td data-config="{escape(config["state"])}">{escape(config["words"])}'
            f"{refused_html}</td>")


def agents_page_html(model: Mapping[str, Any], now: float) -> str:
    """/status/agents: every agent with its health (not served on a public page)."""
    names = _region_names(model)
    rows = []
    agents = model.get("agents") or []
    # With a fleet file, a column for the probe set each agent runs.
    fleet = any("config" in agent for agent in agents)
    for agent in agents:
        health = agent["health"]
        rows.append(
            f'<tr data-agent="{escape(agent["id"])}"><th scope="row">{escape(agent["id"])}</th>'
            f'<td>{escape(names.get(agent["region"], agent["region"]))}</td>'
            f'<td>{badge(health, HEALTH_WORDS.get(health, health))}</td>'
            f'<td>{"yes" if agent["connected"] else "no"}</td>'
            f'<td>{when(agent["last_seen"], now)}</td>'
            f'{_config_cell(agent.get("config")) if fleet else ""}</tr>')
    config_head = '<th scope="col">Probe set</th>' if fleet else ""
    table = ('<div class="scroll"><table class="agents"><thead><tr><th scope="col">Agent</th>'
             '<th scope="col">Region</th><th scope="col">Health</th>'
             '<th scope="col">Connected</th><th scope="col">Last result</th>'
             f'{config_head}</tr></thead>'
             f'<tbody>{"".join(rows)}</tbody></table></div>') if rows else \
        '<p class="none">No agent has connected yet.</p>'
    body = (f'{_header(model, "/status/agents")}<main>'
            f'<section id="headline" class="headline">{headline_html(model)}</section>'
            f'<section id="agents"><h2>Agents</h2>{table}</section>'
            f'<section id="fleet">{fleet_html(model)}</section></main>')
    return _document(f'{model["title"]}: agents', body, live=False)


def outage_page_html(model: Mapping[str, Any], detail: Mapping[str, Any], now: float) -> str:
    """/status/outages/{id}: the record and its timeline."""
    names = _region_names(model)
    subject = (detail.get("service") or detail.get("probe") or detail.get("region")
               or "monitoring")
    kind = detail.get("kind", "probe")
    if kind == "region_isolated":
        title = f"{subject}: our probes there could not reach anything"
    elif kind == "monitoring_degraded":
        title = "Our monitoring was degraded"
    else:
        title = f"{subject}: outage"
    ended = detail.get("ended_at")
    state = badge("up", "Resolved") if ended else badge(
        f'{detail.get("scope", "regional")}_outage', "Open")
    started = parse_rfc3339(detail.get("started_at"))
    detected = parse_rfc3339(detail.get("detected_at"))
    detect = f"{detected - started:.1f} s" if started is not None and detected is not None \
        else "&mdash;"
    failing = detail.get("step") or detail.get("phase")
    facts = [
        ("State", state),
        ("Scope now", escape(str(detail.get("scope", "")))),
        ("Widest scope", escape(str(detail.get("peak_scope", "")))),
        ("Regions down now", _regions_text(detail.get("regions") or [], names)),
        ("Regions down at some point", _regions_text(detail.get("regions_ever") or [], names)),
        ("Failing at", escape(f"step {failing}" if detail.get("step") else failing or "")
         or "&mdash;"),
        ("Reason", escape(detail.get("reason") or "") or "&mdash;"),
        ("Started", when(detail.get("started_at"), now)),
        ("Detected", f'{when(detail.get("detected_at"), now)} ({detect} after it started)'),
        ("Resolved", when(ended, now) if ended else "not yet"),
    ]
    if detail.get("probes"):
        facts.insert(1, ("Probes", escape(", ".join(detail["probes"]))))
    elif detail.get("probe"):
        facts.insert(1, ("Probe", escape(str(detail["probe"]))))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    steps = []
    for entry in detail.get("timeline") or []:
        regions = entry.get("regions")
        where = f" &mdash; regions down: {_regions_text(regions, names)}" \
            if regions is not None else ""
        scope = f' ({escape(str(entry["scope"]))})' if entry.get("scope") else ""
        steps.append(f'<li>{when(entry.get("at"), now)} <strong>'
                     f'{escape(str(entry.get("event", "")).replace("_", " "))}</strong>'
                     f'{scope}{where}</li>')
    timeline = (f'<ol class="timeline">{"".join(steps)}</ol>' if steps
                else '<p class="none">No timeline recorded.</p>')
    body = (f'{_header(model, "")}<main><section id="outage" '
            f'data-outage="{escape(str(detail.get("id", "")))}">'
            f'<h2>{escape(title)}</h2><dl class="facts">{dl}</dl></section>'
            f'<section id="timeline"><h2>Timeline</h2>{timeline}</section>'
            f'{_paths_html(detail, model, names, now)}'
            '<p><a href="/status">Back to the status page</a></p></main>')
    return _document(f'{model["title"]}: {title}', body, live=False)


def _paths_html(detail: Mapping[str, Any], model: Mapping[str, Any],
                names: Mapping[str, str], now: float) -> str:
    """The outage's path traces: the summary sentence, then (not public) hops per region."""
    shown = paths_view(detail.get("paths"), public=bool(model["public"]))
    if shown is None:
        return ""
    parts = [f'<p class="paths-summary">{escape(shown["text"])}</p>']
    for region in shown["regions"]:
        rows = "".join(
            f'<li><strong>{escape(agent["agent"])}</strong> '
            f'({escape(str(agent["trigger"] or ""))}, {when(agent["taken_at"], now)}): '
            f'<ol class="hops">{"".join(f"<li>{escape(hop)}</li>" for hop in agent["hops"])}'
            f'</ol>{" reached the target" if agent["reached"] else ""}</li>'
            for agent in region["agents"])
        parts.append(f'<h3>{escape(names.get(region["region"], region["region"]))}</h3>'
                     f'<ul class="paths">{rows}</ul>')
    return f'<section id="paths"><h2>Paths</h2>{"".join(parts)}</section>'

