"""Structured log lines carry their fields."""

from __future__ import annotations

import io
import json
import logging

from probenet.logs import setup_logging


def _emit(fmt):
    stream = io.StringIO()
    setup_logging("info", fmt, stream=stream)
    try:
        logging.getLogger("probenet.collector.ingest").warning(
            "stream rejected", extra={"agent": "fra-1", "reason": "bad token"})
        logging.getLogger("probenet.collector.ingest").debug("hidden")
    finally:
        logging.getLogger().handlers.clear()
    return stream.getvalue().strip().splitlines()


def test_logfmt_line_has_fields():
    (line,) = _emit("logfmt")
    assert line.startswith("ts=")
    assert ('level=warning logger=probenet.collector.ingest msg="stream rejected" agent=fra-1'
            in line)
    assert line.endswith('reason="bad token"')


def test_json_line_has_fields():
    (line,) = _emit("json")
    record = json.loads(line)
    assert record["agent"] == "fra-1"
    assert record["msg"] == "stream rejected"
    assert record["ts"].endswith("Z")
