"""Maintenance windows through a real collector: the API's auth and validation, no outage
during a window while every region reports failures, and a window surviving a restart.

Real parts: the collector in process (CollectorService) or as a child process
(CollectorProcess, for the restart), real gRPC agents on loopback, real HTTP requests.
"""

from __future__ import annotations

import json
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import aiohttp

from probenet.collector.config import parse_config
from probenet.collector.maintenance import MAX_BODY_BYTES
from probenet.collector.model import rfc3339
from probenet.collector.server import CollectorService
from support.collector_client import (
    DEADLINE_S,
    TestAgent,
    collector_yaml,
    http_get,
    http_json,
    metric_value,
)
from support.collector_process import CollectorProcess

if TYPE_CHECKING:
    from pathlib import Path

FLEET = (("fra-1", "eu"), ("iad-1", "us"), ("sin-1", "ap"))
TOKEN = "maint-admin-token-7f3a"


async def call(method: str, url: str, *, token: str | None = None,
               authorization: str | None = None, payload: Any = None,
               raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """One HTTP request: (status, headers, decoded JSON body)."""
    headers: dict[str, str] = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if authorization is not None:
        headers["Authorization"] = authorization
    data = raw if raw is not None else (
        None if payload is None else json.dumps(payload).encode())
    if data is not None:
        headers["Content-Type"] = "application/json"
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.request(method, url, headers=headers, data=data) as response:
        text = await response.text()
        return response.status, dict(response.headers), json.loads(text) if text else None


def window_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"probes": ["web"], "end": rfc3339(time.time() + 3600),
                            "reason": "database upgrade"}
    body.update(changes)
    return body


def config_text(tmp_path: Path, *, token: bool = True, extra: str = "") -> str:
    if token:
        (tmp_path / "admin").write_text(TOKEN + "\n")
        extra = f"api: {{admin_token_file: '{tmp_path / 'admin'}'}}\n" + extra
    return collector_yaml(str(tmp_path / "journal.db"), extra=extra)


async def fail_everywhere(fleet: list[TestAgent], rounds: int = 3) -> None:
    for _ in range(rounds):
        for agent in fleet:
            await agent.send([agent.result("web", success=False), agent.result("api")])


async def rejections(url: str, reason: str) -> float | None:
    text = (await http_get(url + "/metrics"))[2]
    return metric_value(text, "probenet_maintenance_api_rejections_total", reason=reason)


async def test_the_write_api_is_off_without_an_admin_token(tmp_path):
    config = parse_config(config_text(tmp_path, token=False))
    async with CollectorService(config) as service:
        url = service.http.url + "/api/v1/maintenance"
        status, _, body = await call("POST", url, token=TOKEN, payload=window_body())
        assert status == 404
        assert "write API is off" in body["error"]
        assert "api.admin_token_file" in body["error"]
        status, _, _ = await call("DELETE", url + "/anything", token=TOKEN)
        assert status == 404
        # Reading still works.
        assert await http_json(url) == []
        assert await rejections(service.http.url, "write_disabled") == 2


async def test_writes_need_the_admin_bearer_token(tmp_path):
    config = parse_config(config_text(tmp_path))
    async with CollectorService(config) as service:
        url = service.http.url + "/api/v1/maintenance"
        status, headers, body = await call("POST", url, payload=window_body())
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in body["error"]
        status, _, _ = await call("POST", url, authorization=f"Basic {TOKEN}",
                                  payload=window_body())
        assert status == 401
        status, _, body = await call("POST", url, token=TOKEN + "x", payload=window_body())
        assert status == 403
        assert "not the admin token" in body["error"]
        status, _, _ = await call("DELETE", url + "/some-id", token="wrong")
        assert status == 403
        # Nothing was created by the refused requests.
        assert await http_json(url) == []
        assert await rejections(service.http.url, "unauthenticated") == 2
        assert await rejections(service.http.url, "forbidden") == 2
        status, _, created = await call("POST", url, token=TOKEN, payload=window_body())
        assert status == 201, created
        status, _, _ = await call("DELETE", f"{url}/{created['id']}", token=TOKEN)
        assert status == 200


async def test_bad_input_is_refused_naming_the_field(tmp_path):
    config = parse_config(config_text(tmp_path))
    async with CollectorService(config) as service:
        url = service.http.url + "/api/v1/maintenance"
        now = time.time()
        cases = [
            (window_body(colour="red"), "colour", "unknown key"),
            (window_body(probes=[]), "probes", "must name probes or services"),
            (window_body(start=rfc3339(now + 7200), end=rfc3339(now + 3600)), "end",
             "must be after start"),
            (window_body(end="next tuesday"), "end", "is not an RFC 3339 time"),
            (window_body(reason="x" * 501), "reason", "at most 500 characters"),
            (window_body(probes=["has space"]), "probes", "invalid name"),
            (window_body(start=rfc3339(now - 120), end=rfc3339(now - 60)), "end",
             "in the past"),
        ]
        for payload, field, fragment in cases:
            status, _, body = await call("POST", url, token=TOKEN, payload=payload)
            assert status == 400, (payload, body)
            assert body["field"] == field, body
            assert fragment in body["error"], body
        status, _, body = await call("POST", url, token=TOKEN, raw=b"{not json")
        assert status == 400
        assert "not valid JSON" in body["error"]
        status, _, body = await call("POST", url, token=TOKEN,
                                     raw=b" " * (MAX_BODY_BYTES + 1))
        assert status == 413
        assert str(MAX_BODY_BYTES) in body["error"]
        status, _, body = await call("DELETE", url + "/no-such-window", token=TOKEN)
        assert status == 404
        assert body["field"] == "id"
        status, _, body = await call("GET", url + "?active=maybe")
        assert status == 400
        assert body["parameter"] == "active"
        assert await http_json(url) == []
        assert await rejections(service.http.url, "invalid") == len(cases) + 1
        assert await rejections(service.http.url, "too_large") == 1
        assert await rejections(service.http.url, "unknown_id") == 1


async def test_no_outage_opens_during_a_window_and_one_opens_after_it(tmp_path):
    start = rfc3339(time.time() - 60)
    end = rfc3339(time.time() + 3600)
    config = parse_config(config_text(tmp_path, extra=(
        "maintenance:\n"
        f"  - {{services: [billing], start: '{start}', end: '{end}', reason: planned}}\n")))
    async with CollectorService(config) as service, AsyncExitStack() as stack:
        base = service.http.url
        status, _, created = await call("POST", base + "/api/v1/maintenance", token=TOKEN,
                                        payload=window_body(reason="db upgrade"))
        assert status == 201, created
        assert created["state"] == "active"
        assert created["source"] == "api"
        assert created["probes"] == ["web"]
        fleet = [await stack.enter_async_context(TestAgent(service.grpc_address, a, r))
                 for a, r in FLEET]
        await fail_everywhere(fleet)

        assert await http_json(base + "/api/v1/outages?active=true") == []
        targets = {t["probe"]: t for t in await http_json(base + "/api/v1/targets")}
        assert targets["web"]["state"] == "maintenance"
        assert targets["web"]["regions"] == {"ap": "maintenance", "eu": "maintenance",
                                             "us": "maintenance"}
        assert targets["api"]["state"] == "up"
        text = (await http_get(base + "/metrics"))[2]
        assert metric_value(text, "probenet_maintenance_active", probe="web") == 1
        assert metric_value(text, "probenet_maintenance_active", probe="api") is None
        # The failures are recorded and exported as usual.
        assert metric_value(text, "probe_success", probe="web", region="eu") == 0
        assert metric_value(text, "probenet_target_state", probe="web",
                            state="maintenance") == 1

        windows = await http_json(base + "/api/v1/maintenance?active=true")
        assert sorted(w["source"] for w in windows) == ["api", "config"]
        config_id = next(w["id"] for w in windows if w["source"] == "config")
        assert config_id.startswith("cfg-")
        status, _, body = await call("DELETE", f"{base}/api/v1/maintenance/{config_id}",
                                     token=TOKEN)
        assert status == 409
        assert "config file" in body["error"]

        # Ending the window while the failures go on opens the outage at once.
        status, _, _ = await call("DELETE", f"{base}/api/v1/maintenance/{created['id']}",
                                  token=TOKEN)
        assert status == 200
        [opened] = await http_json(base + "/api/v1/outages?active=true")
        assert (opened["probe"], opened["scope"]) == ("web", "global")
        assert opened["started_at"] >= created["start"]
        targets = {t["probe"]: t for t in await http_json(base + "/api/v1/targets")}
        assert targets["web"]["state"] == "global_outage"
        text = (await http_get(base + "/metrics"))[2]
        assert metric_value(text, "probenet_maintenance_active", probe="web") is None


async def test_an_api_window_survives_a_collector_restart(tmp_path):
    (tmp_path / "admin").write_text(TOKEN)
    collector = CollectorProcess(
        tmp_path, extra=f"api: {{admin_token_file: '{tmp_path / 'admin'}'}}\n")
    try:
        await collector.start()
        url = collector.url + "/api/v1/maintenance"
        status, _, created = await call("POST", url, token=TOKEN,
                                        payload=window_body(regions=["eu", "us", "ap"]))
        assert status == 201, created
        collector.stop()  # SIGKILL: the window was journaled before the 201
        await collector.start()
        [restored] = await http_json(url)
        assert restored == {**created, "state": "active"}
        async with AsyncExitStack() as stack:
            fleet = [await stack.enter_async_context(
                TestAgent(collector.grpc_address, a, r)) for a, r in FLEET]
            await fail_everywhere(fleet)
            assert await http_json(collector.url + "/api/v1/outages?active=true") == []
            targets = {t["probe"]: t for t in await http_json(collector.url + "/api/v1/targets")}
            assert targets["web"]["state"] == "maintenance"
        status, _, _ = await call("DELETE", f"{url}/{created['id']}", token=TOKEN)
        assert status == 200
        collector.stop()
        await collector.start()
        assert await http_json(url) == []
    finally:
        collector.stop()
