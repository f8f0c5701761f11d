"""The HA pair's Kubernetes manifests (deploy/kubernetes/ha/) and compose file
(deploy/docker-compose.ha.yml) checked statically, from the paths the containers would see.

Every embedded config passes its real checker (`probenet check`, `promtool check config`,
`amtool check-config`, `victoria-metrics -dryRun`), and the pieces name each other right:
Services select the pods, agents stream to both collectors' stable names, both Prometheus
replicas scrape both collectors with different replica labels and drop that label from the
alerts, the Alertmanagers peer with each other with group_interval > --cluster.peer-timeout,
VictoriaMetrics deduplicates at the scrape interval.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from probenet.collector.config import load_config
from support.kube import materialize_pod as kube_materialize_pod
from support.kube import objects_by_kind, read_manifests
from support.system import ROOT, need_binary

DEPLOY = ROOT / "deploy"
HA = DEPLOY / "ha"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_HA = KUBERNETES / "ha"
COMPOSE_HA = DEPLOY / "docker-compose.ha.yml"
RULES = DEPLOY / "prometheus" / "rules" / "probenet.rules.yml"
NAMESPACE = "probenet"
# Set on a StatefulSet's pods by its controller, not in the pod template.
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
                    "y": 31536000}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120,
                          check=False)


def probenet_check(*paths: Path) -> subprocess.CompletedProcess[str]:
    """The real `probenet check` command line, in a child process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")])}
    return subprocess.run(
        [sys.executable, "-c", "from probenet.cli import main; main()", "check",
         *(str(p) for p in paths)],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=ROOT)


def assert_checks_ok(kinds: dict[str, int], *paths: Path) -> None:
    """`probenet check` accepts every path: `kinds` counts them by kind (collector, agent)."""
    done = probenet_check(*paths)
    assert done.returncode == 0, done.stdout + done.stderr
    for kind, count in kinds.items():
        assert done.stdout.count(f": ok ({kind} config)") == count, done.stdout


def seconds(duration: str) -> float:
    """A Prometheus/Alertmanager duration (15s, 1m, 1h30m) in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * DURATION_UNITS_S[u] for n, u in parts)


def flag_values(args: list[str], flag: str) -> list[str]:
    """Every value of `--flag=value` (or `-flag=value`) in a command line."""
    return [a.split("=", 1)[1] for a in args if a.split("=", 1)[0] == flag]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def group_interval_problems(alertmanager: dict[str, Any], peer_timeouts: list[str]) -> list[str]:
    """Routes whose group_interval does not exceed the members' --cluster.peer-timeout."""
    if not peer_timeouts:
        return ["Alertmanager runs without --cluster.peer-timeout"]
    peer_timeout = max(peer_timeouts, key=seconds)
    problems = []

    def walk(route: dict[str, Any], inherited: str) -> None:
        interval = route.get("group_interval", inherited)
        if seconds(interval) <= seconds(peer_timeout):
            problems.append(f"group_interval {interval} <= --cluster.peer-timeout {peer_timeout}")
        for child in route.get("routes", []):
            walk(child, interval)

    walk(alertmanager["route"], "5m")  # Alertmanager's default
    return problems


def alert_labels(prometheus: dict[str, Any], labels: dict[str, str]) -> dict[str, str]:
    """An alert's labels as Alertmanager gets them: external labels added, then the
    alert_relabel_configs applied (only the label-dropping actions are modelled)."""
    result = {**prometheus["global"].get("external_labels", {}), **labels}
    for rule in prometheus["alerting"].get("alert_relabel_configs", []):
        pattern = re.compile(rule.get("regex", "(.*)"))
        if rule["action"] == "labeldrop":
            result = {k: v for k, v in result.items() if not pattern.fullmatch(k)}
        elif rule["action"] == "labelkeep":
            result = {k: v for k, v in result.items() if pattern.fullmatch(k)}
        else:
            pytest.fail(f"unexpected alert relabel action {rule['action']}")
    return result


def expand_env(text: str, env: dict[str, str]) -> str:
    """Prometheus' expansion of ${VAR} and $VAR in external_labels (unset: empty)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m[1] or m[2], ""), text)


def promtool_check(config: Path) -> None:
    promtool = need_binary("promtool", "prometheus")
    done = run_tool(promtool, "check", "config", config)
    assert done.returncode == 0, done.stdout + done.stderr


def amtool_check(config: Path) -> None:
    amtool = need_binary("amtool", "prometheus-alertmanager")
    done = run_tool(amtool, "check-config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def victoria_metrics_dry_run(args: list[str], root: Path) -> None:
    """The real binary checks its flags and -promscrape.config, then exits."""
    binary = need_binary("victoria-metrics", "victoria-metrics")
    run = [a for a in args if not a.startswith("-storageDataPath=")]
    run = [f"-promscrape.config={root}{a.split('=', 1)[1]}"
           if a.startswith("-promscrape.config=") else a for a in run]
    done = run_tool(binary, "-dryRun", "-loggerLevel=ERROR", *run)
    assert done.returncode == 0, done.stdout + done.stderr


def test_checks_catch_a_short_group_interval_and_a_kept_replica_label():
    alertmanager = {"route": {"group_interval": "1m", "routes": [{"group_interval": "10s"}]}}
    assert group_interval_problems(alertmanager, ["15s"]) == [
        "group_interval 10s <= --cluster.peer-timeout 15s"]
    assert group_interval_problems({"route": {}}, ["15s"]) == []  # the default, 5m
    assert group_interval_problems({"route": {}}, []) == [
        "Alertmanager runs without --cluster.peer-timeout"]
    prometheus = {"global": {"external_labels": {"replica": "a", "cluster": "probenet"}},
                  "alerting": {}}
    assert alert_labels(prometheus, {"alertname": "X"})["replica"] == "a"
    assert expand_env("replica: ${POD_NAME} $HOST $UNSET", {"POD_NAME": "p-0", "HOST": "h"}) == (
        "replica: p-0 h ")


# --------------------------------------------------------------------------- Kubernetes


def manifests() -> list[dict[str, Any]]:
    return read_manifests(KUBERNETES_HA)


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return objects_by_kind(KUBERNETES_HA, kind)


def workloads() -> dict[str, dict[str, Any]]:
    return {**by_kind("StatefulSet"), **by_kind("Deployment"), **by_kind("DaemonSet")}


def container(workload: dict[str, Any]) -> dict[str, Any]:
    [only] = workload["spec"]["template"]["spec"]["containers"]
    return only


def config_map_text(name: str, key: str) -> str:
    text = by_kind("ConfigMap")[name]["data"][key]
    assert isinstance(text, str)
    return text


def pod_names(statefulset: dict[str, Any]) -> list[str]:
    name, replicas = statefulset["metadata"]["name"], statefulset["spec"]["replicas"]
    return [f"{name}-{i}" for i in range(replicas)]


def stable_names(statefulset: dict[str, Any], port: int) -> list[str]:
    """host:port of each pod through the StatefulSet's headless Service."""
    service = statefulset["spec"]["serviceName"]
    return [f"{pod}.{service}.{NAMESPACE}.svc:{port}" for pod in pod_names(statefulset)]


def container_port(workload: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container(workload)["ports"]}
    return int(ports[name])


def selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    """Whether a label selector matches the workload's pods (one of them, for a pod name)."""
    labels = dict(workload["spec"]["template"]["metadata"]["labels"])
    wanted = dict(selector)
    pod = wanted.pop(POD_NAME_LABEL, None)
    if pod is not None and (workload["kind"] != "StatefulSet" or pod not in pod_names(workload)):
        return False
    return wanted.items() <= labels.items()


def materialize_pod(workload: dict[str, Any], root: Path, env: dict[str, str]) -> None:
    """The pod's file system under `root`, its init containers run with `env`."""
    kube_materialize_pod(workload, by_kind("ConfigMap"), root, env)


def test_kubernetes_ha_objects_and_kustomization():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in manifests())
    assert kinds == sorted([
        ("Namespace", "probenet"),
        ("ConfigMap", "probenet-collector-config"), ("ConfigMap", "probenet-fleet"),
        ("StatefulSet", "probenet-collector"), ("Service", "probenet-collector"),
        ("Service", "probenet-collector-0-grpc"), ("Service", "probenet-collector-1-grpc"),
        ("PodDisruptionBudget", "probenet-collector"),
        ("ConfigMap", "probenet-agent-config"), ("DaemonSet", "probenet-agent"),
        ("Service", "probenet-agent"),
        ("ConfigMap", "probenet-prometheus-config"), ("ConfigMap", "probenet-prometheus-rules"),
        ("StatefulSet", "probenet-prometheus"), ("Service", "probenet-prometheus"),
        ("PodDisruptionBudget", "probenet-prometheus"),
        ("ConfigMap", "probenet-alertmanager-config"), ("StatefulSet", "probenet-alertmanager"),
        ("Service", "probenet-alertmanager"), ("PodDisruptionBudget", "probenet-alertmanager"),
        ("ConfigMap", "probenet-victoria-metrics-config"),
        ("PersistentVolumeClaim", "probenet-victoria-metrics"),
        ("Deployment", "probenet-victoria-metrics"), ("Service", "probenet-victoria-metrics")])
    kustomization = load(KUBERNETES_HA / "kustomization.yaml")
    assert kustomization["namespace"] == NAMESPACE
    listed = kustomization["resources"]
    assert all((KUBERNETES_HA / p).is_file() for p in listed), listed
    assert set(listed) == {p.name for p in KUBERNETES_HA.glob("*.yaml")} - {"kustomization.yaml"}
    # Copies (kustomize loads nothing outside the folder) that must not drift.
    assert load(KUBERNETES_HA / "namespace.yaml") == load(KUBERNETES / "namespace.yaml")
    assert config_map_text("probenet-prometheus-rules", RULES.name) == RULES.read_text(
        encoding="utf-8")


def test_kubernetes_ha_names_and_labels_follow_the_single_setup():
    single = {d["metadata"]["name"]: d for path in KUBERNETES.glob("*.yaml")
              if path.name != "kustomization.yaml"
              for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d}
    for name in ("probenet-collector-config", "probenet-agent-config", "probenet-agent",
                 "probenet-collector"):
        assert name in single
    for doc in manifests():
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "probenet", doc["metadata"]["name"]
        if doc["metadata"]["name"] in single and doc["kind"] != "Namespace":
            assert labels == single[doc["metadata"]["name"]]["metadata"]["labels"]
    # Same secrets, so the single setup's `kubectl create secret` lines serve both.
    single_workloads = {path.name: d for path in KUBERNETES.glob("*.yaml")
                        for d in yaml.safe_load_all(path.read_text(encoding="utf-8"))
                        if d and d["kind"] in {"Deployment", "DaemonSet"}}
    assert set(single_workloads) == {"collector.yaml", "agent.yaml"}

    def secrets(workload: dict[str, Any]) -> set[str]:
        return {v["secret"]["secretName"] for v in workload["spec"]["template"]["spec"][
            "volumes"] if "secret" in v}

    for file, workload in single_workloads.items():
        assert secrets(workloads()[workload["metadata"]["name"]]) == secrets(workload), file


@pytest.mark.parametrize("workload", workloads().values(), ids=lambda w: w["metadata"]["name"])
def test_kubernetes_ha_workload_is_consistent_and_unprivileged(workload):
    spec = workload["spec"]
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"][
        "labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    assert not claims & volumes.keys()
    for volume in volumes.values():
        if "configMap" in volume:
            assert volume["configMap"]["name"] in by_kind("ConfigMap")
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in by_kind(
                "PersistentVolumeClaim")
        if "secret" in volume:
            assert volume["secret"]["items"]
    for each in pod.get("initContainers", []) + pod["containers"]:
        security = each["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        for mount in each["volumeMounts"]:
            assert mount["name"] in volumes.keys() | claims, mount
        ports = {p["name"] for p in each.get("ports", [])}
        for probe in ("livenessProbe", "readinessProbe"):
            if probe in each:
                assert each[probe]["httpGet"]["port"] in ports
        # $(NAME) in args only expands variables the container defines.
        defined = {e["name"] for e in each.get("env", [])}
        for arg in each.get("args", []):
            assert set(re.findall(r"\$\((\w+)\)", arg)) <= defined, arg


@pytest.mark.parametrize("statefulset", by_kind("StatefulSet").values(),
                         ids=lambda s: s["metadata"]["name"])
def test_kubernetes_ha_statefulset_is_a_pair_behind_a_headless_service(statefulset):
    spec = statefulset["spec"]
    assert spec["replicas"] == 2
    service = by_kind("Service")[spec["serviceName"]]
    assert service["spec"]["clusterIP"] == "None"
    assert selects(service["spec"]["selector"], statefulset)
    [budget] = [b for b in by_kind("PodDisruptionBudget").values()
                if selects(b["spec"]["selector"]["matchLabels"], statefulset)]
    assert budget["spec"]["maxUnavailable"] == 1


def test_kubernetes_ha_services_select_one_workload_and_its_ports():
    for name, service in by_kind("Service").items():
        selected = [w for w in workloads().values() if selects(service["spec"]["selector"], w)]
        assert len(selected) == 1, name
        ports = {p["name"]: p for c in selected[0]["spec"]["template"]["spec"]["containers"]
                 for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
            target = ports[port["targetPort"]]
            assert port["port"] == target["containerPort"], (name, port)
            assert port.get("protocol", "TCP") == target.get("protocol", "TCP"), (name, port)
    for name, budget in by_kind("PodDisruptionBudget").items():
        assert len([w for w in workloads().values()
                    if selects(budget["spec"]["selector"]["matchLabels"], w)]) == 1, name
    # A selector naming a pod beyond the replicas matches nothing.
    collector = workloads()["probenet-collector"]
    assert not selects({POD_NAME_LABEL: "probenet-collector-2"}, collector)
    assert selects({POD_NAME_LABEL: "probenet-collector-1"}, collector)


def test_kubernetes_ha_collector_config_passes_probenet_check_and_takes_the_pod_name(tmp_path):
    statefulset = workloads()["probenet-collector"]
    materialize_pod(statefulset, tmp_path, {})
    config = tmp_path / container(statefulset)["args"][2].lstrip("/")
    assert container(statefulset)["args"][:2] == ["collector", "--config"]
    assert_checks_ok({"collector": 1}, config)
    raw = load(config)
    # No collector_id in the shared config: each pod's is its host name, i.e. its pod name.
    assert "collector_id" not in raw
    loaded = load_config(config)
    assert loaded.collector_id == socket.gethostname()
    # Each pod journals into its own volume; the fleet file is the probenet-fleet ConfigMap.
    journal_mount = next(m["mountPath"] for m in container(statefulset)["volumeMounts"]
                         if m["name"] == "journal")
    assert [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]] == [
        "journal"]
    assert Path(raw["journal"]["path"]).parent == Path(journal_mount)
    assert loaded.fleet is not None
    assert Path(loaded.fleet.probes_file).read_text(encoding="utf-8") == config_map_text(
        "probenet-fleet", "fleet.yaml")
    # The ports the Services and the scrapers use are the ones it listens on.
    assert port_of(raw["listen"]["grpc"]) == container_port(statefulset, "grpc")
    assert port_of(raw["listen"]["http"]) == container_port(statefulset, "http-metrics")


def test_kubernetes_ha_agents_stream_to_both_collectors_by_stable_name(tmp_path):
    daemonset = workloads()["probenet-agent"]
    materialize_pod(daemonset, tmp_path, {"NODE_NAME": "node-a"})
    config = tmp_path / container(daemonset)["args"][2].lstrip("/")
    assert "__NODE_NAME__" not in config.read_text(encoding="utf-8")
    assert_checks_ok({"agent": 1}, config)
    agent = load(config)
    collectors = workloads()["probenet-collector"]
    addresses = [c["address"] for c in agent["collectors"]]
    assert addresses == stable_names(collectors, container_port(collectors, "grpc"))
    assert len(set(addresses)) == 2
    assert agent["remote_config"] is True
    registry = {e["id"]: e["region"] for e in yaml.safe_load(
        config_map_text("probenet-collector-config", "collector.yaml"))["agents"]}
    assert registry[agent["agent"]["id"]] == agent["agent"]["region"]


def prometheus_config(pod_name: str) -> dict[str, Any]:
    """The embedded Prometheus config as the pod `pod_name` reads it (env expanded)."""
    statefulset = workloads()["probenet-prometheus"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container(statefulset)[
        "env"]}
    values = {name: pod_name for name, field in env.items() if field == "metadata.name"}
    return yaml.safe_load(expand_env(config_map_text("probenet-prometheus-config",
                                                     "prometheus.yml"), values))


def test_kubernetes_ha_prometheus_replicas_pass_promtool_with_different_replica_labels(tmp_path):
    statefulset = workloads()["probenet-prometheus"]
    args = container(statefulset)["args"]
    # Without the feature flag (Prometheus 2), ${POD_NAME} would stay literal on both.
    assert "--enable-feature=expand-external-labels" in args
    [config_path] = flag_values(args, "--config.file")
    materialize_pod(statefulset, tmp_path, {})
    replicas = set()
    for pod in pod_names(statefulset):
        config = prometheus_config(pod)
        replicas.add(config["global"]["external_labels"]["replica"])
        config["rule_files"] = [f"{tmp_path}{p}" for p in config["rule_files"]]
        assert all(Path(p).is_file() for p in config["rule_files"]), config["rule_files"]
        rendered = tmp_path / f"{pod}.yml"
        rendered.write_text(yaml.safe_dump(config), encoding="utf-8")
        promtool_check(rendered)
        # The alerts reach Alertmanager without `replica`, so both replicas' alerts merge.
        labels = alert_labels(config, {"alertname": "ProbenetCollectorDown"})
        assert labels == {"alertname": "ProbenetCollectorDown", "cluster": "probenet"}
    assert replicas == set(pod_names(statefulset))
    assert (tmp_path / config_path.lstrip("/")).is_file()


def test_kubernetes_ha_prometheus_scrapes_both_collectors_and_alerts_both_alertmanagers():
    config = prometheus_config("probenet-prometheus-0")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    collectors = workloads()["probenet-collector"]
    http_port = container_port(collectors, "http-metrics")
    labelled = {t: sc["labels"]["collector"] for sc in jobs["probenet-collector"][
        "static_configs"] for t in sc["targets"]}
    assert labelled == dict(zip(stable_names(collectors, http_port), pod_names(collectors),
                                strict=True))
    alertmanagers = workloads()["probenet-alertmanager"]
    targets = [t for am in config["alerting"]["alertmanagers"] for sc in am["static_configs"]
               for t in sc["targets"]]
    assert targets == stable_names(alertmanagers, container_port(alertmanagers, "web"))
    # The agents through their headless Service's DNS name.
    [sd] = jobs["probenet-agent"]["dns_sd_configs"]
    agent_service = by_kind("Service")["probenet-agent"]
    assert agent_service["spec"]["clusterIP"] == "None"
    assert sd["names"] == [f"probenet-agent.{NAMESPACE}.svc"]
    assert sd["port"] == container_port(workloads()["probenet-agent"], "http-metrics")
    assert config["global"]["scrape_interval"] == "15s"


def test_kubernetes_ha_alertmanagers_peer_with_each_other(tmp_path):
    statefulset = workloads()["probenet-alertmanager"]
    args = container(statefulset)["args"]
    [listen] = flag_values(args, "--cluster.listen-address")
    assert port_of(listen) == container_port(statefulset, "cluster-tcp")
    assert container_port(statefulset, "cluster-udp") == port_of(listen)
    peers = flag_values(args, "--cluster.peer")
    assert peers == stable_names(statefulset, port_of(listen))
    for pod in pod_names(statefulset):
        others = [p for p in peers if not p.startswith(f"{pod}.")]
        assert len(others) == 1, (pod, peers)
    # A member becomes ready only once the cluster settles: its name must resolve before.
    assert by_kind("Service")[statefulset["spec"]["serviceName"]]["spec"][
        "publishNotReadyAddresses"] is True
    materialize_pod(statefulset, tmp_path, {})
    [config] = flag_values(args, "--config.file")
    amtool_check(tmp_path / config.lstrip("/"))
    alertmanager = load(tmp_path / config.lstrip("/"))
    assert group_interval_problems(alertmanager, flag_values(args, "--cluster.peer-timeout")) == []


def test_kubernetes_ha_victoria_metrics_dedups_at_the_scrape_interval(tmp_path):
    deployment = workloads()["probenet-victoria-metrics"]
    args = container(deployment)["args"]
    materialize_pod(deployment, tmp_path, {})
    [scrape_file] = flag_values(args, "-promscrape.config")
    scrape = load(tmp_path / scrape_file.lstrip("/"))
    [dedup] = flag_values(args, "-dedup.minScrapeInterval")
    assert seconds(dedup) == seconds(scrape["global"]["scrape_interval"])
    assert seconds(dedup) == seconds(prometheus_config("p")["global"]["scrape_interval"])
    [job] = scrape["scrape_configs"]
    collectors = workloads()["probenet-collector"]
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == stable_names(
        collectors, container_port(collectors, "http-metrics"))
    # One `instance` for both copies, so they are one series to deduplicate.
    assert {"target_label": "instance", "replacement": "probenet-collector"} in job[
        "relabel_configs"]
    assert [c["persistentVolumeClaim"]["claimName"] for c in deployment["spec"]["template"][
        "spec"]["volumes"] if "persistentVolumeClaim" in c] == ["probenet-victoria-metrics"]
    promtool_check(tmp_path / scrape_file.lstrip("/"))
    victoria_metrics_dry_run(args, tmp_path)


def test_kustomize_build_ha():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (optional: the checks above are static)")
    done = run_tool("kubectl", "kustomize", KUBERNETES_HA)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert {d["metadata"].get("namespace", NAMESPACE) for d in docs} == {NAMESPACE}
    assert len(docs) == len(manifests())


# --------------------------------------------------------------------------- docker compose


def compose() -> dict[str, Any]:
    return load(COMPOSE_HA)


def mounts(service: dict[str, Any]) -> dict[str, str | Path]:
    """Container path -> host path (bind mount, relative to deploy/) or volume name."""
    found: dict[str, str | Path] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = (DEPLOY / source).resolve() if source.startswith(".") else source
    return found


def materialize_container(service: dict[str, Any], root: Path) -> None:
    """Lay out the container's file system under `root`: bind-mounted files and folders
    copied, named volumes as empty folders; nested mounts after their parents."""
    for target, source in sorted(mounts(service).items(), key=lambda m: len(m[0])):
        where = root / target.lstrip("/")
        if isinstance(source, str):
            where.mkdir(parents=True, exist_ok=True)
        elif source.is_dir():
            shutil.copytree(source, where)
        else:
            where.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, where)


def volume_at(service: dict[str, Any], container_path: str) -> str | None:
    """The named volume holding `container_path` in the container, if any."""
    best = None
    for target, source in sorted(mounts(service).items(), key=lambda m: len(m[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            best = source if isinstance(source, str) else None
    return best


def config_argument(command: list[str]) -> str:
    return command[command.index("--config") + 1]


def probenet_services(kind: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if s.get("command", [""])[0] == kind}


def services_by_image(image: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items()
            if s.get("image", "").split(":")[0] == image}


def test_compose_ha_services_and_mounts():
    services = compose()["services"]
    assert set(services) == {"collector-a", "collector-b", "agent-eu-central", "agent-us-east",
                             "agent-ap-southeast", "prometheus-a", "prometheus-b",
                             "alertmanager-a", "alertmanager-b", "victoria-metrics"}
    declared = set(compose()["volumes"])
    for name, service in services.items():
        for source in mounts(service).values():
            if isinstance(source, Path):
                assert source.exists(), f"{name}: {source} does not exist"
                # deploy/ha/ as it is, or a compose variant in deploy/compose/ha/.
                assert any(source.is_relative_to(folder) for folder in (
                    HA, DEPLOY / "compose" / "ha", DEPLOY / "examples", RULES.parent)), (
                    name, source)
            else:
                assert source in declared, (name, source)
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    published = [p.rsplit(":", 1)[0] for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), published
    # deploy/ha/ is mounted unchanged wherever it fits.
    used = {s for service in services.values() for s in mounts(service).values()
            if isinstance(s, Path)}
    assert {p.resolve() for p in HA.glob("*.y*ml")} <= used


def test_compose_ha_probenet_configs_pass_probenet_check_where_containers_read_them(tmp_path):
    paths = []
    for name, service in {**probenet_services("collector"),
                          **probenet_services("agent")}.items():
        root = tmp_path / name
        materialize_container(service, root)
        paths.append(root / config_argument(service["command"]).lstrip("/"))
    assert_checks_ok({"collector": 2, "agent": 3}, *paths)


def test_compose_ha_collectors_are_deploy_ha_journaling_into_their_volumes(tmp_path):
    collectors = probenet_services("collector")
    assert set(collectors) == {"collector-a", "collector-b"}
    journals = set()
    for name, service in collectors.items():
        container_config = config_argument(service["command"])
        assert mounts(service)[container_config] == (HA / f"{name}.yaml").resolve()
        root = tmp_path / name
        materialize_container(service, root)
        loaded = load_config(root / container_config.lstrip("/"))
        assert loaded.collector_id == name
        # The journal the relative path names is in a volume of its own (and writable: the
        # image's state directory), the fleet file is deploy/examples/fleet.yaml.
        journal = "/" + str(Path(loaded.journal.path).relative_to(root))
        volume = volume_at(service, journal)
        assert volume is not None, journal
        assert journal.startswith("/var/lib/probenet/")
        journals.add(volume)
        assert loaded.fleet is not None
        assert Path(loaded.fleet.probes_file).read_bytes() == (
            DEPLOY / "examples" / "fleet.yaml").read_bytes()
    assert len(journals) == 2


def test_compose_ha_agents_stream_to_both_collectors_from_three_regions():
    collectors = probenet_services("collector")
    grpc_ports = {port_of(load(mounts(s)[config_argument(s["command"])])["listen"]["grpc"])
                  for s in collectors.values()}
    [grpc_port] = grpc_ports
    registry = {e["id"]: e["region"] for e in load(HA / "collector-a.yaml")["agents"]}
    reference = load(HA / "agent.yaml")
    regions = set()
    for name, service in probenet_services("agent").items():
        assert set(service["depends_on"]) == set(collectors), name
        agent = load(mounts(service)[config_argument(service["command"])])
        assert [c["address"] for c in agent["collectors"]] == [
            f"{c}:{grpc_port}" for c in sorted(collectors)], name
        assert registry[agent["agent"]["id"]] == agent["agent"]["region"], name
        assert name == f"agent-{agent['agent']['region']}"
        regions.add(agent["agent"]["region"])
        # The variants are deploy/ha/agent.yaml but for the identity.
        assert {k: v for k, v in agent.items() if k != "agent"} == {
            k: v for k, v in reference.items() if k != "agent"}, name
    assert len(regions) == 3


def test_compose_ha_prometheus_pair(tmp_path):
    replicas = services_by_image("prom/prometheus")
    assert set(replicas) == {"prometheus-a", "prometheus-b"}
    collectors = probenet_services("collector")
    http_port = port_of(load(HA / "collector-a.yaml")["listen"]["http"])
    alertmanagers = services_by_image("prom/alertmanager")
    labels = set()
    for name, service in replicas.items():
        [container_config] = flag_values(service["command"], "--config.file")
        assert mounts(service)[container_config] == (HA / f"{name}.yml").resolve()
        root = tmp_path / name
        materialize_container(service, root)
        # The relative rule path resolves through the mounts, as promtool shows.
        config_path = root / container_config.lstrip("/")
        config = load(config_path)
        for rule_file in config["rule_files"]:
            assert (config_path.parent / rule_file).resolve().read_bytes() == RULES.read_bytes()
        promtool_check(config_path)
        labels.add(config["global"]["external_labels"]["replica"])
        assert alert_labels(config, {"alertname": "ProbenetCollectorDown"}) == {
            "alertname": "ProbenetCollectorDown", "cluster": "probenet"}
        job = next(j for j in config["scrape_configs"] if j["job_name"] == "probenet-collector")
        assert sorted(t for sc in job["static_configs"] for t in sc["targets"]) == [
            f"{c}:{http_port}" for c in sorted(collectors)]
        managers = [t for am in config["alerting"]["alertmanagers"]
                    for sc in am["static_configs"] for t in sc["targets"]]
        web_port = 9093  # Alertmanager's default --web.listen-address, which we leave as is
        assert all(not flag_values(s["command"], "--web.listen-address")
                   for s in alertmanagers.values())
        assert sorted(managers) == [f"{a}:{web_port}" for a in sorted(alertmanagers)]
    assert len(labels) == 2


def test_compose_ha_alertmanagers_peer_with_each_other(tmp_path):
    members = services_by_image("prom/alertmanager")
    assert set(members) == {"alertmanager-a", "alertmanager-b"}
    for name, service in members.items():
        command = service["command"]
        [listen] = flag_values(command, "--cluster.listen-address")
        [peer] = flag_values(command, "--cluster.peer")
        assert peer == f"{(set(members) - {name}).pop()}:{port_of(listen)}", name
        [container_config] = flag_values(command, "--config.file")
        assert mounts(service)[container_config] == (HA / "alertmanager.yml").resolve()
        materialize_container(service, tmp_path / name)
        config_path = tmp_path / name / container_config.lstrip("/")
        amtool_check(config_path)
        assert group_interval_problems(load(config_path), flag_values(
            command, "--cluster.peer-timeout")) == []


def test_compose_ha_victoria_metrics_dedups_at_the_scrape_interval(tmp_path):
    service = compose()["services"]["victoria-metrics"]
    command = service["command"]
    [container_config] = flag_values(command, "-promscrape.config")
    assert mounts(service)[container_config] == (HA / "victoria-metrics-scrape.yml").resolve()
    materialize_container(service, tmp_path)
    scrape = load(tmp_path / container_config.lstrip("/"))
    [dedup] = flag_values(command, "-dedup.minScrapeInterval")
    assert seconds(dedup) == seconds(scrape["global"]["scrape_interval"])
    for replica in ("a", "b"):
        assert seconds(dedup) == seconds(load(HA / f"prometheus-{replica}.yml")["global"][
            "scrape_interval"])
    http_port = port_of(load(HA / "collector-a.yaml")["listen"]["http"])
    [job] = scrape["scrape_configs"]
    assert sorted(t for sc in job["static_configs"] for t in sc["targets"]) == [
        f"{c}:{http_port}" for c in sorted(probenet_services("collector"))]
    assert volume_at(service, flag_values(command, "-storageDataPath")[0]) is not None
    victoria_metrics_dry_run(command, tmp_path)


def test_compose_ha_file_with_docker_compose():
    if shutil.which("docker") is None or subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=60,
            check=False).returncode != 0:
        pytest.skip("docker compose is not installed (optional: the checks above are static)")
    done = run_tool("docker", "compose", "-f", COMPOSE_HA, "config", "--quiet")
    assert done.returncode == 0, done.stderr
