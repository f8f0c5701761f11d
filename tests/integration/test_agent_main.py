"""The real `probenet agent` process: SIGHUP reload, SIGTERM flush and exit, config errors."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import time

from probenet.collector.config import parse_config as parse_collector_config
from probenet.collector.server import CollectorService
from support.collector_client import collector_yaml, http_get, metric_value
from support.system import ROOT, free_port
from support.targets import HttpTarget, wait_until


def agent_yaml(collector: str, web: HttpTarget, *, b_interval: str, metrics_port: int) -> str:
    return f"""
agent: {{id: fra-1, region: eu, source_address: 127.0.0.5}}
collectors: [{{address: "{collector}"}}]
stream: {{backoff_initial: 50ms, backoff_max: 500ms, linger: 20ms}}
metrics: {{listen: "127.0.0.1:{metrics_port}"}}
probes:
  - {{name: steady, kind: http, target: "{web.url('/a')}", interval: 200ms, timeout: 150ms}}
  - {{name: changing, kind: http, target: "{web.url('/b')}", interval: {b_interval},
     timeout: 150ms}}
"""


def start_agent(config_path, log_path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", "from probenet.cli import main; main()", "agent",
             "--config", str(config_path)], cwd=ROOT, stdout=log, stderr=log)


def arrivals(web: HttpTarget, path: str, since: float, until: float | None = None) -> list[float]:
    until = until if until is not None else time.monotonic()
    return [r.at for r in web.requests if r.path == path and since <= r.at <= until]


async def test_sighup_applies_a_changed_interval_and_keeps_unchanged_probes(tmp_path):
    metrics_port = free_port()
    collector_config = parse_collector_config(collector_yaml(str(tmp_path / "j.db")))
    async with HttpTarget() as web, CollectorService(collector_config) as collector:
        config = tmp_path / "agent.yaml"
        config.write_text(agent_yaml(collector.grpc_address, web, b_interval="200ms",
                                     metrics_port=metrics_port))
        log = tmp_path / "agent.log"
        proc = start_agent(config, log)
        try:
            await wait_until(lambda: len(web.requests) >= 6, 60)
            assert {r.peer for r in web.requests} == {"127.0.0.5"}
            window = 2.0
            start = time.monotonic()
            await asyncio.sleep(window)
            before_b = len(arrivals(web, "/b", start))
            assert before_b >= 5, log.read_text()

            config.write_text(agent_yaml(collector.grpc_address, web, b_interval="1s",
                                         metrics_port=metrics_port))
            reload_at = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            await wait_until(lambda: "config reloaded" in log.read_text(), 30)
            text = log.read_text()
            assert "kept=1 changed=1 added=0 removed=0" in text
            start = time.monotonic()
            await asyncio.sleep(2 * window)
            after_b = len(arrivals(web, "/b", start))
            # 200ms -> 1s: about 4 runs in 4 s instead of about 20
            assert after_b <= 6, after_b
            steady = arrivals(web, "/a", reload_at - 1.0)
            gaps = [b - a for a, b in itertools.pairwise(steady)]
            assert len(steady) >= 10
            assert max(gaps) < 1.0, gaps  # the unchanged probe never paused

            status, _, body = await http_get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert status == 200
            runs = metric_value(body, "probenet_agent_probe_runs_total", kind="http",
                                result="success")
            assert runs is not None
            assert runs >= 20
            assert metric_value(body, "probenet_agent_collector_connected",
                                collector=collector.grpc_address) == 1.0
            assert metric_value(body, "probenet_agent_probes") == 2.0

            # a broken config on reload is rejected and the running one is kept
            config.write_text("probes: [{name: x}]\n")
            proc.send_signal(signal.SIGHUP)
            await wait_until(lambda: "config reload rejected" in log.read_text(), 30)
            start = time.monotonic()
            await asyncio.sleep(1.0)
            assert len(arrivals(web, "/a", start)) >= 3
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0, log.read_text()


async def test_sigterm_flushes_buffered_results_and_exits_0(tmp_path):
    collector_config = parse_collector_config(collector_yaml(str(tmp_path / "j.db")))
    async with HttpTarget() as web, CollectorService(collector_config) as collector:
        config = tmp_path / "agent.yaml"
        config.write_text(agent_yaml(collector.grpc_address, web, b_interval="200ms",
                                     metrics_port=0))
        log = tmp_path / "agent.log"
        proc = start_agent(config, log)
        await wait_until(lambda: "collector stream connected" in log.read_text(), 60)
        await wait_until(lambda: len(web.requests) >= 4, 30)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        text = log.read_text()
        applied = collector.registry.get_sample_value("probenet_ingest_results_total",
                                                      {"outcome": "applied"})
    assert code == 0, text
    assert "agent stopped" in text
    assert "not acknowledged" not in text
    # every probe run the targets saw produced a result the collector applied
    assert applied is not None
    assert applied >= len(web.requests) - 2  # runs cut short by the stop send nothing


async def test_a_second_sigterm_ends_a_long_flush_at_once_with_status_1(tmp_path):
    # No collector listens: buffered results keep the flush waiting for the grace period.
    async with HttpTarget() as web:
        config = tmp_path / "agent.yaml"
        config.write_text(agent_yaml(f"127.0.0.1:{free_port()}", web, b_interval="200ms",
                                     metrics_port=0) + "scheduler: {grace_period: 60s}\n")
        log = tmp_path / "agent.log"
        proc = start_agent(config, log)
        try:
            await wait_until(lambda: len(web.requests) >= 4, 60)
            proc.send_signal(signal.SIGTERM)
            await wait_until(lambda: "flushing results" in log.read_text(), 30)
            await asyncio.sleep(1.0)  # a second signal, not the first delivered twice
            assert proc.poll() is None, log.read_text()
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    text = log.read_text()
    assert code == 1, text
    assert time.monotonic() - sent < 5
    assert text.count("stop requested") == 1
    assert text.count("second signal: exiting at once") == 1
    assert "agent stopped" not in text


def test_bad_config_exits_1_with_positions(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("agent: {id: a, region: r}\ncollectors: [{address: nowhere}]\n")
    done = subprocess.run(
        [sys.executable, "-c", "from probenet.cli import main; main()", "agent", "--config",
         str(config)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"{config}:2:24: collectors[0].address: invalid address "
                                   "'nowhere': expected host:port")


def test_unreadable_token_file_exits_1(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("agent: {id: a, region: r}\n"
                      "collectors: [{address: '127.0.0.1:7070', token_file: missing-token}]\n")
    done = subprocess.run(
        [sys.executable, "-c", "from probenet.cli import main; main()", "agent", "--config",
         str(config)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"{config}: collector 127.0.0.1:7070: token_file "
                                   f"{tmp_path / 'missing-token'} is not readable")
