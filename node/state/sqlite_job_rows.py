"""How the SQLite job store reads its rows and guards its transitions: row objects, claim and state checks.

:class:`~node.state.sqlite_jobs.SqliteJobStore` builds on it, so that the transitions read on their own.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence

from node.errors import InputError
from node.state.model import JobRow, JobState, JobStateError, SendRow, SendState
from node.state.sqlite_schema import ClaimingStore

log = logging.getLogger(__name__)

_SEND_SELECT = """
    SELECT s.*, j.seg_path AS seg_path, j.seg_sop_uid AS seg_sop_uid, j.series_uid AS series_uid
    FROM sends s JOIN jobs j ON j.id = s.job_id
"""
_OPEN_SENDS = "s.state IN ('pending', 'retry_wait') AND j.state IN ('built', 'retry_wait')"
#: Jobs whose SEG is still to be built: new, matched, or waiting after a transient failure.
_TO_BUILD = "(j.state IN ('pending', 'matched') OR (j.state = 'retry_wait' AND j.seg_path IS NULL))"
_BUILDABLE = (JobState.PENDING, JobState.MATCHED, JobState.RETRY_WAIT)
_RELEASE = "claimed_by = NULL, lease_until = NULL"


class JobRows(ClaimingStore):
    """Rows of the ``jobs`` and ``sends`` tables as :class:`~node.state.model.JobRow`/``SendRow``, and the checks
    every transition makes: that this node holds the claim, and that the job is in a state that allows it."""

    def _send_row(self, row: sqlite3.Row) -> SendRow:
        return SendRow(
            id=row["id"],
            job_id=row["job_id"],
            destination=row["destination"],
            state=SendState(row["state"]),
            attempts=row["attempts"],
            next_at=row["next_at"],
            reason=row["reason"],
            updated_at=row["updated_at"],
            seg_path=self.paths.load(row["seg_path"]),
            seg_sop_uid=row["seg_sop_uid"],
            series_uid=row["series_uid"],
            claimed_by=row["claimed_by"],
            lease_until=row["lease_until"],
        )

    def _job_row(self, conn: sqlite3.Connection, row: sqlite3.Row) -> JobRow:
        sends = conn.execute(_SEND_SELECT + " WHERE s.job_id = ? ORDER BY s.destination", (row["id"],)).fetchall()
        return JobRow(
            id=row["id"],
            inbox_path=self.paths.load(row["inbox_path"]),
            signature=row["signature"],
            item_kind=row["item_kind"],
            state=JobState(row["state"]),
            series_uid=row["series_uid"],
            seg_path=None if row["seg_path"] is None else self.paths.load(row["seg_path"]),
            seg_sop_uid=row["seg_sop_uid"],
            reason=row["reason"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            sends=tuple(self._send_row(s) for s in sends),
            attempts=row["attempts"],
            next_at=row["next_at"],
            claimed_by=row["claimed_by"],
            lease_until=row["lease_until"],
            matched_by=row["matched_by"],
        )

    def _jobs(
        self, conn: sqlite3.Connection, query: str, params: Sequence[object] | Mapping[str, object]
    ) -> list[JobRow]:
        return [self._job_row(conn, row) for row in conn.execute(query, params).fetchall()]

    def _holds(self, conn: sqlite3.Connection, table: str, row_id: int, action: str) -> bool:
        """Whether this node may complete the row: it holds the claim."""
        row = conn.execute(f"SELECT claimed_by FROM {table} WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            raise InputError(f"{table[:-1]} {row_id} does not exist; `segnode jobs` lists the known jobs")
        if row["claimed_by"] == self.node_id:
            return True
        log.warning(
            "%s %d: claim lost to %s; did not %s",
            table[:-1],
            row_id,
            row["claimed_by"] or "a node that finished it",
            action,
        )
        return False

    def _require(self, conn: sqlite3.Connection, job_id: int, action: str, allowed: Sequence[JobState]) -> JobState:
        row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise InputError(f"job {job_id} does not exist; `segnode jobs` lists the known jobs")
        state = JobState(row["state"])
        if state not in allowed:
            expected = " or ".join(s.value for s in allowed)
            raise JobStateError(f"job {job_id}: cannot {action} a job that is {state.value} (only when {expected})")
        return state

    def _require_to_build(self, conn: sqlite3.Connection, job_id: int, action: str) -> JobState:
        state = self._require(conn, job_id, action, _BUILDABLE)
        if (
            state is JobState.RETRY_WAIT
            and conn.execute("SELECT seg_path IS NOT NULL FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        ):
            raise JobStateError(f"job {job_id}: cannot {action} a job whose SEG is built (its sends retry)")
        return state

    @staticmethod
    def _set_job(conn: sqlite3.Connection, job_id: int, state: JobState, now: float, **columns: object) -> None:
        assignments = "".join(f", {name} = ?" for name in columns)
        conn.execute(
            f"UPDATE jobs SET state = ?, updated_at = ?{assignments} WHERE id = ?",
            (state.value, now, *columns.values(), job_id),
        )
