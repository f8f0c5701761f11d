"""GET /api/v1/uptime and GET /api/v1/outages/{id}, and the calls the status page makes.

The journal is read in a worker thread through a connection of its own (as /api/v1/outages
does), so a 400-day report holds neither the event loop nor the collector's connection.

    report = await uptime_report(path, probe="web", days=90)       # -> UptimeReport
    reports = await uptime_reports(path, ["web", "api"], days=90)  # one journal read
    detail = await outage_detail(path, outage_id, classifier.open_outages())  # dict | None
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import JournalError
from .history import has_probe, read_history, service_probes
from .journal import Journal
from .model import OutageEvent, OutageRecord, rfc3339
from .query import BadQueryError, json_error, parse_count, quoted
from .traces import outage_paths
from .uptime import MAX_DAYS, UptimeReport, compute_uptime, report_range

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from .classify import Classifier
    from .history import StateRow

log = logging.getLogger(__name__)

DEFAULT_DAYS = 30
_MAX_NAME_CHARS = 256


class UnknownSubjectError(LookupError):
    """Neither the journal nor the collector knows the probe or service asked for."""

    def __init__(self, parameter: str, name: str) -> None:
        """`parameter` is `probe` or `service`."""
        super().__init__(f"no {parameter} {name!r} in the journal's history or the collector")
        self.parameter = parameter
        self.name = name


def parse_days(value: str | None) -> int:
    """`days`: an integer from 1 to MAX_DAYS in ASCII digits; absent: DEFAULT_DAYS."""
    return parse_count("days", value, default=DEFAULT_DAYS, maximum=MAX_DAYS)


def parse_subject(probe: str | None, service: str | None) -> tuple[str | None, str | None]:
    """Exactly one of `probe` and `service`, non-blank and of a sane length."""
    if probe is not None and service is not None:
        raise BadQueryError("service", "give either probe or service, not both")
    if probe is None and service is None:
        raise BadQueryError("probe", "probe (or service) is required")
    parameter, value = ("probe", probe) if probe is not None else ("service", service)
    assert value is not None
    if not value.strip() or len(value) > _MAX_NAME_CHARS or not value.isprintable():
        raise BadQueryError(parameter, f"{parameter} must be a name of 1 to "
                                          f"{_MAX_NAME_CHARS} printable characters, "
                                          f"not {quoted(value)}")
    return probe, service


# -- what the status page calls ----------------------------------------------------------


def read_uptime_report(journal: Journal, *, probe: str | None, service: str | None,
                       days: int, now: float, live_run: int | None = None,
                       live_probes: Collection[str] = ()) -> UptimeReport:
    """Read and compute one report from an open journal (UnknownSubjectError if unknown).

    Blocking: the HTTP API runs it in a worker thread; `probenet uptime --journal` directly.
    """
    since, until = report_range(days, now)
    if probe is not None:
        if probe not in live_probes and not has_probe(journal, probe):
            raise UnknownSubjectError("probe", probe)
        probes = [probe]
    else:
        assert service is not None
        probes = sorted(set(service_probes(journal, service)).union(live_probes))
        if not probes:
            raise UnknownSubjectError("service", service)
    history = read_history(journal, probes, since, until, now, live_run=live_run)
    return compute_uptime(history.rows, history.runs, probes=probes, days=days, now=now,
                          probe=probe, service=service)


async def uptime_report(journal_path: str, *, probe: str | None = None,
                        service: str | None = None, days: int = 90, now: float | None = None,
                        live_run: int | None = None,
                        live_probes: Collection[str] = ()) -> UptimeReport:
    """The uptime report of one `probe` or one `service` over `days` (1..400) UTC days.

    Reads the journal at `journal_path` in a worker thread. `live_run`: the running
    collector's run id (`Journal.run_id`), counted up to `now`; `live_probes`: probes the
    caller knows (the classifier's; for a service, those of the service) beside the
    journal's. Raises UnknownSubjectError when neither knows the probe or service,
    ValueError for `days` out of range, JournalError when the journal cannot be read.
    """
    if (probe is None) == (service is None):
        raise ValueError("uptime_report: give exactly one of probe and service")
    moment = time.time() if now is None else now
    report_range(days, moment)  # ValueError before any thread starts

    def read() -> UptimeReport:
        with Journal(journal_path) as journal:
            return read_uptime_report(journal, probe=probe, service=service, days=days,
                                      now=moment, live_run=live_run, live_probes=live_probes)

    return await asyncio.to_thread(read)


async def uptime_reports(journal_path: str, probes: Sequence[str], days: int = 90,
                         now: float | None = None, *,
                         live_run: int | None = None) -> dict[str, UptimeReport]:
    """One report per probe in `probes` (the status page's bars), the journal read once.

    A probe without history gets an all-`unknown` report (no error).
    """
    moment = time.time() if now is None else now
    since, until = report_range(days, moment)
    names = sorted(set(probes))

    def read() -> dict[str, UptimeReport]:
        with Journal(journal_path) as journal:
            history = read_history(journal, None if len(names) > 1 else names, since, until,
                                   moment, live_run=live_run)
        by_probe: dict[str, list[StateRow]] = {name: [] for name in names}
        for row in history.rows:
            if row.probe in by_probe:
                by_probe[row.probe].append(row)
        return {name: compute_uptime(by_probe[name], history.runs, probes=[name], days=days,
                                     now=moment, probe=name) for name in names}

    return await asyncio.to_thread(read)


def _timeline_entry(at: float, event: str, record: OutageRecord, seq: int | None) -> dict[
        str, Any]:
    return {"at": rfc3339(at), "event": event, "seq": seq, "scope": str(record.scope),
            "regions": list(record.regions), "phase": record.phase, "reason": record.reason,
            "step": record.step}


def _read_detail(journal_path: str, outage_id: str,
                 live: OutageRecord | None) -> dict[str, Any] | None:
    """In a worker thread: the record and its journaled events (None when unknown)."""
    with Journal(journal_path) as journal:
        record = journal.outage(outage_id)
        try:
            rows = journal.db.execute(
                "SELECT seq, event, at, record FROM outage_events WHERE outage_id = ?"
                " ORDER BY seq", (outage_id,)).fetchall()
            events = [(seq, event, at, OutageRecord.from_json(json.loads(text)))
                      for seq, event, at, text in rows]
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            raise JournalError(journal_path, f"outage events read failed: {exc}") from exc
        if live is not None:
            record = live
        if record is None:
            return None
        try:
            paths = outage_paths(journal.db, record, time.time())
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            raise JournalError(journal_path, f"path traces read failed: {exc}") from exc
    first = events[0][3] if events else record
    timeline = [_timeline_entry(record.started_at, "started", first, None)]
    timeline += [_timeline_entry(at, event, snapshot, seq)
                 for seq, event, at, snapshot in events]
    if not any(entry["event"] == OutageEvent.OPENED for entry in timeline):
        # Events pruned or never journaled: the detection still has its place.
        timeline.insert(1, _timeline_entry(record.detected_at, "opened", record, None))
    return {
        **record.to_json(),
        "detection_seconds": round(max(0.0, record.detected_at - record.started_at), 3),
        "duration_seconds": (None if record.ended_at is None
                             else round(record.ended_at - record.started_at, 3)),
        "timeline": timeline,
        "paths": paths,
    }


async def outage_detail(journal_path: str, outage_id: str,
                        open_records: Sequence[OutageRecord] = ()) -> dict[str, Any] | None:
    """One outage record (as in /api/v1/outages) with its `timeline`; None when unknown.

    `open_records`: the classifier's open records (their latest state wins over the
    journal's). The timeline starts with `started` (first failing observation), then every
    journaled event in order: `opened` (the detection), `scope_changed`, `updated`
    (regions, phase or reason changed), `resolved`; each entry carries `at`, `event`,
    `seq` (null for `started`), `scope`, `regions`, `phase`, `reason` and `step` after it.
    `paths`: the path traces of a probe or service outage and their summary
    (collector/traces.py `outage_paths`), null for other kinds.
    """
    live = next((record for record in open_records if record.id == outage_id), None)
    return await asyncio.to_thread(_read_detail, journal_path, outage_id, live)


# -- the HTTP handlers -------------------------------------------------------------------


class UptimeApi:
    """The handlers, bound to the collector's classifier and journal."""

    def __init__(self, *, classifier: Classifier, journal: Journal,
                 clock: Callable[[], float] = time.time) -> None:
        """`journal` is the collector's (its path is read; its run counts as live)."""
        self._classifier = classifier
        self._journal = journal
        self._clock = clock

    def register(self, app: web.Application) -> None:
        """Add GET /api/v1/uptime and GET /api/v1/outages/{id} to `app`."""
        app.router.add_get("/api/v1/uptime", self.uptime)
        app.router.add_get("/api/v1/outages/{id}", self.outage)

    async def uptime(self, request: web.Request) -> web.Response:
        """GET /api/v1/uptime?probe=P|service=S[&days=N]."""
        query = request.query
        try:
            probe, service = parse_subject(query.get("probe"), query.get("service"))
            days = parse_days(query.get("days"))
        except BadQueryError as exc:
            return json_error(400, exc.parameter, str(exc))
        if probe is not None:
            live = [probe] if self._classifier.target(probe) is not None else []
        else:
            live = [view.probe for view in self._classifier.targets()
                    if view.service == service]
        try:
            report = await uptime_report(self._journal.path, probe=probe, service=service,
                                         days=days, now=self._clock(),
                                         live_run=self._journal.run_id, live_probes=live)
        except UnknownSubjectError as exc:
            return json_error(404, exc.parameter, str(exc))
        except JournalError as exc:
            log.warning("journal read failed", extra={"error": str(exc)})
            return json_error(503, None, "the outage journal cannot be read")
        return web.json_response(report.to_json())

    async def outage(self, request: web.Request) -> web.Response:
        """GET /api/v1/outages/{id}: the record with its timeline."""
        outage_id = request.match_info["id"]
        try:
            detail = await outage_detail(self._journal.path, outage_id,
                                         self._classifier.open_outages())
        except JournalError as exc:
            log.warning("journal read failed", extra={"error": str(exc)})
            return json_error(503, None, "the outage journal cannot be read")
        if detail is None:
            return json_error(404, "id", f"no outage {quoted(outage_id)}")
        return web.json_response(detail)
