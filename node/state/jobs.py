"""The claim-less job functions the stages used before :class:`~node.state.JobStore`: one call, one transaction.

They take a connection from :func:`node.state.sqlite.connect` and run on
:class:`~node.state.sqlite_jobs.SqliteJobStore` without claims: a completion never reports a lost claim, a send
that is no longer open raises :class:`JobStateError`, and ``sqlite3`` exceptions pass through. New code uses
:func:`node.state.open_state` instead. States and rows are :mod:`node.state.model`'s, re-exported here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from node.state.model import JobRow, JobState, JobStateError, SendRow, SendState, item_signature
from node.state.sqlite_jobs import SqliteJobStore
from node.state.sqlite_schema import SqliteDatabase

__all__ = [
    "JobRow", "JobState", "JobStateError", "SendRow", "SendState", "create_job", "due_sends", "get_job",
    "item_signature", "job_counts", "list_jobs", "mark_built", "mark_failed", "mark_matched", "mark_send_failed",
    "mark_send_ok", "mark_send_retry", "resumable_jobs", "retry_job",
]


def _store(conn: sqlite3.Connection) -> SqliteJobStore:
    return SqliteJobStore(SqliteDatabase.on_connection(conn), "unclaimed", require_claim=False)


def _job_state(state: JobState | None) -> JobState:
    assert state is not None  # without claims nothing is ever lost
    return state


def create_job(conn: sqlite3.Connection, inbox_path: Path, item_kind: str, *, signature: str | None = None,
               now: float | None = None) -> int:
    """:meth:`SqliteJobStore.create` on ``conn``."""
    return _store(conn).create(inbox_path, item_kind, signature=signature, now=now)


def mark_matched(conn: sqlite3.Connection, job_id: int, series_uid: str, *, now: float | None = None) -> None:
    """PENDING (or MATCHED, when resumed) -> MATCHED with the series the item belongs to."""
    _store(conn).mark_matched(job_id, series_uid, now=now)


def mark_built(conn: sqlite3.Connection, job_id: int, seg_path: Path, seg_sop_uid: str, destinations: Sequence[str],
               *, now: float | None = None) -> JobState:
    """MATCHED -> BUILT (SENT without destinations); returns the job's new state."""
    return _job_state(_store(conn)._built(job_id, seg_path, seg_sop_uid, destinations, now))


def mark_failed(conn: sqlite3.Connection, job_id: int, reason: str, *, now: float | None = None) -> None:
    """Any state but SENT -> FAILED with ``reason``; its open sends are failed too."""
    _store(conn).mark_failed(job_id, reason, now=now)


def due_sends(conn: sqlite3.Connection, now: float, limit: int | None = None) -> list[SendRow]:
    """Open sends whose (next) attempt is due, oldest due first, without claiming them."""
    return _store(conn).due_sends(now, limit)


def mark_send_ok(conn: sqlite3.Connection, send_id: int, *, now: float | None = None) -> JobState:
    """The destination accepted the SEG. Returns the job's new state."""
    return _job_state(_store(conn)._send(send_id, SendState.OK, None, None, now))


def mark_send_retry(conn: sqlite3.Connection, send_id: int, reason: str, next_at: float, *,
                    now: float | None = None) -> JobState:
    """The attempt failed in a way that may pass; try again at ``next_at``. Returns the job's new state."""
    return _job_state(_store(conn)._send(send_id, SendState.RETRY_WAIT, reason, next_at, now))


def mark_send_failed(conn: sqlite3.Connection, send_id: int, reason: str, *, now: float | None = None) -> JobState:
    """The destination refused the SEG for good (or attempts ran out). Returns the job's new state."""
    return _job_state(_store(conn)._send(send_id, SendState.FAILED, reason, None, now))


def get_job(conn: sqlite3.Connection, job_id: int) -> JobRow:
    """One job with its sends; InputError when it does not exist."""
    return _store(conn).get(job_id)


def resumable_jobs(conn: sqlite3.Connection) -> list[JobRow]:
    """Jobs a restart must carry on (every state but SENT and FAILED), oldest first."""
    return _store(conn).resumable()


def list_jobs(conn: sqlite3.Connection, state: JobState | str | None = None, limit: int | None = 50
              ) -> list[JobRow]:
    """Jobs newest first (for ``segnode jobs``), optionally only those in ``state``."""
    return _store(conn).list_jobs(state, limit)


def job_counts(conn: sqlite3.Connection) -> dict[JobState, int]:
    """How many jobs are in each state (every state present)."""
    return _store(conn).counts()


def retry_job(conn: sqlite3.Connection, job_id: int, *, now: float | None = None) -> JobState:
    """:meth:`SqliteJobStore.retry` on ``conn``."""
    return _store(conn).retry(job_id, now=now)
