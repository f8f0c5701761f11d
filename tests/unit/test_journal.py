"""The SQLite outage journal on real files: commits, history, watermarks, schema guard."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sqlite3

import pytest

from probenet.collector.errors import JournalError
from probenet.collector.journal import SCHEMA_VERSION, Journal, TransitionCommitter
from probenet.collector.model import (
    OutageEvent,
    OutageKind,
    OutageRecord,
    OutageTransition,
    RegionVerdict,
    Scope,
    TargetChange,
    TargetState,
    TargetView,
)

T0 = 1_795_000_000.0


def record(outage_id: str = "o1", *, probe: str = "web", started: float = T0,
           ended: float | None = None, scope: Scope = Scope.REGIONAL) -> OutageRecord:
    return OutageRecord(
        id=outage_id, kind=OutageKind.PROBE, probe=probe, service="meta", region=None,
        probes=(), scope=scope, peak_scope=scope, regions=("eu",), regions_ever=("eu",),
        phase="tls", reason="tls_handshake", started_at=started, detected_at=started + 3,
        ended_at=ended)


def opened(rec: OutageRecord, at: float | None = None) -> OutageTransition:
    return OutageTransition(OutageEvent.OPENED, rec, at or rec.detected_at)


def test_commit_numbers_transitions_and_updates_records_in_place(tmp_path):
    view = TargetView("web", "https://web/", "meta", "http", TargetState.REGIONAL_OUTAGE,
                      {"eu": RegionVerdict.DOWN})
    with Journal(tmp_path / "j.db") as journal:
        first = record()
        out = journal.commit([opened(first), TargetChange(view, T0 + 3)],
                             {"fra-1": (7, 42)})
        assert [j.seq for j in out] == [1, 0]  # TargetChange is not journaled
        assert out[1].transition.view is view
        wider = dataclasses.replace(first, scope=Scope.GLOBAL, peak_scope=Scope.GLOBAL,
                                    regions=("eu", "us"), regions_ever=("eu", "us"))
        [changed] = journal.commit([OutageTransition(OutageEvent.SCOPE_CHANGED, wider, T0 + 9)])
        assert changed.seq == 2
        assert journal.open_outages() == [wider]
        assert journal.outages() == [wider]
        assert journal.watermarks() == {"fra-1": (7, 42)}
        assert [(seq, event) for seq, event, _ in journal.events("o1")] == [
            (1, "opened"), (2, "scope_changed")]


def test_history_filters_and_orders_newest_first(tmp_path):
    with Journal(tmp_path / "j.db") as journal:
        old = record("old", started=T0, ended=T0 + 60)
        mid = record("mid", started=T0 + 100, ended=T0 + 200)
        now = record("now", started=T0 + 300)
        for rec in (old, mid, now):
            journal.commit([opened(rec)])
        assert [r.id for r in journal.outages()] == ["now", "mid", "old"]
        assert [r.id for r in journal.outages(active=True)] == ["now"]
        assert [r.id for r in journal.outages(active=False)] == ["mid", "old"]
        assert [r.id for r in journal.outages(limit=1)] == ["now"]
        assert [r.id for r in journal.outages(since=T0 + 150)] == ["now", "mid"]
        assert [r.id for r in journal.open_outages()] == ["now"]


def test_event_seq_keeps_increasing_across_reopen(tmp_path):
    path = tmp_path / "j.db"
    with Journal(path) as journal:
        seqs = [j.seq for j in journal.commit([opened(record("a")), opened(record("b"))])]
    with Journal(path) as journal:
        [later] = journal.commit([opened(record("c"))])
        assert journal.watermarks() == {}
    assert seqs == [1, 2]
    assert later.seq == 3


def test_watermarks_flush_and_overwrite(tmp_path):
    epoch = 1_795_000_000_000_000_000  # unix ns: above 2**60, still exact
    with Journal(tmp_path / "j.db") as journal:
        journal.flush_watermarks({"a": (epoch, 10), "b": (1, 2)})
        journal.flush_watermarks({"a": (epoch + 1, 3)})
        journal.flush_watermarks({})
        assert journal.watermarks() == {"a": (epoch + 1, 3), "b": (1, 2)}
        journal.flush_watermarks({"huge": (2**64 - 1, 2**64 - 1)})  # uint64 on the wire
        assert journal.watermarks()["huge"] == (2**64 - 1, 2**64 - 1)


def test_a_failed_commit_writes_nothing(tmp_path):
    with Journal(tmp_path / "j.db") as journal:
        journal.commit([opened(record("a"))])
        journal.db.execute("CREATE TRIGGER boom BEFORE INSERT ON outage_events "
                           "WHEN NEW.outage_id = 'bad' BEGIN SELECT RAISE(ABORT, 'boom'); END")
        with pytest.raises(JournalError, match="boom"):
            journal.commit([opened(record("b")), opened(record("bad"))], {"x": (1, 1)})
        assert [r.id for r in journal.outages()] == ["a"]
        assert journal.watermarks() == {}


def test_schema_guard_refuses_newer_and_foreign_files(tmp_path):
    newer = tmp_path / "newer.db"
    with Journal(newer):
        pass
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
               (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="newer probenet"):
        Journal(newer).open()

    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE photos (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="not a probenet journal"):
        Journal(foreign).open()

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(JournalError, match="not a usable SQLite journal"):
        Journal(garbage).open()


def test_wal_mode_and_synchronous_normal(tmp_path):
    with Journal(tmp_path / "j.db") as journal:
        assert journal.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert journal.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        with pytest.raises(JournalError, match="already open"):
            journal.open()
    journal.close()  # twice: harmless
    with pytest.raises(JournalError, match="not open"):
        journal.commit([])


def _commit_then_die(path: str) -> None:
    journal = Journal(path)
    journal.open()
    journal.commit([opened(record("survivor"))], {"fra-1": (1, 5)})
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_commit_survives_kill_9(tmp_path):
    path = str(tmp_path / "j.db")
    child = multiprocessing.get_context("spawn").Process(target=_commit_then_die, args=(path,))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    with Journal(path) as journal:
        assert [r.id for r in journal.open_outages()] == ["survivor"]
        assert journal.watermarks() == {"fra-1": (1, 5)}


class _FakeClassifier:
    """Only what the committer reads: a queue of transitions (and no health changes)."""

    def __init__(self, transitions):
        self.transitions = list(transitions)

    def take_transitions(self):
        out, self.transitions = self.transitions, []
        return out

    def take_health_changes(self):
        return []


class _Sink:
    def __init__(self, fail: bool = False):
        self.items = []
        self.fail = fail

    def submit(self, items):
        if self.fail:
            raise RuntimeError("sink broke")
        self.items.extend(items)


def test_committer_journals_before_it_publishes_and_survives_a_broken_sink(tmp_path):
    with Journal(tmp_path / "j.db") as journal:
        good = _Sink()
        classifier = _FakeClassifier([opened(record("a"))])
        committer = TransitionCommitter(classifier, journal, sinks=[_Sink(fail=True), good])
        assert committer.commit() != []
        assert [(j.seq, j.transition.record.id) for j in good.items] == [(1, "a")]
        assert [r.id for r in journal.open_outages()] == ["a"]
        assert committer.commit() == []  # nothing new: no transaction, nothing published
        assert len(good.items) == 1
