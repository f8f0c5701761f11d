"""Structured logging for every probenet process: logfmt lines (default) or JSON lines.

Fields are passed as `extra=` and printed as key=value pairs after the message:

    log.warning("stream rejected", extra={"agent": "fra-1", "reason": "bad_token"})
    ts=2026-11-24T15:39:00.123Z level=warning logger=probenet.collector.ingest msg="stream rejected"
      agent=fra-1 reason=bad_token   (one line)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal, TextIO

LogFormat = Literal["logfmt", "json"]

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _timestamp(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        return json.dumps(text)
    return text


def _parts(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, Any]:
    parts = {
        "ts": _timestamp(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
        **_fields(record),
    }
    if record.exc_info:
        parts["error"] = formatter.formatException(record.exc_info)
    return parts


class LogfmtFormatter(logging.Formatter):
    """`ts=… level=… logger=… msg="…" key=value …`, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _parts(self, record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        return json.dumps(_parts(self, record), default=str)


def setup_logging(level: str = "info", fmt: LogFormat = "logfmt",
                  stream: TextIO | None = None) -> None:
    """Route every logger to one handler on stderr in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc and aiohttp's access log are chatty at info; keep them at warning.
    for noisy in ("grpc", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
