"""SQLite state of the node (WAL): the schema, transactions, and received instances grouped into series.

One database file holds everything (instances, series, jobs, sends); :func:`connect` creates or migrates it with
``PRAGMA user_version``. Every state change is one transaction (:func:`transaction`), so a crash leaves either the
state before or the state after. Jobs and sends are in :mod:`node.state.jobs`; this module owns the schema for both.

A series moves ``receiving -> complete -> exported`` (or ``failed``); a new instance re-opens it (``receiving``
again, its ``revision`` bumped), so a late instance produces a new export. Times are POSIX seconds (floats) given
by the caller, which keeps the logic testable without sleeping.

Threads: an ``sqlite3.Connection`` belongs to one thread unless opened with ``check_same_thread=False`` and
guarded by a lock; each worker should open its own connection (WAL lets readers and one writer run together).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from node.errors import InputError

log = logging.getLogger(__name__)

#: After an association that sent a series is released, the series becomes due once no instance of it has
#: arrived for this long (instead of the full quiet period).
HINT_GRACE_SECONDS = 2.0

_MIGRATIONS: tuple[str, ...] = (
    # 1: instances, series, jobs, sends.
    """
    CREATE TABLE series (
        series_uid TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('receiving', 'complete', 'exported', 'failed')),
        reason TEXT,
        first_received_at REAL NOT NULL,
        last_received_at REAL NOT NULL,
        hint_at REAL,
        revision INTEGER NOT NULL DEFAULT 1,
        export_version INTEGER,
        updated_at REAL NOT NULL
    );
    CREATE INDEX series_by_state ON series (state, last_received_at);
    CREATE TABLE instances (
        series_uid TEXT NOT NULL REFERENCES series (series_uid) ON DELETE CASCADE,
        sop_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (series_uid, sop_uid)
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        inbox_path TEXT NOT NULL,
        signature TEXT NOT NULL,
        item_kind TEXT NOT NULL,
        state TEXT NOT NULL,
        series_uid TEXT,
        seg_path TEXT,
        seg_sop_uid TEXT,
        reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (inbox_path, signature)
    );
    CREATE INDEX jobs_by_state ON jobs (state);
    CREATE TABLE sends (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        destination TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL,
        reason TEXT,
        updated_at REAL NOT NULL,
        UNIQUE (job_id, destination)
    );
    CREATE INDEX sends_due ON sends (state, next_at);
    """,
)

#: The schema version this code writes; a newer database is refused rather than misread.
SCHEMA_VERSION = len(_MIGRATIONS)


class SeriesState(str, Enum):
    """Where a received series is on its way to export."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    EXPORTED = "exported"
    FAILED = "failed"


@dataclass(frozen=True)
class SeriesRow:
    """One series as the index knows it.

    ``revision`` grows with every instance received; pass it back as ``if_revision`` to :func:`mark_series` so a
    series that changed while it was being exported is not marked done. ``export_version`` is the revision the
    last export was made from.
    """

    series_uid: str
    study_uid: str
    state: SeriesState
    reason: str | None
    first_received_at: float
    last_received_at: float
    hint_at: float | None
    revision: int
    export_version: int | None
    instance_count: int


def connect(path: Path, *, check_same_thread: bool = True, timeout: float = 30.0) -> sqlite3.Connection:
    """Open (creating or migrating) the state database at ``path``.

    Parameters
    ----------
    path
        The database file; its folder is created when missing.
    check_same_thread
        Pass False only when the caller serialises use of the connection itself (e.g. with a lock).
    timeout
        Seconds a write waits for another writer before failing with ``database is locked``.

    Returns
    -------
    sqlite3.Connection
        In autocommit mode (use :func:`transaction`), WAL journal, foreign keys on, rows as ``sqlite3.Row``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=check_same_thread)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed row survives power loss too (the C-STORE status promises the instance is kept).
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    with transaction(conn):
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise InputError(f"{path}: database schema version {version} is newer than this segnode understands "
                             f"({SCHEMA_VERSION}); upgrade segnode or point [paths] data elsewhere")
        for number in range(version, SCHEMA_VERSION):
            # executescript() would COMMIT first; run statement by statement to stay inside this transaction.
            for statement in _statements(_MIGRATIONS[number]):
                conn.execute(statement)
            log.info("%s: schema migrated to version %d", path, number + 1)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _statements(script: str) -> Iterator[str]:
    for statement in script.split(";"):
        if statement.strip():
            yield statement


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed when the block ends, rolled back when it raises.

    Starts with ``BEGIN IMMEDIATE`` so the write lock is taken up front (no deadlock upgrading a read). Nested use
    becomes a savepoint, so a helper can be called inside a caller's transaction.
    """
    if conn.in_transaction:
        conn.execute("SAVEPOINT nested")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK TO nested")
            conn.execute("RELEASE nested")
            raise
        conn.execute("RELEASE nested")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


_SERIES_SELECT = """
    SELECT s.*, (SELECT COUNT(*) FROM instances i WHERE i.series_uid = s.series_uid) AS instance_count
    FROM series s
"""


def _series_row(row: sqlite3.Row) -> SeriesRow:
    return SeriesRow(
        series_uid=row["series_uid"],
        study_uid=row["study_uid"],
        state=SeriesState(row["state"]),
        reason=row["reason"],
        first_received_at=row["first_received_at"],
        last_received_at=row["last_received_at"],
        hint_at=row["hint_at"],
        revision=row["revision"],
        export_version=row["export_version"],
        instance_count=row["instance_count"],
    )


def record_instance(conn: sqlite3.Connection, series_uid: str, study_uid: str, sop_uid: str, sop_class_uid: str,
                    path: Path, size: int, received_at: float) -> bool:
    """Index one stored instance (insert, or replace a re-sent one) and keep its series receiving.

    Returns
    -------
    bool
        True when the instance re-opened a series that was complete, exported or failed.
    """
    with transaction(conn):
        previous = conn.execute("SELECT state FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        if previous is None:
            conn.execute(
                "INSERT INTO series (series_uid, study_uid, state, first_received_at, last_received_at, updated_at)"
                " VALUES (?, ?, 'receiving', ?, ?, ?)",
                (series_uid, study_uid, received_at, received_at, received_at),
            )
        else:
            conn.execute(
                "UPDATE series SET state = 'receiving', reason = NULL, revision = revision + 1,"
                " last_received_at = MAX(last_received_at, ?), updated_at = ? WHERE series_uid = ?",
                (received_at, received_at, series_uid),
            )
        conn.execute(
            "INSERT INTO instances (series_uid, sop_uid, sop_class_uid, path, size, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (series_uid, sop_uid) DO UPDATE SET"
            " sop_class_uid = excluded.sop_class_uid, path = excluded.path, size = excluded.size,"
            " received_at = excluded.received_at",
            (series_uid, sop_uid, sop_class_uid, str(path), size, received_at),
        )
    reopened = previous is not None and previous["state"] != SeriesState.RECEIVING.value
    if reopened:
        log.info("series %s re-opened by instance %s (was %s)", series_uid, sop_uid, previous["state"])
    return reopened


def hint_series_complete(conn: sqlite3.Connection, series_uids: Iterable[str], now: float | None = None) -> int:
    """Note that an association that sent these series has been released at ``now`` (default: the clock).

    A hinted series becomes due :data:`HINT_GRACE_SECONDS` after the hint, but only while no instance of it arrived
    after the hint: an instance from another association voids the hint and the full quiet period applies again
    (until that association is released and hints in turn). Returns how many series were hinted.
    """
    uids = list(dict.fromkeys(series_uids))
    if not uids:
        return 0
    if now is None:
        now = time.time()
    with transaction(conn):
        hinted = 0
        for uid in uids:
            cursor = conn.execute(
                "UPDATE series SET hint_at = ? WHERE series_uid = ? AND state = 'receiving'", (now, uid))
            hinted += cursor.rowcount
    return hinted


def due_series(conn: sqlite3.Connection, now: float, quiet_seconds: float,
               grace_seconds: float = HINT_GRACE_SECONDS) -> list[SeriesRow]:
    """Series still receiving whose last instance is older than the quiet period, or hinted and quiet since.

    Oldest first. A series is due after a hint only when the hint came after its last instance and at least
    ``grace_seconds`` ago, i.e. no instance arrived for the grace period after the sending association ended.
    """
    rows = conn.execute(
        _SERIES_SELECT + " WHERE s.state = 'receiving' AND (s.last_received_at <= ? OR"
        " (s.hint_at IS NOT NULL AND s.hint_at >= s.last_received_at AND s.hint_at <= ?))"
        " ORDER BY s.last_received_at",
        (now - quiet_seconds, now - grace_seconds),
    ).fetchall()
    return [_series_row(row) for row in rows]


def mark_series(conn: sqlite3.Connection, series_uid: str, state: SeriesState | str, reason: str | None = None,
                export_version: int | None = None, *, if_revision: int | None = None, now: float | None = None
                ) -> bool:
    """Move a series to ``state`` (one transaction).

    Parameters
    ----------
    state
        A :class:`SeriesState` or its value.
    reason
        Why (for ``failed``); cleared when None.
    export_version
        For ``exported``: the revision exported; defaults to the series' current revision.
    if_revision
        Apply only if the series' revision is still this one (no instance arrived since it was read); the
        completion worker should always pass ``SeriesRow.revision``.
    now
        Update time (defaults to the current time).

    Returns
    -------
    bool
        False when ``if_revision`` no longer matches (the series stays as it is, typically re-opened).

    Raises
    ------
    InputError
        The series is not known.
    """
    state = SeriesState(state)
    with transaction(conn):
        row = conn.execute("SELECT revision, last_received_at FROM series WHERE series_uid = ?",
                           (series_uid,)).fetchone()
        if row is None:
            raise InputError(f"series {series_uid} is not known to this node; check the UID with `segnode status`")
        if if_revision is not None and row["revision"] != if_revision:
            log.info("series %s changed while being processed (revision %d -> %d); left %s", series_uid,
                     if_revision, row["revision"], "receiving")
            return False
        if state is SeriesState.EXPORTED and export_version is None:
            export_version = row["revision"]
        conn.execute(
            "UPDATE series SET state = ?, reason = ?, export_version = COALESCE(?, export_version),"
            " hint_at = CASE WHEN ? = 'receiving' THEN hint_at ELSE NULL END, updated_at = ?"
            " WHERE series_uid = ?",
            (state.value, reason, export_version, state.value,
             time.time() if now is None else now, series_uid),
        )
    return True


def get_series(conn: sqlite3.Connection, series_uid: str) -> SeriesRow | None:
    """One series, or None when unknown."""
    row = conn.execute(_SERIES_SELECT + " WHERE s.series_uid = ?", (series_uid,)).fetchone()
    return None if row is None else _series_row(row)


def series_instances(conn: sqlite3.Connection, series_uid: str) -> list[Path]:
    """The stored files of a series, sorted by path (empty when the series is unknown)."""
    rows = conn.execute("SELECT path FROM instances WHERE series_uid = ? ORDER BY path", (series_uid,)).fetchall()
    return [Path(row["path"]) for row in rows]


def all_series(conn: sqlite3.Connection, state: SeriesState | str | None = None, limit: int | None = None
               ) -> list[SeriesRow]:
    """Known series, most recently received first, optionally only those in ``state``."""
    query = _SERIES_SELECT
    params: list[object] = []
    if state is not None:
        query += " WHERE s.state = ?"
        params.append(SeriesState(state).value)
    query += " ORDER BY s.last_received_at DESC, s.series_uid"
    if limit is not None:
        query += " LIMIT ?"
        params.append(int(limit))
    return [_series_row(row) for row in conn.execute(query, params).fetchall()]


def series_counts(conn: sqlite3.Connection) -> dict[SeriesState, int]:
    """How many series are in each state (every state present, zero when none), for ``segnode status``."""
    counts = dict.fromkeys(SeriesState, 0)
    for row in conn.execute("SELECT state, COUNT(*) AS n FROM series GROUP BY state"):
        counts[SeriesState(row["state"])] = row["n"]
    return counts
