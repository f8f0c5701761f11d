"""Uptime reports: the pure computation on a hand-built history, and the journal's history."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest

from probenet.collector.history import RunPeriod, StateRow, read_history, read_runs
from probenet.collector.journal import ALIVE_EVERY_S, RETENTION_DAYS, Journal
from probenet.collector.model import RegionVerdict, TargetChange, TargetState, TargetView
from probenet.collector.uptime import compute_uptime, report_range


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


NOW = ts("2026-12-06T12:00:00")
UP3 = {"eu": "up", "us": "up", "ap": "up"}


def row(run: int, at: str, state: str, regions: dict[str, str], *, probe: str = "web",
        service: str | None = "shop") -> StateRow:
    return StateRow(run, probe, service, ts(at), state, regions)


# Run 1 from Dec 3 19:00 to a clean stop on Dec 5 06:00; the collector is down until 08:00;
# run 2 since then, still running. Known outages: a regional one (eu) on Dec 4 10:00-10:30,
# a global one across midnight Dec 4 23:50 - Dec 5 00:20; a maintenance window on Dec 5
# 20:00-21:00; too few regions reporting on Dec 6 03:00-04:00.
RUNS = (RunPeriod(1, ts("2026-12-03T19:00:00"), ts("2026-12-05T06:00:00")),
        RunPeriod(2, ts("2026-12-05T08:00:00"), None))
ROWS = (
    row(1, "2026-12-03T20:00:00", "up", UP3),
    row(1, "2026-12-04T10:00:00", "regional_outage", {**UP3, "eu": "down"}),
    row(1, "2026-12-04T10:30:00", "up", UP3),
    row(1, "2026-12-04T23:50:00", "global_outage", {"eu": "down", "us": "down", "ap": "down"}),
    row(1, "2026-12-05T00:20:00", "up", UP3),
    row(2, "2026-12-05T08:05:00", "up", UP3),
    row(2, "2026-12-05T20:00:00", "maintenance",
        {"eu": "maintenance", "us": "maintenance", "ap": "maintenance"}),
    row(2, "2026-12-05T21:00:00", "up", UP3),
    row(2, "2026-12-06T03:00:00", "unknown", {"eu": "up", "us": "unknown", "ap": "unknown"}),
    row(2, "2026-12-06T04:00:00", "up", UP3),
)


def test_seconds_and_availability_of_known_outages_over_three_days():
    report = compute_uptime(ROWS, RUNS, probes=["web"], days=3, now=NOW, probe="web").to_json()
    assert report["from"] == "2026-12-04T00:00:00.000Z"
    assert report["to"] == "2026-12-06T12:00:00.000Z"
    assert (report["probe"], report["service"], report["probes"], report["days"]) == (
        "web", None, ["web"], 3)
    assert report["seconds"] == {
        "total": 216_000.0, "up": 197_700.0, "regional_outage": 1800.0,
        "global_outage": 1800.0, "maintenance": 3600.0,
        # 06:00-08:05 on Dec 5 (collector down, then no view yet) + 03:00-04:00 on Dec 6
        "unknown": 7500.0 + 3600.0}
    known = 201_300.0
    # The regional outage (1 region of 3 down) costs a third of its time.
    assert report["availability"] == round((197_700 + 1800 * 2 / 3) / known, 6)
    assert report["availability_strict"] == round(197_700 / known, 6)
    assert report["availability_global"] == round((197_700 + 1800) / known, 6)


def test_per_region_seconds():
    regions = compute_uptime(ROWS, RUNS, probes=["web"], days=3, now=NOW).to_json()["regions"]
    assert regions["eu"]["seconds"] == {"up": 201_300.0, "down": 3600.0,
                                        "maintenance": 3600.0, "unknown": 7500.0}
    assert regions["eu"]["availability"] == round(201_300 / 204_900, 6)
    for name in ("us", "ap"):
        assert regions[name]["seconds"] == {"up": 199_500.0, "down": 1800.0,
                                            "maintenance": 3600.0, "unknown": 11_100.0}


def test_daily_buckets_split_an_outage_across_midnight_and_end_with_a_partial_day():
    daily = compute_uptime(ROWS, RUNS, probes=["web"], days=3, now=NOW).to_json()["daily"]
    assert [day["date"] for day in daily] == ["2026-12-04", "2026-12-05", "2026-12-06"]
    assert daily[0]["seconds"] == {"total": 86_400.0, "up": 84_000.0, "regional_outage": 1800.0,
                                   "global_outage": 600.0, "maintenance": 0.0, "unknown": 0.0}
    assert daily[0]["availability"] == round((84_000 + 1200) / 86_400, 6)
    assert daily[1]["seconds"] == {"total": 86_400.0, "up": 74_100.0, "regional_outage": 0.0,
                                   "global_outage": 1200.0, "maintenance": 3600.0,
                                   "unknown": 7500.0}
    assert daily[1]["availability"] == round(74_100 / 75_300, 6)
    assert daily[2]["seconds"] == {"total": 43_200.0, "up": 39_600.0, "regional_outage": 0.0,
                                   "global_outage": 0.0, "maintenance": 0.0, "unknown": 3600.0}
    assert daily[2]["availability"] == 1.0


def test_no_known_time_gives_null_availability_and_unknown_seconds():
    report = compute_uptime([], [], probes=["ghost"], days=2, now=NOW).to_json()
    assert report["availability"] is None
    assert report["availability_strict"] is None
    assert report["seconds"]["unknown"] == report["seconds"]["total"] == 86_400 + 43_200
    assert report["regions"] == {}
    assert [day["availability"] for day in report["daily"]] == [None, None]


def test_rows_of_a_run_not_given_count_as_unknown():
    # Run 1 pruned or unknown: its rows say nothing.
    report = compute_uptime(ROWS, RUNS[1:], probes=["web"], days=3, now=NOW).to_json()
    assert report["daily"][0]["seconds"]["unknown"] == 86_400.0


def test_a_crashed_run_ends_its_last_state_at_its_end():
    runs = (RunPeriod(1, ts("2026-12-06T00:00:00"), ts("2026-12-06T01:00:00")),)
    rows = (row(1, "2026-12-06T00:30:00", "global_outage", {"eu": "down", "us": "down"}),)
    seconds = compute_uptime(rows, runs, probes=["web"], days=1, now=NOW).to_json()["seconds"]
    assert seconds["global_outage"] == 1800.0
    assert seconds["unknown"] == 43_200.0 - 1800.0


def test_a_service_takes_the_worst_of_its_probes():
    runs = (RunPeriod(1, ts("2026-12-06T00:00:00"), None),)
    rows = (
        row(1, "2026-12-06T00:00:00", "up", {"eu": "up", "us": "up"}, probe="web"),
        row(1, "2026-12-06T00:00:00", "up", {"eu": "up", "us": "up"}, probe="api"),
        row(1, "2026-12-06T01:00:00", "regional_outage", {"eu": "down", "us": "up"},
            probe="api"),
        row(1, "2026-12-06T02:00:00", "up", {"eu": "up", "us": "up"}, probe="api"),
        row(1, "2026-12-06T05:00:00", "global_outage", {"eu": "down", "us": "down"},
            probe="web"),
        row(1, "2026-12-06T05:10:00", "up", {"eu": "up", "us": "up"}, probe="web"),
        # One probe unknown while the other is up: the service counts as up.
        row(1, "2026-12-06T06:00:00", "unknown", {"eu": "unknown", "us": "unknown"},
            probe="web"),
        row(1, "2026-12-06T07:00:00", "up", {"eu": "up", "us": "up"}, probe="web"),
        row(1, "2026-12-06T00:00:00", "global_outage", {"eu": "down"}, probe="other"),
    )
    report = compute_uptime(rows, runs, probes=["web", "api"], days=1, now=NOW,
                            service="shop").to_json()
    assert report["probes"] == ["api", "web"]
    assert report["service"] == "shop"
    assert report["seconds"] == {"total": 43_200.0, "up": 43_200.0 - 3600 - 600,
                                 "regional_outage": 3600.0, "global_outage": 600.0,
                                 "maintenance": 0.0, "unknown": 0.0}
    assert report["regions"]["eu"]["seconds"]["down"] == 4200.0
    assert report["regions"]["us"]["seconds"]["down"] == 600.0
    assert report["availability"] == round((43_200 - 4200 + 1800) / 43_200, 6)


@pytest.mark.parametrize("days", [0, 401, -1])
def test_days_out_of_range_are_refused(days):
    with pytest.raises(ValueError, match="days must be from 1 to 400"):
        compute_uptime([], [], probes=["web"], days=days, now=NOW)


def test_the_range_starts_at_midnight_utc():
    assert report_range(1, NOW) == (ts("2026-12-06T00:00:00"), NOW)
    assert report_range(90, NOW)[0] == ts("2026-09-08T00:00:00")


# -- the journal's history --------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def change(at: float, state: TargetState, **regions: RegionVerdict) -> TargetChange:
    return TargetChange(TargetView("web", "https://web/", "shop", "http", state, regions), at)


def test_the_journal_keeps_changes_of_state_and_the_runs(tmp_path):
    path = tmp_path / "j.db"
    clock = Clock(ts("2026-12-06T00:00:00"))
    up, down = RegionVerdict.UP, RegionVerdict.DOWN
    with Journal(path, clock=clock) as journal:
        journal.commit([change(clock.now, TargetState.UP, eu=up, us=up)])
        clock.now += 60
        # Same state and verdicts again (a step or flapping change): no new row.
        journal.commit([change(clock.now, TargetState.UP, eu=up, us=up)])
        clock.now += 60
        journal.commit([change(clock.now, TargetState.REGIONAL_OUTAGE, eu=down, us=up)])
        clock.now += 600
        journal.keep_alive()
        journal.commit([change(clock.now, TargetState.UP, eu=up, us=up)])
        first_run = journal.run_id
        clock.now += 60
    with Journal(path) as reader:
        rows = reader.db.execute(
            "SELECT run, probe, service, state, regions FROM target_states ORDER BY id").fetchall()
        runs = reader.db.execute(
            "SELECT id, started_at, alive_at, ended_at FROM collector_runs").fetchall()
    assert rows == [
        (first_run, "web", "shop", "up", '{"eu":"up","us":"up"}'),
        (first_run, "web", "shop", "regional_outage", '{"eu":"down","us":"up"}'),
        (first_run, "web", "shop", "up", '{"eu":"up","us":"up"}')]
    start = ts("2026-12-06T00:00:00")
    assert runs == [(first_run, start, start + 780, start + 780)]
    # A restart writes the probe's view again under the new run, even when unchanged.
    with Journal(path, clock=clock) as journal:
        journal.commit([change(clock.now, TargetState.UP, eu=up, us=up)])
        assert journal.run_id != first_run
    with Journal(path) as reader:
        assert reader.db.execute("SELECT count(*) FROM target_states").fetchone() == (4,)


def test_a_crashed_run_counts_up_to_its_last_keep_alive(tmp_path):
    path = tmp_path / "j.db"
    start = ts("2026-12-06T00:00:00")
    clock = Clock(start)
    journal = Journal(path, clock=clock)
    journal.open()
    journal.commit([change(start, TargetState.UP, eu=RegionVerdict.UP)])
    for _ in range(10):
        clock.now += ALIVE_EVERY_S
        journal.keep_alive()
    # A crash: the connection goes away without the run's end being written.
    journal.run_id = None
    journal.close()
    with Journal(path) as reader:
        later = start + 3600
        [run] = read_runs(reader, start - 10, later, later)
        assert run.ended_at == start + 10 * ALIVE_EVERY_S
        # Seen a moment after its last keep-alive, the newest run still counts as running.
        [live] = read_runs(reader, start - 10, later, start + 10 * ALIVE_EVERY_S + 1)
        assert live.ended_at is None
        history = read_history(reader, ["web"], start, later, later)
    report = compute_uptime(history.rows, history.runs, probes=["web"], days=1,
                            now=later).to_json()
    assert report["seconds"]["up"] == 10 * ALIVE_EVERY_S


def test_an_existing_journal_gets_the_history_tables_on_open(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '1');"
        "CREATE TABLE outages (id TEXT PRIMARY KEY, kind TEXT NOT NULL, probe TEXT,"
        " service TEXT, region TEXT, scope TEXT NOT NULL, started_at REAL NOT NULL,"
        " detected_at REAL NOT NULL, ended_at REAL, record TEXT NOT NULL);"
        "CREATE TABLE outage_events (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " outage_id TEXT NOT NULL, event TEXT NOT NULL, at REAL NOT NULL,"
        " record TEXT NOT NULL);"
        "CREATE TABLE agent_watermarks (agent TEXT PRIMARY KEY, epoch TEXT NOT NULL,"
        " seq TEXT NOT NULL);")
    db.close()
    with Journal(path) as journal:
        journal.commit([change(NOW, TargetState.UP, eu=RegionVerdict.UP)])
        assert journal.db.execute("SELECT count(*) FROM target_states").fetchone() == (1,)


def test_history_older_than_the_retention_is_pruned_keeping_the_state_at_the_cutoff(tmp_path):
    path = tmp_path / "j.db"
    old = NOW - (RETENTION_DAYS + 30) * 86_400
    clock = Clock(old)
    with Journal(path, clock=clock) as journal:  # a run that ended long ago
        journal.commit([change(old, TargetState.UP, eu=RegionVerdict.UP)])
    clock.now = NOW - (RETENTION_DAYS + 20) * 86_400
    with Journal(path, clock=clock) as journal:  # a run still going at the cutoff
        journal.commit([change(clock.now, TargetState.UP, eu=RegionVerdict.UP)])
        clock.now += 86_400
        journal.commit([change(clock.now, TargetState.GLOBAL_OUTAGE, eu=RegionVerdict.DOWN)])
        clock.now += 86_400
        journal.commit([change(clock.now, TargetState.UP, eu=RegionVerdict.UP)])
        kept = clock.now
        clock.now = NOW
        journal.keep_alive()  # a day later than the last prune: prunes now
        states = journal.db.execute("SELECT at, state FROM target_states").fetchall()
        runs = journal.db.execute("SELECT count(*) FROM collector_runs").fetchone()
    assert states == [(kept, "up")]
    assert runs == (1,)
