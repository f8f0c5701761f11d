"""The JSON API at fleet size, against a real collector over real HTTP: thousands of targets, agents
and outage records stream as the same bytes `json_response` gave, gzip when asked, in slices
with the event loop free between them; bad queries and an unreadable journal are still answered
before any streaming starts."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from probenet.collector import api
from probenet.collector.config import parse_config
from probenet.collector.model import OutageEvent, OutageRecord, OutageTransition, Scope
from probenet.collector.server import CollectorService
from probenet.httpserve import serve_app
from support.classifier_fleet import Down, Fleet
from support.collector_client import ManualClock, collector_yaml

PROBES = tuple(f"probe-{n:04d}" for n in range(2_000))
REGIONS = {f"region-{n:02d}": 1 for n in range(5)}
TIMEOUT = aiohttp.ClientTimeout(total=60)


async def fetch(url: str, *, accept_encoding: str = "identity") -> tuple[int, Any, bytes]:
    """GET `url` as sent: (status, headers, raw body bytes, not decompressed)."""
    async with aiohttp.ClientSession(timeout=TIMEOUT, auto_decompress=False) as session, \
            session.get(url, headers={"Accept-Encoding": accept_encoding}) as response:
        return response.status, response.headers, await response.read()


def json_bytes(items: list[Any]) -> bytes:
    """What the endpoints answered before streaming: `web.json_response`'s body."""
    return json.dumps([item.to_json() for item in items]).encode()


@pytest.fixture
async def service(tmp_path):
    # A registry with agents that never connect: /api/v1/agents lists them too.
    registered = "".join(f"  - {{id: never-{n}, region: region-00}}\n" for n in range(50))
    agents = "".join(f"  - {{id: {region}-1, region: {region}}}\n" for region in REGIONS)
    config = parse_config(collector_yaml(str(tmp_path / "journal.db"),
                                         extra="agents:\n" + agents + registered))
    clock = ManualClock()
    async with CollectorService(config, clock=clock) as running:
        yield running, clock


@pytest.fixture
async def fleet(service):
    running, clock = service
    fleet = Fleet(REGIONS, PROBES, start=clock.now, classifier=running.classifier)
    # 40 probes down everywhere: open global outages, beside 1,960 probes up.
    fleet.rounds(3, Down(probes=PROBES[:40]))
    assert len(running.classifier.open_outages()) >= 40
    return fleet


def resolved_record(n: int, start: float) -> OutageRecord:
    return OutageRecord.probe_outage(
        f"old-{n:05d}", PROBES[n % len(PROBES)], service=None, scope=Scope.REGIONAL,
        regions=("region-01",), phase="connect", reason="connect_refused",
        started_at=start - 10_000 - n, detected_at=start - 9_990 - n).ended(start - 9_000 - n)


def journal_resolved(running: CollectorService, count: int, start: float) -> None:
    running.journal.commit([
        OutageTransition(OutageEvent.RESOLVED, resolved_record(n, start), start)
        for n in range(count)])


# -- the same answers, at size -----------------------------------------------------------------


async def test_thousands_of_targets_stream_as_the_same_bytes(service, fleet):
    running, _ = service
    expected = json_bytes(running.classifier.targets())
    status, headers, body = await fetch(running.http.url + "/api/v1/targets")
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert "Content-Encoding" not in headers
    assert body == expected
    views = json.loads(body)
    assert [view["probe"] for view in views] == sorted(PROBES)
    assert {view["state"] for view in views} == {"up", "global_outage"}
    assert all(len(view["regions"]) == len(REGIONS) for view in views)


async def test_agents_with_never_seen_registered_ones(service, fleet):
    running, _ = service
    status, _, body = await fetch(running.http.url + "/api/v1/agents")
    assert status == 200
    agents = json.loads(body)
    assert [agent["id"] for agent in agents] == sorted(
        [*fleet.agents, *(f"never-{n}" for n in range(50))])
    never = next(agent for agent in agents if agent["id"] == "never-7")
    assert never == {"id": "never-7", "region": "region-00", "connected": False,
                     "impaired": False, "stale": True, "last_seen": None, "labels": {}}
    seen = {view.id: view for view in running.classifier.agents()}
    assert [a for a in agents if a["id"] in seen] == [seen[a].to_json() for a in sorted(seen)]


async def test_ten_thousand_outage_records_open_and_resolved(service, fleet):
    running, clock = service
    journal_resolved(running, 10_000, clock.now)
    open_records = running.classifier.open_outages()
    resolved = running.journal.outages(active=False, limit=10_000)
    assert len(resolved) == 10_000
    base = running.http.url + "/api/v1/outages"

    newest_first = sorted([*open_records, *resolved], key=lambda r: (-r.started_at, r.id))
    status, _, body = await fetch(base + "?limit=10000")
    assert status == 200
    assert body == json_bytes(newest_first[:10_000])

    status, _, body = await fetch(base + "?active=false&limit=10000")
    assert (status, body) == (200, json_bytes(resolved))

    status, _, body = await fetch(base + "?active=true&limit=10000")
    assert status == 200
    assert body == json_bytes(sorted(open_records, key=lambda r: (-r.started_at, r.id)))

    status, _, body = await fetch(base)  # the default limit
    assert (status, body) == (200, json_bytes(newest_first[:api.DEFAULT_LIMIT]))


async def test_an_outage_resolved_while_the_journal_is_read_is_listed_once(service, fleet):
    # The open records are taken first, the journal read after: a record in both (resolved in
    # between) is listed once, as resolved.
    running, clock = service
    [first, *_] = running.classifier.open_outages()
    resolved = first.ended(clock.now)
    running.journal.commit([OutageTransition(OutageEvent.RESOLVED, resolved, clock.now)])
    status, _, body = await fetch(running.http.url + "/api/v1/outages?limit=10000")
    assert status == 200
    records = json.loads(body)
    listed = [record for record in records if record["id"] == first.id]
    assert listed == [resolved.to_json()]
    assert len({record["id"] for record in records}) == len(records)


# -- gzip ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/targets", "/api/v1/agents",
                                  "/api/v1/outages?limit=10000"])
async def test_gzip_when_asked_and_only_then(service, fleet, path):
    running, clock = service
    journal_resolved(running, 2_000, clock.now)
    url = running.http.url + path
    _, _, plain = await fetch(url)
    status, headers, body = await fetch(url, accept_encoding="gzip, deflate")
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Vary"] == "Accept-Encoding"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert gzip.decompress(body) == plain
    assert len(body) < len(plain) / 5
    for refused in ("identity", "deflate", "gzip;q=0", ""):
        status, headers, body = await fetch(url, accept_encoding=refused)
        assert status == 200
        assert "Content-Encoding" not in headers, refused
        assert body == plain, refused


@pytest.mark.parametrize(("header", "gzip_ok"), [
    ("gzip", True), ("GZip", True), ("deflate, gzip;q=0.5", True), ("br;q=1.0, gzip; q=0.8", True),
    ("*", True), ("*;q=0.1", True), ("gzip;q=0, *", False), ("gzip;q=0", False),
    ("gzip;q=nonsense", False), ("identity", False), ("deflate, br", False), ("", False),
    ("x-gzip-not", False),
])
def test_accept_encoding_is_read_as_rfc_9110_says(header, gzip_ok):
    assert api.accepts_gzip(header) is gzip_ok


async def test_head_sends_the_headers_and_no_body(service, fleet):
    running, _ = service
    url = running.http.url + "/api/v1/targets"
    _, _, plain = await fetch(url)
    # One connection: a body sent after a HEAD's headers would break the GET after it.
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(timeout=TIMEOUT, auto_decompress=False,
                                     connector=connector) as session:
        for encoding in ("gzip", "identity", "gzip"):
            headers = {"Accept-Encoding": encoding}
            async with session.head(url, headers=headers) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "application/json; charset=utf-8"
                assert response.headers.get("Content-Encoding") == (
                    "gzip" if encoding == "gzip" else None)
                assert await response.read() == b""
            async with session.get(url, headers=headers) as response:
                body = await response.read()
                assert response.status == 200
                assert (gzip.decompress(body) if encoding == "gzip" else body) == plain


# -- answered before streaming starts --------------------------------------------------------------


async def test_an_unreadable_journal_is_a_503_and_open_outages_still_answer(service, fleet):
    running, clock = service
    journal_resolved(running, 10, clock.now)
    running.journal.db.execute("UPDATE outages SET record = 'not json' WHERE id = 'old-00003'")
    for query in ("", "?active=false", "?limit=10000"):
        status, headers, body = await fetch(running.http.url + "/api/v1/outages" + query,
                                            accept_encoding="gzip")
        assert status == 503, query
        assert "Content-Encoding" not in headers
        assert json.loads(body) == {"error": "the outage journal cannot be read"}
    status, _, body = await fetch(running.http.url + "/api/v1/outages?active=true",
                                  accept_encoding="gzip")
    assert status == 200
    assert len(json.loads(gzip.decompress(body))) == len(running.classifier.open_outages())


async def test_bad_queries_are_400_naming_the_parameter_even_with_gzip(service):
    running, _ = service
    for query, parameter in (("active=maybe", "active"), ("limit=0", "limit")):
        status, headers, body = await fetch(f"{running.http.url}/api/v1/outages?{query}",
                                            accept_encoding="gzip")
        assert status == 400
        assert "Content-Encoding" not in headers
        assert json.loads(body)["parameter"] == parameter


async def test_empty_lists_are_empty_json_lists(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config, clock=ManualClock()) as running:
        for path in ("/api/v1/targets", "/api/v1/agents", "/api/v1/outages"):
            for encoding in ("identity", "gzip"):
                status, _, body = await fetch(running.http.url + path, accept_encoding=encoding)
                assert status == 200
                assert (gzip.decompress(body) if encoding == "gzip" else body) == b"[]"


# -- slices, with the loop free between them -----------------------------------------------------


class _Item:
    """A list item that notes which turn of the event loop encoded it."""

    def __init__(self, n: int, turns: list[int], seen: list[int]) -> None:
        self.n, self._turns, self._seen = n, turns, seen

    def to_json(self) -> dict[str, Any]:
        self._seen.append(self._turns[0])
        return {"n": self.n, "name": f"item-{self.n}"}


async def test_a_long_list_is_encoded_over_several_turns_of_the_loop():
    turns = [0]
    seen: list[int] = []
    items = [_Item(n, turns, seen) for n in range(2_000)]
    loop = asyncio.get_running_loop()

    def count_turn() -> None:  # runs once per turn of the loop while the test runs
        turns[0] += 1
        handle[0] = loop.call_soon(count_turn)

    handle = [loop.call_soon(count_turn)]

    async def handler(request: web.Request) -> web.StreamResponse:
        return await api._stream_json_list(request, items)

    app = web.Application()
    app.router.add_get("/items", handler)
    site = await serve_app(app, "127.0.0.1", 0)
    try:
        status, _, body = await fetch(f"http://127.0.0.1:{site.port}/items")
    finally:
        handle[0].cancel()
        await site.runner.cleanup()
    assert status == 200
    assert json.loads(body) == [{"n": n, "name": f"item-{n}"} for n in range(2_000)]
    per_turn: dict[int, int] = {}
    for turn in seen:
        per_turn[turn] = per_turn.get(turn, 0) + 1
    assert len(per_turn) >= 2_000 / api.JSON_SLICE_ITEMS
    assert max(per_turn.values()) <= api.JSON_SLICE_ITEMS


def test_slices_join_to_what_json_dumps_gives_and_consume_the_list():
    items = [OutageRecord.region_isolated(f"r{n}", f'région-{n}\n"x"', at=1.8e9 + n)
             for n in range(1_234)]
    expected = json_bytes(items)
    remaining = list(items)
    encoded = []
    while remaining:
        before = len(remaining)
        encoded.append(api._encode_slice(remaining, first=not encoded))
        assert 0 < before - len(remaining) <= api.JSON_SLICE_ITEMS
    assert len(encoded) >= 3
    assert b"[" + b"".join(encoded) + b"]" == expected
