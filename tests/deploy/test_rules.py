"""Prometheus rules and Alertmanager config: promtool/amtool accept them, every alert is unit-tested
both ways, has a runbook section, and the Kubernetes PrometheusRule holds the same rules."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest
import yaml

from support.system import ROOT, need_binary

if TYPE_CHECKING:
    from pathlib import Path

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "probenet.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "rules" / "probenet.rules.test.yml"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/probenet/probenet/blob/main/docs/runbook.md#"


def run_tool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool with a deadline; the result carries its combined output for assertions."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=cwd)


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]


def alerts() -> list[dict]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recording_rules() -> list[dict]:
    return [rule for group in rule_groups() for rule in group["rules"] if "record" in rule]


def rule_test_cases() -> list[dict]:
    return yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]


# --------------------------------------------------------------------------- the tools


def test_promtool_check_rules():
    promtool = need_binary("promtool", "prometheus")
    done = run_tool(promtool, "check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts()) + len(recording_rules())} rules found" in done.stdout


def test_promtool_test_rules():
    promtool = need_binary("promtool", "prometheus")
    done = run_tool(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_fails_a_wrong_expectation(tmp_path):
    # The unit tests can fail: flip one expectation and promtool must say so.
    promtool = need_binary("promtool", "prometheus")
    shutil.copy(RULES, tmp_path / RULES.name)
    text = RULE_TESTS.read_text(encoding="utf-8")
    broken = text.replace("severity: page", "severity: warning", 1)
    assert broken != text
    (tmp_path / RULE_TESTS.name).write_text(broken, encoding="utf-8")
    done = run_tool(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0
    assert "FAILED" in done.stdout + done.stderr


def test_promtool_check_config():
    promtool = need_binary("promtool", "prometheus")
    done = run_tool(promtool, "check", "config", DEPLOY / "prometheus" / "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout


def test_amtool_check_config():
    amtool = need_binary("amtool", "prometheus-alertmanager")
    done = run_tool(amtool, "check-config", ALERTMANAGER)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    (["alertname=ProbenetGlobalOutage", "severity=page", "service=meta"], "team-pager"),
    (["alertname=ProbenetServiceOutage", "severity=page", "service=meta"], "team-pager"),
    (["alertname=ProbenetFlowGlobalOutage", "severity=page", "service=social", "step=login"],
     "team-pager"),
    (["alertname=ProbenetRegionalOutage", "severity=warning"], "team-chat"),
    (["alertname=ProbenetAgentImpaired", "severity=warning"], "team-chat"),
])
def test_alertmanager_routes_pages_to_the_pager(labels, receiver):
    amtool = need_binary("amtool", "prometheus-alertmanager")
    done = run_tool(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == [receiver]


# --------------------------------------------------------------------------- coverage


def test_every_alert_has_a_positive_and_a_negative_unit_test():
    positive: set[str] = set()
    negative: set[str] = set()
    for case in rule_test_cases():
        for check in case.get("alert_rule_test", []):
            (positive if check.get("exp_alerts") else negative).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names, "no alerts found"
    assert names - positive == set(), "alerts never shown to fire"
    assert names - negative == set(), "alerts never shown to stay quiet"
    assert (positive | negative) - names == set(), "tests of alerts that do not exist"


def test_every_recording_rule_is_unit_tested():
    exprs = " ".join(check["expr"] for case in rule_test_cases()
                     for check in case.get("promql_expr_test", []))
    untested = [rule["record"] for rule in recording_rules()
                if not re.search(rf"(?<![\w:]){re.escape(rule['record'])}(?![\w:])", exprs)]
    assert untested == []


def test_the_key_negative_cases_are_there():
    # DESIGN.md's promises in alert form: a regional outage never fires the global alert,
    # an impaired agent fires no outage alert.
    quiet_in = {case["name"]: {c["alertname"] for c in case.get("alert_rule_test", [])
                               if not c.get("exp_alerts")}
                for case in rule_test_cases()}
    regional = [name for name in quiet_in if "regional outage" in name]
    impaired = [name for name in quiet_in if "impaired agent" in name]
    assert any("ProbenetGlobalOutage" in quiet_in[name] for name in regional)
    assert any({"ProbenetGlobalOutage", "ProbenetRegionalOutage"} <= quiet_in[name]
               for name in impaired)


# --------------------------------------------------------------------------- the alerts' text


def runbook_anchors() -> dict[str, str]:
    """GitHub's anchor of each `## ` heading of the runbook -> the heading."""
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-"): h
            for h in headings}


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_alert_is_labelled_and_explained(alert):
    labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
    assert labels.get("component") in {"target", "agent", "monitoring", "collector"}
    severity = labels.get("severity", "")
    assert severity in {"page", "warning"} or set(re.findall(r"\b(page|warning)\b", severity)) == {
        "page", "warning"}, severity
    assert {"summary", "description", "runbook_url"} <= annotations.keys()
    assert len(annotations["description"]) > len(annotations["summary"]) > 10
    assert annotations["runbook_url"] == RUNBOOK_URL + alert["alert"].lower()


def test_runbook_has_one_section_per_alert():
    anchors = runbook_anchors()
    names = {rule["alert"] for rule in alerts()}
    assert {name.lower() for name in names} <= anchors.keys(), "alerts without a runbook section"
    sections = {heading for heading in anchors.values() if heading.startswith("Probenet")}
    assert sections == names, "runbook sections without an alert"


def test_inhibit_rules_name_existing_alerts_and_labels():
    config = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    names = {rule["alert"] for rule in alerts()}
    components = {rule["labels"]["component"] for rule in alerts()}
    assert config["inhibit_rules"]
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            label, _, value = re.match(r'(\w+)(=~|=)"(.*)"', matcher).groups()
            options = set(value.split("|"))
            if label == "alertname":
                assert options <= names, matcher
            elif label == "component":
                assert options <= components, matcher
            else:
                pytest.fail(f"inhibit matcher on an unexpected label: {matcher}")


def test_monitoring_degraded_inhibits_target_and_agent_alerts():
    config = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    rules = [r for r in config["inhibit_rules"]
             if r["source_matchers"] == ['alertname="ProbenetMonitoringDegraded"']]
    assert len(rules) == 1
    assert rules[0]["target_matchers"] == ['component=~"target|agent"']
    assert not rules[0].get("equal")


# --------------------------------------------------------------------------- Kubernetes


def test_kubernetes_prometheusrule_holds_the_same_rules():
    docs = list(yaml.safe_load_all(
        (DEPLOY / "kubernetes" / "prometheusrule.yaml").read_text(encoding="utf-8")))
    assert [d["kind"] for d in docs] == ["PrometheusRule"]
    assert docs[0]["spec"]["groups"] == rule_groups(), (
        "deploy/kubernetes/prometheusrule.yaml is out of date: regenerate its spec.groups "
        "from deploy/prometheus/rules/probenet.rules.yml")
