"""The agent's durable state: its epoch and sequence, and the results not yet acknowledged.

One SQLite file per agent id in the state directory (`<state_dir>/<agent id>.spool`, WAL
mode), locked by the agent that runs it (`<file>.lock`, flock): a second agent process with
the same id and folder is refused. Tables: `meta` (epoch, last_seq), `results` (seq, the
encoded ProbeResult), `acks` (per collector address, the highest acknowledged seq).

`StateFile` is the file (synchronous, no asyncio). `DurableSpools` is the asyncio side:
`ResultFanout` stages each numbered result; one writer thread commits what was staged in
one transaction (results, last_seq, acks, compaction, bounds), and only then hands the
results to the collectors' spools, so nothing is ever sent that is not on disk. A restart
(even after `kill -9`) reopens the file: the same epoch, the sequence where it stopped, and
every unacknowledged result queued again for the collectors that have not acknowledged it.

Durability (`buffer.sync`): `normal` (SQLite WAL, synchronous=NORMAL) survives any process
crash; a power cut or kernel crash can lose the commits the kernel had not written back
(typically the last 30 s, at most the WAL's ~1 MiB between checkpoints) but never corrupts
the file. `full` fsyncs every commit (one per event-loop turn that produced results): a
power cut loses nothing committed, at 2-5x the CPU per result plus the fsync's latency,
paid in the writer thread (benchmarks/agent_spool.py).
The choice of SQLite over an append-only segment log is measured there too: the segment log
writes 5x cheaper per result, but both cost a few microseconds against a probe's hundreds,
and SQLite gives crash-safe deletion (acks, the byte bound) without code of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from probenet.v1 import probenet_pb2 as pb

from .errors import StateError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .spool import Spool

log = logging.getLogger(__name__)

Sync = Literal["normal", "full"]

_WAL_LIMIT_BYTES = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS results (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS acks (collector TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""


def state_path(state_dir: Path, agent_id: str) -> Path:
    """The agent's state file in `state_dir` (agent ids are safe file names)."""
    return state_dir / f"{agent_id}.spool"


@dataclass
class Restored:
    """What a state file held when it was opened."""

    epoch: int
    last_seq: int
    acked: dict[str, int] = field(default_factory=dict)
    # Every result some collector has not acknowledged, in seq order, still encoded.
    results: list[tuple[int, bytes]] = field(default_factory=list)
    fresh: bool = True  # no earlier state: a new epoch


@dataclass
class Commit:
    """One transaction's outcome: results dropped to stay within the bounds."""

    dropped_through: int = 0  # every result with seq <= this is gone (0: none dropped)
    dropped: int = 0


class StateFile:
    """The SQLite file: open (lock, schema, read), commit batches, close."""

    def __init__(self, path: Path, *, max_results: int, max_bytes: int,
                 sync: Sync = "normal") -> None:
        """Bounds: at most `max_results` results and `max_bytes` of them (oldest dropped)."""
        self.path = path
        self.max_results = max_results
        self.max_bytes = max_bytes
        self.sync = sync
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._rows = 0
        self._bytes = 0
        self._compacted_through = 0

    def open(self, new_epoch: int) -> Restored:
        """Lock and read the file (creating it with `new_epoch`); StateError says why not.

        A file that is not a readable SQLite database is moved aside (`.corrupt-<time>`)
        and a fresh one started: an agent must keep probing, and the move is logged.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as exc:
            self.close()
            raise StateError(str(self.path.parent), exc.strerror or str(exc)) from exc
        try:
            return self._open_db(new_epoch)
        except sqlite3.DatabaseError as exc:
            self._close_db()
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("agent state file unreadable: moved aside, starting afresh",  # noqa: TRY400
                      extra={"path": str(self.path), "moved_to": str(aside), "error": str(exc)})
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{self.path}{suffix}").rename(f"{aside}{suffix}")
            try:
                return self._open_db(new_epoch)
            except sqlite3.DatabaseError as again:
                self.close()
                raise StateError(str(self.path), str(again)) from again

    def _lock(self) -> None:
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise StateError(str(self.path), "in use by another agent process (same agent id "
                             "and state_dir); give each agent its own id or state_dir") from exc
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _open_db(self, new_epoch: int) -> Restored:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.sync.upper()}")
        # A checkpoint every ~1 MiB of WAL, and the WAL file cut back to 1 MiB after it:
        # left at SQLite's defaults every agent kept a 4 MiB WAL file for good.
        db.execute("PRAGMA wal_autocheckpoint=256")
        db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
        db.executescript(_SCHEMA)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if "epoch" not in meta:
            db.execute("DELETE FROM results")
            db.execute("DELETE FROM acks")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?), ('last_seq', 0)",
                       (new_epoch,))
            return Restored(epoch=new_epoch, last_seq=0)
        acked = dict(db.execute("SELECT collector, seq FROM acks").fetchall())
        results = db.execute("SELECT seq, data FROM results ORDER BY seq").fetchall()
        self._rows = len(results)
        self._bytes = sum(len(data) for _, data in results)
        return Restored(epoch=int(meta["epoch"]), last_seq=int(meta.get("last_seq", 0)),
                        acked=acked, results=results, fresh=False)

    def commit(self, results: Sequence[tuple[int, bytes]], last_seq: int,
               acks: Mapping[str, int]) -> Commit:
        """Append `results`, record `last_seq` and `acks`, compact, bound: one transaction.

        Results every collector in `acks` has acknowledged are deleted; beyond the bounds
        the oldest are deleted and reported as dropped.
        """
        db = self._db
        if db is None:
            raise StateError(str(self.path), "not open")
        outcome = Commit()
        db.execute("BEGIN IMMEDIATE")
        try:
            if results:
                db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?)", results)
                self._rows += len(results)
                self._bytes += sum(len(data) for _, data in results)
            db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (last_seq,))
            if acks:
                db.executemany("INSERT OR REPLACE INTO acks VALUES (?, ?)", acks.items())
                self._delete_through(db, min(acks.values()))
            if self._rows > self.max_results or self._bytes > self.max_bytes:
                outcome = self._drop_oldest(db)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        return outcome

    def _delete_through(self, db: sqlite3.Connection, seq: int) -> int:
        if seq <= self._compacted_through:
            return 0
        count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM results "
                                 "WHERE seq <= ?", (seq,)).fetchone()
        if count:
            db.execute("DELETE FROM results WHERE seq <= ?", (seq,))
            self._rows -= count
            self._bytes -= size
        self._compacted_through = seq
        return int(count)

    def _drop_oldest(self, db: sqlite3.Connection) -> Commit:
        rows, size, through = self._rows, self._bytes, 0
        cursor = db.execute("SELECT seq, LENGTH(data) FROM results ORDER BY seq")
        for seq, length in cursor:
            if rows <= self.max_results and size <= self.max_bytes:
                break
            rows, size, through = rows - 1, size - length, seq
        cursor.close()
        dropped = self._rows - rows
        if through:
            db.execute("DELETE FROM results WHERE seq <= ?", (through,))
            self._rows, self._bytes = rows, size
        return Commit(dropped_through=through, dropped=dropped)

    @property
    def held(self) -> tuple[int, int]:
        """(results, bytes) in the file now."""
        return self._rows, self._bytes

    def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def close(self) -> None:
        """Close the database and release the lock (idempotent)."""
        self._close_db()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)


class DurableSpools:
    """Results committed to the state file before they reach the collectors' spools.

    `stage` (from `ResultFanout.publish`) queues a numbered result and, once per event-loop
    turn, starts a commit in the writer thread; when it is done the results are added to
    every spool. Acks are read from the spools at each commit, and at least every
    `ack_every_s` while nothing else is committed, so compaction follows acks.
    """

    def __init__(self, state: StateFile, spools: Mapping[str, Spool], *,
                 ack_every_s: float = 1.0) -> None:
        """`spools` maps each collector's address to its spool."""
        self.state = state
        self.spools = dict(spools)
        self.ack_every_s = ack_every_s
        self.last_seq = 0
        self.commits = 0
        self.write_failures = 0
        self.dropped = 0
        self._staged: list[pb.ProbeResult] = []
        self._scheduled = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-state")
        self._committing: asyncio.Task[None] | None = None
        self._acks_written: dict[str, int] = {}
        self._failed = False
        self._unwritten: list[tuple[int, bytes]] = []  # rows of commits that failed

    @property
    def held(self) -> tuple[int, int]:
        """(results, bytes) in the state file."""
        return self.state.held

    def restore(self, restored: Restored) -> int:
        """Queue every restored result for the spools that have not acknowledged it."""
        self.last_seq = restored.last_seq
        # Decoded once and shared by every spool, as `ResultFanout` shares a live result.
        results = [pb.ProbeResult.FromString(data) for _, data in restored.results]
        queued = 0
        for address, spool in self.spools.items():
            acked = restored.acked.get(address, 0)
            spool.ack(acked)
            spool.last_seq = max(spool.last_seq, acked)
            for result in results:
                if result.seq > acked:
                    spool.add(result)
                    queued += 1
        self._acks_written = {a: s.acked_seq for a, s in self.spools.items()}
        return queued

    def stage(self, result: pb.ProbeResult) -> None:
        """Queue a numbered result for the next commit (on this event-loop turn)."""
        self._staged.append(result)
        self.last_seq = result.seq
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_commit)

    def _start_commit(self) -> None:
        if self._committing is not None and not self._committing.done():
            return  # the running commit starts the next one when it ends
        self._scheduled = False
        self._committing = asyncio.get_running_loop().create_task(
            self._commit(), name="agent-state-commit")

    async def _commit(self) -> None:
        while True:
            batch, self._staged = self._staged, []
            acks = {a: s.acked_seq for a, s in self.spools.items()}
            if not batch and not self._unwritten and acks == self._acks_written:
                return
            rows = [*self._unwritten, *((r.seq, r.SerializeToString()) for r in batch)]
            outcome = await self._write(rows, acks)
            self.commits += 1
            for result in batch:
                for spool in self.spools.values():
                    spool.add(result)
            if outcome.dropped_through:
                self.dropped += outcome.dropped
                for spool in self.spools.values():
                    spool.drop_through(outcome.dropped_through)
            if not self._staged:
                self._scheduled = False
                return

    async def _write(self, rows: list[tuple[int, bytes]], acks: dict[str, int]) -> Commit:
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(
                self._writer, self.state.commit, rows, self.last_seq, acks)
        except Exception as exc:  # any failure: the results go on in memory
            # A full or failing disk must not stop the agent: its results are then lost
            # on a crash; said once per failure spell.
            if not self._failed:
                log.error("agent state write failed: results kept in memory only",  # noqa: TRY400
                          extra={"path": str(self.state.path), "error": str(exc)})
            self._failed = True
            self.write_failures += 1
            # Written with the next commit that works (bounded like the file itself).
            self._unwritten = rows[-self.state.max_results:]
            return Commit()
        if self._failed:
            log.info("agent state writes work again", extra={"path": str(self.state.path)})
        self._failed = False
        self._unwritten = []
        self._acks_written = acks
        return outcome

    async def run_acks(self) -> None:
        """Commit acks (compaction) at least every `ack_every_s` (runs until cancelled)."""
        while True:
            await asyncio.sleep(self.ack_every_s)
            if not self._scheduled and (self._committing is None or self._committing.done()):
                self._committing = asyncio.get_running_loop().create_task(
                    self._commit(), name="agent-state-commit")

    async def drain(self) -> None:
        """Commit whatever is staged, and the latest acks (at shutdown)."""
        for _ in range(10):  # bounded: each round commits what arrived during the last one
            task = self._committing
            if task is not None and not task.done():
                await task
                continue
            self._scheduled = False
            self._committing = asyncio.get_running_loop().create_task(
                self._commit(), name="agent-state-commit")
            await self._committing
            if not self._staged:
                return

    def close(self) -> None:
        """Stop the writer thread and close the file."""
        self._writer.shutdown(wait=True)
        self.state.close()
