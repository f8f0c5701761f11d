"""The rule for names and labels, shared by both configs and the collector's ingest.

A name (agent id, region, probe name, collector id) ends up in metric labels, MQTT topics
(`{prefix}/state/{probe}`) and URLs, so it has no `/`, `+`, `#` or whitespace: letters,
digits and `_ . : @ -`, starting with a letter or digit, at most 128 characters. Labels
(an agent's `labels: {network: as24940}`) are keyed like Prometheus label names. The agent's
config accepts exactly what the collector accepts on the wire, so a valid agent config is
never refused at Hello.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "MAX_LABELS",
    "MAX_LABEL_LENGTH",
    "MAX_NAME_LENGTH",
    "check_labels",
    "check_name",
    "is_name",
    "label_problem",
    "name_problem",
]

MAX_NAME_LENGTH = 128
MAX_LABELS = 64
MAX_LABEL_LENGTH = 128
"""The longest label name, and the longest label value."""

_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.:@-]{{0,{MAX_NAME_LENGTH - 1}}}")
_LABEL_NAME = re.compile(rf"[A-Za-z_][A-Za-z0-9_]{{0,{MAX_LABEL_LENGTH - 1}}}")


def is_name(value: str) -> bool:
    """Whether `value` follows the name rule (see the module docstring)."""
    return _NAME.fullmatch(value) is not None


def name_problem(value: str) -> str | None:
    """What is wrong with a name, stating the rule; None when it follows it."""
    if _NAME.fullmatch(value) is None:
        return (f"invalid name {value!r}: use letters, digits and _ . : @ - "
                f"(starting with a letter or digit, at most {MAX_NAME_LENGTH} characters)")
    return None


def check_name(value: str) -> str:
    """`value` when it is a valid name, else ValueError stating the rule (a validator)."""
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def label_problem(labels: Mapping[str, str]) -> str | None:
    """What is wrong with a set of labels, or None when they follow the rule."""
    if len(labels) > MAX_LABELS:
        return f"{len(labels)} labels; at most {MAX_LABELS} are allowed"
    for key, value in labels.items():
        if _LABEL_NAME.fullmatch(key) is None:
            return (f"invalid label name {key!r}: use letters, digits and _ "
                    f"(not starting with a digit, at most {MAX_LABEL_LENGTH} characters)")
        if len(value) > MAX_LABEL_LENGTH:
            return (f"the value of label {key!r} is {len(value)} characters long; "
                    f"at most {MAX_LABEL_LENGTH} are allowed")
    return None


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """`labels` when they follow the label rule, else ValueError saying why (a validator)."""
    problem = label_problem(labels)
    if problem is not None:
        raise ValueError(problem)
    return labels
