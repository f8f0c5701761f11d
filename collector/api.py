"""The collector's HTTP surface (aiohttp): /metrics, /api/v1/{targets,outages,agents}, probes.

Runs on the collector's event loop, so every handler reads the classifier between two
batches, never in the middle of one. Answers that grow with the fleet are streamed in slices
with the loop free between them (and gzipped when the client accepts it); the outage journal
is read in a worker thread, through a connection of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

from aiohttp import hdrs, web

from probenet.addresses import format_host, split_listen
from probenet.httpserve import serve_app
from probenet.lifecycle import EnterOnce

from .errors import JournalError, LifecycleError, ServiceError
from .exposition import ExpositionFormat, gzip_chunks
from .fleetview_api import FleetView, LocalAnswer
from .journal import Journal
from .maintenance_api import add_maintenance_routes
from .model import AgentConfigView, AgentView, OutageRecord
from .query import BadQueryError, json_error, parse_bool, parse_count
from .uptime_api import UptimeApi

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Mapping, Sequence

    from prometheus_client import CollectorRegistry

    from .classify import Classifier
    from .config import ShardingConfig
    from .exposition import MetricsPage
    from .maintenance import MaintenanceStore
    from .status.routes import StatusPage

log = logging.getLogger(__name__)

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100

# A JSON list answer is encoded a slice at a time, the event loop free between slices: at most
# this many items, and no more items once this much time went by (1,000 targets x 50 regions
# take ~45 ms to encode in one go; 10,000 outage records ~330 ms).
JSON_SLICE_ITEMS = 500
JSON_SLICE_S = 0.002

_INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>probenet collector</title></head>
<body><h1>probenet collector</h1><ul>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="/api/v1/targets">/api/v1/targets</a>: every probe's state and region verdicts</li>
<li><a href="/api/v1/outages?active=true">/api/v1/outages?active=true</a>: open outages
 (<a href="/api/v1/outages">all</a>, <code>?limit=N</code>)</li>
<li><a href="/api/v1/agents">/api/v1/agents</a>: agents</li>
<li><a href="/api/v1/maintenance">/api/v1/maintenance</a>: maintenance windows
 (<code>?active=true</code>; POST and DELETE with the admin token)</li>
<li><code>/api/v1/uptime?probe=P&amp;days=30</code> (or <code>?service=S</code>): uptime
 reports; <code>/api/v1/outages/{id}</code>: one outage with its timeline</li>
<li><a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a></li>
</ul></body></html>
"""


def _parse_active(value: str | None) -> bool | None:
    """`?active=`: true/1 or false/0 (any case); absent: None (all records)."""
    return parse_bool("active", value)


def _parse_limit(value: str | None) -> int:
    """`?limit=`: an integer from 1 to MAX_LIMIT in ASCII digits; absent: DEFAULT_LIMIT."""
    return parse_count("limit", value, default=DEFAULT_LIMIT, maximum=MAX_LIMIT)


class _JsonItem(Protocol):
    """What a JSON list answer holds: targets, agents, outage records (frozen values)."""

    def to_json(self) -> dict[str, Any]:
        """The item as DESIGN.md's JSON."""
        ...


_Item = TypeVar("_Item", bound=_JsonItem)


def accepts_gzip(accept_encoding: str) -> bool:
    """True when an Accept-Encoding header value allows gzip (`gzip` or `*` with q > 0)."""
    weights: dict[str, float] = {}
    for element in accept_encoding.split(","):
        coding, *params = (part.strip() for part in element.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if coding:
            weights[coding.lower()] = weight
    return weights.get("gzip", weights.get("*", 0.0)) > 0


def _encode_slice(items: list[_Item], *, first: bool) -> bytes:
    """The next slice of `items` as JSON list elements, taken off the front of the list.

    A slice is up to JSON_SLICE_ITEMS items, or fewer once JSON_SLICE_S went by; the separator
    is in front unless `first`. The slices joined between `[` and `]` are byte for byte what
    `json.dumps(list)` (and so `web.json_response`) gives. Encoded items are dropped from the
    list at once, so a large snapshot is freed a slice at a time (10,000 outage records take
    ~6 ms to free in one go).
    """
    deadline = time.perf_counter() + JSON_SLICE_S
    stop = min(len(items), JSON_SLICE_ITEMS)
    parts: list[str] = []
    for item in items[:stop]:
        parts.append(json.dumps(item.to_json()))
        if time.perf_counter() >= deadline:
            break
    del items[:len(parts)]
    text = ", ".join(parts)
    return (text if first else f", {text}").encode()


async def _json_list_chunks(items: list[_Item]) -> AsyncGenerator[bytes, None]:
    """`items` as one JSON list, a slice at a time, the loop free between slices."""
    yield b"["
    first = True
    while items:
        yield _encode_slice(items, first=first)
        first = False
        # response.write() waits only when the socket's buffer is full: let the loop run.
        await asyncio.sleep(0)
    yield b"]"


async def _stream_json_list(request: web.Request, items: list[_Item]) -> web.StreamResponse:
    """Answer `items` as one JSON list, streamed; `items` is consumed (emptied) on the way.

    `items` is a snapshot: a list of frozen values nobody else holds or changes.
    """
    return await _stream(request, "application/json; charset=utf-8", _json_list_chunks(items),
                         vary=hdrs.ACCEPT_ENCODING)


async def _stream(request: web.Request, content_type: str,
                  chunks: AsyncGenerator[bytes, None], *, vary: str) -> web.StreamResponse:
    """Answer `chunks` (not started yet) as one streamed body, gzipped when accepted.

    Gzip is deflated in a worker thread (`gzip_chunks`). HEAD gets the headers GET would
    and no body (aiohttp would send one even to HEAD). When the client goes away mid-body,
    `chunks` is closed unfinished (the page then leaves the details store unpruned).
    """
    gzipped = accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
    response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: content_type, hdrs.VARY: vary})
    if gzipped:
        response.headers[hdrs.CONTENT_ENCODING] = "gzip"
    try:
        await response.prepare(request)
        if request.method == hdrs.METH_HEAD:
            return response
        body = gzip_chunks(chunks) if gzipped else chunks
        try:
            async for chunk in body:
                await response.write(chunk)
        finally:
            await body.aclose()
    finally:
        await chunks.aclose()
    await response.write_eof()
    return response


def _read_outages(journal_path: str, open_records: Sequence[OutageRecord],
                  limit: int) -> list[OutageRecord]:
    """In a worker thread: the newest `limit` of `open_records` and the journal's resolved ones.

    The journal is read through a connection of its own (SQLite in WAL mode: a reader beside
    the collector's writer, seeing committed transactions only), so reading and parsing
    thousands of records holds neither the event loop nor the collector's connection. An
    outage that resolved after `open_records` was taken is in both: its resolved record wins.
    """
    with Journal(journal_path) as reader:
        resolved = reader.outages(active=False, limit=limit)
    records = {record.id: record for record in open_records}
    records.update((record.id, record) for record in resolved)
    return sorted(records.values(), key=lambda r: (-r.started_at, r.id))[:limit]


class HttpApi:
    """The HTTP server: an async context manager bound to `listen.http` (port 0 allowed)."""

    def __init__(self, address: str, *, classifier: Classifier, journal: Journal,
                 page: MetricsPage,
                 ready: Callable[[], bool],
                 registered_agents: Sequence[tuple[str, str]] = (),
                 maintenance: MaintenanceStore | None = None,
                 status: StatusPage | None = None,
                 agent_config: Callable[[str], AgentConfigView] | None = None,
                 sharding: ShardingConfig | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        """`page` renders /metrics; `ready` answers /readyz.

        `registered_agents` (id, region) list never-seen agents. `maintenance`: the windows
        /api/v1/maintenance serves (and, with its admin token, lets clients change).
        `sharding` with peers serves /api/v1/fleet/* (its metrics on `registry`).
        """
        self._host, self._port = split_listen(address)
        self._classifier = classifier
        self._journal = journal
        self._page = page
        self._ready = ready
        self._registered = tuple(registered_agents)
        self._maintenance = maintenance
        self._status = status  # the status page (/status...); `/` redirects to it
        # With a fleet file: each agent's remote-config fields (collector/fleet.py).
        self._agent_config = agent_config
        self._fleet_view = FleetView.build(sharding, local=self.local_items, registry=registry)
        self._runner: web.AppRunner | None = None
        self._lifecycle = EnterOnce("HttpApi", LifecycleError)
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL of the bound server, e.g. http://127.0.0.1:9464."""
        return f"http://{format_host(self._host)}:{self.port}"

    def app(self) -> web.Application:
        """The aiohttp application (exposed for tests with aiohttp's test client)."""
        app = web.Application()
        app.router.add_get("/", self._index)
        if self._status is not None:
            self._status.register(app)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/v1/targets", self._targets)
        app.router.add_get("/api/v1/outages", self._outages)
        app.router.add_get("/api/v1/agents", self._agents)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self._maintenance is not None:
            add_maintenance_routes(app, self._maintenance, self._journal)
        UptimeApi(classifier=self._classifier, journal=self._journal).register(app)
        self._fleet_view.register(app)
        return app

    async def __aenter__(self) -> Self:
        """Bind and start serving."""
        self._lifecycle.enter()
        try:
            site = await serve_app(self.app(), self._host, self._port)
        except OSError as exc:
            raise ServiceError(f"cannot listen on HTTP {self._host}:{self._port}: "
                               f"{exc.strerror}") from exc
        self._runner = site.runner
        self.port = site.port
        log.info("HTTP listening", extra={"url": self.url})
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop serving (idempotent)."""
        if not self._lifecycle.leave():
            return
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- handlers ------------------------------------------------------------------------

    async def _index(self, _request: web.Request) -> web.Response:
        if self._status is not None:
            raise web.HTTPFound("/status")
        return web.Response(text=_INDEX, content_type="text/html")

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        # Streamed as the page renders, the event loop free between chunks; a 200 MB page is
        # never held whole. Format as prometheus_client negotiates it; gzip when accepted.
        fmt = ExpositionFormat.negotiate(request.headers.get(hdrs.ACCEPT, ""))
        return await _stream(request, fmt.content_type, self._page.chunks(fmt=fmt),
                             vary="Accept, Accept-Encoding")

    # The JSON lists: a snapshot of frozen values taken at once, then streamed in slices (a
    # fleet's answers run to megabytes); what changes meanwhile is in the next answer.

    async def _targets(self, request: web.Request) -> web.StreamResponse:
        return await _stream_json_list(request, self._classifier.targets())

    async def _outages(self, request: web.Request) -> web.StreamResponse:
        try:
            records = await self._outage_records(request.query)
        except BadQueryError as exc:
            return json_error(400, exc.parameter, str(exc))
        except JournalError as exc:
            log.warning("journal read failed", extra={"error": str(exc)})
            return json_error(503, None, "the outage journal cannot be read")
        return await _stream_json_list(request, records)

    async def _outage_records(self, query: Mapping[str, str]) -> list[OutageRecord]:
        """/api/v1/outages' records for `query` (BadQueryError, JournalError)."""
        active = _parse_active(query.get("active"))
        limit = _parse_limit(query.get("limit"))
        open_records = self._classifier.open_outages() if active is not False else []
        if active is True:
            return sorted(open_records, key=lambda r: (-r.started_at, r.id))[:limit]
        return await asyncio.to_thread(_read_outages, self._journal.path, open_records, limit)

    async def local_items(self, resource: str, query: Mapping[str, str]) -> LocalAnswer:
        """The items /api/v1/{resource} answers for `query`: the fleet view's local part."""
        if resource == "targets":
            return LocalAnswer(self._classifier.targets())
        if resource == "outages":
            return LocalAnswer(await self._outage_records(query),
                               limit=_parse_limit(query.get("limit")))
        return LocalAnswer(self._agent_views())

    async def _agents(self, request: web.Request) -> web.StreamResponse:
        return await _stream_json_list(request, self._agent_views())

    def _agent_views(self) -> list[AgentView]:
        """/api/v1/agents' entries: every agent seen, and the registered ones never seen."""
        views = {view.id: view for view in self._classifier.agents()}
        for agent_id, region in self._registered:
            if agent_id not in views:
                views[agent_id] = AgentView(agent_id, region, connected=False, impaired=False,
                                            stale=True, last_seen=None)
        ordered: list[AgentView] = [views[k] for k in sorted(views)]
        if self._agent_config is not None:
            ordered = [replace(v, config=self._agent_config(v.id)) for v in ordered]
        del views  # the list alone holds the views: they are freed as they are sent
        return ordered

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

