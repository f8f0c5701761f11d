"""deploy/ha/ checked statically: promtool accepts both Prometheus replicas (with the rules of
the single setup) and the VictoriaMetrics scrape config, amtool accepts the Alertmanager config,
`probenet check` accepts the collectors and the agent, and the pieces agree with each other:
the replicas differ only in `replica`, every piece targets the same two collectors, and
Alertmanager's group_interval exceeds the --cluster.peer-timeout the README runs it with."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.system import ROOT, need_binary

DEPLOY = ROOT / "deploy"
HA = DEPLOY / "ha"
RULES = DEPLOY / "prometheus" / "rules" / "probenet.rules.yml"
README = HA / "README.md"
REPLICAS = ("a", "b")
COLLECTORS = ("collector-a", "collector-b")
DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
                    "y": 31536000}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def run_tool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=cwd)


def probenet_check(*paths: Path) -> subprocess.CompletedProcess[str]:
    """The real `probenet check` command line, in a child process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")])}
    return subprocess.run(
        [sys.executable, "-c", "from probenet.cli import main; main()", "check",
         *(str(p) for p in paths)],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=ROOT)


def seconds(duration: str) -> float:
    """A Prometheus/Alertmanager duration (15s, 1m, 1h30m) in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * DURATION_UNITS_S[u] for n, u in parts)


def peer_timeouts(readme: str) -> list[str]:
    """Every --cluster.peer-timeout value the README's commands use."""
    return re.findall(r"--cluster\.peer-timeout[= ](\S+)", readme)


def routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    return [route, *(r for child in route.get("routes", []) for r in routes(child))]


def group_interval_problems(alertmanager: dict[str, Any], readme: str) -> list[str]:
    """Routes whose group_interval does not exceed the largest documented peer timeout."""
    timeouts = peer_timeouts(readme)
    if not timeouts:
        return ["the README runs Alertmanager without --cluster.peer-timeout"]
    peer_timeout = max(seconds(t) for t in timeouts)
    problems = []
    inherited = "5m"  # Alertmanager's default
    for route in routes(alertmanager["route"]):
        interval = route.get("group_interval", inherited)
        if seconds(interval) <= peer_timeout:
            problems.append(f"group_interval {interval} <= --cluster.peer-timeout "
                            f"{max(timeouts, key=seconds)}")
    return problems


def collector_targets(scrape_config: dict[str, Any]) -> list[str]:
    job = next(j for j in scrape_config["scrape_configs"] if j["job_name"] == "probenet-collector")
    return sorted(t for sc in job["static_configs"] for t in sc["targets"])


def copy_with_rules(tmp_path: Path, name: str) -> Path:
    """deploy/ha/<name> in a copy of deploy/ whose relative rule path resolves."""
    (tmp_path / "ha").mkdir()
    (tmp_path / "prometheus" / "rules").mkdir(parents=True)
    shutil.copy(RULES, tmp_path / "prometheus" / "rules" / RULES.name)
    return Path(shutil.copy(HA / name, tmp_path / "ha" / name))


# --------------------------------------------------------------------------- the tools


@pytest.mark.parametrize("replica", REPLICAS)
def test_ha_prometheus_replica_passes_promtool(tmp_path, replica):
    promtool = need_binary("promtool", "prometheus")
    config = copy_with_rules(tmp_path, f"prometheus-{replica}.yml")
    done = run_tool(promtool, "check", "config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout, done.stdout
    assert re.search(r"SUCCESS: \d+ rules found", done.stdout), done.stdout


def test_ha_prometheus_rule_path_is_the_single_setups(tmp_path):
    promtool = need_binary("promtool", "prometheus")
    # Without the rules next door, promtool fails: the check above does look at them.
    config = tmp_path / "prometheus-a.yml"
    shutil.copy(HA / "prometheus-a.yml", config)
    done = run_tool(promtool, "check", "config", config)
    assert done.returncode != 0, done.stdout
    assert [(HA / p).resolve() for p in load(HA / "prometheus-a.yml")["rule_files"]] == [
        RULES.resolve()]


def test_ha_victoria_metrics_scrape_config_passes_promtool():
    # VictoriaMetrics reads Prometheus' scrape config format (-promscrape.config).
    promtool = need_binary("promtool", "prometheus")
    done = run_tool(promtool, "check", "config", HA / "victoria-metrics-scrape.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ha_alertmanager_passes_amtool():
    amtool = need_binary("amtool", "prometheus-alertmanager")
    done = run_tool(amtool, "check-config", HA / "alertmanager.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_ha_probenet_configs_pass_probenet_check():
    paths = [HA / "collector-a.yaml", HA / "collector-b.yaml", HA / "agent.yaml"]
    done = probenet_check(*paths)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": ok (collector config)") == 2, done.stdout
    assert done.stdout.count(": ok (agent config)") == 1, done.stdout


# --------------------------------------------------------------------------- consistency


def test_ha_prometheus_replicas_differ_only_in_the_replica_label():
    configs = {r: load(HA / f"prometheus-{r}.yml") for r in REPLICAS}
    for replica, config in configs.items():
        assert config["global"]["external_labels"] == {"replica": replica, "cluster": "probenet"}
        assert config["global"]["scrape_interval"] == "15s"
        del config["global"]["external_labels"]["replica"]
    assert configs["a"] == configs["b"]
    # Line for line too: only lines naming the replica differ (the label, the comments).
    lines = [(HA / f"prometheus-{r}.yml").read_text(encoding="utf-8").splitlines()
             for r in REPLICAS]
    assert len(lines[0]) == len(lines[1])
    differing = [(a, b) for a, b in zip(*lines, strict=True) if a != b]
    assert ("    replica: a", "    replica: b") in differing
    for a, b in differing:
        assert a.replace("-a", "-b").replace(" a ", " b ").replace(": a", ": b") == b, (a, b)


def test_ha_prometheus_scrapes_both_collectors_and_alerts_both_alertmanagers():
    for replica in REPLICAS:
        config = load(HA / f"prometheus-{replica}.yml")
        job = next(j for j in config["scrape_configs"] if j["job_name"] == "probenet-collector")
        labelled = {t: sc["labels"]["collector"] for sc in job["static_configs"]
                    for t in sc["targets"]}
        assert labelled == {f"{c}:9464": c for c in COLLECTORS}
        managers = [t for am in config["alerting"]["alertmanagers"]
                    for sc in am["static_configs"] for t in sc["targets"]]
        assert sorted(managers) == ["alertmanager-a:9093", "alertmanager-b:9093"]
        # Alertmanager merges only identical label sets: the replicas' alerts lose `replica`
        # (tests/deploy/test_ha_live.py shows one notification per group with it).
        assert {"action": "labeldrop", "regex": "replica"} in config["alerting"][
            "alert_relabel_configs"]


def test_ha_alertmanager_group_interval_exceeds_the_readme_peer_timeout():
    readme = README.read_text(encoding="utf-8")
    alertmanager = load(HA / "alertmanager.yml")
    assert peer_timeouts(readme), "the README documents --cluster.peer-timeout"
    assert group_interval_problems(alertmanager, readme) == []
    route = alertmanager["route"]
    assert route["group_by"] == ["alertname", "probe", "service"]
    assert route["group_wait"] == "10s"
    # Every webhook stays on loopback until replaced.
    urls = [w["url"] for r in alertmanager["receivers"] for w in r.get("webhook_configs", [])]
    assert urls
    assert all(u.startswith("http://127.0.0.1:") for u in urls), urls
    # Both members peer with each other in the README's commands.
    peers = set(re.findall(r"--cluster\.peer=(alertmanager-[ab]):9094", readme))
    assert peers == {"alertmanager-a", "alertmanager-b"}


def test_ha_group_interval_check_catches_a_short_interval():
    alertmanager = load(HA / "alertmanager.yml")
    readme = README.read_text(encoding="utf-8")
    too_long = re.sub(r"--cluster\.peer-timeout=\S+", "--cluster.peer-timeout=2m", readme)
    assert group_interval_problems(alertmanager, too_long) == [
        "group_interval 1m <= --cluster.peer-timeout 2m"]
    alertmanager["route"]["routes"] = [{"receiver": "x", "group_interval": "15s"}]
    assert group_interval_problems(alertmanager, readme) == [
        "group_interval 15s <= --cluster.peer-timeout 15s"]
    assert group_interval_problems(load(HA / "alertmanager.yml"),
                                   readme.replace("--cluster.peer-timeout", "--x")) == [
        "the README runs Alertmanager without --cluster.peer-timeout"]
    with pytest.raises(ValueError, match="not a duration"):
        seconds("15 s")


def test_ha_victoria_metrics_targets_the_prometheus_collectors():
    vm = load(HA / "victoria-metrics-scrape.yml")
    for replica in REPLICAS:
        assert collector_targets(vm) == collector_targets(load(HA / f"prometheus-{replica}.yml"))
    assert collector_targets(vm) == [f"{c}:9464" for c in COLLECTORS]
    # Deduplication needs identical series: both targets get one `instance`, no per-target label.
    job = vm["scrape_configs"][0]
    assert all("labels" not in sc for sc in job["static_configs"])
    assert {"target_label": "instance", "replacement": "probenet-collector"} in job[
        "relabel_configs"]
    # The documented flags: dedup at the scrape interval, this scrape config, a retention.
    readme = README.read_text(encoding="utf-8")
    dedup = re.findall(r"-dedup\.minScrapeInterval=(\S+)", readme)
    assert dedup
    assert {seconds(d) for d in dedup} == {seconds(vm["global"]["scrape_interval"])}
    assert "-promscrape.config=deploy/ha/victoria-metrics-scrape.yml" in readme
    assert re.search(r"-retentionPeriod=\S+", readme)


def test_ha_collectors_differ_only_in_identity_and_share_registry_and_fleet():
    configs = {c: load(HA / f"{c}.yaml") for c in COLLECTORS}
    assert [configs[c]["collector_id"] for c in COLLECTORS] == list(COLLECTORS)
    assert configs["collector-a"]["journal"] != configs["collector-b"]["journal"]
    stripped = [{k: v for k, v in cfg.items() if k not in {"collector_id", "journal"}}
                for cfg in configs.values()]
    assert stripped[0] == stripped[1]
    fleet = (HA / configs["collector-a"]["fleet"]["probes_file"]).resolve()
    assert fleet == (DEPLOY / "examples" / "fleet.yaml").resolve()
    # The scraped port is the collectors' HTTP port.
    assert configs["collector-a"]["listen"]["http"].rsplit(":", 1)[1] == "9464"


def test_ha_agent_streams_to_both_collectors_as_a_registered_agent():
    agent = load(HA / "agent.yaml")
    collector = load(HA / "collector-a.yaml")
    grpc_port = collector["listen"]["grpc"].rsplit(":", 1)[1]
    assert [c["address"] for c in agent["collectors"]] == [f"{c}:{grpc_port}" for c in COLLECTORS]
    assert agent["remote_config"] is True
    registry = {entry["id"]: entry["region"] for entry in collector["agents"]}
    assert registry[agent["agent"]["id"]] == agent["agent"]["region"]
