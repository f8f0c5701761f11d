"""The probe registry: one module per kind, `.<kind>`, exposing `build(spec, *, source_address)`.

Modules are imported lazily (an agent that runs no icmp probe never imports icmp), and a
probe whose module is missing or whose build fails raises ProbeBuildError naming it, so the
agent refuses the config at load time rather than failing every run.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from probenet.kinds import PROBE_KINDS

from ..errors import ProbeBuildError

if TYPE_CHECKING:
    from probenet.configfile import Path_

    from ..config import AgentConfig, ProbeSpec
    from .base import Probe

PROBE_MODULES: dict[str, str] = {kind: f"{__name__}.{kind}" for kind in PROBE_KINDS}


def unavailable_kinds(config: AgentConfig) -> list[tuple[Path_, str]]:
    """A config check: probes whose kind's module is missing from this build, at their `kind`.

    The agent and `probenet check` pass it to `load_config(checks=...)`, so a stripped
    build is reported at load time with the position of each probe it cannot run.
    """
    found: list[tuple[Path_, str]] = []
    missing: dict[str, bool] = {}
    for index, probe in enumerate(config.probes):
        module_name = PROBE_MODULES[probe.kind]
        if probe.kind not in missing:
            missing[probe.kind] = importlib.util.find_spec(module_name) is None
        if missing[probe.kind]:
            found.append((("probes", index, "kind"),
                          (f"probe kind {probe.kind!r} is not available in this build "
                           f"({module_name} is missing)")))
    return found


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
