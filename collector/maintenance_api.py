"""`/api/v1/maintenance`: list maintenance windows; create and delete them with the admin token.

    GET    /api/v1/maintenance[?active=true|false]   every window (config and API), by start
    GET    /api/v1/maintenance/{id}                  one window
    POST   /api/v1/maintenance                       create (JSON body)       -> 201, the window
    DELETE /api/v1/maintenance/{id}                  delete an API window     -> 200, the window

Writes need `Authorization: Bearer <token>`, the content of `api.admin_token_file`, compared
in constant time. Without that file the write API is off (404 saying so). Errors are JSON
`{"error": ..., "field": ...}`: 401 no bearer token, 403 a wrong one, 400 a bad body (naming
the field), 413 a body over MAX_BODY_BYTES, 404 an unknown id, 409 a config window (only
the config file changes it) or too many windows, 503 the journal cannot be written. Every
refusal is counted in probenet_maintenance_api_rejections_total{reason}.

A window is journaled before it is answered (it survives a restart), then added to the
store, whose subscribers re-apply coverage to the classifier at once.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .errors import JournalError
from .maintenance import (
    MAX_API_WINDOWS,
    MAX_BODY_BYTES,
    ConfigWindowError,
    MaintenanceError,
    MaintenanceStore,
    MaintenanceWindow,
    UnknownWindowError,
    parse_window_json,
)
from .query import BadQueryError, json_error, parse_bool

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.core import Metric

    from .classify import Classifier
    from .journal import Journal

log = logging.getLogger(__name__)

PATH = "/api/v1/maintenance"


def _error(status: int, reason: str | None, store: MaintenanceStore, message: str, *,
           field: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    if reason is not None:
        store.count_rejection(reason)
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers)


class MaintenanceRoutes:
    """The handlers, on a store (windows, token) and the journal (API windows' durability)."""

    def __init__(self, store: MaintenanceStore, journal: Journal) -> None:
        """Serve `store`; journal API windows in `journal` before answering."""
        self._store = store
        self._journal = journal

    def register(self, app: web.Application) -> None:
        """Add the routes to `app`."""
        app.router.add_get(PATH, self._list)
        app.router.add_post(PATH, self._create)
        app.router.add_get(PATH + "/{id}", self._get)
        app.router.add_delete(PATH + "/{id}", self._delete)

    # -- reads -----------------------------------------------------------------------------

    async def _list(self, request: web.Request) -> web.Response:
        store = self._store
        try:
            active = parse_bool("active", request.query.get("active"))
        except BadQueryError as exc:
            return json_error(400, exc.parameter, str(exc))
        now = store.clock()
        windows = store.windows()
        if active is not None:
            windows = [w for w in windows if w.active_at(now) is active]
        return web.json_response([w.to_json(now) for w in windows])

    async def _get(self, request: web.Request) -> web.Response:
        store = self._store
        window = store.get(request.match_info["id"])
        if window is None:
            return web.json_response({"error": "no maintenance window with this id",
                                      "field": "id"}, status=404)
        return web.json_response(window.to_json(store.clock()))

    # -- writes ----------------------------------------------------------------------------

    def _refuse(self, request: web.Request) -> web.Response | None:
        """The answer refusing a write, or None when it may go ahead."""
        store = self._store
        token = store.admin_token
        if token is None:
            return _error(404, "write_disabled", store,
                          "the maintenance write API is off: set api.admin_token_file in "
                          "the collector config to enable it")
        scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _error(401, "unauthenticated", store,
                          "authentication required: send Authorization: Bearer <admin token>",
                          headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="probenet"'})
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return _error(403, "forbidden", store, "the bearer token is not the admin token")
        return None

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None when it is longer than MAX_BODY_BYTES.

        The server's body-deadline middleware (probenet.httpserve) has read it already,
        bounded by the application's client_max_size (aiohttp's own 413 beyond that).
        """
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            return None
        raw = await request.read()
        return None if len(raw) > MAX_BODY_BYTES else raw

    async def _parse(self, request: web.Request) -> MaintenanceWindow | web.Response:
        """The window a POST asks for, or the answer refusing it."""
        store = self._store
        raw = await self._read_body(request)
        if raw is None:
            return _error(413, "too_large", store,
                          f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            return _error(400, "invalid", store, f"the body is not valid JSON: {exc}"[:300])
        try:
            return parse_window_json(body, now=store.clock())
        except MaintenanceError as exc:
            return _error(400, "invalid", store, str(exc), field=exc.field)

    async def _create(self, request: web.Request) -> web.Response:
        store = self._store
        refused = self._refuse(request)
        if refused is not None:
            return refused
        window = await self._parse(request)
        if isinstance(window, web.Response):
            return window
        if store.count_open_api(store.clock()) >= MAX_API_WINDOWS:
            return _error(409, "too_many", store,
                          f"at most {MAX_API_WINDOWS} API windows may be planned or active "
                          "at once: delete some first")
        try:
            self._journal.add_maintenance_window(window)
        except JournalError as exc:
            log.warning("maintenance window not journaled", extra={"error": str(exc)})
            return _error(503, None, store, "the journal cannot be written")
        store.add(window)
        log.info("maintenance window created", extra={
            "window": window.id, "probes": ",".join(window.probes),
            "services": ",".join(window.services), "regions": ",".join(window.regions),
            "reason": window.reason})
        return web.json_response(window.to_json(store.clock()), status=201,
                                 headers={hdrs.LOCATION: f"{PATH}/{window.id}"})

    async def _delete(self, request: web.Request) -> web.Response:
        store = self._store
        refused = self._refuse(request)
        if refused is not None:
            return refused
        window_id = request.match_info["id"]
        try:
            store.check_deletable(window_id)
        except UnknownWindowError:
            return _error(404, "unknown_id", store, "no maintenance window with this id",
                          field="id")
        except ConfigWindowError as exc:
            return _error(409, "config_window", store, str(exc), field="id")
        try:
            self._journal.delete_maintenance_window(window_id)
        except JournalError as exc:
            log.warning("maintenance window delete not journaled", extra={"error": str(exc)})
            return _error(503, None, store, "the journal cannot be written")
        window = store.delete(window_id)
        log.info("maintenance window deleted", extra={"window": window.id})
        return web.json_response(window.to_json(store.clock()))


def add_maintenance_routes(app: web.Application, store: MaintenanceStore,
                           journal: Journal) -> None:
    """Register /api/v1/maintenance on `app` (HttpApi's single call)."""
    MaintenanceRoutes(store, journal).register(app)


class MaintenanceMetrics(Collector):
    """probenet_maintenance_active{probe} and probenet_maintenance_api_rejections_total{reason}.

    Scrape-time: `probenet_maintenance_active` is 1 for each probe a window covers in every
    region (`Classifier.maintenance_probes`) and absent otherwise (a probe covered in some
    regions only can still have outages in the others: its alerts must not be silenced).
    """

    def __init__(self, store: MaintenanceStore, classifier: Classifier) -> None:
        """Read `store` and `classifier` at each scrape."""
        self._store = store
        self._classifier = classifier

    def describe(self) -> list[Metric]:
        """Nothing: scrape-time families are not checked for name clashes upfront."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The two families."""
        active = GaugeMetricFamily(
            "probenet_maintenance_active",
            "1 while maintenance windows cover the probe in every region (absent otherwise).",
            labels=["probe"])
        for probe in sorted(self._classifier.maintenance_probes()):
            active.add_metric([probe], 1.0)
        yield active
        rejections = CounterMetricFamily(
            "probenet_maintenance_api_rejections",
            "Requests to the maintenance API refused, by reason.", labels=["reason"])
        for reason, count in sorted(self._store.rejections.items()):
            rejections.add_metric([reason], float(count))
        yield rejections
