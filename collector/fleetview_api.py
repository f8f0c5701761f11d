"""/api/v1/fleet/{targets,outages,agents}: the read-only view merged across collector groups.

Served only with `sharding.peers` (404 otherwise). A request is validated against the local
endpoint first (a bad parameter gets the local 400), then each peer group is asked for its
plain /api/v1/{resource} with the same query string (never its /api/v1/fleet/*: no
recursion), trying the group's URLs in order and taking the first that answers 200 with a
valid JSON list; each try is bounded by `sharding.timeout`. A group that does not answer is
listed with its error and makes the answer incomplete, but never fails the request. The
merge rules are collector/fleetview.py's.

One aiohttp ClientSession, owned by the application (opened on its startup, closed on its
cleanup), carries every peer request. `probenet_fleet_peer_up{shard}` is 1 when the last
request to that group got an answer, 0 when it did not (absent until the fleet view first
asks the group).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from yarl import URL

from .errors import JournalError
from .fleetview import LOCAL, RESOURCES, GroupAnswer, PeerAnswerError, cut, merge, peer_items
from .metrics import FleetViewMetrics
from .query import BadQueryError, json_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

    from prometheus_client import CollectorRegistry

    from .config import ShardingConfig, ShardPeer
    from .fleetview import Resource

    # The local endpoint's items for (resource, query): raises BadQueryError or JournalError.
    LocalItems = Callable[[Resource, Mapping[str, str]], Awaitable["LocalAnswer"]]

log = logging.getLogger(__name__)

# The largest body taken from one peer (a fleet's /api/v1/targets runs to tens of MiB).
MAX_PEER_BODY_BYTES = 256 * 1024 * 1024
_READ_CHUNK = 256 * 1024
_SESSION = web.AppKey("fleet_peer_session", aiohttp.ClientSession)


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """The local group's items for a resource (frozen values), and the `limit` asked for."""

    items: Sequence[Any]  # each has `to_json()`
    limit: int | None = None


class PeerError(Exception):
    """A peer URL gave no usable answer; the message says why."""


class FleetView:
    """The /api/v1/fleet/* routes of one collector (see the module docstring)."""

    def __init__(self, sharding: ShardingConfig | None, *, local: LocalItems,
                 metrics: FleetViewMetrics | None = None) -> None:
        """`local` gives the local items; `metrics` records each group's answer (optional)."""
        self._sharding = sharding
        self._local = local
        self._metrics = metrics
        self._peers: tuple[ShardPeer, ...] = tuple(sharding.peers) if sharding else ()
        # Whether each group answered last time: a change is logged, not every request.
        self._answered: dict[int, bool] = {}

    @classmethod
    def build(cls, sharding: ShardingConfig | None, *, local: LocalItems,
              registry: CollectorRegistry | None) -> FleetView:
        """With the metrics on `registry` when the view is served at all."""
        metrics = (FleetViewMetrics(registry)
                   if registry is not None and sharding is not None and sharding.peers
                   else None)
        return cls(sharding, local=local, metrics=metrics)

    @property
    def enabled(self) -> bool:
        """True when there are peer groups to merge with."""
        return bool(self._peers)

    def register(self, app: web.Application) -> None:
        """Add the routes (404 when disabled) and, when enabled, the peer session."""
        for resource in RESOURCES:
            app.router.add_get(f"/api/v1/fleet/{resource}", self._handler(resource))
        if self.enabled:
            app.cleanup_ctx.append(self._session)

    async def _session(self, app: web.Application) -> AsyncIterator[None]:
        assert self._sharding is not None
        timeout = aiohttp.ClientTimeout(total=self._sharding.timeout)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False,
                                         raise_for_status=False) as session:
            app[_SESSION] = session
            yield

    def _handler(self, resource: Resource) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return await self._answer(request, resource)
        return handle

    async def _answer(self, request: web.Request, resource: Resource) -> web.Response:
        sharding = self._sharding
        if sharding is None or not self._peers:
            return json_error(404, None, "no fleet view: this collector has no sharding.peers "
                                         f"configured (use /api/v1/{resource} for its own shard)")
        try:
            local = await self._local(resource, request.query)
        except BadQueryError as exc:
            return json_error(400, exc.parameter, str(exc))
        except JournalError as exc:
            log.warning("journal read failed", extra={"error": str(exc)})
            local = None
        session = request.app[_SESSION]
        query = request.rel_url.raw_query_string
        peers = await asyncio.gather(*(self._ask_group(session, peer, resource, query)
                                       for peer in self._peers))
        body = await asyncio.to_thread(_merged_body, resource, sharding, local, peers)
        response = web.Response(body=body, content_type="application/json", charset="utf-8")
        response.enable_compression()
        return response

    async def _ask_group(self, session: aiohttp.ClientSession, peer: ShardPeer,
                         resource: Resource, query: str) -> GroupAnswer:
        """The first answer of the group's URLs, in order; or why none answered."""
        errors: list[str] = []
        for base in peer.urls:
            url = f"{base}/api/v1/{resource}" + (f"?{query}" if query else "")
            try:
                items = await _fetch(session, url, resource)
            except PeerError as exc:
                errors.append(f"{base}: {exc}")
                continue
            self._record(peer.shard, up=True)
            return GroupAnswer(peer.shard, base, items)
        self._record(peer.shard, up=False, error="; ".join(errors))
        return GroupAnswer.missing(peer.shard, "; ".join(errors))

    def _record(self, shard: int, *, up: bool, error: str = "") -> None:
        """Set the group's metric; log when it stops (or starts again) answering."""
        if self._metrics is not None:
            self._metrics.peer_up.labels(str(shard)).set(1 if up else 0)
        before = self._answered.get(shard)
        self._answered[shard] = up
        if not up and before is not False:
            log.warning("peer group does not answer: the fleet view is incomplete",
                        extra={"shard": shard, "error": cut(error)})
        elif up and before is False:
            log.info("peer group answers again", extra={"shard": shard})


async def _fetch(session: aiohttp.ClientSession, url: str,
                 resource: Resource) -> list[dict[str, Any]]:
    """GET one peer URL: its items, or PeerError (status, timeout, refused, bad body)."""
    try:
        async with session.get(URL(url, encoded=True), allow_redirects=False) as response:
            if response.status != 200:
                text = await response.content.read(_READ_CHUNK)
                detail = text.decode("utf-8", "replace").strip()
                raise PeerError(f"HTTP {response.status}" + (f": {cut(detail)}" if detail
                                                               else ""))
            data = bytearray()
            async for chunk in response.content.iter_chunked(_READ_CHUNK):
                data += chunk
                if len(data) > MAX_PEER_BODY_BYTES:
                    raise PeerError(f"answer over {MAX_PEER_BODY_BYTES} bytes")
    except TimeoutError as exc:
        raise PeerError("no answer within sharding.timeout") from exc
    except aiohttp.ClientError as exc:
        raise PeerError(cut(str(exc) or type(exc).__name__)) from exc
    try:
        return await asyncio.to_thread(_decode, resource, bytes(data))
    except (ValueError, PeerAnswerError) as exc:
        raise PeerError(f"not a /api/v1/{resource} answer: {cut(str(exc))}") from exc


def _decode(resource: Resource, data: bytes) -> list[dict[str, Any]]:
    """In a worker thread: a peer's body as items (ValueError when it is not one)."""
    return peer_items(resource, json.loads(data))


def _merged_body(resource: Resource, sharding: ShardingConfig, local: LocalAnswer | None,
                 peers: Sequence[GroupAnswer]) -> bytes:
    """In a worker thread: the local items as JSON, merged with the peers', encoded."""
    if local is None:
        mine = GroupAnswer.missing(sharding.shard, "the local outage journal cannot be read")
        limit = None
    else:
        mine = GroupAnswer(sharding.shard, LOCAL, [item.to_json() for item in local.items])
        limit = local.limit
    merged = merge(resource, [mine, *peers], shards=sharding.shards, limit=limit)
    return json.dumps(merged).encode()
