"""One list of probe kinds: the agent's config, its probe registry and the ingest follow it."""

from __future__ import annotations

import importlib

from probenet.agent.config import ProbeSpec
from probenet.agent.probes import PROBE_MODULES
from probenet.collector.ingest import KINDS
from probenet.kinds import PROBE_KINDS


def test_the_kinds_of_the_contract():
    assert PROBE_KINDS == ("http", "tcp", "dns", "icmp", "tls", "grpc", "flow")


def test_every_kind_has_a_probe_module_with_a_build_function():
    assert tuple(PROBE_MODULES) == PROBE_KINDS
    for kind, module_name in PROBE_MODULES.items():
        assert module_name == f"probenet.agent.probes.{kind}"
        assert callable(importlib.import_module(module_name).build)


TARGETS = {"tcp": "127.0.0.1:80", "tls": "127.0.0.1:443", "grpc": "127.0.0.1:50051",
           "http": "http://127.0.0.1/", "flow": "http://127.0.0.1/", "dns": "127.0.0.1",
           "icmp": "127.0.0.1"}
SECTIONS = {"flow": {"steps": [{"name": "home", "request": {"url": "/"}}]}}


def test_every_kind_has_its_options_section_in_a_probe():
    assert set(TARGETS) == set(PROBE_KINDS)
    for kind in PROBE_KINDS:
        extra = {kind: SECTIONS[kind]} if kind in SECTIONS else {}
        spec = ProbeSpec(name="p", kind=kind, target=TARGETS[kind], **extra)
        assert spec.options is getattr(spec, kind)
        assert spec.options is not None


def test_the_ingest_accepts_exactly_these_kinds():
    assert frozenset(PROBE_KINDS) == KINDS
