"""`probenet uptime` against a real collector, a real misbehaving HTTP server, and a journal."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from contextlib import AsyncExitStack

import pytest
from aiohttp import web

from probenet.cli import build_parser
from probenet.collector.config import parse_config
from probenet.collector.server import CollectorService
from probenet.uptime import read_journal, render, run
from support.collector_client import TestAgent, collector_yaml, http_json
from support.system import ROOT, free_port

FLEET = (("fra-1", "eu"), ("iad-1", "us"), ("sin-1", "ap"))


async def feed(address: str, *, down_in: set[str]) -> None:
    """Two rounds of `web` (service shop) results, failing in `down_in`, then recovery."""
    async with AsyncExitStack() as stack:
        fleet = [await stack.enter_async_context(
            TestAgent(address, a, r, epoch=1, interval_ms=20_000)) for a, r in FLEET]
        for outcome in (down_in, down_in, set(), set()):
            if outcome == set() and down_in:
                await asyncio.sleep(0.5)  # the outage lasts a measurable while
            for agent in fleet:
                await agent.send([agent.result("web", service="shop",
                                               success=agent.region not in outcome)])


async def uptime(*argv: str) -> tuple[int, str]:
    """`probenet uptime ARGV` in a worker thread (the collector runs on this loop)."""
    args = build_parser().parse_args(["uptime", *argv])
    out = io.StringIO()
    code = await asyncio.to_thread(run, args, out=out)
    return code, out.getvalue()


@pytest.fixture
async def collector(tmp_path):
    config = parse_config(collector_yaml(str(tmp_path / "journal.db")))
    async with CollectorService(config) as service:
        yield service


async def test_prints_overall_region_and_daily_tables(collector):
    await feed(collector.grpc_address, down_in={"eu", "us", "ap"})
    code, text = await uptime("--url", collector.http.url, "--probe", "web", "--days", "3")
    assert code == 0
    lines = text.splitlines()
    assert lines[0].startswith("probe web, last 3 days: ")
    assert lines[1].startswith("availability ")
    report = await http_json(collector.http.url + "/api/v1/uptime?probe=web&days=3")
    global_line = next(line for line in lines if line.startswith("global "))
    assert global_line.split()[1] == f"{report['seconds']['global_outage']:.1f}s"
    for region in ("eu", "us", "ap"):
        assert any(line.split()[:1] == [region] for line in lines), text
    dates = [line.split()[0] for line in lines if line[:4].isdigit()]
    assert dates == [day["date"] for day in report["daily"]]


async def test_a_service_report(collector):
    await feed(collector.grpc_address, down_in={"eu"})
    code, text = await uptime("--url", collector.http.url, "--service", "shop")
    assert code == 0
    assert text.startswith("service shop (probes: web), last 30 days")


async def test_an_unknown_probe_is_a_clear_error(collector, capsys):
    code, text = await uptime("--url", collector.http.url, "--probe", "nope")
    assert code == 1
    assert text == ""
    err = capsys.readouterr().err
    assert err.startswith(f"probenet uptime: the collector at {collector.http.url} answered "
                          "404: no probe 'nope'")


async def test_an_unreachable_collector_is_a_clear_error(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    code, _ = await uptime("--url", url, "--probe", "web")
    assert code == 1
    assert capsys.readouterr().err.startswith(
        f"probenet uptime: cannot reach the collector at {url}: ")


@pytest.mark.parametrize(("status", "body", "expected"), [
    (500, "boom", "answered 500: boom"),
    (200, "not json", "answered something that is not JSON"),
    (200, '{"hello": 1}', "answered no uptime report"),
])
async def test_a_server_that_is_not_a_collector_is_a_clear_error(capsys, status, body,
                                                                 expected):
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=status, text=body)

    app = web.Application()
    app.router.add_get("/api/v1/uptime", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        code, _ = await uptime("--url", f"http://127.0.0.1:{port}", "--probe", "web")
    finally:
        await runner.cleanup()
    assert code == 1
    assert expected in capsys.readouterr().err


async def test_the_journal_gives_the_same_figures_with_the_collector_down(tmp_path):
    journal = tmp_path / "journal.db"
    config = parse_config(collector_yaml(str(journal)))
    async with CollectorService(config) as service:
        await feed(service.grpc_address, down_in={"eu", "us", "ap"})
        live = await http_json(service.http.url + "/api/v1/uptime?probe=web&days=2")
    offline = read_journal(journal, probe="web", service=None, days=2)
    assert offline["seconds"]["global_outage"] == live["seconds"]["global_outage"] > 0
    assert offline["regions"].keys() == live["regions"].keys()
    code, text = await uptime("--journal", str(journal), "--probe", "web", "--days", "2")
    assert code == 0
    assert text.startswith("probe web, last 2 days")


async def test_a_missing_journal_or_probe_in_it_is_a_clear_error(tmp_path, capsys):
    code, _ = await uptime("--journal", str(tmp_path / "none.db"), "--probe", "web")
    assert code == 1
    assert "none.db: no journal here" in capsys.readouterr().err
    config = parse_config(collector_yaml(str(tmp_path / "j.db")))
    async with CollectorService(config):
        pass
    code, _ = await uptime("--journal", str(tmp_path / "j.db"), "--probe", "web")
    assert code == 1
    assert "no probe 'web'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--probe", "web", "--days", "401"],
    ["--probe", "web", "--days", "0"],
    ["--probe", "web", "--days", "x"],
    ["--probe", "web", "--service", "shop"],
    ["--days", "3"],
])
def test_bad_arguments_exit_2_naming_the_option(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["uptime", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--days" in err or "--probe" in err or "--service" in err


def test_render_shows_null_availability_as_a_dash():
    report = {"probe": "web", "service": None, "probes": ["web"], "days": 1,
              "from": "2026-12-06T00:00:00.000Z", "to": "2026-12-06T01:00:00.000Z",
              "availability": None, "availability_strict": None, "availability_global": None,
              "seconds": {"total": 3600.0, "up": 0.0, "regional_outage": 0.0,
                          "global_outage": 0.0, "maintenance": 0.0, "unknown": 3600.0},
              "regions": {},
              "daily": [{"date": "2026-12-06", "availability": None,
                         "seconds": {"total": 3600.0, "up": 0.0, "regional_outage": 0.0,
                                     "global_outage": 0.0, "maintenance": 0.0,
                                     "unknown": 3600.0}}]}
    out = io.StringIO()
    render(report, out)
    text = out.getvalue()
    assert "availability -" in text
    [day] = [line.split() for line in text.splitlines() if line.startswith("2026-12-06 ")]
    assert day[:2] == ["2026-12-06", "-"]
    assert day[-1] == "1h00m00s"


async def test_the_probenet_command_runs_it(collector):
    await feed(collector.grpc_address, down_in={"eu"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from probenet.cli import main; main()", "uptime",
        "--url", collector.http.url, "--probe", "web", "--days", "1", cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("probe web, last 1 days")
