"""deploy/ checked statically: YAML parses, embedded probenet configs pass `probenet check`.

They are checked from the paths the containers would see. Also: Prometheus accepts the compose
config, the Kubernetes manifests are consistent, the systemd units are hardened, the Dockerfile
is multi-stage, unprivileged and its HEALTHCHECK works, and the example fleet is coherent.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from support.kube import materialize_pod as kube_materialize_pod
from support.kube import objects_by_kind, read_manifests
from support.system import ROOT, need_binary

if TYPE_CHECKING:
    from collections.abc import Iterator

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
KUBERNETES = DEPLOY / "kubernetes"
FLEET = DEPLOY / "examples" / "fleet"
SYSTEMD = DEPLOY / "systemd"
DOCKERFILE = DEPLOY / "Dockerfile"


def probenet_check(*paths: Path) -> subprocess.CompletedProcess[str]:
    """The real `probenet check` command line, in a child process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")])}
    return subprocess.run(
        [sys.executable, "-c", "from probenet.cli import main; main()", "check",
         *(str(p) for p in paths)],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=ROOT)


def assert_checks_ok(*paths: Path) -> None:
    done = probenet_check(*paths)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": ok (") == len(paths), done.stdout


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})


# --------------------------------------------------------------------------- every file


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path):
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert docs
    assert all(isinstance(doc, dict) for doc in docs), "every document is a mapping"


def test_json_parses():
    paths = sorted(DEPLOY.rglob("*.json"))
    assert paths
    for path in paths:
        assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict), path


def test_probenet_check_catches_a_broken_config(tmp_path):
    # The config checks below can fail: a config with an unknown key is refused.
    broken = tmp_path / "agent.yaml"
    text = (DEPLOY / "compose" / "agent-eu-central.yaml").read_text(encoding="utf-8")
    broken.write_text(text.replace("defaults:", "defaults:\n  intervall: 5s"), encoding="utf-8")
    done = probenet_check(broken)
    assert done.returncode == 1
    assert "unknown key 'intervall'" in done.stderr


# --------------------------------------------------------------------------- docker compose


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (relative to deploy/)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a path inside the container comes from on the host, through its mounts."""
    for target, source in sorted(bind_mounts(service).items(), key=lambda m: -len(m[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target):].lstrip("/")
    pytest.fail(f"{container_path} is not mounted into the container")


def config_argument(command: list[str]) -> str:
    return command[command.index("--config") + 1]


def test_compose_services():
    services = compose()["services"]
    assert set(services) == {"collector", "agent-eu-central", "agent-us-east",
                             "agent-ap-south", "prometheus", "alertmanager", "grafana",
                             "mosquitto"}
    for name, service in services.items():
        for source in bind_mounts(service).values():
            assert source.exists(), f"{name}: {source} does not exist"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_probenet_configs_pass_probenet_check():
    services = compose()["services"]
    paths = [host_path(s, config_argument(s["command"])) for s in services.values()
             if s.get("command", [""])[0] in {"collector", "agent"}]
    assert len(paths) == 4
    assert_checks_ok(*paths)


def test_compose_agents_are_three_regions_streaming_to_the_collector():
    services = compose()["services"]
    collector = yaml.safe_load(host_path(services["collector"], config_argument(
        services["collector"]["command"])).read_text(encoding="utf-8"))
    grpc_port = collector["listen"]["grpc"].rsplit(":", 1)[1]
    registry = {entry["id"]: entry["region"] for entry in collector["agents"]}
    regions = set()
    for name, service in services.items():
        if service.get("command", [""])[0] != "agent":
            continue
        config = yaml.safe_load(host_path(service, config_argument(service["command"]))
                                .read_text(encoding="utf-8"))
        assert [c["address"] for c in config["collectors"]] == [f"collector:{grpc_port}"]
        assert registry[config["agent"]["id"]] == config["agent"]["region"], name
        regions.add(config["agent"]["region"])
        # Probes aim at services of this compose file (or Docker's own DNS).
        for probe in config["probes"]:
            host = re.sub(r"^\w+://", "", probe["target"]).split("/")[0].split(":")[0]
            assert host in services or probe["kind"] == "dns", probe
    assert len(regions) == 3


def test_compose_prometheus_config(tmp_path):
    promtool = need_binary("promtool", "prometheus")
    service = compose()["services"]["prometheus"]
    container_config = next(a.split("=", 1)[1] for a in service["command"]
                            if a.startswith("--config.file="))
    config = yaml.safe_load(host_path(service, container_config).read_text(encoding="utf-8"))
    # Resolve the container's rule paths through the compose mounts.
    config["rule_files"] = [str(host_path(service, p)) for p in config["rule_files"]]
    assert all(Path(p).is_file() for p in config["rule_files"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    collector = yaml.safe_load(
        (DEPLOY / "compose" / "collector.yaml").read_text(encoding="utf-8"))
    http_port = collector["listen"]["http"].rsplit(":", 1)[1]
    assert jobs["probenet-collector"]["static_configs"][0]["targets"] == [
        f"collector:{http_port}"]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_file_with_docker_compose():
    if shutil.which("docker") is None or subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=60,
            check=False).returncode != 0:
        pytest.skip("docker compose is not installed (optional: the checks above are static)")
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_dockerfile_is_multi_stage_and_unprivileged():
    instructions = dockerfile_instructions()
    stages = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert len(stages) >= 2
    final = instructions[stages[-1]:]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the final stage sets a USER"
    assert users[-1].split(":")[0] not in {"0", "root"}
    entrypoint = [json.loads(rest) for word, rest in final if word == "ENTRYPOINT"]
    assert entrypoint == [["probenet"]]
    exposed = {p for word, rest in final if word == "EXPOSE" for p in rest.split()}
    assert exposed == {"7070", "9464"}  # the collector's default listen ports
    installs = " ".join(rest for word, rest in final if word == "RUN")
    assert "pip install" in installs


def test_dockerfile_copies_what_exists_and_is_not_ignored():
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, rest in dockerfile_instructions():
        if word != "COPY" or rest.startswith("--from"):
            continue
        for source in rest.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert source.rstrip("/") in kept, f"COPY {source}: excluded by the dockerignore"


class _Healthz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def healthz_server() -> Iterator[tuple[str, type[_Healthz]]]:
    handler = type("Handler", (_Healthz,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="healthz", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/healthz", handler
    finally:
        server.shutdown()
        server.server_close()


def test_dockerfile_healthcheck_command_works(healthz_server):
    url, handler = healthz_server
    [check] = [rest for word, rest in dockerfile_instructions() if word == "HEALTHCHECK"]
    assert "/healthz" in "".join(rest for word, rest in dockerfile_instructions()
                                 if word == "ENV")
    command = json.loads(check[check.index("CMD") + 3:].strip())
    assert command[0] == "python"
    env = {**os.environ, "PROBENET_HEALTHZ_URL": url}
    run = [sys.executable, *command[1:]]
    assert subprocess.run(run, env=env, timeout=60, check=False,
                          capture_output=True).returncode == 0
    handler.status = 503
    assert subprocess.run(run, env=env, timeout=60, check=False,
                          capture_output=True).returncode != 0


# --------------------------------------------------------------------------- Kubernetes


def manifests() -> list[dict[str, Any]]:
    return read_manifests(KUBERNETES)


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return objects_by_kind(KUBERNETES, kind)


def test_kubernetes_objects():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in manifests())
    assert kinds == sorted([
        ("Namespace", "probenet"), ("ConfigMap", "probenet-collector-config"),
        ("PersistentVolumeClaim", "probenet-journal"), ("Deployment", "probenet-collector"),
        ("Service", "probenet-collector"), ("Service", "probenet-collector-grpc"),
        ("ConfigMap", "probenet-agent-config"), ("DaemonSet", "probenet-agent"),
        ("ServiceMonitor", "probenet-collector"), ("PrometheusRule", "probenet")])
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}


def workloads() -> list[dict[str, Any]]:
    return [*by_kind("Deployment").values(), *by_kind("DaemonSet").values()]


@pytest.mark.parametrize("workload", workloads(), ids=lambda w: w["metadata"]["name"])
def test_kubernetes_workload_is_consistent_and_unprivileged(workload):
    spec = workload["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_maps, claims = by_kind("ConfigMap"), by_kind("PersistentVolumeClaim")
    for volume in volumes.values():
        if "configMap" in volume:
            assert volume["configMap"]["name"] in config_maps
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims
        if "secret" in volume:
            # Items are listed so that the file names the config refers to are explicit.
            assert volume["secret"]["items"]
    for container in pod.get("initContainers", []) + pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        assert "add" not in security["capabilities"]
        for mount in container["volumeMounts"]:
            assert mount["name"] in volumes, mount
        ports = {p["name"] for p in container.get("ports", [])}
        for probe in ("livenessProbe", "readinessProbe"):
            if probe in container:
                assert container[probe]["httpGet"]["port"] in ports


def test_kubernetes_services_and_servicemonitor_line_up():
    pods = {w["metadata"]["name"]: w["spec"]["template"] for w in workloads()}
    services = by_kind("Service")
    # The rules' ProbenetCollectorDown expects job="probenet-collector": the operator names
    # the job after the Service.
    assert "probenet-collector" in services
    for name, service in services.items():
        selected = [t for t in pods.values()
                    if service["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        assert len(selected) == 1, name
        ports = {p["name"] for c in selected[0]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
    [monitor] = by_kind("ServiceMonitor").values()
    matched = [s for s in services.values()
               if monitor["spec"]["selector"]["matchLabels"].items()
               <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in matched] == ["probenet-collector"]
    endpoint_ports = {p["name"] for p in matched[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= endpoint_ports


def materialize_pod(workload: dict[str, Any], root: Path) -> None:
    """The pod's file system under `root`, its init containers run (every variable node-a)."""
    pod = workload["spec"]["template"]["spec"]
    env = {e["name"]: "node-a" for init in pod.get("initContainers", [])
           for e in init.get("env", [])}
    kube_materialize_pod(workload, by_kind("ConfigMap"), root, env)


@pytest.mark.parametrize("workload", workloads(), ids=lambda w: w["metadata"]["name"])
def test_kubernetes_configs_pass_probenet_check_where_the_pod_reads_them(workload, tmp_path):
    materialize_pod(workload, tmp_path)
    [container] = workload["spec"]["template"]["spec"]["containers"]
    config = tmp_path / config_argument(container["args"]).lstrip("/")
    assert config.is_file()
    assert "__NODE_NAME__" not in config.read_text(encoding="utf-8")
    assert_checks_ok(config)


def test_kubernetes_agents_are_in_the_collectors_registry(tmp_path):
    daemonset = by_kind("DaemonSet")["probenet-agent"]
    materialize_pod(daemonset, tmp_path)
    agent = yaml.safe_load((tmp_path / "etc/probenet/config/agent.yaml").read_text(
        encoding="utf-8"))
    collector = yaml.safe_load(by_kind("ConfigMap")["probenet-collector-config"]["data"][
        "collector.yaml"])
    registry = {e["id"]: e["region"] for e in collector["agents"]}
    # The node-a agent of the example cluster is registered in its region.
    assert registry[agent["agent"]["id"]] == agent["agent"]["region"]


def test_kustomize_build():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (optional: the checks above are static)")
    done = subprocess.run(["kubectl", "kustomize", str(KUBERNETES)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert {d["metadata"].get("namespace", "probenet") for d in docs} == {"probenet"}
    assert len(docs) == len(manifests())


# --------------------------------------------------------------------------- systemd


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Key -> every value it is given in the unit (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "DynamicUser": "yes",
    "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
}


@pytest.mark.parametrize(("unit", "command"), [("probenet-collector.service", "collector"),
                                               ("probenet-agent.service", "agent")])
def test_systemd_unit_is_hardened(unit, command):
    settings = unit_settings(SYSTEMD / unit)
    for key, value in HARDENING.items():
        assert settings.get(key) == [value], key
    [start] = settings["ExecStart"]
    argv = shlex.split(start)
    assert argv[1:3] == [command, "--config"]
    assert settings["Restart"] == ["on-failure"]
    if command == "collector":
        # The journal lives in the state directory; no capabilities at all.
        assert settings["StateDirectory"] == ["probenet"]
        assert settings["CapabilityBoundingSet"] == [""]
    else:
        # Raw ICMP sockets for the icmp probes, and nothing else.
        assert settings["AmbientCapabilities"] == ["CAP_NET_RAW"]
        assert settings["CapabilityBoundingSet"] == ["CAP_NET_RAW"]
    # SIGHUP re-reads the agent's config, and the collector's fleet file.
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (optional: the checks above are static)")
    probenet = tmp_path / "probenet"
    probenet.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    probenet.chmod(0o755)
    units = []
    for unit in sorted(SYSTEMD.glob("*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text(encoding="utf-8").replace(
            "/usr/local/bin/probenet", str(probenet)), encoding="utf-8")
        units.append(str(copy))
    done = subprocess.run([analyze, "verify", *units], capture_output=True, text=True,
                          timeout=120, check=False)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if "probenet" in line]
    assert done.returncode == 0, done.stdout + done.stderr
    assert problems == []


# --------------------------------------------------------------------------- example fleet


def fleet_agents() -> dict[str, dict[str, Any]]:
    return {p.name: yaml.safe_load(p.read_text(encoding="utf-8"))
            for p in sorted(FLEET.glob("agent-*.yaml"))}


def test_fleet_probes_a_social_networks_four_apps_and_public_dns_from_several_regions():
    agents = fleet_agents()
    regions = {a["agent"]["region"] for a in agents.values()}
    assert len(regions) >= 4
    probe_lists = [a["probes"] for a in agents.values()]
    assert all(p == probe_lists[0] for p in probe_lists), "every agent runs the same probes"
    by_service: dict[str, set[str]] = {}
    for probe in probe_lists[0]:
        by_service.setdefault(probe.get("service", ""), set()).add(probe["name"])
    assert {"facebook-web", "instagram-web", "messenger-web", "threads-web"} <= by_service["meta"]
    assert len(by_service["public-dns"]) >= 3


def test_fleet_agents_are_registered_in_their_regions():
    collector = yaml.safe_load((FLEET / "collector.yaml").read_text(encoding="utf-8"))
    registry = {e["id"]: e["region"] for e in collector["agents"]}
    agents = {a["agent"]["id"]: a["agent"]["region"] for a in fleet_agents().values()}
    assert agents == registry


def test_fleet_configs_pass_probenet_check(tmp_path):
    # The collector names files that are secrets (certificate, key, tokens): check a copy
    # next to placeholder files.
    shutil.copytree(FLEET, tmp_path / "fleet")
    collector = yaml.safe_load((FLEET / "collector.yaml").read_text(encoding="utf-8"))
    secrets = [collector["tls"]["cert_file"], collector["tls"]["key_file"],
               *(e["token_file"] for e in collector["agents"])]
    for secret in secrets:
        path = tmp_path / "fleet" / secret
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("placeholder\n", encoding="utf-8")
    assert_checks_ok(*sorted((tmp_path / "fleet").glob("*.yaml")))
