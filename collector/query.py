"""Query parameters of the collector's JSON API: parsed once, refused with the parameter named.

/api/v1/outages (`active`, `limit`), /api/v1/uptime (`days`, `probe`, `service`) and
/api/v1/maintenance (`active`) share these, so every 400 answers the same way:
`{"error": ..., "parameter": ...}`, the offending value quoted to a bounded length.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

# A parameter's value is quoted in a 400 answer up to this many characters.
_QUOTED_VALUE_CHARS = 40


class BadQueryError(ValueError):
    """A query parameter is missing or has a value the API does not accept."""

    def __init__(self, parameter: str, message: str) -> None:
        """`parameter` is named in the 400 answer."""
        super().__init__(message)
        self.parameter = parameter


def quoted(value: str) -> str:
    """`value` as quoted in a 400 answer: repr'd, cut to a bounded length."""
    if len(value) > _QUOTED_VALUE_CHARS:
        return f"{value[:_QUOTED_VALUE_CHARS]!r}... ({len(value)} characters)"
    return repr(value)


def parse_bool(parameter: str, value: str | None) -> bool | None:
    """true/1 or false/0 (any case); absent: None."""
    if value is None:
        return None
    lowered = value.lower()
    if lowered in {"true", "1"}:
        return True
    if lowered in {"false", "0"}:
        return False
    raise BadQueryError(parameter, f"{parameter} must be true or false, not {quoted(value)}")


def parse_count(parameter: str, value: str | None, *, default: int, maximum: int) -> int:
    """An integer from 1 to `maximum` in ASCII digits; absent: `default`.

    The pattern decides alone: `str.isdigit` and `int()` take other digits too ("²" is a
    digit `int` refuses; "١٢" one it accepts), and `int()` of a long enough string raises.
    """
    if value is None:
        return default
    if (re.fullmatch(rf"[0-9]{{1,{len(str(maximum))}}}", value) is None
            or not 1 <= int(value) <= maximum):
        raise BadQueryError(parameter, f"{parameter} must be an integer from 1 to {maximum}, "
                                       f"not {quoted(value)}")
    return int(value)


def json_error(status: int, parameter: str | None, message: str) -> web.Response:
    """A JSON error answer, naming the parameter when one is at fault."""
    body: dict[str, Any] = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    return web.json_response(body, status=status)
