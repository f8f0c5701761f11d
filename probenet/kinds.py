"""The probe kinds: the one list the agent's config, its probe registry and the ingest use."""

from __future__ import annotations

import typing
from typing import Literal

__all__ = ["PROBE_KINDS", "ProbeKind"]

ProbeKind = Literal["http", "tcp", "dns", "icmp", "tls", "grpc", "flow"]
"""A probe kind (DESIGN.md "Configuration"); each has a module `probenet.agent.probes.<kind>`
and an options section of the same name in a probe's config."""

PROBE_KINDS: tuple[ProbeKind, ...] = typing.get_args(ProbeKind)
"""Every probe kind, in the order of the contract's table."""
