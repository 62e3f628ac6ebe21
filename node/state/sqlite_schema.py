"""The SQLite back end's foundation: schema and migrations, connections, transactions, error translation.

One database file holds everything (instances, series, jobs, sends) in WAL mode; :func:`connect` creates or
migrates it with ``PRAGMA user_version``. Every state change is one transaction (:func:`transaction`), so a crash
leaves either the state before or the state after. :class:`SqliteDatabase` hands out pooled connections to any
thread and turns ``sqlite3`` exceptions into the project's own (:func:`translated`), so none leaks out of
:mod:`node.state`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from node.errors import InputError, StateUnavailableError
from node.state.model import CLAIM_LEASE_SECONDS, StateError
from node.state.paths import StoredPaths

log = logging.getLogger(__name__)

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
    # 2: claims with a lease (several nodes on one database), attempts of jobs that wait to be built again.
    """
    ALTER TABLE series ADD COLUMN claimed_by TEXT;
    ALTER TABLE series ADD COLUMN lease_until REAL;
    ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN next_at REAL;
    ALTER TABLE jobs ADD COLUMN claimed_by TEXT;
    ALTER TABLE jobs ADD COLUMN lease_until REAL;
    ALTER TABLE sends ADD COLUMN claimed_by TEXT;
    ALTER TABLE sends ADD COLUMN lease_until REAL;
    CREATE INDEX jobs_due ON jobs (state, next_at);
    """,
    # 3: how a job's input was matched to its series (name, sidecar, geometry), for the status page.
    """
    ALTER TABLE jobs ADD COLUMN matched_by TEXT;
    """,
)

#: The schema version this code writes; a newer database is refused rather than misread.
SCHEMA_VERSION = len(_MIGRATIONS)

#: Seconds a write waits for another writer before failing with ``database is locked``.
BUSY_TIMEOUT_SECONDS = 30.0


def connect(path: Path, *, timeout: float = BUSY_TIMEOUT_SECONDS) -> sqlite3.Connection:
    """Open (creating or migrating) the state database at ``path``, for :class:`SqliteDatabase`'s pool.

    Parameters
    ----------
    path
        The database file; its folder is created when missing.
    timeout
        Seconds a write waits for another writer before failing with ``database is locked``.

    Returns
    -------
    sqlite3.Connection
        In autocommit mode (use :func:`transaction`), WAL journal, foreign keys on, rows as ``sqlite3.Row``; usable
        from any thread, one thread at a time (the pool sees to that).

    Raises
    ------
    sqlite3.Error
        The file cannot be opened or migrated (:class:`SqliteDatabase` translates these).
    InputError
        The database was written by a newer segnode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
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
            raise InputError(
                f"{path}: database schema version {version} is newer than this segnode understands "
                f"({SCHEMA_VERSION}); upgrade segnode or point [paths] data elsewhere"
            )
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

    Starts with ``BEGIN IMMEDIATE`` so the write lock is taken up front (no deadlock upgrading a read).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite rolls back by itself after some errors (disk full, I/O)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def translate(exc: sqlite3.Error, what: str) -> StateUnavailableError | StateError:
    """The project's error for a ``sqlite3`` one: unavailable (may pass) or a refusal retrying cannot fix.

    Locked, busy, read-only, disk I/O and disk full are ``OperationalError`` s: the database is there but cannot
    be used right now. Anything else (a damaged file, a constraint or interface error) will not pass by itself.
    """
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, sqlite3.OperationalError):
        return StateUnavailableError(f"{what}: state database unavailable ({detail}); retrying later")
    return StateError(f"{what}: state database refused the operation ({type(exc).__name__}: {detail})")


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Run the block with ``sqlite3`` exceptions turned into :func:`translate` ones."""
    try:
        yield
    except sqlite3.Error as exc:
        raise translate(exc, what) from exc


class SqliteDatabase:
    """Connections to one state database for any thread: a small pool, each connection used by one thread at a
    time; errors translated (:func:`translated`).

    Parameters
    ----------
    path
        The database file (created or migrated on construction, so a bad file fails here).
    data_folder
        What stored relative paths are relative to.
    timeout
        Seconds a write waits for another writer.
    """

    def __init__(self, path: Path, data_folder: Path, *, timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self.path = Path(path)
        self.data_folder = Path(data_folder)
        self.timeout = timeout
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        with translated(f"{self.path}: open"):
            self._idle.append(self._open())

    def _open(self) -> sqlite3.Connection:
        return connect(self.path, timeout=self.timeout)

    @contextmanager
    def _borrowed(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StateUnavailableError(f"{self.path}: state closed (the node is stopping); retry later")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            with self._lock:
                if self._closed or conn.in_transaction:
                    conn.close()
                else:
                    self._idle.append(conn)

    @contextmanager
    def reading(self, what: str) -> Iterator[sqlite3.Connection]:
        """A connection for reads (each statement sees a consistent snapshot)."""
        with translated(f"{self.path}: {what}"), self._borrowed() as conn:
            yield conn

    @contextmanager
    def writing(self, what: str) -> Iterator[sqlite3.Connection]:
        """A connection inside one write transaction (``BEGIN IMMEDIATE``), committed when the block ends."""
        with translated(f"{self.path}: {what}"), self._borrowed() as conn, transaction(conn):
            yield conn

    def check_writable(self, timeout: float = 2.0) -> None:
        """Prove a write would succeed now, changing nothing: take the write lock (waiting at most ``timeout``
        seconds for another writer), write the header, roll back. StateUnavailableError when it cannot."""
        with translated(f"{self.path}: write check"), self._borrowed() as conn:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            try:
                conn.execute("BEGIN IMMEDIATE")  # a read-only file takes this; only a write is refused
                try:
                    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                    conn.execute(f"PRAGMA user_version = {version}")
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")

    def close(self) -> None:
        """Close every idle connection; borrowed ones close when returned. A closed database refuses work."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def now_or_clock(now: float | None) -> float:
    """``now`` as given (tests and callers with their own clock), else the current time."""
    return time.time() if now is None else now


class ClaimingStore:
    """What a store on the SQLite back end holds: the database, how paths are stored, who claims and for how
    long. The series index and the job store both build on it."""

    def __init__(self, database: SqliteDatabase, node_id: str, *, lease_seconds: float = CLAIM_LEASE_SECONDS) -> None:
        self.database = database
        self.paths = StoredPaths(database.data_folder)
        self.node_id = node_id
        self.lease_seconds = lease_seconds
