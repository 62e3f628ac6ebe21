"""SQLite state of the node (WAL), the embedded default: connection, schema and the claim-less series functions.

The back end itself lives in three modules: :mod:`node.state.sqlite_schema` (schema, migrations, connections,
transactions, error translation), :mod:`node.state.sqlite_series` and :mod:`node.state.sqlite_jobs` (the
:class:`~node.state.SeriesIndex` and :class:`~node.state.JobStore` implementations). New code opens the state with
:func:`node.state.open_state` and never sees a connection.

The functions below take a connection from :func:`connect` and keep the API the stages used before the
Protocols; they run on :class:`~node.state.sqlite_series.SqliteSeriesIndex` without claims and let ``sqlite3``
exceptions through (their callers catch ``sqlite3.Error``). Stored paths are relative to the connection's data
folder (the database's folder unless given to :func:`connect`); paths returned are absolute.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from node.state.model import HINT_GRACE_SECONDS, SeriesRow, SeriesState
from node.state.sqlite_schema import (
    BUSY_TIMEOUT_SECONDS,
    SCHEMA_VERSION,
    SqliteDatabase,
    StateConnection,
    connect,
    transaction,
)
from node.state.sqlite_series import SqliteSeriesIndex

__all__ = [
    "BUSY_TIMEOUT_SECONDS", "HINT_GRACE_SECONDS", "SCHEMA_VERSION", "SeriesRow", "SeriesState", "StateConnection",
    "all_series", "connect", "due_series", "get_series", "hint_series_complete", "mark_series", "record_instance",
    "series_counts", "series_instances", "transaction",
]


def _index(conn: sqlite3.Connection) -> SqliteSeriesIndex:
    return SqliteSeriesIndex(SqliteDatabase.on_connection(conn), "unclaimed", require_claim=False)


def record_instance(conn: sqlite3.Connection, series_uid: str, study_uid: str, sop_uid: str, sop_class_uid: str,
                    path: Path, size: int, received_at: float) -> bool:
    """:meth:`SqliteSeriesIndex.record_instance` on ``conn``."""
    return _index(conn).record_instance(series_uid, study_uid, sop_uid, sop_class_uid, path, size, received_at)


def hint_series_complete(conn: sqlite3.Connection, series_uids: Iterable[str], now: float | None = None) -> int:
    """:meth:`SqliteSeriesIndex.hint_complete` on ``conn``."""
    return _index(conn).hint_complete(series_uids, now)


def due_series(conn: sqlite3.Connection, now: float, quiet_seconds: float,
               grace_seconds: float = HINT_GRACE_SECONDS) -> list[SeriesRow]:
    """Series due for completion, oldest first, without claiming them (:meth:`SqliteSeriesIndex.due`)."""
    return _index(conn).due(quiet_seconds, now=now, grace_seconds=grace_seconds)


def mark_series(conn: sqlite3.Connection, series_uid: str, state: SeriesState | str, reason: str | None = None,
                export_version: int | None = None, *, if_revision: int | None = None, now: float | None = None
                ) -> bool:
    """:meth:`SqliteSeriesIndex.mark` on ``conn``, with or without a claim (a claim is released)."""
    return _index(conn).mark(series_uid, state, reason=reason, export_version=export_version,
                             if_revision=if_revision, now=now)


def get_series(conn: sqlite3.Connection, series_uid: str) -> SeriesRow | None:
    """One series, or None when unknown."""
    return _index(conn).get(series_uid)


def series_instances(conn: sqlite3.Connection, series_uid: str) -> list[Path]:
    """The stored files of a series (absolute), sorted (empty when the series is unknown)."""
    return _index(conn).instances(series_uid)


def all_series(conn: sqlite3.Connection, state: SeriesState | str | None = None, limit: int | None = None
               ) -> list[SeriesRow]:
    """Known series, most recently received first, optionally only those in ``state``."""
    return _index(conn).list_series(state, limit)


def series_counts(conn: sqlite3.Connection) -> dict[SeriesState, int]:
    """How many series are in each state (every state present, zero when none)."""
    return _index(conn).counts()
