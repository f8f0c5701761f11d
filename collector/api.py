"""The collector's HTTP surface (aiohttp): /metrics, /api/v1/{targets,outages,agents}, probes.

Runs on the collector's event loop, so every handler reads the classifier between two
batches, never in the middle of one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Self

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from probenet.addresses import format_host, split_listen
from probenet.httpserve import serve_app
from probenet.lifecycle import EnterOnce

from .errors import JournalError, LifecycleError, ServiceError
from .model import AgentView, OutageRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from prometheus_client import CollectorRegistry

    from .classify import Classifier
    from .journal import Journal

log = logging.getLogger(__name__)

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100

_INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>probenet collector</title></head>
<body><h1>probenet collector</h1><ul>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="/api/v1/targets">/api/v1/targets</a>: every probe's state and region verdicts</li>
<li><a href="/api/v1/outages?active=true">/api/v1/outages?active=true</a>: open outages
 (<a href="/api/v1/outages">all</a>, <code>?limit=N</code>)</li>
<li><a href="/api/v1/agents">/api/v1/agents</a>: agents</li>
<li><a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a></li>
</ul></body></html>
"""


class BadQueryError(ValueError):
    """A query parameter has a value the API does not accept."""

    def __init__(self, parameter: str, message: str) -> None:
        """`parameter` is named in the 400 answer."""
        super().__init__(message)
        self.parameter = parameter


def _parse_active(value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered in {"true", "1"}:
        return True
    if lowered in {"false", "0"}:
        return False
    raise BadQueryError("active", f"active must be true or false, not {value!r}")


def _parse_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise BadQueryError("limit", f"limit must be an integer from 1 to {MAX_LIMIT}, "
                                     f"not {value!r}")
    return int(value)


def _json_error(status: int, parameter: str | None, message: str) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    return web.json_response(body, status=status)


class HttpApi:
    """The HTTP server: an async context manager bound to `listen.http` (port 0 allowed)."""

    def __init__(self, address: str, *, classifier: Classifier, journal: Journal,
                 registry: CollectorRegistry,
                 ready: Callable[[], bool],
                 registered_agents: Sequence[tuple[str, str]] = ()) -> None:
        """`ready` answers /readyz; `registered_agents` (id, region) list never-seen agents."""
        self._host, self._port = split_listen(address)
        self._classifier = classifier
        self._journal = journal
        self._registry = registry
        self._ready = ready
        self._registered = tuple(registered_agents)
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
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/v1/targets", self._targets)
        app.router.add_get("/api/v1/outages", self._outages)
        app.router.add_get("/api/v1/agents", self._agents)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
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
        return web.Response(text=_INDEX, content_type="text/html")

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self._registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def _targets(self, _request: web.Request) -> web.Response:
        return web.json_response([view.to_json() for view in self._classifier.targets()])

    async def _outages(self, request: web.Request) -> web.Response:
        try:
            active = _parse_active(request.query.get("active"))
            limit = _parse_limit(request.query.get("limit"))
        except BadQueryError as exc:
            return _json_error(400, exc.parameter, str(exc))
        records: list[OutageRecord] = []
        if active is not False:
            records.extend(self._classifier.open_outages())
        if active is not True:
            try:
                records.extend(self._journal.outages(active=False, limit=limit))
            except JournalError as exc:
                log.warning("journal read failed", extra={"error": str(exc)})
                return _json_error(503, None, "the outage journal cannot be read")
        records.sort(key=lambda r: (-r.started_at, r.id))
        return web.json_response([record.to_json() for record in records[:limit]])

    async def _agents(self, _request: web.Request) -> web.Response:
        views = {view.id: view for view in self._classifier.agents()}
        for agent_id, region in self._registered:
            if agent_id not in views:
                views[agent_id] = AgentView(agent_id, region, connected=False, impaired=False,
                                            stale=True, last_seen=None)
        return web.json_response([views[k].to_json() for k in sorted(views)])

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

