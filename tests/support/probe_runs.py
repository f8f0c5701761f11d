"""One probe built from a real agent config and run once: shared by the probe suites."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probenet.agent.config import ProbeSpec, parse_config
from probenet.agent.probes import build_probe
from probenet.agent.probes.attempt import run_attempt

if TYPE_CHECKING:
    from probenet.agent.probes.base import ProbeOutcome


def probe_spec(kind: str, name: str, target: str, options: str = "", *, timeout: str = "2s",
               extra: str = "") -> ProbeSpec:
    """The ProbeSpec of one `kind` probe, parsed from YAML like a user's agent.yaml."""
    text = f"""
agent: {{id: t-1, region: test}}
collectors: [{{address: "127.0.0.1:1"}}]
probes:
  - name: {name}
    kind: {kind}
    target: "{target}"
    interval: 10s
    timeout: {timeout}
{extra}
"""
    if options:
        text += f"    {kind}: {options}\n"
    return parse_config(text).probes[0]


async def probe_once(spec: ProbeSpec, source_address: str | None = None) -> ProbeOutcome:
    """Build the probe and run one attempt under its deadline; its single outcome."""
    probe = build_probe(spec, source_address=source_address)
    outcomes = await run_attempt(probe, spec.timeout, probe_name=spec.name)
    assert len(outcomes) == 1, outcomes
    return outcomes[0]
