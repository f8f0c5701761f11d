"""Grafana dashboards and provisioning: structure, the datasource variable everywhere, and every
PromQL expression of every panel and rule accepted by promtool and naming only contract metrics.

The expression helpers here (`all_expressions`, `substitute`) are also used by
test_live_prometheus.py, which runs the same expressions against a real Prometheus.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from conftest import ROOT, need_binary

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

DEPLOY = ROOT / "deploy"
DASHBOARD_DIR = DEPLOY / "grafana" / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
RULES = DEPLOY / "prometheus" / "rules" / "probenet.rules.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
REGEX_VARIABLES = ("probe", "service", "region", "agent")
MIN_SCHEMA_VERSION = 36  # Grafana 9.0

# DESIGN.md "Metrics the dashboards and alert rules rely on", plus the collector's extra
# metrics listed in the deploy brief. A dashboard or rule naming anything else is a typo or
# a contract change.
CONTRACT_METRICS = frozenset({
    "probe_success", "probe_duration_seconds", "probenet_region_up", "probenet_target_state",
    "probenet_outage_active", "probenet_agent_up", "probenet_agent_impaired",
    "probenet_region_isolated", "probenet_target_flapping", "probenet_monitoring_degraded",
    "probenet_ingest_results_total", "probenet_ingest_rejections_total",
    "probenet_outage_detection_seconds_bucket", "probenet_outage_detection_seconds_sum",
    "probenet_outage_detection_seconds_count", "probenet_outages_opened_total",
    "probenet_build_info", "probenet_probe_failures_total",
    "probe_ssl_earliest_cert_expiry", "probe_http_duration_seconds", "probe_http_status_code",
    "probe_tls_version_info", "probe_dns_lookup_time_seconds", "probe_dns_answer_rrs",
    "probe_icmp_duration_seconds", "probe_grpc_healthcheck_response",
    "up",
})


# --------------------------------------------------------------------------- expressions


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested (collapsed) panels included."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def label_values_selector(query: Any) -> str | None:
    """The series selector of a `label_values(selector, label)` variable query."""
    text = query.get("query", "") if isinstance(query, dict) else str(query)
    match = re.fullmatch(r"\s*label_values\((.+),\s*\w+\s*\)\s*", text)
    return match.group(1) if match else None


def dashboard_expressions(path: Path) -> list[tuple[str, str]]:
    """(where, expr) for every target, annotation and variable query of a dashboard."""
    board = load_dashboard(path)
    found = [(f"{path.name} panel {panel['id']} {panel['title']!r} ref {target['refId']}",
              target["expr"])
             for panel in iter_panels(board["panels"]) for target in panel.get("targets", [])]
    found += [(f"{path.name} annotation {annotation['name']!r}", annotation["expr"])
              for annotation in board["annotations"]["list"] if "expr" in annotation]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            selector = label_values_selector(variable["query"])
            assert selector, f"{path.name} variable {variable['name']}: not label_values(...)"
            found.append((f"{path.name} variable {variable['name']}", selector))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
            for group in groups for rule in group["rules"]]


def all_expressions() -> list[tuple[str, str]]:
    """Every PromQL expression that deploy/ ships: dashboards (panels, annotations,
    variables) and rules."""
    found = [e for path in DASHBOARDS for e in dashboard_expressions(path)]
    return found + rule_expressions()


def substitute(expr: str, *, rate_interval: str = "1m", time_range: str = "1h") -> str:
    """Replace Grafana's template variables the way Grafana would with "All" selected."""
    expr = re.sub(r"\$\{?__rate_interval\}?|\$\{?__interval\}?", rate_interval, expr)
    expr = re.sub(r"\$\{?__range\}?", time_range, expr)
    return re.sub(r"\$\{?(\w+)(?::\w+)?\}?",
                  lambda m: ".*" if m.group(1) in REGEX_VARIABLES else m.group(0), expr)


def metric_names(expr: str) -> set[str]:
    """Names in an expression that look like metrics of ours (or recording rules)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_strings))
    return {t for t in tokens if t.startswith(("probe_", "probenet_")) or ":" in t or t == "up"}


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
