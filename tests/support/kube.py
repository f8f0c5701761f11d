"""Kubernetes manifests of a deploy/ folder, read as plain YAML documents (static checks)."""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from pathlib import Path


def read_manifests(folder: Path) -> list[dict[str, Any]]:
    """Every object of every *.yaml in `folder` but the kustomization, in file order."""
    docs: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


def objects_by_kind(folder: Path, kind: str) -> dict[str, dict[str, Any]]:
    """The objects of `kind` in `folder`, by name."""
    return {d["metadata"]["name"]: d for d in read_manifests(folder) if d["kind"] == kind}


def materialize_pod(workload: dict[str, Any], config_maps: dict[str, dict[str, Any]],
                    root: Path, env: dict[str, str]) -> None:
    """Lay out the pod's file system under `root`: ConfigMap data, placeholder secret files,
    empty dirs; then run the init containers' shell commands against it with `env`, which
    must name every variable they declare."""
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for each in pod.get("initContainers", []) + pod["containers"]:
        for mount in each["volumeMounts"]:
            where = root / mount["mountPath"].lstrip("/")
            where.mkdir(parents=True, exist_ok=True)
            volume = volumes.get(mount["name"], {})
            if "configMap" in volume:
                for key, value in config_maps[volume["configMap"]["name"]]["data"].items():
                    (where / key).write_text(value, encoding="utf-8")
            elif "secret" in volume:
                for item in volume["secret"]["items"]:
                    (where / item["path"]).write_text("placeholder\n", encoding="utf-8")
    for init in pod.get("initContainers", []):
        assert init["command"][:2] == ["/bin/sh", "-c"]
        script = init["command"][2].replace("/etc/probenet/", f"{root}/etc/probenet/")
        names = {e["name"] for e in init.get("env", [])}
        assert names <= env.keys(), names
        subprocess.run(["/bin/sh", "-c", script], env={**os.environ, **env}, check=True,
                       timeout=60)
