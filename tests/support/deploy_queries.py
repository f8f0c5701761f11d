"""The PromQL that deploy/ ships: every expression of every Grafana dashboard (panels,
annotations, variables) and of every Prometheus rule, and Grafana's variable substitution.

Used by the dashboard tests (promtool accepts each expression, each names only contract
metrics) and by the live-Prometheus test (each runs against a real Prometheus).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import yaml

from .system import ROOT

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
    "probenet_event_loop_lag_seconds_bucket", "probenet_event_loop_lag_max_seconds",
    "probe_ssl_earliest_cert_expiry", "probe_http_duration_seconds", "probe_http_status_code",
    "probe_tls_version_info", "probe_dns_lookup_time_seconds", "probe_dns_answer_rrs",
    "probe_icmp_duration_seconds", "probe_grpc_healthcheck_response",
    # flow probes (issue 13): per-step results, and the failing step of an open outage.
    "probenet_step_success", "probenet_step_duration_seconds", "probenet_outage_step",
    # maintenance windows (issue 14): 1 while windows cover the probe in every region.
    "probenet_maintenance_active",
    # fleet file (issue 15): 1 while a remote-config agent runs its current probe set.
    "probenet_agent_config_current",
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
