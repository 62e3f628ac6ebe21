"""Tests of node/db.py: schema, transactions, and the series life cycle (quiet period, hints, re-opening)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from node.errors import InputError
from node.state import sqlite as db
from node.state.sqlite import SeriesState

STUDY = "1.2.826.0.1.3680043.8.498.9"
S1 = "1.2.826.0.1.3680043.8.498.1"
S2 = "1.2.826.0.1.3680043.8.498.2"
CT = "1.2.840.10008.5.1.4.1.1.2"
QUIET = 30.0


def add(conn: sqlite3.Connection, series: str, sop: str, at: float, size: int = 100) -> bool:
    return db.record_instance(conn, series, STUDY, sop, CT, Path(f"/store/{series}/{sop}.dcm"), size, at)


def state_of(conn: sqlite3.Connection, series: str) -> SeriesState:
    row = db.get_series(conn, series)
    assert row is not None
    return row.state


def test_connect_sets_wal_foreign_keys_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.sqlite3"
    conn = db.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        add(conn, S1, "1.1", 10.0)
    finally:
        conn.close()
    again = db.connect(path)  # reopening migrates nothing and keeps the data
    try:
        assert [row.series_uid for row in db.all_series(again)] == [S1]
    finally:
        again.close()


def test_newer_schema_is_refused_not_misread(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    db.connect(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {db.SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(InputError, match="newer than this segnode understands"):
        db.connect(path)


def test_transaction_rolls_back_on_error_and_nests(conn: sqlite3.Connection) -> None:
    with pytest.raises(RuntimeError), db.transaction(conn):
        add(conn, S1, "1.1", 10.0)  # a nested transaction (savepoint) inside the outer one
        raise RuntimeError("crash before commit")
    assert db.all_series(conn) == []
    assert not conn.in_transaction
    with db.transaction(conn):
        add(conn, S1, "1.1", 10.0)
        with pytest.raises(RuntimeError), db.transaction(conn):
            add(conn, S2, "2.1", 11.0)
            raise RuntimeError("inner failure")
    assert [row.series_uid for row in db.all_series(conn)] == [S1]


def test_instances_group_into_a_receiving_series(conn: sqlite3.Connection) -> None:
    assert add(conn, S1, "1.1", 10.0) is False
    add(conn, S1, "1.2", 12.0)
    add(conn, S2, "2.1", 11.0)
    row = db.get_series(conn, S1)
    assert row is not None
    assert (row.state, row.study_uid, row.instance_count) == (SeriesState.RECEIVING, STUDY, 2)
    assert (row.first_received_at, row.last_received_at) == (10.0, 12.0)
    assert db.series_instances(conn, S1) == [Path(f"/store/{S1}/1.1.dcm"), Path(f"/store/{S1}/1.2.dcm")]
    assert db.series_instances(conn, "9.9") == []
    assert db.get_series(conn, "9.9") is None
    assert [r.series_uid for r in db.all_series(conn)] == [S1, S2]  # most recent first


def test_resent_instance_is_replaced_not_counted_twice(conn: sqlite3.Connection) -> None:
    add(conn, S1, "1.1", 10.0, size=100)
    add(conn, S1, "1.1", 20.0, size=250)
    row = db.get_series(conn, S1)
    assert row is not None and row.instance_count == 1 and row.last_received_at == 20.0
    size = conn.execute("SELECT size FROM instances WHERE sop_uid = '1.1'").fetchone()[0]
    assert size == 250


def test_series_is_due_only_after_the_quiet_period(conn: sqlite3.Connection) -> None:
    add(conn, S1, "1.1", 100.0)
    add(conn, S2, "2.1", 110.0)
    assert db.due_series(conn, 100.0 + QUIET - 0.5, QUIET) == []
    assert [r.series_uid for r in db.due_series(conn, 100.0 + QUIET, QUIET)] == [S1]
    assert [r.series_uid for r in db.due_series(conn, 200.0, QUIET)] == [S1, S2]  # oldest first
    assert db.mark_series(conn, S1, SeriesState.COMPLETE)
    assert [r.series_uid for r in db.due_series(conn, 200.0, QUIET)] == [S2]


def test_late_instance_reopens_an_exported_series(conn: sqlite3.Connection) -> None:
    add(conn, S1, "1.1", 100.0)
    due = db.due_series(conn, 200.0, QUIET)[0]
    assert db.mark_series(conn, S1, "complete", if_revision=due.revision)
    assert db.mark_series(conn, S1, SeriesState.EXPORTED, if_revision=due.revision)
    exported = db.get_series(conn, S1)
    assert exported is not None and exported.export_version == due.revision
    assert add(conn, S1, "1.2", 300.0) is True
    reopened = db.get_series(conn, S1)
    assert reopened is not None
    assert reopened.state is SeriesState.RECEIVING and reopened.last_received_at == 300.0
    assert reopened.revision > exported.revision and reopened.instance_count == 2
    assert db.due_series(conn, 300.0 + QUIET - 1, QUIET) == []
    assert [r.series_uid for r in db.due_series(conn, 300.0 + QUIET, QUIET)] == [S1]


def test_series_changed_during_export_is_not_marked_done(conn: sqlite3.Connection) -> None:
    add(conn, S1, "1.1", 100.0)
    due = db.due_series(conn, 200.0, QUIET)[0]
    add(conn, S1, "1.2", 201.0)  # arrives while the export runs
    assert db.mark_series(conn, S1, SeriesState.EXPORTED, if_revision=due.revision) is False
    assert state_of(conn, S1) is SeriesState.RECEIVING


def test_failed_series_keeps_its_reason_and_unknown_series_is_an_error(conn: sqlite3.Connection) -> None:
    add(conn, S1, "1.1", 100.0)
    db.mark_series(conn, S1, SeriesState.FAILED, reason="slices are not parallel")
    row = db.get_series(conn, S1)
    assert row is not None and (row.state, row.reason) == (SeriesState.FAILED, "slices are not parallel")
    assert [r.series_uid for r in db.all_series(conn, state="failed")] == [S1]
    assert db.series_counts(conn) == {SeriesState.RECEIVING: 0, SeriesState.COMPLETE: 0,
                                      SeriesState.EXPORTED: 0, SeriesState.FAILED: 1}
    with pytest.raises(InputError, match="not known"):
        db.mark_series(conn, "1.2.3", SeriesState.COMPLETE)
    with pytest.raises(ValueError):
        db.mark_series(conn, S1, "finished")


def test_release_hint_completes_after_the_grace_period(conn: sqlite3.Connection) -> None:
    add(conn, S1, "1.1", 100.0)
    add(conn, S2, "2.1", 100.0)
    assert db.hint_series_complete(conn, [S1], now=100.5) == 1
    grace = db.HINT_GRACE_SECONDS
    assert db.due_series(conn, 100.5 + grace - 0.1, QUIET) == []
    assert [r.series_uid for r in db.due_series(conn, 100.5 + grace, QUIET)] == [S1]


def test_instance_after_the_hint_voids_it(conn: sqlite3.Connection) -> None:
    """A second association still sending the series: the first one's release must not complete it."""
    add(conn, S1, "1.1", 100.0)
    db.hint_series_complete(conn, [S1], now=100.5)
    add(conn, S1, "1.2", 101.0)  # from the other association
    assert db.due_series(conn, 110.0, QUIET) == []
    assert [r.series_uid for r in db.due_series(conn, 101.0 + QUIET, QUIET)] == [S1]
    db.hint_series_complete(conn, [S1], now=102.0)  # the other association is released in turn
    assert [r.series_uid for r in db.due_series(conn, 102.0 + db.HINT_GRACE_SECONDS, QUIET)] == [S1]


def test_hint_ignores_series_that_are_not_receiving(conn: sqlite3.Connection) -> None:
    add(conn, S1, "1.1", 100.0)
    db.mark_series(conn, S1, SeriesState.EXPORTED)
    assert db.hint_series_complete(conn, [S1, "9.9"], now=101.0) == 0
    assert db.hint_series_complete(conn, [], now=101.0) == 0


def test_connections_in_several_threads_record_without_losing_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    db.connect(path).close()
    errors: list[BaseException] = []

    def writer(series: str) -> None:
        conn = db.connect(path)
        try:
            for i in range(20):
                add(conn, series, f"{series}.{i}", float(i))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(uid,)) for uid in (S1, S2, "1.2.3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    conn = db.connect(path)
    try:
        assert sorted(row.instance_count for row in db.all_series(conn)) == [20, 20, 20]
    finally:
        conn.close()
