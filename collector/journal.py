"""The SQLite outage journal, and the committer that journals transitions before publishing.

One file, WAL mode, `synchronous=NORMAL`: a committed transaction survives a crash or
`kill -9` of the collector (not necessarily a power loss of the machine). Tables:

- `outages`: one row per outage record, updated in place (the record's JSON plus the columns
  the API filters on). Fields the API does not filter on live in the JSON only, so adding
  one needs no schema change: `step` (flow probes) came that way, and a record journaled
  before it reads as `step: null` (`OutageRecord.from_json`), while an older collector
  reading a newer journal ignores the key;
- `outage_events`: one row per transition; its AUTOINCREMENT id is the `seq` of
  `JournaledTransition`, increasing per collector across restarts;
- `agent_watermarks`: the highest applied (epoch, seq) per agent, so deduplication continues
  after a restart;
- `meta`: the schema version;
- `target_states`: each probe's view (state and region verdicts, as `/api/v1/targets` shows
  them) every time it changes, written with the outage transitions of the same classifier
  call (a row only when state or verdicts differ from the probe's last row of this run), so
  uptime reports (collector/uptime.py) survive restarts;
- `collector_runs`: one row per collector run on this journal: `started_at`, `alive_at`
  (advanced at most every ALIVE_EVERY_S, in a commit or by the tick) and `ended_at` (a clean
  stop; NULL after a crash, when the run counts up to its last `alive_at`). Time outside every
  run is `unknown` in uptime reports;
- `maintenance_windows`: the maintenance windows created through the API (the window's JSON
  with times as unix seconds), so they survive a restart; config windows are not stored.
- `path_traces`: path traces (probe, agent, region, trigger, taken_at, outage_id, trace JSON),
  bounded per (probe, agent) and per outage by collector/traces.py, so an outage's `paths`
  survive a restart.

History is kept RETENTION_DAYS (pruned when a run starts and daily): older runs go, and a
probe's rows older than that except its last one before the cutoff in a run still kept.
Tables and indexes added in a later version are created when a journal lacks them (a
journal of the same schema version, written before they existed, gets them on open).

Who holds the file: every open Journal holds a shared `flock` on it (independent of
SQLite's own POSIX locks); `Journal(path, exclusive=True)`, used by `probenet reset-agent`,
needs it alone, so an operator's edit is refused while a collector has the journal open
(the collector keeps watermarks in memory and would write its own back).

Watermarks and acks (group commit): an agent's Ack, and the `acked_seq` of its Welcome, go
out only once the watermark they report is committed here. A batch's watermark is written
with the transitions it caused, if any; otherwise the collector commits the changed
watermarks of every agent together, in one transaction, at most every
`journal.commit_interval` (20 ms by default) while acks wait for it, and every few seconds
and at shutdown otherwise (`TransitionCommitter.commit_watermarks`). An SQLite transaction
per batch would cap ingest far below its target; one per interval costs ~0.2 ms. So after a
crash, even `kill -9`, the journal's watermark of every agent is at least the last seq
acknowledged to it: what an agent resends is what it was never told was stored, and every
result the restarted collector takes as new was never applied by a stored transition (one
applied after the last commit but not yet acknowledged is applied again: only the latest
samples, which the crash lost anyway, change).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Self

from prometheus_client import CollectorRegistry, Counter, Histogram

from .errors import JournalError
from .maintenance import MaintenanceWindow
from .model import (
    JournaledTransition,
    OutageEvent,
    OutageKind,
    OutageRecord,
    OutageTransition,
    Scope,
    TargetChange,
    Transition,
    TransitionSink,
)

if TYPE_CHECKING:
    from .classify import Classifier
    from .model import AgentHealthChange

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outages (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    probe TEXT,
    service TEXT,
    region TEXT,
    scope TEXT NOT NULL,
    started_at REAL NOT NULL,
    detected_at REAL NOT NULL,
    ended_at REAL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outages_by_start ON outages (started_at DESC);
CREATE INDEX IF NOT EXISTS outages_open ON outages (ended_at) WHERE ended_at IS NULL;
CREATE TABLE IF NOT EXISTS outage_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    outage_id TEXT NOT NULL,
    event TEXT NOT NULL,
    at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_watermarks (
    agent TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    seq TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outage_events_by_outage ON outage_events (outage_id, seq);
CREATE TABLE IF NOT EXISTS collector_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    alive_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS target_states (
    id INTEGER PRIMARY KEY,
    run INTEGER NOT NULL,
    probe TEXT NOT NULL,
    service TEXT,
    at REAL NOT NULL,
    state TEXT NOT NULL,
    regions TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS target_states_by_probe ON target_states (probe, at);
CREATE INDEX IF NOT EXISTS target_states_by_service ON target_states (service, probe);
CREATE INDEX IF NOT EXISTS target_states_by_time ON target_states (at);
CREATE TABLE IF NOT EXISTS maintenance_windows (
    id TEXT PRIMARY KEY,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS path_traces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    probe TEXT NOT NULL,
    agent TEXT NOT NULL,
    region TEXT NOT NULL,
    trigger TEXT NOT NULL,
    taken_at REAL NOT NULL,
    outage_id TEXT,
    trace TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS path_traces_by_probe ON path_traces (probe, taken_at);
CREATE INDEX IF NOT EXISTS path_traces_by_pair ON path_traces (probe, agent, outage_id);
"""

_SET_VERSION = "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '1');"
_MIGRATE = "BEGIN IMMEDIATE;" + _SCHEMA + _SET_VERSION + "COMMIT;"
# Every table and index of the schema: one missing (a journal older than it) runs _MIGRATE.
_SCHEMA_NAMES = frozenset(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", _SCHEMA))

# A running collector's `collector_runs.alive_at` is at most this old (plus one tick).
ALIVE_EVERY_S = 5.0
# History (target_states, collector_runs) kept: the longest uptime report (400 days) + today.
RETENTION_DAYS = 401
PRUNE_EVERY_S = 86_400.0

Watermarks = Mapping[str, tuple[int, int]]
"""agent id -> (epoch, highest applied seq). Stored as text: both are uint64 on the wire."""


class Journal:
    """The outage journal: a context manager around one SQLite connection.

    Every method runs on the caller's thread (the collector's event loop): the statements
    are small, and the loop's ordering is what guarantees commit-before-acknowledge.
    """

    def __init__(self, path: str | Path, *, exclusive: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        """Open (creating if needed) the journal at `path`; `open()` or `with` to start.

        `exclusive`: refuse to open while anyone else (a running collector) has it open.
        `clock` dates the collector run (`start_run`, `keep_alive`, `close`).
        """
        self.path = str(path)
        self.exclusive = exclusive
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # The collector run this connection records (None: a reader, or not started yet).
        self.run_id: int | None = None
        self._alive_written = 0.0
        self._pruned_at = 0.0
        # probe -> (state, regions JSON) of its last target_states row in this run.
        self._last_states: dict[str, tuple[str, str]] = {}

    def __enter__(self) -> Self:
        """Open the file and check or create the schema."""
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the file."""
        self.close()

    def open(self) -> None:
        """Open the file, set WAL mode, create or check the schema."""
        if self._db is not None:
            raise JournalError(self.path, "already open")
        try:
            parent = Path(self.path).parent
            parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(self.path, f"cannot open: {exc}") from exc
        try:
            self._lock()
        except JournalError:
            db.close()
            raise
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            self._migrate(db)
        except sqlite3.DatabaseError as exc:
            db.close()
            self._unlock()
            raise JournalError(self.path, f"not a usable SQLite journal: {exc}") from exc
        except JournalError:
            db.close()
            self._unlock()
            raise
        self._db = db

    def _lock(self) -> None:
        """Take the holder lock: shared, or exclusive (JournalError if someone holds it)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise JournalError(self.path, f"cannot open: {exc}") from exc
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise JournalError(self.path, "in use by a running collector (or another "
                                          "probenet command); stop it first") from exc
        except OSError as exc:
            os.close(fd)
            raise JournalError(self.path, f"cannot lock: {exc}") from exc
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _migrate(self, db: sqlite3.Connection) -> None:
        tables = {row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise JournalError(self.path, "exists but is not a probenet journal (no meta table)")
        version = 0
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise JournalError(
                self.path, f"written by a newer probenet (schema {version}, this one reads "
                           f"up to {SCHEMA_VERSION}); upgrade, or point journal.path elsewhere")
        names = {row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        if version < SCHEMA_VERSION or _SCHEMA_NAMES - names:
            # One script, one transaction: a crash mid-way leaves the old schema intact.
            db.executescript(_MIGRATE)

    def close(self) -> None:
        """Close the connection (ending the run it records); closing twice is harmless."""
        if self._db is not None:
            if self.run_id is not None:
                self._end_run()
            self._db.close()
            self._db = None
        self._unlock()

    @property
    def db(self) -> sqlite3.Connection:
        """The open connection (JournalError if closed)."""
        if self._db is None:
            raise JournalError(self.path, "not open")
        return self._db

    # -- writes ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, what: str, *, begin: str = "BEGIN") -> Iterator[sqlite3.Connection]:
        """One transaction: committed when the block ends, rolled back when it raises.

        SQLite errors (in the block too) become JournalError naming `what` failed.
        """
        db = self.db
        try:
            db.execute(begin)
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise JournalError(self.path, f"{what} failed: {exc}") from exc

    def commit(self, transitions: Sequence[Transition],
               watermarks: Watermarks | None = None) -> list[JournaledTransition]:
        """Write every transition (and the given watermarks) in one transaction.

        Returns the transitions in order, each with its journal seq (0 for TargetChange,
        which has no seq: it goes to `target_states`, the run's history, when the probe's
        state or verdicts changed). Starts this connection's collector run if needed.
        """
        run = self.start_run()
        out: list[JournaledTransition] = []
        states: dict[str, tuple[str, str]] = {}
        now = self._clock()
        alive = now - self._alive_written >= ALIVE_EVERY_S
        with self._transaction("commit") as db:
            for item in transitions:
                if isinstance(item, OutageTransition):
                    out.append(JournaledTransition(self._write(db, item), item))
                else:
                    self._write_state(db, run, item, states)
                    out.append(JournaledTransition(0, item))
            if watermarks:
                self._write_watermarks(db, watermarks)
            if alive:
                self._write_alive(db, run, now)
        self._last_states.update(states)
        if alive:
            self._alive_written = now
        return out

    def _write_state(self, db: sqlite3.Connection, run: int, change: TargetChange,
                     written: dict[str, tuple[str, str]]) -> None:
        """One target_states row, unless state and verdicts equal the probe's last row."""
        view = change.view
        key = (str(view.state), json.dumps(
            {region: str(verdict) for region, verdict in sorted(view.regions.items())},
            separators=(",", ":")))
        last = written.get(view.probe) or self._last_states.get(view.probe)
        if last == key:
            return
        db.execute(
            "INSERT INTO target_states (run, probe, service, at, state, regions)"
            " VALUES (?, ?, ?, ?, ?, ?)", (run, view.probe, view.service, change.at, *key))
        written[view.probe] = key

    # -- the collector run -------------------------------------------------------------

    def start_run(self) -> int:
        """Record that a collector runs on this journal from now; its id (idempotent).

        Called by the first commit (the collector's restore); prunes old history.
        """
        if self.run_id is not None:
            return self.run_id
        now = self._clock()
        with self._transaction("run start") as db:
            cursor = db.execute(
                "INSERT INTO collector_runs (started_at, alive_at) VALUES (?, ?)", (now, now))
            run = cursor.lastrowid
            self._prune(db, now)
        assert run is not None
        self.run_id = run
        self._alive_written = self._pruned_at = now
        self._last_states.clear()
        return run

    def keep_alive(self) -> None:
        """Advance the run's `alive_at` (at most every ALIVE_EVERY_S; starts the run)."""
        if self.run_id is None:
            self.start_run()
            return
        now = self._clock()
        if now - self._alive_written < ALIVE_EVERY_S:
            return
        prune = now - self._pruned_at >= PRUNE_EVERY_S
        with self._transaction("run keep-alive") as db:
            self._write_alive(db, self.run_id, now)
            if prune:
                self._prune(db, now)
        self._alive_written = now
        if prune:
            self._pruned_at = now

    @staticmethod
    def _write_alive(db: sqlite3.Connection, run: int, now: float) -> None:
        db.execute("UPDATE collector_runs SET alive_at = max(alive_at, ?) WHERE id = ?",
                   (now, run))

    def _end_run(self) -> None:
        """At close: the run ended now (a failure is logged: the run then ends at alive_at)."""
        run, self.run_id = self.run_id, None
        now = self._clock()
        try:
            with self._transaction("run end") as db:
                db.execute("UPDATE collector_runs SET alive_at = max(alive_at, ?),"
                           " ended_at = max(alive_at, ?) WHERE id = ?", (now, now, run))
        except JournalError as exc:
            log.warning("could not record the end of the collector run",
                        extra={"error": str(exc)})

    @staticmethod
    def _prune(db: sqlite3.Connection, now: float) -> None:
        """Drop history older than RETENTION_DAYS (keeping what a report's start needs)."""
        cutoff = now - RETENTION_DAYS * 86_400.0
        runs = db.execute("DELETE FROM collector_runs WHERE coalesce(ended_at, alive_at) < ?",
                          (cutoff,)).rowcount
        # A row before the cutoff still gives its probe's state at the cutoff, unless a
        # later row of the same run (also before it) took over, or its run is gone.
        states = db.execute(
            "DELETE FROM target_states WHERE at < ? AND (run NOT IN"
            " (SELECT id FROM collector_runs) OR EXISTS (SELECT 1 FROM target_states AS later"
            " WHERE later.probe = target_states.probe AND later.run = target_states.run"
            " AND later.at <= ? AND later.id > target_states.id))", (cutoff, cutoff)).rowcount
        if runs or states:
            log.info("journal history pruned", extra={
                "runs": runs, "target_states": states, "retention_days": RETENTION_DAYS})

    @staticmethod
    def _write(db: sqlite3.Connection, item: OutageTransition) -> int:
        """Upsert the record's row and append the event; returns the event's seq.

        Ids are derived from (kind, subject, start) (collector/classify.py, `outage_id`), so
        a row is only ever replaced by the same outage: same kind, probe, service and
        region. A row of another subject under the same id (a hash collision, or a bug) is
        never overwritten: the whole commit fails instead (sqlite3.IntegrityError, turned
        into JournalError by `_transaction`).
        """
        record = item.record
        text = json.dumps(record.to_json(), separators=(",", ":"))
        written = db.execute(
            "INSERT INTO outages (id, kind, probe, service, region, scope, started_at,"
            " detected_at, ended_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET scope = excluded.scope,"
            " started_at = excluded.started_at, detected_at = excluded.detected_at,"
            " ended_at = excluded.ended_at, record = excluded.record"
            " WHERE outages.kind = excluded.kind AND outages.probe IS excluded.probe"
            " AND outages.service IS excluded.service AND outages.region IS excluded.region",
            (record.id, str(record.kind), record.probe, record.service, record.region,
             str(record.scope), record.started_at, record.detected_at, record.ended_at, text))
        if written.rowcount != 1:
            raise sqlite3.IntegrityError(
                f"outage id {record.id} already names another {record.kind} record")
        cursor = db.execute(
            "INSERT INTO outage_events (outage_id, event, at, record) VALUES (?, ?, ?, ?)",
            (record.id, str(item.event), item.at, text))
        seq = cursor.lastrowid
        assert seq is not None
        return seq

    @staticmethod
    def _write_watermarks(db: sqlite3.Connection, watermarks: Watermarks) -> None:
        db.executemany(
            "INSERT INTO agent_watermarks (agent, epoch, seq) VALUES (?, ?, ?)"
            " ON CONFLICT (agent) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
            [(agent, str(epoch), str(seq)) for agent, (epoch, seq) in watermarks.items()])

    def flush_watermarks(self, watermarks: Watermarks) -> None:
        """Persist agents' applied watermarks in one transaction (the group commit)."""
        if not watermarks:
            return
        now = self._clock()
        alive = self.run_id is not None and now - self._alive_written >= ALIVE_EVERY_S
        with self._transaction("watermark flush") as db:
            self._write_watermarks(db, watermarks)
            if alive and self.run_id is not None:
                self._write_alive(db, self.run_id, now)
        if alive:
            self._alive_written = now

    def reset_watermark(self, agent: str) -> tuple[int, int] | None:
        """Forget `agent`'s watermark (an operator's reset); return what it was, if any.

        Its next stream then starts afresh with whatever epoch it brings. Meant for a
        journal opened `exclusive`: a running collector would write its own back.
        """
        with self._transaction("watermark reset", begin="BEGIN IMMEDIATE") as db:
            row = db.execute("SELECT epoch, seq FROM agent_watermarks WHERE agent = ?",
                             (agent,)).fetchone()
            db.execute("DELETE FROM agent_watermarks WHERE agent = ?", (agent,))
        return (int(row[0]), int(row[1])) if row else None

    # -- reads -----------------------------------------------------------------------------

    def watermarks(self) -> dict[str, tuple[int, int]]:
        """Every agent's last persisted (epoch, seq)."""
        return {agent: (int(epoch), int(seq)) for agent, epoch, seq in self.db.execute(
            "SELECT agent, epoch, seq FROM agent_watermarks")}

    # -- maintenance windows (the API's; config windows come from the config file) -------

    def add_maintenance_window(self, window: MaintenanceWindow) -> None:
        """Store an API window (JournalError when the id exists or the write fails)."""
        text = json.dumps(window.to_record(), separators=(",", ":"))
        with self._transaction("maintenance window add") as db:
            db.execute('INSERT INTO maintenance_windows (id, start, "end", record)'
                       " VALUES (?, ?, ?, ?)", (window.id, window.start, window.end, text))

    def delete_maintenance_window(self, window_id: str) -> bool:
        """Remove an API window; False when there was none with this id."""
        with self._transaction("maintenance window delete") as db:
            deleted = db.execute("DELETE FROM maintenance_windows WHERE id = ?",
                                 (window_id,)).rowcount
        return bool(deleted)

    def maintenance_windows(self, *, ended_after: float | None = None
                            ) -> list[MaintenanceWindow]:
        """Stored API windows by start (only those ending after `ended_after`, if given).

        A row that does not parse is skipped with a warning: one bad row must not keep the
        collector from starting.
        """
        sql = "SELECT id, record FROM maintenance_windows"
        args: tuple[object, ...] = ()
        if ended_after is not None:
            sql += ' WHERE "end" > ?'
            args = (ended_after,)
        found: list[MaintenanceWindow] = []
        for window_id, text in self.db.execute(sql + " ORDER BY start, id", args):
            try:
                found.append(MaintenanceWindow.from_record(json.loads(text)))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable maintenance window skipped",
                            extra={"window": window_id, "error": str(exc)})
        return found

    def outage(self, outage_id: str) -> OutageRecord | None:
        """One record by id (None when the journal has none)."""
        row = self.db.execute("SELECT record FROM outages WHERE id = ?", (outage_id,)).fetchone()
        return None if row is None else self._record(row[0])

    def open_outages(self) -> list[OutageRecord]:
        """Records not yet resolved, oldest first."""
        rows = self.db.execute(
            "SELECT record FROM outages WHERE ended_at IS NULL ORDER BY started_at, id")
        return [self._record(text) for (text,) in rows]

    def outages(self, *, active: bool | None = None, limit: int = 100,
                since: float | None = None) -> list[OutageRecord]:
        """Records newest first: all, only open (`active=True`) or only resolved (False).

        `since` keeps records that were still open at or after that unix time.
        """
        where: list[str] = []
        args: list[object] = []
        if active is True:
            where.append("ended_at IS NULL")
        elif active is False:
            where.append("ended_at IS NOT NULL")
        if since is not None:
            where.append("(ended_at IS NULL OR ended_at >= ?)")
            args.append(since)
        sql = "SELECT record FROM outages"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, id LIMIT ?"
        args.append(limit)
        return [self._record(text) for (text,) in self.db.execute(sql, args)]

    def events(self, outage_id: str | None = None) -> list[tuple[int, str, OutageRecord]]:
        """Journaled transitions (seq, event, record snapshot), oldest first."""
        sql = "SELECT seq, event, record FROM outage_events"
        args: tuple[object, ...] = ()
        if outage_id is not None:
            sql += " WHERE outage_id = ?"
            args = (outage_id,)
        return [(seq, event, self._record(text))
                for seq, event, text in self.db.execute(sql + " ORDER BY seq", args)]

    def _record(self, text: str) -> OutageRecord:
        try:
            return OutageRecord.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise JournalError(self.path, f"unreadable outage record: {exc}") from exc


class CommitObserver(Protocol):
    """What the committer reports to (metrics)."""

    def journal_committed(self, seconds: float) -> None:
        """One journal transaction took `seconds`."""

    def watermarks_committed(self, seconds: float) -> None:
        """One group commit of agents' watermarks took `seconds`."""

    def outage_opened(self, record: OutageRecord) -> None:
        """An outage record was opened."""


class CommitMetrics:
    """The committer's metrics: commit latency, outages opened, detection latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register on `registry`."""
        self.commit_seconds = Histogram(
            "probenet_journal_commit_seconds",
            "Time to commit one journal transaction of outage transitions.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry)
        self.opened = Counter(
            "probenet_outages_opened", "Outage records opened, by kind and scope at opening.",
            ["kind", "scope"], registry=registry)
        # Every series exists from the start at 0, so increase() sees the first outage.
        for kind in OutageKind:
            for scope in Scope:
                self.opened.labels(str(kind), str(scope))
        self.watermark_commit_seconds = Histogram(
            "probenet_journal_watermark_commit_seconds",
            "Time to commit one group of agents' watermarks (acks wait for it); the count "
            "is the number of group commits.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0),
            registry=registry)
        self.detection_seconds = Histogram(
            "probenet_outage_detection_seconds",
            "Time from an outage's first failing observation to its classification.",
            buckets=(0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600),
            registry=registry)

    def journal_committed(self, seconds: float) -> None:
        """Observe one commit's latency."""
        self.commit_seconds.observe(seconds)

    def watermarks_committed(self, seconds: float) -> None:
        """Observe one group commit's latency."""
        self.watermark_commit_seconds.observe(seconds)

    def outage_opened(self, record: OutageRecord) -> None:
        """Count an opened record; observe its detection latency (probe records)."""
        self.opened.labels(str(record.kind), str(record.scope)).inc()
        if record.kind is OutageKind.PROBE:
            self.detection_seconds.observe(max(0.0, record.detected_at - record.started_at))


class TransitionCommitter:
    """Drains the classifier's transitions into the journal, then hands them to the sinks.

    Called right after every classifier call that can change state (a batch, a tick, a
    hello, a disconnect), on the event loop, so nothing is acknowledged or published before
    the journal holds it.
    """

    def __init__(self, classifier: Classifier, journal: Journal, *,
                 sinks: Iterable[TransitionSink] = (), observer: CommitObserver | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        """Commit `classifier`'s transitions to `journal`, then submit to each sink."""
        self._classifier = classifier
        self._journal = journal
        self._sinks = tuple(sinks)
        self._observer = observer
        self._perf = clock

    def commit(self, watermarks: Watermarks | None = None) -> list[JournaledTransition]:
        """Journal what the classifier changed (with `watermarks`), then publish it."""
        self._log_health(self._classifier.take_health_changes())
        transitions = self._classifier.take_transitions()
        if not transitions:
            self._journal.keep_alive()
            return []
        started = self._perf()
        journaled = self._journal.commit(transitions, watermarks)
        if self._observer is not None:
            self._observer.journal_committed(self._perf() - started)
        for item in journaled:
            change = item.transition
            if isinstance(change, OutageTransition):
                self._log(item.seq, change)
        for sink in self._sinks:
            try:
                sink.submit(journaled)
            except Exception:
                log.exception("a transition sink failed", extra={"sink": type(sink).__name__})
        return journaled

    def commit_watermarks(self, watermarks: Watermarks) -> None:
        """Write agents' watermarks in one transaction (the group commit acks wait for)."""
        started = self._perf()
        self._journal.flush_watermarks(watermarks)
        if self._observer is not None:
            self._observer.watermarks_committed(self._perf() - started)

    @staticmethod
    def _log_health(changes: Sequence[AgentHealthChange]) -> None:
        """Each agent health change at INFO, with its evidence (not journaled)."""
        for change in changes:
            log.info("agent %s", change.health, extra={
                "agent": change.agent, "region": change.region, "health": str(change.health),
                "previous": str(change.previous), "probes_down": change.down,
                "probes_fresh": change.fresh, "down_seen_up_elsewhere": change.seen_up})

    def _log(self, seq: int, change: OutageTransition) -> None:
        record = change.record
        if change.event is OutageEvent.OPENED and self._observer is not None:
            self._observer.outage_opened(record)
        fields = {
            "seq": seq, "outage": record.id, "kind": str(record.kind), "probe": record.probe,
            "service": record.service, "scope": str(record.scope),
            "regions": ",".join(record.regions), "phase": record.phase, "reason": record.reason,
            "step": record.step,
        }
        if change.event is OutageEvent.UPDATED:
            log.debug("outage updated", extra=fields)
        else:
            log.info("outage %s", change.event, extra=fields)
