"""Probes' state history and the collector's runs, read out of the journal (for uptime).

The journal's `target_states` rows say what a probe's view became and when, within one
collector run; `collector_runs` say when a collector ran on the journal. Readers here take an
open `Journal` (a connection of its own, in a worker thread: see collector/uptime_api.py) and
return plain frozen values for the pure computation in collector/uptime.py.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import JournalError
from .journal import ALIVE_EVERY_S

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    from .journal import Journal

# The newest run, not ended, counts as still running (up to `now`) when its `alive_at` is at
# most this old; otherwise it crashed and counts up to its `alive_at`.
RUN_ALIVE_GRACE_S = 6 * ALIVE_EVERY_S


_LAST_BEFORE_OF_PROBE = (
    "SELECT run, probe, service, at, state, regions FROM target_states"
    " WHERE probe = ? AND at < ? ORDER BY at DESC, id DESC LIMIT 1")
_RANGE_OF_PROBE = (
    "SELECT run, probe, service, at, state, regions FROM target_states"
    " WHERE probe = ? AND at >= ? AND at < ? ORDER BY id")
_LAST_BEFORE = (
    "SELECT run, probe, service, at, state, regions FROM target_states"
    " WHERE id IN (SELECT max(id) FROM target_states WHERE at < ? GROUP BY probe)")
_RANGE = (
    "SELECT run, probe, service, at, state, regions FROM target_states"
    " WHERE at >= ? AND at < ? ORDER BY id")


@dataclass(frozen=True, slots=True)
class StateRow:
    """A probe's view from `at` on, within collector run `run` (a `target_states` row).

    `state` as /api/v1/targets gives it (`up`, `regional_outage`, `global_outage`, `unknown`,
    `maintenance`); `regions` maps each region to `up`, `down`, `unknown` or `maintenance`.
    """

    run: int
    probe: str
    service: str | None
    at: float
    state: str
    regions: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RunPeriod:
    """A collector run: from `started_at` to `ended_at` (None: still running, up to now)."""

    id: int
    started_at: float
    ended_at: float | None


@dataclass(frozen=True, slots=True)
class History:
    """What an uptime report is computed from: state rows and the runs they belong to."""

    probes: tuple[str, ...]
    rows: tuple[StateRow, ...]
    runs: tuple[RunPeriod, ...]


def _row(path: str, values: tuple[int, str, str | None, float, str, str]) -> StateRow:
    run, probe, service, at, state, regions = values
    try:
        verdicts = json.loads(regions)
    except ValueError as exc:
        raise JournalError(path, f"unreadable target_states regions: {exc}") from exc
    if not isinstance(verdicts, dict):
        raise JournalError(path, "unreadable target_states regions: not an object")
    return StateRow(run, probe, service, at, state,
                    {str(region): str(verdict) for region, verdict in verdicts.items()})


def service_probes(journal: Journal, service: str) -> list[str]:
    """Every probe the journal's history names as part of `service`, sorted."""
    return [probe for (probe,) in _query(journal, (
        "SELECT DISTINCT probe FROM target_states WHERE service = ? ORDER BY probe"),
        (service,))]


def has_probe(journal: Journal, probe: str) -> bool:
    """True when the journal's history has any row of `probe`."""
    return bool(_query(journal, "SELECT 1 FROM target_states WHERE probe = ? LIMIT 1", (probe,)))


def _query(journal: Journal, sql: str, args: tuple[object, ...]) -> list[Any]:
    try:
        return journal.db.execute(sql, args).fetchall()
    except sqlite3.Error as exc:
        raise JournalError(journal.path, f"history read failed: {exc}") from exc


def read_runs(journal: Journal, since: float, until: float, now: float, *,
              live_run: int | None = None) -> tuple[RunPeriod, ...]:
    """Collector runs overlapping [since, until), oldest first.

    A run not ended is running (ended_at None) when it is `live_run` or, with no
    `live_run`, the newest run with an `alive_at` within RUN_ALIVE_GRACE_S of `now`; any
    other ended at its last `alive_at` (a crash).
    """
    rows = _query(journal, "SELECT id, started_at, alive_at, ended_at FROM collector_runs"
                           " WHERE started_at < ? ORDER BY id", (until,))
    newest = max((int(row[0]) for row in rows), default=None)
    runs: list[RunPeriod] = []
    for run_id, started_at, alive_at, ended_at in rows:
        end: float | None
        if ended_at is not None:
            end = float(ended_at)
        elif live_run is not None:
            end = None if run_id == live_run else float(alive_at)
        elif run_id == newest and now - alive_at <= RUN_ALIVE_GRACE_S:
            end = None
        else:
            end = float(alive_at)
        if end is None or end > since:
            runs.append(RunPeriod(int(run_id), float(started_at), end))
    return tuple(runs)


def read_history(journal: Journal, probes: Collection[str] | None, since: float,
                 until: float, now: float, *, live_run: int | None = None) -> History:
    """The rows of `probes` (None: every probe) that shape [since, until), and the runs.

    That is each probe's rows inside the range and its last row before `since` (its state
    when the range begins, if its run still went on then).
    """
    wanted = None if probes is None else set(probes)
    runs = read_runs(journal, since, until, now, live_run=live_run)
    run_ids = {run.id for run in runs}
    if wanted is not None and len(wanted) <= 1:
        selected: list[Any] = []
        for probe in wanted:
            selected += _query(journal, _LAST_BEFORE_OF_PROBE, (probe, since))
            selected += _query(journal, _RANGE_OF_PROBE, (probe, since, until))
    else:
        selected = _query(journal, _LAST_BEFORE, (since,))
        selected += _query(journal, _RANGE, (since, until))
    rows = [_row(journal.path, row) for row in selected]
    rows = [row for row in rows if row.run in run_ids
            and (wanted is None or row.probe in wanted)]
    rows.sort(key=lambda row: (row.probe, row.run, row.at))
    names = wanted if wanted is not None else {row.probe for row in rows}
    return History(tuple(sorted(names)), tuple(rows), runs)
