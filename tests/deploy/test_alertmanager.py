"""A real Alertmanager with deploy/alertmanager/alertmanager.yml: the inhibit rules mute what they
should (and only that), and the pager receives the page, not the muted alerts."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from support.system import ROOT, free_port, need_binary
from support.webhook import Webhook

if TYPE_CHECKING:
    from collections.abc import Iterator

ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DEADLINE_S = 30.0


def http_json(url: str, payload: Any = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


@pytest.fixture
def alertmanager(tmp_path) -> Iterator[tuple[str, Webhook]]:
    # One Alertmanager per test: an inhibiting alert of one test must not mute another's.
    binary = need_binary("prometheus-alertmanager", "prometheus-alertmanager")
    tmp = tmp_path
    webhook = Webhook()
    webhook.thread.start()
    # The file under test, with two changes only: the receivers' webhook goes to our
    # receiver, and the grouping waits are short so the test does not wait 10 s.
    config = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            path = hook["url"].split("/", 3)[3]
            hook["url"] = f"http://127.0.0.1:{webhook.port}/{path}"
    for route in [config["route"], *config["route"].get("routes", [])]:
        route.update(group_wait="1s", group_interval="1s")
    config_file = tmp / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = (tmp / "alertmanager.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config_file}", f"--storage.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
         "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("alertmanager did not start: "
                                + (tmp / "alertmanager.log").read_text(errors="replace"))
                time.sleep(0.2)
        yield url, webhook
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        webhook.close()


def fire(url: str, *alerts: dict[str, str]) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    http_json(f"{url}/api/v2/alerts", [{"labels": labels, "startsAt": now,
                                        "annotations": {"summary": labels["alertname"]}}
                                       for labels in alerts])


def inhibited(url: str, scenario: str) -> dict[str, bool]:
    """alertname + distinguishing label -> muted?, for the alerts of one scenario."""
    found = http_json(f"{url}/api/v2/alerts?filter=scenario%3D%22{scenario}%22")
    return {f'{a["labels"]["alertname"]}/{a["labels"].get("key", "")}':
            bool(a["status"]["inhibitedBy"]) for a in found}


def wait_for(check, what: str):
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def labels(scenario: str, alertname: str, key: str = "", **more: str) -> dict[str, str]:
    return {"scenario": scenario, "alertname": alertname, "key": key, **more}


def test_monitoring_degraded_mutes_target_and_agent_alerts_only(alertmanager):
    url, _ = alertmanager
    s = "degraded"
    fire(url,
         labels(s, "ProbenetMonitoringDegraded", severity="page", component="monitoring"),
         labels(s, "ProbenetGlobalOutage", "fb", probe="facebook-web", service="meta",
                severity="page", component="target"),
         labels(s, "ProbenetAgentDown", "fra", agent="fra-1", region="eu-central",
                severity="warning", component="agent"),
         labels(s, "ProbenetCollectorDown", "c1", instance="c1:9464", severity="page",
                component="collector"))
    state = wait_for(lambda: (r := inhibited(url, s)) and r.get("ProbenetGlobalOutage/fb") and r,
                     "the global outage to be inhibited")
    assert state == {"ProbenetMonitoringDegraded/": False, "ProbenetGlobalOutage/fb": True,
                     "ProbenetAgentDown/fra": True, "ProbenetCollectorDown/c1": False}


def test_service_outage_mutes_the_probe_alerts_of_that_service_only(alertmanager):
    url, webhook = alertmanager
    s = "service"
    fire(url,
         labels(s, "ProbenetServiceOutage", service="meta", scope="global", severity="page",
                component="target"),
         labels(s, "ProbenetGlobalOutage", "fb", probe="facebook-web", service="meta",
                severity="page", component="target"),
         labels(s, "ProbenetRegionalOutage", "ig", probe="instagram-web", service="meta",
                severity="warning", component="target"),
         labels(s, "ProbenetGlobalOutage", "ex", probe="example-web", service="example",
                severity="page", component="target"))
    state = wait_for(lambda: (r := inhibited(url, s)) and r.get("ProbenetGlobalOutage/fb") and r,
                     "the meta probe alerts to be inhibited")
    assert state == {"ProbenetServiceOutage/": False, "ProbenetGlobalOutage/fb": True,
                     "ProbenetRegionalOutage/ig": True, "ProbenetGlobalOutage/ex": False}
    # The pager gets the service page and the other service's global outage, never the
    # muted per-probe alert of the service.
    wait_for(lambda: {("ProbenetServiceOutage", "firing"), ("ProbenetGlobalOutage", "firing")}
             <= webhook.alertnames("/probenet/page"), "the pages")
    with webhook.lock:
        paged = [a["labels"] for p, body in webhook.received if p == "/probenet/page"
                 for a in body["alerts"] if a["labels"].get("scenario") == s]
    assert {a["probe"] for a in paged if a["alertname"] == "ProbenetGlobalOutage"} == {
        "example-web"}


def test_service_outage_mutes_the_flow_alert_of_that_service_only(alertmanager):
    url, webhook = alertmanager
    s = "service-flow"
    fire(url,
         labels(s, "ProbenetServiceOutage", service="social", scope="global", severity="page",
                component="target"),
         labels(s, "ProbenetFlowGlobalOutage", "login", probe="social-login", service="social",
                step="login", severity="page", component="target"),
         labels(s, "ProbenetFlowGlobalOutage", "pay", probe="shop-checkout", service="shop",
                step="pay", severity="page", component="target"))
    state = wait_for(
        lambda: (r := inhibited(url, s)) and r.get("ProbenetFlowGlobalOutage/login") and r,
        "the social flow alert to be inhibited")
    assert state == {"ProbenetServiceOutage/": False, "ProbenetFlowGlobalOutage/login": True,
                     "ProbenetFlowGlobalOutage/pay": False}
    # The other service's flow outage still pages, with its step.
    wait_for(lambda: ("ProbenetFlowGlobalOutage", "firing") in webhook.alertnames(
        "/probenet/page"), "the flow page")
    with webhook.lock:
        paged = [a["labels"] for p, body in webhook.received if p == "/probenet/page"
                 for a in body["alerts"] if a["labels"].get("scenario") == s
                 and a["labels"]["alertname"] == "ProbenetFlowGlobalOutage"]
    assert {(a["probe"], a["step"]) for a in paged} == {("shop-checkout", "pay")}


def test_isolated_region_mutes_its_own_agent_alerts(alertmanager):
    url, _ = alertmanager
    s = "isolated"
    fire(url,
         labels(s, "ProbenetRegionIsolated", region="eu-central", severity="warning",
                component="agent"),
         labels(s, "ProbenetAgentImpaired", "fra", agent="fra-1", region="eu-central",
                severity="warning", component="agent"),
         labels(s, "ProbenetAgentImpaired", "iad", agent="iad-1", region="us-east",
                severity="warning", component="agent"))
    state = wait_for(lambda: (r := inhibited(url, s)) and r.get("ProbenetAgentImpaired/fra") and r,
                     "the eu-central agent alert to be inhibited")
    assert state == {"ProbenetRegionIsolated/": False, "ProbenetAgentImpaired/fra": True,
                     "ProbenetAgentImpaired/iad": False}


def test_flapping_mutes_the_regional_outage_of_that_probe(alertmanager):
    url, _ = alertmanager
    s = "flapping"
    fire(url,
         labels(s, "ProbenetTargetFlapping", probe="messenger-web", severity="warning",
                component="target"),
         labels(s, "ProbenetRegionalOutage", "ms", probe="messenger-web", service="meta",
                severity="warning", component="target"),
         labels(s, "ProbenetRegionalOutage", "th", probe="threads-web", service="meta",
                severity="warning", component="target"))
    state = wait_for(lambda: (r := inhibited(url, s)) and r.get("ProbenetRegionalOutage/ms") and r,
                     "the flapping probe's regional alert to be inhibited")
    assert state == {"ProbenetTargetFlapping/": False, "ProbenetRegionalOutage/ms": True,
                     "ProbenetRegionalOutage/th": False}


def test_config_file_is_unchanged_by_the_fixture():
    # The fixture edits a copy; the committed file still posts to its documented receivers.
    config = yaml.safe_load(Path(ALERTMANAGER).read_text(encoding="utf-8"))
    urls = [hook["url"] for r in config["receivers"] for hook in r["webhook_configs"]]
    assert urls == ["http://127.0.0.1:5001/probenet/page", "http://127.0.0.1:5001/probenet/chat"]
