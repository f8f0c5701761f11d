"""The collector's `limits:` section: defaults, and errors that name the key and its range."""

from __future__ import annotations

import subprocess
import sys

import pytest

from probenet.collector.config import parse_config
from probenet.configfile import ConfigError
from support.system import ROOT


def test_defaults():
    limits = parse_config("{}").limits
    assert (limits.max_agents, limits.max_unregistered_agents) == (10_000, 10_000)
    assert limits.max_probes_per_agent == 5000
    assert (limits.max_target_length, limits.max_reason_length) == (2048, 64)
    assert limits.max_label_value_length == 128
    assert limits.max_result_bytes == 16 * 1024


def test_every_limit_loads():
    limits = parse_config(
        "limits: {max_agents: 3, max_unregistered_agents: 4, max_probes_per_agent: 5, "
        "max_target_length: 16, max_reason_length: 8, max_label_value_length: 8, "
        "max_result_bytes: 1024}").limits
    assert (limits.max_agents, limits.max_unregistered_agents,
            limits.max_probes_per_agent) == (3, 4, 5)
    assert (limits.max_target_length, limits.max_reason_length,
            limits.max_label_value_length, limits.max_result_bytes) == (16, 8, 8, 1024)


@pytest.mark.parametrize(("text", "message"), [
    ("limits: {max_probes_per_agent: 0}",
     "1:32: limits.max_probes_per_agent: Input should be greater than or equal to 1"),
    ("limits: {max_agents: 2000000}",
     "1:22: limits.max_agents: Input should be less than or equal to 1000000"),
    ("limits: {max_unregistered_agents: 0}",
     "1:35: limits.max_unregistered_agents: Input should be greater than or equal to 1"),
    ("limits: {max_label_value_length: 129}",
     "1:34: limits.max_label_value_length: Input should be less than or equal to 128"),
    ("limits: {max_target_length: 8}",
     "1:29: limits.max_target_length: Input should be greater than or equal to 16"),
    ("limits: {max_reason_length: 2000}",
     "1:29: limits.max_reason_length: Input should be less than or equal to 1024"),
    ("limits: {max_result_bytes: 10}",
     "1:28: limits.max_result_bytes: Input should be greater than or equal to 1024"),
    ("limits: {max_probes_per_agent: many}",
     ("1:32: limits.max_probes_per_agent: Input should be a valid integer, unable to parse "
      "string as an integer")),
    ("limits: {max_probes: 10}",
     "1:10: unknown key 'max_probes' (did you mean 'max_probes_per_agent'?)"),
])
def test_a_limit_out_of_range_is_named_with_its_position(text, message):
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert [str(i) for i in raised.value.issues] == [f"<string>:{message}"]


def test_probenet_check_names_every_bad_limit(tmp_path):
    path = tmp_path / "collector.yaml"
    path.write_text("limits:\n  max_agents: 0\n  max_probes_per_agent: -5\n"
                    "  max_label_value_length: 500\n")
    done = subprocess.run(
        [sys.executable, "-c", "from probenet.cli import main; main()", "check", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{path}:2:15: limits.max_agents: Input should be greater than or equal to 1",
        f"{path}:3:25: limits.max_probes_per_agent: Input should be greater than or equal to 1",
        (f"{path}:4:27: limits.max_label_value_length: Input should be less than or equal "
         "to 128"),
    ]
