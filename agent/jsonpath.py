r"""The JSON paths flow steps extract and check: a small, strict subset, parsed once.

Grammar: `$` followed by any number of `.name` (letters, digits, `_` and `-`), `['name']`
or `["name"]` (any key; `\'` and `\"` escape the quote) and `[index]` (a list index,
negative from the end). `$` alone is the whole document. No wildcards, filters or recursive
descent: a check names one value, and a path that could match several would make a check
ambiguous. `JsonPath.parse` raises ValueError naming the offset of the problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["MISSING", "JsonPath"]

_DOT_NAME = re.compile(r"[A-Za-z0-9_-]+")
_INDEX = re.compile(r"-?[0-9]+")


class _Missing:
    """What `JsonPath.find` returns when the path leads nowhere (JSON null is None)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The key quoted at `text[start]` and the offset just past its closing quote."""
    quote = text[start]
    out: list[str] = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if char == quote:
            return "".join(out), pos + 1
        out.append(char)
        pos += 1
    raise ValueError(f"unclosed quote at offset {start} of JSON path {text!r}")


@dataclass(frozen=True, slots=True)
class JsonPath:
    """A parsed path: a sequence of object keys (str) and list indexes (int)."""

    text: str
    steps: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: str) -> JsonPath:
        """Parse `text`; ValueError says what is wrong and where."""
        if not text.startswith("$"):
            raise ValueError(f"invalid JSON path {text!r}: it must start with $ "
                             "(like $.user.name or $.items[0])")
        steps: list[str | int] = []
        pos = 1
        while pos < len(text):
            char = text[pos]
            if char == ".":
                match = _DOT_NAME.match(text, pos + 1)
                if match is None:
                    raise ValueError(f"invalid JSON path {text!r}: expected a name after '.' "
                                     f"at offset {pos} (use ['...'] for other keys)")
                steps.append(match.group())
                pos = match.end()
            elif char == "[":
                if pos + 1 < len(text) and text[pos + 1] in "'\"":
                    key, pos = _quoted(text, pos + 1)
                    steps.append(key)
                else:
                    match = _INDEX.match(text, pos + 1)
                    if match is None:
                        raise ValueError(f"invalid JSON path {text!r}: expected an index or a "
                                         f"quoted key after '[' at offset {pos} (wildcards and "
                                         "filters are not supported)")
                    steps.append(int(match.group()))
                    pos = match.end()
                if pos >= len(text) or text[pos] != "]":
                    raise ValueError(f"invalid JSON path {text!r}: expected ']' at offset {pos}")
                pos += 1
            else:
                raise ValueError(f"invalid JSON path {text!r}: unexpected {char!r} at offset "
                                 f"{pos}")
        return cls(text, tuple(steps))

    def find(self, document: Any) -> Any:
        """The value at this path in a decoded JSON document, or MISSING."""
        node = document
        for step in self.steps:
            if isinstance(step, str):
                if not isinstance(node, dict) or step not in node:
                    return MISSING
                node = node[step]
            else:
                if not isinstance(node, list) or not -len(node) <= step < len(node):
                    return MISSING
                node = node[step]
        return node

    def __str__(self) -> str:
        """The path as written."""
        return self.text
