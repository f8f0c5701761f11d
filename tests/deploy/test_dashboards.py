"""Grafana dashboards and provisioning: structure, the datasource variable everywhere, and every
PromQL expression of every panel and rule accepted by promtool and naming only contract metrics.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from support.deploy_queries import (
    CONTRACT_METRICS,
    DASHBOARDS,
    DATASOURCE,
    DEPLOY,
    MIN_SCHEMA_VERSION,
    RULES,
    all_expressions,
    dashboard_expressions,
    iter_panels,
    load_dashboard,
    metric_names,
    substitute,
)
from support.system import need_binary

# --------------------------------------------------------------------------- structure


def test_there_are_three_dashboards():
    uids = {load_dashboard(p)["uid"] for p in DASHBOARDS}
    assert uids == {"probenet-overview", "probenet-probe", "probenet-fleet"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path):
    board = load_dashboard(path)
    assert board["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert board["title"].startswith("probenet / ")
    assert "probenet" in board["tags"]
    panels = list(iter_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    for panel in panels:
        where = f"panel {panel['id']} {panel.get('title')!r}"
        if panel["type"] == "row":
            assert not panel.get("targets"), where
            continue
        assert panel["datasource"] == DATASOURCE, where
        assert panel["targets"], f"{where}: no queries"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{where}: a target without expr"
            assert target.get("datasource", DATASOURCE) == DATASOURCE, where
        assert panel.get("description"), f"{where}: say what the panel shows"
        pos = panel["gridPos"]
        assert pos["w"] > 0, where
        assert pos["h"] > 0, where
        assert 0 <= pos["x"] <= pos["x"] + pos["w"] <= 24, where


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_do_not_overlap(path):
    cells: dict[tuple[int, int], int] = {}
    for panel in iter_panels(load_dashboard(path)["panels"]):
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {panel['id']} overlap"
                cells[(x, y)] = panel["id"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_templating_variables(path):
    board = load_dashboard(path)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"datasource", "probe", "service", "region"} <= variables.keys()
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    for name, variable in variables.items():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, name
            assert variable["multi"], name
            assert variable["includeAll"], name
    # Every variable used in an expression exists, and is used as a regex (=~), which is
    # what makes multi-value and "All" selections work.
    for where, expr in dashboard_expressions(path):
        for name in re.findall(r"\$\{?(\w+)", expr):
            assert name.startswith("__") or name in variables, f"{where}: unknown ${name}"
        assert not re.search(r'(?<![~])="\$', expr), f"{where}: use =~ with a variable"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_no_hard_coded_datasource(path):
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and ds.get("type") != "grafana":
                assert ds == DATASOURCE, f"{where}: {ds}"
            if isinstance(ds, str):
                pytest.fail(f"{where}: datasource given by name {ds!r}")
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(load_dashboard(path), path.name)


def test_dashboard_links_point_at_existing_dashboards():
    uids = {load_dashboard(p)["uid"] for p in DASHBOARDS}
    text = "".join(p.read_text(encoding="utf-8") for p in DASHBOARDS)
    linked = set(re.findall(r"/d/([\w-]+)/", text))
    assert linked, "the overview links its probes to the drill-down"
    assert linked <= uids


def test_provisioning_matches_the_compose_mounts():
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/probenet.yml").read_text(encoding="utf-8"))
    datasources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text(encoding="utf-8"))
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    assert provider["apiVersion"] == 1
    assert datasources["apiVersion"] == 1
    [source] = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    # The URL names the compose service and port.
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    mounts = {volume.split(":")[1]: volume.split(":")[0]
              for volume in compose["services"]["grafana"]["volumes"]}
    [entry] = provider["providers"]
    assert mounts[entry["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./grafana/provisioning/dashboards"
    assert mounts["/etc/grafana/provisioning/datasources"] == "./grafana/provisioning/datasources"


# --------------------------------------------------------------------------- PromQL


def test_every_expression_names_contract_metrics_only():
    recorded = {rule["record"] for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))[
        "groups"] for rule in group["rules"] if "record" in rule}
    unknown = {(where, name) for where, expr in all_expressions()
               for name in metric_names(expr) - CONTRACT_METRICS - recorded}
    assert unknown == set()


def test_metric_name_check_can_fail():
    assert metric_names('sum(rate(probenet_agents_up{x="probe_y"}[1m]))') == {
        "probenet_agents_up"}


def test_substitute_replaces_grafana_variables():
    assert substitute('rate(x{probe=~"$probe", region=~"${region}"}[$__rate_interval])'
                      ' + increase(y[$__range])') == (
        'rate(x{probe=~".*", region=~".*"}[1m]) + increase(y[1h])')


def test_promtool_parses_every_expression(tmp_path):
    promtool = need_binary("promtool", "prometheus")
    expressions = all_expressions()
    assert len(expressions) > 50
    rules = [{"record": f"deploy_expr:{i}", "expr": substitute(expr),
              "labels": {"where": where}} for i, (where, expr) in enumerate(expressions)]
    path = tmp_path / "expressions.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "deploy", "rules": rules}]}),
                    encoding="utf-8")
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_promtool_check_rejects_a_broken_expression(tmp_path):
    # The check above can fail: a broken expression is refused.
    promtool = need_binary("promtool", "prometheus")
    path = tmp_path / "broken.rules.yml"
    broken = substitute('sum by (probe (probe_success{probe=~"$probe"})')
    path.write_text(yaml.safe_dump({"groups": [{"name": "deploy", "rules": [
        {"record": "deploy_expr:0", "expr": broken}]}]}), encoding="utf-8")
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode != 0
