"""The one name rule and label rule: both configs accept exactly what the ingest accepts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probenet.agent.config import parse_config as parse_agent
from probenet.collector.config import parse_config as parse_collector
from probenet.configfile import ConfigError
from probenet.names import (
    MAX_LABEL_LENGTH,
    MAX_LABELS,
    MAX_NAME_LENGTH,
    check_labels,
    check_name,
    is_name,
    label_problem,
)

VALID = ["fra-1", "eu-central", "a", "9lives", "A_b.c:d@e-f", "x" * MAX_NAME_LENGTH,
         "probe@host:443"]
INVALID = ["", "-x", "_x", ".x", "@x", ":x", "a b", " a", "a ", "a/b", "a+b", "a#b", "a\n",
           "bad\nname", "a\tb", "é", "a%b", "a?b", "x" * (MAX_NAME_LENGTH + 1)]


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name):
    assert is_name(name)
    assert check_name(name) == name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_say_the_rule(name):
    assert not is_name(name)
    with pytest.raises(ValueError) as caught:
        check_name(name)
    assert str(caught.value) == (
        f"invalid name {name!r}: use letters, digits and _ . : @ - (starting with a letter "
        "or digit, at most 128 characters)")


def agent_accepts(name: str) -> bool:
    quoted = json.dumps(name)  # JSON strings are YAML strings, escapes included
    try:
        parse_agent(f"""
agent: {{id: {quoted}, region: {quoted}}}
collectors: [{{address: "127.0.0.1:1"}}]
probes: [{{name: {quoted}, kind: icmp, target: 127.0.0.1}}]
""")
    except ConfigError:
        return False
    return True


def collector_accepts(name: str) -> bool:
    quoted = json.dumps(name)
    try:
        parse_collector(f"collector_id: {quoted}\nagents: [{{id: {quoted}, region: {quoted}}}]\n")
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("name", VALID + INVALID)
def test_both_configs_follow_the_rule(name):
    assert agent_accepts(name) is is_name(name)
    assert collector_accepts(name) is is_name(name)


@given(st.text(alphabet='aZ9_.:@- /+#\n"\\\u00e9', max_size=12))
def test_the_agent_config_accepts_exactly_the_names_the_ingest_accepts(name):
    assert agent_accepts(name) is is_name(name)


@pytest.mark.parametrize(("labels", "problem"), [
    ({}, None),
    ({"network": "as24940", "_site": "fra", "k" * MAX_LABEL_LENGTH: "v" * MAX_LABEL_LENGTH},
     None),
    ({f"l{i}": "" for i in range(MAX_LABELS)}, None),
    ({f"l{i}": "" for i in range(MAX_LABELS + 1)}, "65 labels; at most 64 are allowed"),
    ({"net-work": "x"}, ("invalid label name 'net-work': use letters, digits and _ (not "
                         "starting with a digit, at most 128 characters)")),
    ({"1st": "x"}, ("invalid label name '1st': use letters, digits and _ (not starting with "
                    "a digit, at most 128 characters)")),
    ({"k" * (MAX_LABEL_LENGTH + 1): "x"}, (
        f"invalid label name {'k' * 129!r}: use letters, digits and _ (not starting with a "
        "digit, at most 128 characters)")),
    ({"network": "v" * (MAX_LABEL_LENGTH + 1)}, (
        "the value of label 'network' is 129 characters long; at most 128 are allowed")),
])
def test_labels(labels, problem):
    assert label_problem(labels) == problem
    if problem is None:
        assert check_labels(labels) == labels
    else:
        with pytest.raises(ValueError, match="label"):
            check_labels(labels)


def test_an_agent_label_the_collector_would_refuse_is_a_config_error_at_its_position():
    with pytest.raises(ConfigError) as caught:
        parse_agent(f"""
agent: {{id: a, region: r, labels: {{network: "{'v' * 129}"}}}}
collectors: [{{address: "127.0.0.1:1"}}]
""")
    assert [str(i) for i in caught.value.issues] == [
        ("<string>:2:35: agent.labels: the value of label 'network' is 129 characters long; "
         "at most 128 are allowed")]
