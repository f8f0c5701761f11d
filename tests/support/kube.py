"""Kubernetes manifests of a deploy/ folder, read as plain YAML documents (static checks)."""

from __future__ import annotations

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
