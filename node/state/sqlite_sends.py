"""The SQLite job store's sends: claiming the due ones, recording each attempt, settling the job's state.

A job's send state follows from its ``sends`` rows: while any send is open the job is ``RETRY_WAIT`` if one waits
for a retry, else ``BUILT``; once none is open it is ``SENT`` if all succeeded, else ``FAILED``.
"""

from __future__ import annotations

import sqlite3

from node.errors import InputError
from node.state.model import JobState, JobStateError, SendRow, SendState
from node.state.sqlite_job_rows import _OPEN_SENDS, _RELEASE, _SEND_SELECT, JobRows
from node.state.sqlite_schema import now_or_clock


class SendTransitions(JobRows):
    """Sends of :class:`~node.state.sqlite_jobs.SqliteJobStore`: one per job and destination."""

    def claim_sends(self, *, now: float | None = None, limit: int | None = None) -> list[SendRow]:
        """Claim the open sends whose (next) attempt is due and that no other node holds, oldest due first."""
        stamp = now_or_clock(now)
        query = (
            f"SELECT s.id FROM sends s JOIN jobs j ON j.id = s.job_id WHERE {_OPEN_SENDS} AND s.next_at <= ?"
            " AND (s.claimed_by IS NULL OR s.lease_until < ?) ORDER BY s.next_at, s.id"
        )
        query += "" if limit is None else f" LIMIT {int(limit)}"
        with self.database.writing("claim sends") as conn:
            ids = [row[0] for row in conn.execute(query, (stamp, stamp)).fetchall()]
            for send_id in ids:
                conn.execute(
                    "UPDATE sends SET claimed_by = ?, lease_until = ? WHERE id = ?",
                    (self.node_id, stamp + self.lease_seconds, send_id),
                )
            return [self._send_row(conn.execute(_SEND_SELECT + " WHERE s.id = ?", (i,)).fetchone()) for i in ids]

    def _settle(self, conn: sqlite3.Connection, job_id: int, stamp: float) -> None:
        """Derive the job's state from its sends (inside the caller's transaction)."""
        sends = conn.execute("SELECT destination, state, reason FROM sends WHERE job_id = ?", (job_id,)).fetchall()
        states = [SendState(row["state"]) for row in sends]
        if any(s.open for s in states):
            waiting = SendState.RETRY_WAIT in states
            self._set_job(conn, job_id, JobState.RETRY_WAIT if waiting else JobState.BUILT, stamp)
        elif all(s is SendState.OK for s in states):
            self._set_job(conn, job_id, JobState.SENT, stamp, reason=None)
        else:
            reasons = "; ".join(
                f"{row['destination']}: {row['reason']}" for row in sends if row["state"] == SendState.FAILED.value
            )
            self._set_job(conn, job_id, JobState.FAILED, stamp, reason=reasons)

    def _send(
        self, send_id: int, state: SendState, reason: str | None, next_at: float | None, now: float | None
    ) -> bool:
        """Record one attempt's outcome and settle the job; False when this node lost the claim."""
        stamp = now_or_clock(now)
        with self.database.writing(f"mark send {send_id} {state.value}") as conn:
            row = conn.execute(
                "SELECT s.job_id, s.state, j.state AS job_state FROM sends s JOIN jobs j"
                " ON j.id = s.job_id WHERE s.id = ?",
                (send_id,),
            ).fetchone()
            if row is None:
                raise InputError(f"send {send_id} does not exist")
            if not self._holds(conn, "sends", send_id, f"mark it {state.value}"):
                return False
            current = SendState(row["state"])
            if not current.open:
                raise JobStateError(
                    f"send {send_id} of job {row['job_id']} is already {current.value}; `segnode retry` re-opens it"
                )
            conn.execute(
                f"UPDATE sends SET state = ?, reason = ?, next_at = ?, attempts = attempts + 1,"
                f" updated_at = ?, {_RELEASE} WHERE id = ?",
                (state.value, reason, next_at, stamp, send_id),
            )
            if JobState(row["job_state"]) in (JobState.BUILT, JobState.RETRY_WAIT):
                self._settle(conn, row["job_id"], stamp)
        return True

    def mark_send_ok(self, send_id: int, *, now: float | None = None) -> bool:
        """The destination accepted the SEG. False (nothing changed) when this node no longer holds the claim,
        e.g. a second node took the send over and already marked it."""
        return self._send(send_id, SendState.OK, None, None, now)

    def mark_send_retry(self, send_id: int, reason: str, next_at: float, *, now: float | None = None) -> bool:
        """The attempt failed in a way that may pass; try again at ``next_at``. False when the claim is lost."""
        return self._send(send_id, SendState.RETRY_WAIT, reason, next_at, now)

    def mark_send_failed(self, send_id: int, reason: str, *, now: float | None = None) -> bool:
        """The destination refused the SEG for good (or attempts ran out). False when the claim is lost."""
        return self._send(send_id, SendState.FAILED, reason, None, now)
