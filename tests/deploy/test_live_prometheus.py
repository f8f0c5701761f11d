"""A real Prometheus (Debian binary, loopback, 1 s scrapes, probenet's rules loaded) scraping a real
collector fed by real agents: every PromQL expression of every dashboard panel and rule must
parse and return data.

The fleet (all on loopback, each agent bound to its own 127.0.x.y source address):
  eu-1, eu-2 (eu), us-1 (us), ap-1 (ap), and rogue-1, registered in `us` but claiming `ap`.
Targets decide by the caller's source address:
  web-ok / tcp-ok / tls-web: up from everywhere (tls-web's certificate expires in 10 days);
  web-regional: down from eu only          -> a regional outage;
  api-global:   down from everywhere       -> a global outage (same service as
                                               web-regional: a service outage);
  eu-2 fails every probe                   -> an impaired agent;
  rogue-1 is refused for its region        -> ingest rejections, and an agent down.
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from support.certs import TestCA
from support.deploy_queries import RULES, all_expressions, substitute
from support.system import ROOT, free_port, need_binary

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.slow

REGIONS = {"eu-1": ("eu", "127.0.41.1"), "eu-2": ("eu", "127.0.41.2"),
           "us-1": ("us", "127.0.42.1"), "ap-1": ("ap", "127.0.43.1")}
ROGUE = ("rogue-1", "127.0.44.1")
IMPAIRED = "127.0.41.2"
EU = {"127.0.41.1", "127.0.41.2"}
DEADLINE_S = 90.0

# Expressions that select a condition this fleet does not have, so they may return nothing;
# they still must parse. Everything else must return at least one sample.
MAY_BE_EMPTY = {
    "rule ProbenetTargetFlapping",      # no probe changes state 4 times in 30 minutes
    "rule ProbenetRegionIsolated",      # no region has every agent impaired
    "rule ProbenetMonitoringDegraded",  # only 2 of 5 agents are stale or impaired
    "rule ProbenetCollectorDown",       # the collector is up
    "rule ProbenetCollectorNotIngesting",  # ... and ingesting
    "rule ProbenetCollectorEventLoopLag",  # ... and its event loop is not held
    "rule ProbenetAgentConfigOutdated",  # no fleet file: no remote-config agent
    # This fleet runs no `flow` probe: no per-step series, no outage with a failing step.
    "rule ProbenetFlowGlobalOutage",
    "probenet-overview.json panel 20 'Flow outages by step' ref A",
    "probenet-overview.json panel 21 'Flow steps by region (now)' ref A",
    "probenet-probe.json panel 18 'Flow step results per region' ref A",
    "probenet-probe.json panel 19 'Flow steps by region (now)' ref A",
    "probenet-probe.json panel 20 'Flow step duration per region' ref A",
    "probenet-probe.json panel 21 'Open outage fails at step' ref A",
}


# --------------------------------------------------------------------------- targets


def failing_for(path: str, peer: str) -> bool:
    return peer == IMPAIRED or path == "/down" or (path == "/regional" and peer in EU)


class _Web(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        failed = failing_for(self.path, self.client_address[0])
        body = b"unavailable\n" if failed else b"ok\n"
        self.send_response(503 if failed else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Line(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        answer = b"nope\n" if self.client_address[0] == IMPAIRED else b"pong\n"
        self.wfile.write(answer)


class _QuietErrors:
    """Agents hang up on purpose (timeouts, failed probes): no tracebacks for that."""

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class _TcpServer(_QuietErrors, socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _WebServer(_QuietErrors, ThreadingHTTPServer):
    daemon_threads = True


def serve(server: socketserver.BaseServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="live-target", daemon=True)
    thread.start()
    return thread


@pytest.fixture
def targets(tmp_path) -> Iterator[dict[str, Any]]:
    ca = TestCA(tmp_path)
    # Expires in 10 days: ProbenetTLSCertificateExpiring's condition holds.
    cert = ca.issue("localhost", "127.0.0.1", days_valid=10)
    web = _WebServer(("127.0.0.1", 0), _Web)
    tls = _WebServer(("127.0.0.1", 0), _Web)
    tls.socket = cert.server_context().wrap_socket(tls.socket, server_side=True)
    line = _TcpServer(("127.0.0.1", 0), _Line)
    servers = [web, tls, line]
    for server in servers:
        serve(server)
    try:
        yield {"web": web.server_address[1], "tls": tls.server_address[1],
               "tcp": line.server_address[1], "ca_file": str(ca.ca_file)}
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# --------------------------------------------------------------------------- processes


class Processes:
    """Child processes with logs in a folder; stopped (TERM, then KILL) in reverse order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")])}
        with (self.folder / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       cwd=self.folder)
        self.running.append((name, process))
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n" + (self.folder / f"{name}.log").read_text(
            errors="replace")[-3000:] for name, _ in self.running)

    def stop(self) -> None:
        for _, process in reversed(self.running):
            process.terminate()
        for _, process in reversed(self.running):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def probenet(*args: str) -> list[str]:
    return [sys.executable, "-c", "from probenet.cli import main; main()", *args]


def wait_until(condition: Callable[[], Any], what: str, processes: Processes) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            result = condition()
        except OSError:
            result = None
        if result:
            return result
        for name, process in processes.running:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode} while waiting for "
                            f"{what}\n{processes.logs()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{processes.logs()}")
        time.sleep(0.5)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def agent_config(agent_id: str, region: str, source: str, grpc_port: int,
                 targets: dict[str, Any]) -> dict[str, Any]:
    web = f"http://127.0.0.1:{targets['web']}"
    return {
        "agent": {"id": agent_id, "region": region, "source_address": source},
        "collectors": [{"address": f"127.0.0.1:{grpc_port}", "connect_timeout": "2s"}],
        "defaults": {"interval": "500ms", "timeout": "400ms"},
        "stream": {"backoff_max": "1s"},
        "probes": [
            {"name": "web-ok", "service": "shop-front", "kind": "http", "target": f"{web}/ok"},
            {"name": "web-regional", "service": "shop", "kind": "http",
             "target": f"{web}/regional"},
            {"name": "api-global", "service": "shop", "kind": "http", "target": f"{web}/down"},
            {"name": "tls-web", "kind": "http",
             "target": f"https://localhost:{targets['tls']}/ok",
             "http": {"ip_family": "ip4", "tls": {"ca_file": targets["ca_file"]}}},
            {"name": "tcp-ok", "kind": "tcp", "target": f"127.0.0.1:{targets['tcp']}",
             "tcp": {"send": "ping\n", "expect": "pong"}},
        ],
    }


@pytest.fixture
def fleet(tmp_path, targets) -> Iterator[tuple[str, Processes]]:
    """Collector, agents and Prometheus running; yields Prometheus's URL."""
    prometheus_bin = need_binary("prometheus", "prometheus")
    processes = Processes(tmp_path)
    grpc_port, http_port, prometheus_port = free_port(), free_port(), free_port()
    registry = [{"id": agent_id, "region": region}
                for agent_id, (region, _) in REGIONS.items()]
    registry.append({"id": ROGUE[0], "region": "us"})
    collector = write_yaml(tmp_path / "collector.yaml", {
        "listen": {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}"},
        "agents": registry,
        "journal": {"path": str(tmp_path / "probenet.db")},
    })
    prometheus = write_yaml(tmp_path / "prometheus.yml", {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "probenet-collector",
                            "static_configs": [{"targets": [f"127.0.0.1:{http_port}"]}]}],
    })
    try:
        processes.start("collector", probenet("collector", "--config", str(collector)))
        wait_until(lambda: http_ok(f"http://127.0.0.1:{http_port}/readyz"),
                   "the collector to be ready", processes)
        for agent_id, (region, source) in REGIONS.items():
            config = write_yaml(tmp_path / f"{agent_id}.yaml",
                                agent_config(agent_id, region, source, grpc_port, targets))
            processes.start(agent_id, probenet("agent", "--config", str(config)))
        rogue = write_yaml(tmp_path / "rogue.yaml",
                           agent_config(ROGUE[0], "ap", ROGUE[1], grpc_port, targets))
        processes.start(ROGUE[0], probenet("agent", "--config", str(rogue)))
        processes.start("prometheus", [
            prometheus_bin, f"--config.file={prometheus}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"])
        url = f"http://127.0.0.1:{prometheus_port}"
        wait_until(lambda: http_ok(f"{url}/-/ready"), "Prometheus to be ready", processes)
        yield url, processes
    finally:
        processes.stop()


def query(url: str, expr: str) -> dict[str, Any]:
    """One instant query; the API's JSON (status, data or error)."""
    request = urllib.request.Request(
        f"{url}/api/v1/query", data=urllib.parse.urlencode({"query": expr}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 400/422: a bad expression, with its error
        return json.loads(exc.read())


def samples(url: str, expr: str) -> list[dict[str, Any]]:
    answer = query(url, expr)
    assert answer["status"] == "success", (expr, answer)
    result = answer["data"]["result"]
    return result if isinstance(result, list) else [result]


def test_every_dashboard_and_rule_expression_returns_data(fleet):
    url, processes = fleet
    # The fleet reached the state this test is about, as Prometheus sees it.
    conditions = {
        "a global outage of api-global":
            'probenet_outage_active{probe="api-global", scope="global"} == 1',
        "a regional outage of web-regional":
            'probenet_outage_active{probe="web-regional", scope="regional"} == 1',
        "eu-2 impaired": 'probenet_agent_impaired{agent="eu-2"} == 1',
        "rogue-1 rejected": "probenet_ingest_rejections_total > 0",
        "the certificate seen": "probe_ssl_earliest_cert_expiry > 0",
        "a rate over two scrapes": "rate(probenet_ingest_results_total[1m]) > 0",
    }
    for what, expr in conditions.items():
        wait_until(lambda expr=expr: samples(url, expr), what, processes)
    # The alert rules are loaded and evaluated: the global outage fires, and the regional
    # outage is regional only (pending: its `for` is 1m).
    wait_until(lambda: samples(url, 'ALERTS{alertname="ProbenetGlobalOutage", '
                                    'probe="api-global", alertstate="firing"}'),
               "ProbenetGlobalOutage to fire", processes)
    wait_until(lambda: samples(url, 'ALERTS{alertname="ProbenetRegionalOutage", '
                                    'probe="web-regional"}'),
               "ProbenetRegionalOutage to be pending", processes)
    assert samples(url, 'ALERTS{alertname="ProbenetGlobalOutage", probe="web-regional"}') == []

    expressions = all_expressions()
    failures, empty = [], []
    for where, expr in expressions:
        answer = query(url, substitute(expr, rate_interval="1m", time_range="1h"))
        if answer["status"] != "success":
            failures.append(f"{where}: {answer.get('error')}")
        elif not answer["data"]["result"] and where not in MAY_BE_EMPTY:
            empty.append(f"{where}: {expr}")
    assert failures == [], "\n".join(failures)
    assert empty == [], "no data for:\n" + "\n".join(empty) + "\n" + processes.logs()
    # The list of exceptions is real: each names an expression that exists.
    assert {where for where, _ in expressions} >= MAY_BE_EMPTY
