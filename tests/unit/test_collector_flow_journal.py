"""The outage journal keeps a flow record's `step`, and opens journals written before it.

Records live in the journal as JSON (plus the columns the API filters on), so `step` needs
no schema change: a record written before the field existed reads as `step: null`, its
other fields intact, and the file keeps its schema version (a collector of the previous
release can still open it).
"""

from __future__ import annotations

import json
import sqlite3

from probenet.collector.journal import SCHEMA_VERSION, Journal
from probenet.collector.model import (
    OutageEvent,
    OutageKind,
    OutageRecord,
    OutageTransition,
    Scope,
)

T0 = 1_795_000_000.0


def flow_record(outage_id: str = "o1", *, step: str | None = "login") -> OutageRecord:
    return OutageRecord.probe_outage(
        outage_id, "social-login", service="social", scope=Scope.GLOBAL,
        regions=("eu", "us"), phase="validation", reason="status_mismatch", step=step,
        started_at=T0, detected_at=T0 + 4)


def test_a_records_step_round_trips_through_commits_and_events(tmp_path):
    path = tmp_path / "j.db"
    first = flow_record()
    moved = first.with_failure("connect", "connect_refused", "home")
    ended = moved.ended(T0 + 60)
    with Journal(path) as journal:
        journal.commit([OutageTransition(OutageEvent.OPENED, first, T0 + 4)])
        assert journal.open_outages() == [first]
        journal.commit([OutageTransition(OutageEvent.UPDATED, moved, T0 + 20)])
        journal.commit([OutageTransition(OutageEvent.RESOLVED, ended, T0 + 60)])
    with Journal(path) as reopened:
        assert reopened.outages() == [ended]
        assert [(event, record.step) for _, event, record in reopened.events("o1")] == [
            ("opened", "login"), ("updated", "home"), ("resolved", "home")]
        stored = json.loads(reopened.db.execute(
            "SELECT record FROM outages WHERE id = 'o1'").fetchone()[0])
    assert stored["step"] == "home"


def test_a_record_without_a_step_stores_null(tmp_path):
    plain = flow_record(step=None)
    with Journal(tmp_path / "j.db") as journal:
        journal.commit([OutageTransition(OutageEvent.OPENED, plain, T0 + 4)])
        [(text,)] = journal.db.execute("SELECT record FROM outages").fetchall()
        assert journal.open_outages() == [plain]
    assert json.loads(text)["step"] is None


def _strip_step(path, table: str) -> int:
    """Rewrite every record of `table` as a collector before `step` wrote it (no key)."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute(f"SELECT rowid, record FROM {table}").fetchall()
        for rowid, text in rows:
            data = json.loads(text)
            del data["step"]
            db.execute(f"UPDATE {table} SET record = ? WHERE rowid = ?",
                       (json.dumps(data, separators=(",", ":")), rowid))
        db.commit()
    finally:
        db.close()
    return len(rows)


def test_a_journal_written_before_step_existed_opens_without_loss(tmp_path):
    path = tmp_path / "old.db"
    open_one = flow_record("o1", step=None)
    resolved = OutageRecord.service_outage(
        "o2", "shop", probes=("web", "api"), scope=Scope.REGIONAL, regions=("eu",),
        regions_ever=("eu",), phase="tls", reason="tls_handshake", started_at=T0 - 600,
        detected_at=T0 - 590).ended(T0 - 100)
    with Journal(path) as journal:
        journal.commit([OutageTransition(OutageEvent.OPENED, open_one, T0 + 4),
                        OutageTransition(OutageEvent.OPENED, resolved, T0 - 590),
                        OutageTransition(OutageEvent.RESOLVED, resolved, T0 - 100)],
                       {"fra-1": (7, 42)})
    assert _strip_step(path, "outages") == 2
    assert _strip_step(path, "outage_events") == 3

    with Journal(path) as journal:
        assert journal.open_outages() == [open_one]
        assert journal.outages() == [open_one, resolved]
        assert [(seq, event) for seq, event, _ in journal.events()] == [
            (1, "opened"), (2, "opened"), (3, "resolved")]
        assert journal.watermarks() == {"fra-1": (7, 42)}
        # The old record gains a step in place when the outage moves on.
        stepped = open_one.with_failure("validation", "status_mismatch", "login")
        [written] = journal.commit([OutageTransition(OutageEvent.UPDATED, stepped, T0 + 9)])
        assert written.seq == 4
        assert journal.open_outages() == [stepped]
        version = journal.db.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION == 1  # no migration: older collectors still read it
    assert resolved.kind is OutageKind.SERVICE


def test_the_json_of_a_record_carries_step_and_reads_back():
    data = flow_record().to_json()
    assert data["step"] == "login"
    assert OutageRecord.from_json(data) == flow_record()
    # A record journaled before the field existed: no key, read as null.
    assert OutageRecord.from_json({k: v for k, v in data.items() if k != "step"}) == (
        flow_record(step=None))
