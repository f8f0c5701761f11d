"""A small client of the collector's HTTP API (`/api/v1/*`, `/readyz`, `/metrics`)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Self

import aiohttp

from probenet.lifecycle import EnterOnce

from .errors import ApiError, LifecycleError
from .snapshot import (
    AgentEntry,
    FleetSnapshot,
    OutageEntry,
    TargetEntry,
    parse_entries,
)

_MAX_BODY_BYTES = 16 * 1024 * 1024


class CollectorApi:
    """Reads the collector's HTTP API; every request has a deadline of `timeout_s`.

    An async context manager owning one aiohttp session. Errors of any kind (connection,
    status, malformed JSON, JSON outside the contract) surface as `ApiError`.
    """

    def __init__(self, base_url: str, *, timeout_s: float = 3.0) -> None:
        """`base_url` is like `http://127.0.0.1:9464`."""
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._lifecycle = EnterOnce("CollectorApi", LifecycleError)

    async def __aenter__(self) -> Self:
        """Open the HTTP session."""
        self._lifecycle.enter()
        # Idle connections kept for less than the collector's 10 s keep-alive (see
        # probenet.httpserve.HttpLimits), so a request never races the server's close.
        connector = aiohttp.TCPConnector(keepalive_timeout=5.0)
        self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the session; idempotent."""
        if not self._lifecycle.leave():
            return
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _get(self, path: str) -> tuple[int, bytes]:
        self._lifecycle.check_running()
        assert self._session is not None
        try:
            async with self._session.get(self.base_url + path) as response:
                body = await response.content.read(_MAX_BODY_BYTES + 1)
                if len(body) > _MAX_BODY_BYTES:
                    raise ApiError(path, "response larger than 16 MiB")
                return response.status, body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError(path, f"request failed: {exc or type(exc).__name__}") from exc

    async def get_json(self, path: str) -> Any:
        """GET `path` and decode its JSON body (status 200 required)."""
        status, body = await self._get(path)
        if status != 200:
            raise ApiError(path, f"HTTP {status}: {body[:200].decode(errors='replace')}")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(path, f"not JSON: {exc}") from exc

    async def ready(self) -> bool:
        """True when `/readyz` answers 200; False on any other status or error."""
        try:
            status, _ = await self._get("/readyz")
        except ApiError:
            return False
        return status == 200

    async def targets(self) -> list[TargetEntry]:
        """`/api/v1/targets`."""
        path = "/api/v1/targets"
        return parse_entries(TargetEntry, await self.get_json(path), path)

    async def outages(self, *, active: bool | None = None) -> list[OutageEntry]:
        """`/api/v1/outages` (open ones only with `active=True`)."""
        path = "/api/v1/outages"
        if active is not None:
            path += f"?active={'true' if active else 'false'}"
        return parse_entries(OutageEntry, await self.get_json(path), path)

    async def agents(self) -> list[AgentEntry]:
        """`/api/v1/agents`."""
        path = "/api/v1/agents"
        return parse_entries(AgentEntry, await self.get_json(path), path)

    async def metrics(self) -> str:
        """The Prometheus text exposition of `/metrics`."""
        status, body = await self._get("/metrics")
        if status != 200:
            raise ApiError("/metrics", f"HTTP {status}")
        return body.decode(errors="replace")

    async def snapshot(self) -> FleetSnapshot:
        """Targets, open outages and agents, fetched concurrently."""
        targets, outages, agents = await asyncio.gather(
            self.targets(), self.outages(active=True), self.agents())
        return FleetSnapshot(targets, outages, agents, time.time())
