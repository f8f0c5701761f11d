"""One list of probe kinds: the agent's config, its probe registry and the ingest follow it."""

from __future__ import annotations

import importlib

from probenet.agent.config import ProbeSpec
from probenet.agent.probes import PROBE_MODULES
from probenet.collector.ingest import KINDS
from probenet.kinds import PROBE_KINDS


def test_the_kinds_of_the_contract():
    assert PROBE_KINDS == ("http", "tcp", "dns", "icmp", "tls", "grpc")


def test_every_kind_has_a_probe_module_with_a_build_function():
    assert tuple(PROBE_MODULES) == PROBE_KINDS
    for kind, module_name in PROBE_MODULES.items():
        assert module_name == f"probenet.agent.probes.{kind}"
        assert callable(importlib.import_module(module_name).build)


def test_every_kind_has_its_options_section_in_a_probe():
    for kind in PROBE_KINDS:
        spec = ProbeSpec(name="p", kind=kind, target="127.0.0.1:80" if kind in {
            "tcp", "tls", "grpc"} else "http://127.0.0.1/" if kind == "http" else "127.0.0.1")
        assert spec.options is getattr(spec, kind)
        assert spec.options is not None


def test_the_ingest_accepts_exactly_these_kinds():
    assert frozenset(PROBE_KINDS) == KINDS
