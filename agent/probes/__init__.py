"""Probe kinds: `agent.probes.<kind>` modules, each exposing `build(spec, *, source_address)`.

Modules are imported lazily (an agent that runs no icmp probe never imports icmp), and a
probe whose module is missing or whose build fails raises ProbeBuildError naming it, so the
agent refuses the config at load time rather than failing every run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import ProbeBuildError

if TYPE_CHECKING:
    from ..config import ProbeSpec
    from .base import Probe

PROBE_MODULES: dict[str, str] = {
    kind: f"{__name__}.{kind}" for kind in ("http", "tcp", "dns", "icmp", "tls", "grpc")
}


def build_probe(spec: ProbeSpec, *, source_address: str | None) -> Probe:
    """Build the probe for `spec`; raise ProbeBuildError naming the probe on any problem."""
    module_name = PROBE_MODULES.get(spec.kind)
    if module_name is None:
        raise ProbeBuildError(spec.name, f"unknown probe kind {spec.kind!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProbeBuildError(
            spec.name, f"probe kind {spec.kind!r} is not available ({exc})") from exc
    build = getattr(module, "build", None)
    if build is None:
        raise ProbeBuildError(spec.name, f"{module_name} has no build() function")
    try:
        probe: Probe = build(spec, source_address=source_address)
    except (ValueError, OSError) as exc:
        raise ProbeBuildError(spec.name, str(exc)) from exc
    return probe
