"""The status page over real HTTP from a real collector fed over real gRPC: the redirect from
`/`, security headers, ETag and 304 on data.json, an outage's page with its timeline, the
static files, and a public page that holds no agent, target URL or unlisted service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from probenet.collector.config import parse_config
from probenet.collector.server import CollectorService
from support.collector_client import TestAgent, collector_yaml

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

DEADLINE_S = 15.0
TIMEOUT = aiohttp.ClientTimeout(total=DEADLINE_S)
REGIONS = ("eu-central", "us-east", "ap-south")
CSP = ("default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
       "object-src 'none'")
PLACES = """
regions:
  eu-central: {name: Frankfurt, location: [50.1, 8.7]}
  us-east: {name: Virginia, location: [38.9, -77.0]}
  ap-south: {name: Mumbai, location: [19.1, 72.9]}
"""


@contextlib.asynccontextmanager
async def collector(tmp_path, extra: str = "") -> AsyncIterator[CollectorService]:
    config = parse_config(collector_yaml(str(tmp_path / "journal.db"),
                                         extra=PLACES + "tick: 100ms\n" + extra))
    async with CollectorService(config) as service:
        yield service


@contextlib.asynccontextmanager
async def agents(service: CollectorService) -> AsyncIterator[list[TestAgent]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(
            TestAgent(service.grpc_address, f"agent-{region}", region, interval_ms=200,
                      labels={"network": f"as-{region}"}))
            for region in REGIONS]


async def report(fleet: list[TestAgent], *, failing: set[str] = frozenset()) -> None:
    """One round: every agent reports shop-web and shop-api and blog; `failing` fail."""
    for agent in fleet:
        results = []
        for probe, service in (("shop-web", "shop"), ("shop-api", "shop"), ("blog", "blog")):
            ok = probe not in failing
            results.append(agent.result(
                probe, service=service, success=ok, target=f"https://{probe}.internal.example/",
                phase="connect", reason="connect_refused"))
        await agent.send(results)


async def get(service: CollectorService, path: str,
              headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, \
            session.get(service.http.url + path, headers=headers or {},
                        allow_redirects=False) as response:
        return response.status, response.headers, await response.read()


async def data(service: CollectorService) -> dict[str, Any]:
    status, _, body = await get(service, "/status/data.json")
    assert status == 200
    return json.loads(body)


async def not_modified(service: CollectorService) -> str | None:
    """The ETag of data.json once asking again with it answers 304 (None: it changed).

    The model may change between the two requests (an agent's report lands, the uptime bars
    refresh): then the answer is a 200 with a new ETag, and the pair is tried again.
    """
    _, headers, _ = await get(service, "/status/data.json")
    etag = headers["ETag"]
    status, headers, body = await get(service, "/status/data.json", {"If-None-Match": etag})
    if status == 200:
        assert headers["ETag"] != etag
        return None
    assert (status, body, headers["ETag"]) == (304, b"", etag)
    return str(etag)


async def until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_root_redirects_to_the_status_page(tmp_path):
    async with collector(tmp_path) as service:
        status, headers, _ = await get(service, "/")
        assert (status, headers["Location"]) == (302, "/status")
        status, headers, _ = await get(service, "/status/")
        assert (status, headers["Location"]) == (302, "/status")


async def test_every_status_answer_carries_the_security_headers(tmp_path):
    async with collector(tmp_path) as service:
        for path, content_type in (("/status", "text/html"),
                                   ("/status/data.json", "application/json"),
                                   ("/status/agents", "text/html"),
                                   ("/status/static/status.css", "text/css"),
                                   ("/status/static/status.js", "text/javascript"),
                                   ("/status/static/favicon.svg", "image/svg+xml"),
                                   ("/status/outages/nope", "text/plain")):
            status, headers, _ = await get(service, path)
            assert status in {200, 404}, path
            assert headers["Content-Security-Policy"] == CSP, path
            assert headers["X-Content-Type-Options"] == "nosniff", path
            assert headers["Content-Type"].startswith(content_type), path


async def test_the_page_follows_the_fleet_and_data_json_answers_304_until_it_changes(tmp_path):
    async with collector(tmp_path) as service, agents(service) as fleet:
        await report(fleet)

        async def everything_up():
            model = await data(service)
            return model if model["headline"]["text"] == "Everything is up." else None
        model = await until(everything_up, "everything up")
        assert [s["label"] for s in model["services"]] == ["blog", "shop"]
        assert {a["id"] for a in model["agents"]} == {f"agent-{r}" for r in REGIONS}

        etag = await until(lambda: not_modified(service), "a 304 for an unchanged data.json")

        status, _, page = await get(service, "/status")
        assert status == 200
        assert b"Everything is up." in page
        assert b'<script src="/status/static/status.js" defer></script>' in page
        # The uptime bars come from the journal: every probe with its 90 days.
        uptime = page.split(b'<ul class="uptime">', 1)[1].split(b"</ul>", 1)[0]
        assert uptime.count(b"<li>") == 3
        assert uptime.count(b"<rect ") == 3 * 90

        for _ in range(2):
            await report(fleet, failing={"shop-web", "shop-api"})

        async def global_outage():
            model = await data(service)
            return model if model["headline"]["level"] == "global" else None
        model = await until(global_outage, "a global outage on the page")
        assert model["headline"]["text"].startswith("shop: down in every region since ")
        assert model["headline"]["text"].endswith("; our probes are healthy.")
        status, headers, _ = await get(service, "/status/data.json", {"If-None-Match": etag})
        assert status == 200
        assert headers["ETag"] != etag

        # The uptime bars follow the state change (they are cached for a minute otherwise).
        async def outage_in_bars():
            model = await data(service)
            today = model["uptime"]["shop-web"]["daily"][-1]
            return today if today["seconds"].get("global_outage", 0) > 0 else None
        today = await until(outage_in_bars, "the outage in shop-web's uptime bar")
        assert today["availability"] < 1.0

        outage = next(o for o in model["outages"] if o["kind"] == "service")
        status, _, page = await get(service, f"/status/outages/{outage['id']}")
        assert status == 200
        text = page.decode()
        assert "shop: outage" in text
        assert re.search(r"<strong>started</strong>", text)
        assert re.search(r"<strong>opened</strong>", text)
        assert "Mumbai, Frankfurt, Virginia" in text  # regions by their display names

        for _ in range(3):
            await report(fleet)

        async def resolved():
            model = await data(service)
            return model if not model["outages"] else None
        await until(resolved, "the outage to resolve")
        status, _, page = await get(service, f"/status/outages/{outage['id']}")
        assert b"<strong>resolved</strong>" in page
        assert b"Resolved" in page


async def test_unknown_or_malformed_outage_ids_are_404(tmp_path):
    async with collector(tmp_path) as service:
        for outage_id in ("0" * 32, "a" * 65, "%00", "..%2F..%2Fetc", "x y"):
            status, _, _ = await get(service, f"/status/outages/{outage_id}")
            assert status == 404, outage_id
        status, _, _ = await get(service, "/status/static/..%2Fview.py")
        assert status == 404


async def test_static_files_answer_304_to_their_etag(tmp_path):
    async with collector(tmp_path) as service:
        status, headers, body = await get(service, "/status/static/status.js")
        assert status == 200
        assert b"eval(" not in body
        assert b"new Function" not in body
        status, _, _ = await get(service, "/status/static/status.js",
                                 {"If-None-Match": headers["ETag"]})
        assert status == 304


@pytest.mark.parametrize("query", ["map=%00", "map=" + "x" * 5000, "map=probe:nope",
                                   "map=<script>", "a=b&map=all&map=service:shop"])
async def test_any_selection_renders_the_page(tmp_path, query):
    async with collector(tmp_path) as service:
        status, _, page = await get(service, f"/status?{query}")
        assert status == 200
        assert b"<script>" not in page
        assert b'<option value="all" selected>' in page


async def test_a_public_page_holds_only_the_listed_services_and_nothing_of_the_fleet(tmp_path):
    public = "status_page: {public: true, title: Acme status, services: [shop]}\n"
    async with collector(tmp_path, public) as service, agents(service) as fleet:
        for _ in range(2):
            await report(fleet, failing={"shop-web", "blog"})

        async def outage_shown():
            model = await data(service)
            return model if model["outages"] else None
        model = await until(outage_shown, "the shop outage")
        for path in ("/status", "/status/data.json",
                     f"/status/outages/{model['outages'][0]['id']}"):
            status, _, body = await get(service, path)
            assert status == 200, path
            text = body.decode()
            for hidden in ("agent-eu-central", "agent-us-east", "as-eu-central", "internal",
                           "https://", "blog", "/status/agents"):
                assert hidden not in text, (path, hidden)
            assert "Acme status" in text
            assert "shop-web" in text
        status, _, _ = await get(service, "/status/agents")
        assert status == 404
        blog = [r for r in service.classifier.open_outages() if r.probe == "blog"]
        assert blog, "blog is down too, only not shown"
        status, _, _ = await get(service, f"/status/outages/{blog[0].id}")
        assert status == 404
