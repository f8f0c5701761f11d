"""deploy/ha/ live on loopback: the HA pair keeps its promise when one collector dies.

Real processes, configs derived from deploy/ha/ (addresses, paths and intervals replaced,
nothing else): collectors a and b; four agents in three regions (the registry of
collector-a.yaml), each streaming to both; Prometheus replicas a and b with the real rules,
alerting to both members of an Alertmanager cluster; VictoriaMetrics scraping both
collectors. The one target fails for every agent (a global outage), collector a is killed
with SIGKILL while the outage is notified, restarted with its config and journal, and the
target heals. One firing and one resolved notification per alert group must come out, both
collectors must have closed the outage, and VictoriaMetrics must hold one deduplicated copy of
each series.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from support.deploy_queries import RULES, all_expressions, substitute
from support.processes import ChildProcess
from support.system import ROOT, free_port, need_binary
from support.targets import HttpRoute, HttpTarget
from support.webhook import Webhook

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HA = ROOT / "deploy" / "ha"
COLLECTORS = ("collector-a", "collector-b")
REPLICAS = ("a", "b")
PROBE = "ha-web"
DEADLINE_S = 60.0
# Alertmanager timing, shortened from deploy/ha/alertmanager.yml but in the same order:
# group_interval above the peer timeout, or a peer may send a stale notification.
PEER_TIMEOUT_S = 2
GROUP_WAIT_S = 2
GROUP_INTERVAL_S = 6
# Collector a stays dead this long: well under ProbenetCollectorDown's `for: 2m`.
DEAD_S = 12
# Inside the wait after the resolve (2 x group_interval + peer timeout): both scraped.
DEDUP_WINDOW_S = 12


def probenet(*args: str) -> list[str]:
    return [sys.executable, "-c", "from probenet.cli import main; main()", *args]


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def loopback(port: int) -> str:
    return f"127.0.0.1:{port}"


def http_get_json(url: str, params: dict[str, str] | None = None) -> Any:
    """GET (POST form for queries) returning JSON; HTTP errors return their JSON body."""
    data = urllib.parse.urlencode(params).encode() if params else None
    request = urllib.request.Request(url, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"null")


async def get_json(url: str, params: dict[str, str] | None = None) -> Any:
    return await asyncio.to_thread(http_get_json, url, params)


# --------------------------------------------------------------------------- the pair


@dataclass
class Pair:
    """Every process of the HA setup, their ports, and what the test observes."""

    tmp_path: Path
    web: HttpTarget
    webhook: Webhook
    webhook_path: str
    http_ports: dict[str, int]
    collector_argv: dict[str, list[str]]
    prometheus_urls: dict[str, str]
    alertmanager_urls: dict[str, str]
    vm_url: str
    children: dict[str, ChildProcess] = field(default_factory=dict)

    def collector_url(self, name: str) -> str:
        return f"http://{loopback(self.http_ports[name])}"

    async def start(self, name: str, argv: list[str]) -> ChildProcess:
        child = ChildProcess(name, argv, self.tmp_path / f"{name}.log", stop_grace_s=5)
        await child.__aenter__()
        self.children[name] = child
        return child

    def check_alive(self) -> None:
        for child in self.children.values():
            child.check_alive()

    def logs(self, lines: int = 15) -> str:
        return "\n".join(f"--- {name}\n{child.log_tail(lines)}"
                         for name, child in self.children.items())

    def notifications(self) -> list[dict[str, Any]]:
        return self.webhook.notifications(self.webhook_path)

    def notified(self) -> list[tuple[str, str, list[str]]]:
        """(groupKey, status, alertnames) of every notification, for failure messages."""
        return [(n["groupKey"], n["status"], [a["labels"]["alertname"] for a in n["alerts"]])
                for n in self.notifications()]

    async def stop_all(self) -> None:
        for child in reversed(list(self.children.values())):
            await child.stop()

    async def wait_for(self, check: Callable[[], Awaitable[Any]], what: str,
                       seen: Callable[[], Awaitable[Any]] | None = None,
                       timeout_s: float = DEADLINE_S) -> Any:
        """Poll `check` until it returns something truthy; fail showing what was seen."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                result = await check()
            except OSError:
                result = None
            if result:
                return result
            self.check_alive()
            if time.monotonic() > deadline:
                observed = await seen() if seen is not None else None
                pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n"
                            f"seen: {observed!r}\nnotifications: {self.notified()!r}\n"
                            f"{self.logs()}")
            await asyncio.sleep(0.5)


def collector_config(name: str, ports: dict[str, int], tmp_path: Path) -> Path:
    """deploy/ha/<name>.yaml with loopback listeners and the journal in tmp_path.

    The registry (four agents, three regions) is kept; the fleet file is dropped: the agents
    carry their one probe themselves.
    """
    config = load(HA / f"{name}.yaml")
    config["listen"] = {"grpc": loopback(ports["grpc"]), "http": loopback(ports["http"])}
    config["journal"]["path"] = str(tmp_path / config["journal"]["path"])
    del config["fleet"]
    return write_yaml(tmp_path / f"{name}.yaml", config)


def agent_configs(grpc_ports: dict[str, int], web: HttpTarget,
                  tmp_path: Path) -> dict[str, Path]:
    """deploy/ha/agent.yaml once per registered agent, streaming to both loopback collectors."""
    registry = load(HA / "collector-a.yaml")["agents"]
    template = load(HA / "agent.yaml")
    assert [c["address"].split(":")[0] for c in template["collectors"]] == list(COLLECTORS)
    configs = {}
    for entry in registry:
        config = load(HA / "agent.yaml")
        config["agent"] = {"id": entry["id"], "region": entry["region"],
                           "labels": entry.get("labels", {})}
        for collector in config["collectors"]:
            name = collector["address"].split(":")[0]
            collector.update(address=loopback(grpc_ports[name]), connect_timeout="2s")
        del config["remote_config"]
        config["defaults"] = {"interval": "1s", "timeout": "800ms"}
        config["stream"] = {"backoff_max": "1s"}
        config["probes"] = [{"name": PROBE, "service": "ha", "kind": "http",
                             "target": web.url("/")}]
        configs[entry["id"]] = write_yaml(tmp_path / f"agent-{entry['id']}.yaml", config)
    assert len({e["region"] for e in registry}) >= 3, registry
    return configs


def scrape_targets(job: dict[str, Any], http_ports: dict[str, int]) -> None:
    """Rewrite `collector-x:9464` targets of a scrape job to the loopback HTTP ports."""
    for static in job["static_configs"]:
        static["targets"] = [loopback(http_ports[t.split(":")[0]]) for t in static["targets"]]


def prometheus_config(replica: str, http_ports: dict[str, int],
                      alertmanager_ports: dict[str, int], tmp_path: Path) -> Path:
    config = load(HA / f"prometheus-{replica}.yml")
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    for manager in config["alerting"]["alertmanagers"]:
        for static in manager["static_configs"]:
            static["targets"] = [loopback(alertmanager_ports[t.split(":")[0]])
                                 for t in static["targets"]]
    for job in config["scrape_configs"]:
        scrape_targets(job, http_ports)
    return write_yaml(tmp_path / f"prometheus-{replica}.yml", config)


def alertmanager_config(webhook: Webhook, tmp_path: Path) -> tuple[Path, str]:
    """deploy/ha/alertmanager.yml posting to the test's webhook; the path it posts to."""
    config = load(HA / "alertmanager.yml")
    paths = []
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            path = "/" + hook["url"].split("/", 3)[3]
            hook["url"] = f"http://127.0.0.1:{webhook.port}{path}"
            paths.append(path)
    config["route"].update(group_wait=f"{GROUP_WAIT_S}s", group_interval=f"{GROUP_INTERVAL_S}s")
    assert GROUP_INTERVAL_S > PEER_TIMEOUT_S
    assert len(paths) == 1, paths
    return write_yaml(tmp_path / "alertmanager.yml", config), paths[0]


def victoria_metrics_config(http_ports: dict[str, int], tmp_path: Path) -> Path:
    config = load(HA / "victoria-metrics-scrape.yml")
    config["global"]["scrape_interval"] = "1s"
    for job in config["scrape_configs"]:
        scrape_targets(job, http_ports)
    return write_yaml(tmp_path / "victoria-metrics-scrape.yml", config)


async def collector_ready(pair: Pair, name: str) -> bool:
    answer = await get_json(pair.collector_url(name) + "/readyz")
    return bool(answer) and answer.get("status") == "ready"


async def cluster_ready(url: str) -> bool:
    status = await get_json(f"{url}/api/v2/status")
    cluster = status["cluster"]
    return cluster["status"] == "ready" and len(cluster["peers"]) == len(REPLICAS)


async def scraped_everywhere(url: str) -> bool:
    """Both collectors are up for this Prometheus-compatible server."""
    answer = await get_json(f"{url}/api/v1/query", {"query": 'up{job="probenet-collector"}'})
    result = answer.get("data", {}).get("result", []) if answer else []
    return bool(result) and all(float(r["value"][1]) == 1 for r in result)


@pytest.fixture
async def pair(tmp_path) -> AsyncIterator[Pair]:
    """Everything running and scraped; every process stopped (then killed) on the way out."""
    binaries = {"prometheus": need_binary("prometheus", "prometheus"),
                "alertmanager": need_binary("prometheus-alertmanager", "prometheus-alertmanager"),
                "victoria-metrics": need_binary("victoria-metrics", "victoria-metrics")}
    webhook = Webhook()
    webhook.thread.start()
    ports = {c: {"grpc": free_port(), "http": free_port()} for c in COLLECTORS}
    http_ports = {c: ports[c]["http"] for c in COLLECTORS}
    am_ports = {f"alertmanager-{r}": free_port() for r in REPLICAS}
    am_cluster = {f"alertmanager-{r}": free_port() for r in REPLICAS}
    prom_ports = {r: free_port() for r in REPLICAS}
    vm_port = free_port()
    am_config, webhook_path = alertmanager_config(webhook, tmp_path)
    async with HttpTarget(record=False) as web:
        pair = Pair(
            tmp_path=tmp_path, web=web, webhook=webhook, webhook_path=webhook_path,
            http_ports=http_ports,
            collector_argv={c: probenet("collector", "--config",
                                        str(collector_config(c, ports[c], tmp_path)))
                            for c in COLLECTORS},
            prometheus_urls={r: f"http://{loopback(p)}" for r, p in prom_ports.items()},
            alertmanager_urls={n: f"http://{loopback(p)}" for n, p in am_ports.items()},
            vm_url=f"http://{loopback(vm_port)}")
        try:
            for name in COLLECTORS:
                await pair.start(name, pair.collector_argv[name])
            for name in COLLECTORS:
                await pair.wait_for(lambda name=name: collector_ready(pair, name),
                                    f"{name} to be ready")
            grpc_ports = {c: ports[c]["grpc"] for c in COLLECTORS}
            for agent_id, path in agent_configs(grpc_ports, web, tmp_path).items():
                await pair.start(agent_id, probenet("agent", "--config", str(path)))
            for name, other in (("alertmanager-a", "alertmanager-b"),
                                ("alertmanager-b", "alertmanager-a")):
                await pair.start(name, [
                    binaries["alertmanager"], f"--config.file={am_config}",
                    f"--storage.path={tmp_path / name}",
                    f"--web.listen-address={loopback(am_ports[name])}",
                    f"--cluster.listen-address={loopback(am_cluster[name])}",
                    f"--cluster.advertise-address={loopback(am_cluster[name])}",
                    f"--cluster.peer={loopback(am_cluster[other])}",
                    f"--cluster.peer-timeout={PEER_TIMEOUT_S}s",
                    "--cluster.gossip-interval=100ms"])
            for replica in REPLICAS:
                config = prometheus_config(replica, http_ports, am_ports, tmp_path)
                await pair.start(f"prometheus-{replica}", [
                    binaries["prometheus"], f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / f'tsdb-{replica}'}",
                    f"--web.listen-address={loopback(prom_ports[replica])}",
                    "--log.level=warn"])
            await pair.start("victoria-metrics", [
                binaries["victoria-metrics"],
                f"-promscrape.config={victoria_metrics_config(http_ports, tmp_path)}",
                "-dedup.minScrapeInterval=1s", f"-storageDataPath={tmp_path / 'vm'}",
                f"-httpListenAddr={loopback(vm_port)}",
                # Answer with the newest samples (the default hides the last 30 s) and
                # never from a cache filled before the scenario's end.
                "-search.latencyOffset=0s", "-search.disableCache", "-loggerLevel=WARN"])
            for name, url in pair.alertmanager_urls.items():
                await pair.wait_for(lambda url=url: cluster_ready(url),
                                    f"{name} to be ready in a cluster of two",
                                    lambda url=url: get_json(f"{url}/api/v2/status"))
            for url in [*pair.prometheus_urls.values(), pair.vm_url]:
                await pair.wait_for(lambda url=url: scraped_everywhere(url),
                                    f"{url} to scrape both collectors")
            yield pair
        finally:
            await pair.stop_all()
            webhook.close()


# --------------------------------------------------------------------------- observations


async def outages(pair: Pair, collector: str) -> list[dict[str, Any]]:
    """The collector's outage records of the probe (open and resolved)."""
    records = await get_json(pair.collector_url(collector) + "/api/v1/outages")
    return [r for r in records if r["probe"] == PROBE]


async def open_global_outage(pair: Pair, collector: str) -> bool:
    records = await outages(pair, collector)
    return any(r["ended_at"] is None and r["scope"] == "global" for r in records)


async def all_outages(pair: Pair) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for collector in COLLECTORS:
        try:
            found[collector] = await outages(pair, collector)
        except OSError as exc:
            found[collector] = repr(exc)
    return found


def by_group(notifications: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    """groupKey -> how many notifications of each status it got."""
    groups: dict[str, Counter[str]] = {}
    for notification in notifications:
        groups.setdefault(notification["groupKey"], Counter())[notification["status"]] += 1
    return groups


def global_outage_notified(pair: Pair, status: str) -> bool:
    return any(n["status"] == status and any(
        a["labels"]["alertname"] == "ProbenetGlobalOutage" and a["labels"].get("probe") == PROBE
        for a in n["alerts"]) for n in pair.notifications())


async def query(url: str, expr: str) -> dict[str, Any]:
    answer: dict[str, Any] = await get_json(f"{url}/api/v1/query", {"query": expr})
    return answer


async def series(url: str, expr: str) -> list[dict[str, Any]]:
    answer = await query(url, expr)
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def label_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


# --------------------------------------------------------------------------- the scenario


async def test_ha_pair_survives_a_killed_collector_during_a_global_outage(pair):
    async def alert_state() -> Any:
        return [await series(url, 'ALERTS{alertname="ProbenetGlobalOutage"}')
                for url in pair.prometheus_urls.values()]

    # Everything up: every agent connected to both collectors, the probe up everywhere.
    async def agents_connected() -> bool:
        views = [await get_json(pair.collector_url(c) + "/api/v1/agents") for c in COLLECTORS]
        return all(v["connected"] and not v["stale"] for agents in views for v in agents)
    await pair.wait_for(agents_connected, "every agent connected to both collectors",
                        lambda: asyncio.gather(*(get_json(pair.collector_url(c) +
                                                          "/api/v1/agents")
                                                 for c in COLLECTORS)))
    assert pair.notifications() == []

    # The target fails for everyone: a global outage, notified once.
    pair.web.default = HttpRoute(503, "down")
    for collector in COLLECTORS:
        await pair.wait_for(lambda collector=collector: open_global_outage(pair, collector),
                            f"{collector} to open the global outage",
                            lambda: all_outages(pair))
    await pair.wait_for(lambda: asyncio.sleep(0, global_outage_notified(pair, "firing")),
                        "ProbenetGlobalOutage to be notified firing", alert_state)

    # Collector a dies in the middle of it, and comes back with its config and journal
    # before ProbenetCollectorDown's `for: 2m` runs out.
    await pair.children["collector-a"].stop(signal.SIGKILL)
    del pair.children["collector-a"]
    await asyncio.sleep(DEAD_S)
    assert global_outage_notified(pair, "firing")
    await pair.start("collector-a", pair.collector_argv["collector-a"])
    await pair.wait_for(lambda: collector_ready(pair, "collector-a"),
                        "collector-a to be ready again")
    await pair.wait_for(lambda: open_global_outage(pair, "collector-a"),
                        "the restarted collector-a to hold the open global outage",
                        lambda: all_outages(pair))
    await pair.wait_for(lambda: scraped_everywhere(pair.prometheus_urls["a"]),
                        "Prometheus a to scrape the restarted collector-a")

    # The target heals: the outage resolves, notified once.
    pair.web.default = HttpRoute()
    await pair.wait_for(lambda: asyncio.sleep(0, global_outage_notified(pair, "resolved")),
                        "ProbenetGlobalOutage to be notified resolved", alert_state)
    # Long enough for a stray duplicate: a peer's stale firing comes within a group_interval
    # (plus the peer timeout) of the resolve.
    await asyncio.sleep(2 * GROUP_INTERVAL_S + PEER_TIMEOUT_S)
    pair.check_alive()

    groups = by_group(pair.notifications())
    assert groups, pair.notified()
    assert any("ProbenetGlobalOutage" in key for key in groups), pair.notified()
    for key, statuses in groups.items():
        assert statuses == Counter(firing=1, resolved=1), (key, pair.notified())
    notifications = pair.notifications()
    assert notifications[-1]["status"] == "resolved", pair.notified()
    # The replicas' alerts were merged into one (alert_relabel_configs drops `replica`):
    # without it, each notification carries one copy of the alert per replica.
    for notification in notifications:
        alerts = [a["labels"] for a in notification["alerts"]]
        assert all("replica" not in labels for labels in alerts), pair.notified()
        assert len({label_key(labels) for labels in alerts}) == len(alerts), pair.notified()

    await assert_outage_closed_by_both(pair)
    await assert_victoria_metrics_deduplicates(pair)


async def assert_outage_closed_by_both(pair: Pair) -> None:
    """Both collectors closed the outage; the restarted one closed the record it had opened
    before it was killed (open outages survive a restart), not a second one."""
    records = await all_outages(pair)
    for collector in COLLECTORS:
        found = records[collector]
        assert found, records
        assert all(r["ended_at"] is not None for r in found), records
        assert [r["peak_scope"] for r in found if r["kind"] == "probe"] == ["global"], records


async def assert_victoria_metrics_deduplicates(pair: Pair) -> None:
    """One copy of each series although both collectors export them all, and one sample per
    scrape interval of it."""
    prometheus = pair.prometheus_urls["a"]
    per_collector = await series(prometheus, f'probenet_region_up{{probe="{PROBE}"}}')
    pairs = Counter((s["metric"]["probe"], s["metric"]["region"]) for s in per_collector)
    assert set(pairs.values()) == {len(COLLECTORS)}, per_collector  # the duplicates exist
    merged = await series(pair.vm_url, f'probenet_region_up{{probe="{PROBE}"}}')
    assert Counter((s["metric"]["probe"], s["metric"]["region"]) for s in merged) == Counter(
        dict.fromkeys(pairs, 1)), merged
    failures, duplicated = [], []
    for where, expr in all_expressions():
        answer = await query(pair.vm_url, substitute(expr, rate_interval="1m", time_range="5m"))
        if answer is None or answer.get("status") != "success":
            failures.append(f"{where}: {answer}")
            continue
        result = answer["data"]["result"]
        keys = Counter(label_key(s["metric"]) for s in result if isinstance(s, dict))
        duplicated += [f"{where}: {dict(k)} x{n}" for k, n in keys.items() if n > 1]
    assert failures == [], "\n".join(failures)
    assert duplicated == [], "\n".join(duplicated)

    # Deduplication: the window lies after collector a's restart, when both collectors were
    # scraped: about one sample per second, not two (tolerant bounds: scrapes jitter).
    window = f"{DEDUP_WINDOW_S}s"
    raw = await series(prometheus, f'count_over_time(probenet_region_up{{probe="{PROBE}", '
                                   f'collector="collector-a"}}[{window}])')
    deduplicated = await series(pair.vm_url, f'count_over_time(probenet_region_up'
                                             f'{{probe="{PROBE}"}}[{window}])')
    assert deduplicated, merged
    counts = [float(s["value"][1]) for s in deduplicated]
    assert all(DEDUP_WINDOW_S * 0.5 <= c <= DEDUP_WINDOW_S * 1.3 for c in counts), (
        counts, raw)
