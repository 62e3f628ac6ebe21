"""The job state machine: one inbox item on its way to the destinations, each transition one transaction.

::

    PENDING -> MATCHED -> BUILT -> SENT
         \\          \\        \\-> RETRY_WAIT (some send waits for its next attempt) -> BUILT/SENT/FAILED
          \\----------\\--------\\-> FAILED (terminal, reason stored; `segnode retry` re-opens it)

Sending is tracked per destination in ``sends`` rows (``pending``, ``retry_wait``, ``ok``, ``failed``). The job's
state follows from them: while any send is open it is ``RETRY_WAIT`` if one is waiting for a retry, else
``BUILT``; once none is open it is ``SENT`` if all succeeded, else ``FAILED``. A destination that fails for good
does not stop delivery to the others.

Every caller goes through these functions (never SQL of its own), so the job store can move to another database
without touching them. Times are POSIX seconds; each function takes ``now`` for tests and defaults to the clock.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from node.errors import InputError, SegnodeError
from node.state.sqlite import transaction

log = logging.getLogger(__name__)


class JobState(str, Enum):
    """Where a job is; the values are what the database and ``segnode jobs`` show."""

    PENDING = "pending"
    MATCHED = "matched"
    BUILT = "built"
    SENT = "sent"
    FAILED = "failed"
    RETRY_WAIT = "retry_wait"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SENT, JobState.FAILED)


class SendState(str, Enum):
    """One destination's delivery of a job's SEG."""

    PENDING = "pending"
    RETRY_WAIT = "retry_wait"
    OK = "ok"
    FAILED = "failed"

    @property
    def open(self) -> bool:
        return self in (SendState.PENDING, SendState.RETRY_WAIT)


class JobStateError(SegnodeError):
    """A transition that the job's current state does not allow (e.g. retrying a job that was sent)."""


@dataclass(frozen=True)
class SendRow:
    """One destination of one job, with what a sender needs to deliver it."""

    id: int
    job_id: int
    destination: str
    state: SendState
    attempts: int
    next_at: float | None
    reason: str | None
    updated_at: float
    seg_path: Path
    seg_sop_uid: str
    series_uid: str | None


@dataclass(frozen=True)
class JobRow:
    """One job and its sends."""

    id: int
    inbox_path: Path
    signature: str
    item_kind: str
    state: JobState
    series_uid: str | None
    seg_path: Path | None
    seg_sop_uid: str | None
    reason: str | None
    created_at: float
    updated_at: float
    sends: tuple[SendRow, ...]


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def item_signature(path: Path) -> str:
    """What identifies one version of an inbox item: size and mtime of the file, or of every file in a folder.

    The same item seen twice (a watcher event and a start-up scan) has the same signature; an item replaced
    under the same name has a new one, so it becomes a new job.
    """
    path = Path(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = child.stat()
            digest.update(f"{child.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return "dir:" + digest.hexdigest()[:32]
    stat = path.stat()
    return f"file:{stat.st_size}:{stat.st_mtime_ns}"


_SEND_SELECT = """
    SELECT s.*, j.seg_path AS seg_path, j.seg_sop_uid AS seg_sop_uid, j.series_uid AS series_uid
    FROM sends s JOIN jobs j ON j.id = s.job_id
"""


def _send_row(row: sqlite3.Row) -> SendRow:
    return SendRow(
        id=row["id"], job_id=row["job_id"], destination=row["destination"], state=SendState(row["state"]),
        attempts=row["attempts"], next_at=row["next_at"], reason=row["reason"], updated_at=row["updated_at"],
        seg_path=Path(row["seg_path"]), seg_sop_uid=row["seg_sop_uid"], series_uid=row["series_uid"],
    )


def _job_row(conn: sqlite3.Connection, row: sqlite3.Row) -> JobRow:
    sends = conn.execute(_SEND_SELECT + " WHERE s.job_id = ? ORDER BY s.destination", (row["id"],)).fetchall()
    return JobRow(
        id=row["id"], inbox_path=Path(row["inbox_path"]), signature=row["signature"], item_kind=row["item_kind"],
        state=JobState(row["state"]), series_uid=row["series_uid"],
        seg_path=None if row["seg_path"] is None else Path(row["seg_path"]), seg_sop_uid=row["seg_sop_uid"],
        reason=row["reason"], created_at=row["created_at"], updated_at=row["updated_at"],
        sends=tuple(_send_row(s) for s in sends),
    )


def _state_of(conn: sqlite3.Connection, job_id: int) -> JobState:
    row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise InputError(f"job {job_id} does not exist; `segnode jobs` lists the known jobs")
    return JobState(row["state"])


def _require(conn: sqlite3.Connection, job_id: int, action: str, allowed: Sequence[JobState]) -> JobState:
    state = _state_of(conn, job_id)
    if state not in allowed:
        expected = " or ".join(s.value for s in allowed)
        raise JobStateError(f"job {job_id}: cannot {action} a job that is {state.value} (only when {expected})")
    return state


def _set_job(conn: sqlite3.Connection, job_id: int, state: JobState, now: float, **columns: object) -> None:
    assignments = "".join(f", {name} = ?" for name in columns)
    conn.execute(f"UPDATE jobs SET state = ?, updated_at = ?{assignments} WHERE id = ?",
                 (state.value, now, *columns.values(), job_id))


def create_job(conn: sqlite3.Connection, inbox_path: Path, item_kind: str, *, signature: str | None = None,
               now: float | None = None) -> int:
    """The job of one inbox item, created PENDING unless that version of the item already has one.

    Parameters
    ----------
    inbox_path
        The item (file or folder) where it was found.
    item_kind
        What the item is (e.g. ``"nifti"``, ``"mask_folder"``), stored as given for the builder.
    signature
        Identifies this version of the item; defaults to :func:`item_signature` (the item must exist then).

    Returns
    -------
    int
        The job id; the same id for the same path and signature, whatever its state.
    """
    if not item_kind:
        raise InputError(f"{inbox_path}: item kind must not be empty")
    if signature is None:
        signature = item_signature(inbox_path)
    stamp = _now(now)
    with transaction(conn):
        conn.execute(
            "INSERT INTO jobs (inbox_path, signature, item_kind, state, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (inbox_path, signature) DO NOTHING",
            (str(inbox_path), signature, str(item_kind), JobState.PENDING.value, stamp, stamp),
        )
        row = conn.execute("SELECT id, state FROM jobs WHERE inbox_path = ? AND signature = ?",
                           (str(inbox_path), signature)).fetchone()
    job_id = int(row["id"])
    log.debug("job %d for %s (%s)", job_id, inbox_path, row["state"])
    return job_id


def mark_matched(conn: sqlite3.Connection, job_id: int, series_uid: str, *, now: float | None = None) -> None:
    """PENDING (or MATCHED, when resumed) -> MATCHED with the series the item belongs to."""
    with transaction(conn):
        _require(conn, job_id, "match", (JobState.PENDING, JobState.MATCHED))
        _set_job(conn, job_id, JobState.MATCHED, _now(now), series_uid=series_uid, reason=None)


def mark_built(conn: sqlite3.Connection, job_id: int, seg_path: Path, seg_sop_uid: str, destinations: list[str],
               *, now: float | None = None) -> JobState:
    """MATCHED -> BUILT: the SEG is on disk; one send per destination, due at once.

    A job without destinations has nothing to deliver and becomes SENT. Returns the job's new state.
    """
    stamp = _now(now)
    with transaction(conn):
        _require(conn, job_id, "record the SEG of", (JobState.MATCHED,))
        names = list(dict.fromkeys(destinations))
        state = JobState.BUILT if names else JobState.SENT
        _set_job(conn, job_id, state, stamp, seg_path=str(seg_path), seg_sop_uid=seg_sop_uid, reason=None)
        for name in names:
            conn.execute(
                "INSERT INTO sends (job_id, destination, state, next_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (job_id, name, SendState.PENDING.value, stamp, stamp),
            )
    return state


def mark_failed(conn: sqlite3.Connection, job_id: int, reason: str, *, now: float | None = None) -> None:
    """Any state but SENT -> FAILED with ``reason``; its open sends are failed too (nothing more is sent)."""
    stamp = _now(now)
    with transaction(conn):
        _require(conn, job_id, "fail", [s for s in JobState if s is not JobState.SENT])
        _set_job(conn, job_id, JobState.FAILED, stamp, reason=reason)
        conn.execute(
            "UPDATE sends SET state = ?, reason = ?, updated_at = ? WHERE job_id = ? AND state IN (?, ?)",
            (SendState.FAILED.value, f"job failed: {reason}", stamp, job_id, SendState.PENDING.value,
             SendState.RETRY_WAIT.value),
        )
    log.info("job %d failed: %s", job_id, reason)


def due_sends(conn: sqlite3.Connection, now: float, limit: int | None = None) -> list[SendRow]:
    """Open sends whose (next) attempt is due, oldest due first."""
    query = (_SEND_SELECT + " WHERE s.state IN (?, ?) AND s.next_at <= ? AND j.state IN (?, ?)"
             " ORDER BY s.next_at, s.id")
    params: list[object] = [SendState.PENDING.value, SendState.RETRY_WAIT.value, now, JobState.BUILT.value,
                            JobState.RETRY_WAIT.value]
    if limit is not None:
        query += " LIMIT ?"
        params.append(int(limit))
    return [_send_row(row) for row in conn.execute(query, params).fetchall()]


def _settle(conn: sqlite3.Connection, job_id: int, stamp: float) -> JobState:
    """Derive the job's state from its sends (inside the caller's transaction)."""
    sends = conn.execute("SELECT destination, state, reason FROM sends WHERE job_id = ?", (job_id,)).fetchall()
    states = [SendState(row["state"]) for row in sends]
    if any(s.open for s in states):
        state = JobState.RETRY_WAIT if SendState.RETRY_WAIT in states else JobState.BUILT
        _set_job(conn, job_id, state, stamp)
    elif all(s is SendState.OK for s in states):
        state = JobState.SENT
        _set_job(conn, job_id, state, stamp, reason=None)
    else:
        state = JobState.FAILED
        reasons = "; ".join(f"{row['destination']}: {row['reason']}" for row in sends
                            if row["state"] == SendState.FAILED.value)
        _set_job(conn, job_id, state, stamp, reason=reasons)
    return state


def _mark_send(conn: sqlite3.Connection, send_id: int, state: SendState, reason: str | None,
               next_at: float | None, now: float | None) -> JobState:
    stamp = _now(now)
    with transaction(conn):
        row = conn.execute("SELECT s.job_id, s.state, j.state AS job_state FROM sends s JOIN jobs j"
                           " ON j.id = s.job_id WHERE s.id = ?", (send_id,)).fetchone()
        if row is None:
            raise InputError(f"send {send_id} does not exist")
        current = SendState(row["state"])
        if not current.open:
            raise JobStateError(f"send {send_id} of job {row['job_id']} is already {current.value}; "
                                "`segnode retry` re-opens it")
        conn.execute("UPDATE sends SET state = ?, reason = ?, next_at = ?, attempts = attempts + 1, updated_at = ?"
                     " WHERE id = ?", (state.value, reason, next_at, stamp, send_id))
        job_state = JobState(row["job_state"])
        if job_state in (JobState.BUILT, JobState.RETRY_WAIT):
            job_state = _settle(conn, row["job_id"], stamp)
    return job_state


def mark_send_ok(conn: sqlite3.Connection, send_id: int, *, now: float | None = None) -> JobState:
    """The destination accepted the SEG. Returns the job's new state."""
    return _mark_send(conn, send_id, SendState.OK, None, None, now)


def mark_send_retry(conn: sqlite3.Connection, send_id: int, reason: str, next_at: float, *,
                    now: float | None = None) -> JobState:
    """The attempt failed in a way that may pass; try again at ``next_at``. Returns the job's new state."""
    return _mark_send(conn, send_id, SendState.RETRY_WAIT, reason, next_at, now)


def mark_send_failed(conn: sqlite3.Connection, send_id: int, reason: str, *, now: float | None = None) -> JobState:
    """The destination refused the SEG for good (or attempts ran out). Returns the job's new state."""
    return _mark_send(conn, send_id, SendState.FAILED, reason, None, now)


def get_job(conn: sqlite3.Connection, job_id: int) -> JobRow:
    """One job with its sends; InputError when it does not exist."""
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise InputError(f"job {job_id} does not exist; `segnode jobs` lists the known jobs")
    return _job_row(conn, row)


def resumable_jobs(conn: sqlite3.Connection) -> list[JobRow]:
    """Jobs a restart must carry on (every state but SENT and FAILED), oldest first.

    PENDING and MATCHED jobs are processed again from their inbox item; BUILT and RETRY_WAIT ones only need
    their open sends, which :func:`due_sends` returns.
    """
    rows = conn.execute("SELECT * FROM jobs WHERE state NOT IN (?, ?) ORDER BY id",
                        (JobState.SENT.value, JobState.FAILED.value)).fetchall()
    return [_job_row(conn, row) for row in rows]


def list_jobs(conn: sqlite3.Connection, state: JobState | str | None = None, limit: int | None = 50
              ) -> list[JobRow]:
    """Jobs newest first (for ``segnode jobs``), optionally only those in ``state``."""
    query = "SELECT * FROM jobs"
    params: list[object] = []
    if state is not None:
        query += " WHERE state = ?"
        params.append(JobState(state).value)
    query += " ORDER BY id DESC"
    if limit is not None:
        query += " LIMIT ?"
        params.append(int(limit))
    return [_job_row(conn, row) for row in conn.execute(query, params).fetchall()]


def job_counts(conn: sqlite3.Connection) -> dict[JobState, int]:
    """How many jobs are in each state (every state present), for ``segnode status``."""
    counts = dict.fromkeys(JobState, 0)
    for row in conn.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
        counts[JobState(row["state"])] = row["n"]
    return counts


def retry_job(conn: sqlite3.Connection, job_id: int, *, now: float | None = None) -> JobState:
    """Re-open a job for ``segnode retry``; returns its new state.

    * FAILED with a SEG built: its failed sends start again from attempt 0, due now -> BUILT.
    * FAILED before a SEG was built -> PENDING (the caller puts the inbox item back where the watcher sees it).
    * RETRY_WAIT: waiting sends become due now (state unchanged).

    Raises
    ------
    JobStateError
        The job is pending, matched, built (already in progress) or sent.
    """
    stamp = _now(now)
    with transaction(conn):
        state = _require(conn, job_id, "retry", (JobState.FAILED, JobState.RETRY_WAIT))
        has_seg = conn.execute("SELECT seg_path IS NOT NULL AND EXISTS (SELECT 1 FROM sends WHERE job_id = ?)"
                               " FROM jobs WHERE id = ?", (job_id, job_id)).fetchone()[0]
        new_state: JobState
        if state is JobState.RETRY_WAIT:
            conn.execute("UPDATE sends SET next_at = ?, updated_at = ? WHERE job_id = ? AND state = ?",
                         (stamp, stamp, job_id, SendState.RETRY_WAIT.value))
            new_state = state
        elif has_seg:
            conn.execute("UPDATE sends SET state = ?, attempts = 0, next_at = ?, reason = NULL, updated_at = ?"
                         " WHERE job_id = ? AND state != ?",
                         (SendState.PENDING.value, stamp, stamp, job_id, SendState.OK.value))
            new_state = JobState.BUILT
            _set_job(conn, job_id, new_state, stamp, reason=None)
        else:
            new_state = JobState.PENDING
            _set_job(conn, job_id, new_state, stamp, reason=None, series_uid=None)
    log.info("job %d re-opened by retry: %s -> %s", job_id, state.value, new_state.value)
    return new_state
