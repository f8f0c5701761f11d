"""`${name}` templates of flow steps: parsed once when the config loads, filled per run.

A template is text in which `${name}` stands for a variable (set in the config, extracted by
an earlier step) or a secret, and `$${` writes a literal `${`. Any other `$` is plain text,
so URLs and bodies that use `$` for themselves need no escaping. Names are identifiers
(`[A-Za-z_][A-Za-z0-9_]*`). `Template.parse` raises ValueError on an unclosed `${` or a bad
name, with the offset of the problem, so the config can say where.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["VARIABLE_NAME", "Template", "check_variable_name"]

VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_TOKEN = re.compile(r"\$\$\{|\$\{")


def check_variable_name(value: str) -> str:
    """`value` when it is a valid variable name, else ValueError (a validator)."""
    if not VARIABLE_NAME.fullmatch(value):
        raise ValueError(f"invalid variable name {value!r}: use letters, digits and _, "
                         "starting with a letter or _ (at most 64 characters)")
    return value


@dataclass(frozen=True, slots=True)
class Template:
    """Text with `${name}` placeholders: literal parts and names, alternating."""

    parts: tuple[str, ...]  # literal, name, literal, name, ..., literal (odd length)

    @classmethod
    def parse(cls, text: str) -> Template:
        """Split `text` into literals and names; ValueError names the first problem."""
        parts: list[str] = []
        literal: list[str] = []
        pos = 0
        for match in _TOKEN.finditer(text):
            if match.start() < pos:
                continue  # inside a placeholder already consumed
            literal.append(text[pos:match.start()])
            if match.group() == "$${":
                literal.append("${")
                pos = match.end()
                continue
            end = text.find("}", match.end())
            if end < 0:
                raise ValueError(f"unclosed '${{' at offset {match.start()} in {text!r} "
                                 "(write $${ for a literal ${)")
            name = text[match.end():end]
            if not VARIABLE_NAME.fullmatch(name):
                raise ValueError(f"invalid variable name {name!r} in {text!r}: use letters, "
                                 "digits and _, starting with a letter or _")
            parts.extend(("".join(literal), name))
            literal = []
            pos = end + 1
        literal.append(text[pos:])
        parts.append("".join(literal))
        return cls(tuple(parts))

    @property
    def names(self) -> tuple[str, ...]:
        """The variable names the template uses, in order (repeats kept)."""
        return self.parts[1::2]

    @property
    def is_constant(self) -> bool:
        """Whether the template holds no placeholder."""
        return len(self.parts) == 1

    def fill(self, values: Mapping[str, str]) -> str:
        """The text with every placeholder replaced; KeyError for a missing name."""
        if len(self.parts) == 1:
            return self.parts[0]
        out = list(self.parts)
        for index in range(1, len(out), 2):
            out[index] = values[out[index]]
        return "".join(out)
