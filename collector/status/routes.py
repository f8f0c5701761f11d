"""The status page's aiohttp handlers, each answer with strict security headers.

/status, /status/outages/{id}, /status/agents, /status/data.json (ETag, 304) and the
static files (/status/static/...).

Every answer is rendered from one snapshot of the classifier (taken between two batches,
on the collector's loop) through the page model of `view.build_page`. The uptime bars come
from the journal, read in a worker thread and cached for UPTIME_REFRESH_S, or until a shown
probe's state changes (so the bars never trail an outage that opened or resolved); an
outage's timeline is read the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import hdrs, web

from ..errors import JournalError
from ..journal import Journal
from ..model import AgentConfigView, AgentView, OutageKind, OutageRecord, rfc3339
from .render import (
    agents_page_html,
    fragments,
    map_html,
    map_options,
    outage_page_html,
    page_html,
    region_list,
)
from .view import ALL, StatusInputs, StatusSettings, build_page

if TYPE_CHECKING:
    from ..classify import Classifier

log = logging.getLogger(__name__)

UPTIME_DAYS = 90
UPTIME_REFRESH_S = 60.0
UPTIME_RECHECK_S = 3.0
# Outage ids are uuid4 hex; anything else is not one (404 without touching the journal).
_OUTAGE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# A `?map=` selection longer than this is not one of ours (the default is shown).
_MAX_SELECTION = 300

SECURITY_HEADERS = {
    # Everything from the collector itself; no inline script or style, no eval, no framing.
    "Content-Security-Policy": ("default-src 'self'; base-uri 'none'; form-action 'self'; "
                                "frame-ancestors 'none'; object-src 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_STATIC_TYPES = {
    "status.css": "text/css; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


class MaintenanceWindowLike(Protocol):
    """A maintenance window (collector.maintenance.MaintenanceWindow)."""

    def to_json(self, now: float) -> dict[str, Any]:
        """The API's JSON with the state at `now`."""
        ...


class MaintenanceSource(Protocol):
    """Where the windows come from (collector.maintenance.MaintenanceStore)."""

    def windows(self) -> Sequence[MaintenanceWindowLike]:
        """Every window."""
        ...


class UptimeReportLike(Protocol):
    """One probe's uptime (collector.uptime.UptimeReport)."""

    def to_json(self) -> dict[str, Any]:
        """availability, seconds, regions, daily."""
        ...


def _journal_detail(journal_path: str, outage_id: str,
                    open_records: Sequence[OutageRecord]) -> dict[str, Any] | None:
    with Journal(journal_path) as reader:
        events = reader.events(outage_id)
    record = next((r for r in open_records if r.id == outage_id), None)
    if record is None and events:
        record = events[-1][2]
    if record is None:
        return None
    timeline: list[dict[str, Any]] = [
        {"at": rfc3339(record.started_at), "event": "started", "scope": None, "regions": None}]
    for _, event, snapshot in events:
        at = {"opened": snapshot.detected_at, "resolved": snapshot.ended_at}.get(event)
        timeline.append({"at": rfc3339(at), "event": event, "scope": str(snapshot.scope),
                         "regions": list(snapshot.regions)})
    return {**record.to_json(), "timeline": timeline}


async def journal_outage_detail(journal_path: str, outage_id: str,
                                open_records: Sequence[OutageRecord]) -> dict[str, Any] | None:
    """An outage's JSON and a timeline from the journal's events, read in a worker thread.

    The fallback when no richer source (collector.uptime_api.outage_detail) is given.
    """
    return await asyncio.to_thread(_journal_detail, journal_path, outage_id, open_records)


UptimeSource = Callable[[str, Sequence[str], int, float],
                        Awaitable[Mapping[str, "UptimeReportLike"]]]
"""(journal path, probes, days, now) -> probe -> report (reads the journal off the loop)."""

OutageDetailSource = Callable[[str, str, Sequence[OutageRecord]],
                              Awaitable[Mapping[str, Any] | None]]
"""(journal path, outage id, open records) -> the record's JSON with `timeline`, or None."""


def _static_files() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in _STATIC_TYPES}


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(request: web.Request, etag: str) -> bool:
    header = request.headers.get(hdrs.IF_NONE_MATCH, "")
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


class StatusPage:
    """The status page's routes over one collector's classifier, journal and config."""

    def __init__(self, *, classifier: Classifier, journal_path: str,
                 settings: StatusSettings,
                 registered_agents: Sequence[tuple[str, str]] = (),
                 maintenance: MaintenanceSource | None = None,
                 uptime: UptimeSource | None = None,
                 outage_detail: OutageDetailSource | None = None,
                 clock: Callable[[], float] = time.time,
                 uptime_refresh_s: float = UPTIME_REFRESH_S,
                 agent_config: Callable[[str], AgentConfigView] | None = None) -> None:
        """`uptime` gives the bars, `outage_detail` an outage's page; `clock` gives now.

        `agent_config` (with a fleet file) gives each agent's remote-config state.
        """
        self._agent_config = agent_config
        self._classifier = classifier
        self._journal_path = journal_path
        self.settings = settings
        self._registered = tuple(registered_agents)
        self._maintenance = maintenance
        self._uptime_source = uptime
        self._outage_detail = outage_detail or journal_outage_detail
        self._clock = clock
        self._uptime_refresh_s = uptime_refresh_s
        self._uptime: dict[str, dict[str, Any]] = {}
        self._uptime_at: float | None = None
        # The shown probes' states when the cached bars were read: a change refreshes them.
        self._uptime_states: frozenset[tuple[str, str]] = frozenset()
        self._seen_states: frozenset[tuple[str, str]] = frozenset()
        # After a refresh a state change started, one more once the change is surely
        # journaled (the group commit may not have written it when the first one read).
        self._uptime_recheck_at: float | None = None
        self._uptime_task: asyncio.Task[None] | None = None
        self._static = _static_files()
        self._static_etags = {name: _etag(body) for name, body in self._static.items()}

    def register(self, app: web.Application) -> None:
        """Add the page's routes to `app`; its cleanup ends a journal read under way."""
        router = app.router
        router.add_get("/status", self._page)
        router.add_get("/status/", self._to_status)
        router.add_get("/status/data.json", self._data)
        router.add_get("/status/agents", self._agents)
        router.add_get("/status/outages/{outage_id}", self._outage)
        router.add_get("/status/static/{name}", self._static_file)
        app.on_cleanup.append(self._cleanup)

    async def _cleanup(self, _app: web.Application) -> None:
        task, self._uptime_task = self._uptime_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the model ------------------------------------------------------------------------

    def _agent_views(self) -> list[AgentView]:
        views = {view.id: view for view in self._classifier.agents()}
        for agent_id, region in self._registered:
            views.setdefault(agent_id, AgentView(agent_id, region, connected=False,
                                                 impaired=False, stale=True, last_seen=None))
        if self._agent_config is not None:
            return [replace(views[k], config=self._agent_config(k)) for k in sorted(views)]
        return [views[k] for k in sorted(views)]

    def model(self, now: float | None = None) -> dict[str, Any]:
        """The page model now (one classifier snapshot, the cached uptime)."""
        now = self._clock() if now is None else now
        classifier = self._classifier
        windows = [w.to_json(now) for w in self._maintenance.windows()] \
            if self._maintenance is not None else []
        targets = classifier.targets()
        # The shown probes' states, for the uptime cache (no second snapshot per request).
        self._seen_states = frozenset((t.probe, str(t.state)) for t in targets
                                      if self.settings.shows_service(t.service))
        inputs = StatusInputs(
            targets=targets, outages=classifier.open_outages(),
            agents=self._agent_views(), isolated_regions=classifier.isolated_regions(),
            monitoring_degraded=classifier.monitoring_degraded, now=now,
            maintenance=windows, uptime=self._uptime)
        return build_page(inputs, self.settings)

    async def _refresh_uptime(self) -> None:
        """Read every shown probe's uptime from the journal (a worker thread), cache it."""
        source = self._uptime_source
        if source is None:
            return
        targets = [t for t in self._classifier.targets()
                   if self.settings.shows_service(t.service)]
        probes = [t.probe for t in targets]
        self._uptime_states = self._seen_states = frozenset(
            (t.probe, str(t.state)) for t in targets)
        now = self._clock()
        try:
            reports = await source(self._journal_path, probes, UPTIME_DAYS, now)
        except Exception as exc:
            # The bars are an extra: the page is served without fresh ones (logged once a
            # refresh period), whatever went wrong reading them.
            log.warning("uptime read failed", extra={"error": repr(exc)})
            return
        finally:
            self._uptime_at = now
        self._uptime = {probe: report.to_json() for probe, report in reports.items()}

    async def _ensure_uptime(self, *, wait: bool) -> None:
        """Start a refresh when the cache is old; with `wait`, wait for a first one."""
        if self._uptime_source is None:
            return
        now = self._clock()
        # Compared with the states the previous answer showed: a change refreshes the bars
        # from the next poll on.
        changed = self._uptime_at is not None and self._seen_states != self._uptime_states
        recheck = self._uptime_recheck_at is not None and now >= self._uptime_recheck_at
        stale = self._uptime_at is None or changed or recheck or \
            now - self._uptime_at >= self._uptime_refresh_s
        if changed:
            self._uptime_recheck_at = now + UPTIME_RECHECK_S
        elif recheck:
            self._uptime_recheck_at = None
        if stale and (self._uptime_task is None or self._uptime_task.done()):
            self._uptime_task = asyncio.create_task(self._refresh_uptime(),
                                                    name="status-uptime")
        if wait and self._uptime_at is None and self._uptime_task is not None:
            await asyncio.shield(self._uptime_task)

    # -- handlers -------------------------------------------------------------------------

    @staticmethod
    def _respond(body: str | bytes, content_type: str, *, status: int = 200,
                 etag: str | None = None) -> web.Response:
        headers = dict(SECURITY_HEADERS)
        headers[hdrs.CACHE_CONTROL] = "no-cache"
        if etag is not None:
            headers[hdrs.ETAG] = etag
        data = body.encode() if isinstance(body, str) else body
        return web.Response(body=data, status=status, headers=headers,
                            content_type=content_type.split(";", maxsplit=1)[0],
                            charset="utf-8" if "charset" in content_type else None)

    @staticmethod
    def _not_modified(etag: str) -> web.Response:
        return web.Response(status=304, headers={**SECURITY_HEADERS, hdrs.ETAG: etag,
                                                 hdrs.CACHE_CONTROL: "no-cache"})

    async def _to_status(self, _request: web.Request) -> web.Response:
        raise web.HTTPFound("/status", headers=SECURITY_HEADERS)

    async def _page(self, request: web.Request) -> web.Response:
        await self._ensure_uptime(wait=True)
        now = self._clock()
        model = self.model(now)
        selection = request.query.get("map", ALL)
        if len(selection) > _MAX_SELECTION:
            selection = ALL
        return self._respond(page_html(model, selection=selection, now=now),
                             "text/html; charset=utf-8")

    async def _data(self, request: web.Request) -> web.Response:
        await self._ensure_uptime(wait=False)
        now = self._clock()
        model = self.model(now)
        model["html"] = {**fragments(model, now), "map": map_html(model, ALL),
                         "map_options": map_options(model, ALL),
                         "region_list": region_list(model, ALL)}
        body = json.dumps(model, separators=(",", ":"), sort_keys=True).encode()
        etag = _etag(body)
        if _matches(request, etag):
            return self._not_modified(etag)
        return self._respond(body, "application/json; charset=utf-8", etag=etag)

    async def _agents(self, _request: web.Request) -> web.Response:
        if self.settings.page.public:
            return self._respond("not found", "text/plain; charset=utf-8", status=404)
        now = self._clock()
        return self._respond(agents_page_html(self.model(now), now), "text/html; charset=utf-8")

    async def _outage(self, request: web.Request) -> web.Response:
        outage_id = request.match_info["outage_id"]
        not_found = self._respond("no such outage", "text/plain; charset=utf-8", status=404)
        if _OUTAGE_ID.fullmatch(outage_id) is None:
            return not_found
        open_records = self._classifier.open_outages()
        try:
            detail = await self._outage_detail(self._journal_path, outage_id, open_records)
        except (JournalError, OSError, ValueError) as exc:
            log.warning("outage read failed", extra={"error": str(exc)})
            return self._respond("the outage journal cannot be read",
                                 "text/plain; charset=utf-8", status=503)
        if detail is None or not self._shows(detail):
            return not_found
        now = self._clock()
        return self._respond(outage_page_html(self.model(now), detail, now),
                             "text/html; charset=utf-8")

    def _shows(self, detail: Mapping[str, Any]) -> bool:
        if detail.get("kind") in {str(OutageKind.PROBE), str(OutageKind.SERVICE)}:
            return self.settings.shows_service(detail.get("service"))
        return True

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self._static.get(name)
        if body is None:
            return self._respond("not found", "text/plain; charset=utf-8", status=404)
        etag = self._static_etags[name]
        if _matches(request, etag):
            return self._not_modified(etag)
        return self._respond(body, _STATIC_TYPES[name], etag=etag)
