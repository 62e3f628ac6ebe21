"""The SQLite :class:`~node.state.JobStore`: jobs, their per-destination sends, and claims on both.

::

    PENDING -> MATCHED -> BUILT -> SENT
       |  \\        \\         \\-> RETRY_WAIT (some send waits for its next attempt) -> BUILT/SENT/FAILED
       |   \\--------\\---------\\-> FAILED (terminal, reason stored; `segnode retry` re-opens it)
       \\-> RETRY_WAIT (build failed transiently: attempts, next_at) -> claimed again when due

A job's send state follows from its ``sends`` rows: while any send is open the job is ``RETRY_WAIT`` if one
waits for a retry, else ``BUILT``; once none is open it is ``SENT`` if all succeeded, else ``FAILED``.

Work is claimed (:meth:`SqliteJobStore.claim_jobs`, :meth:`~SqliteJobStore.claim_sends`): in one transaction the
due rows get this node's id and a lease, so two nodes never both take them and an expired claim is taken over.
A completion (``mark_*``) needs this node's claim and releases it; without the claim (another node took it over,
or finished it) it changes nothing and returns False, so a sending thread never dies of a lost race.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from node.errors import InputError
from node.state.model import JobRow, JobState, RemovedJob, item_signature
from node.state.sqlite_job_rows import _RELEASE, _TO_BUILD
from node.state.sqlite_schema import now_or_clock
from node.state.sqlite_sends import SendTransitions

log = logging.getLogger(__name__)

#: What retention may remove: finished (so every send is done), old, and no node holds it.
_EXPIRED = (
    "j.state IN ('sent', 'failed') AND j.updated_at < :before AND (j.claimed_by IS NULL OR j.lease_until < :now)"
    " AND NOT EXISTS (SELECT 1 FROM sends s WHERE s.job_id = j.id AND s.state IN ('pending', 'retry_wait'))"
)


class SqliteJobStore(SendTransitions):
    """Jobs and sends in one SQLite database (see the module docstring).

    Parameters
    ----------
    database
        Where the rows are.
    node_id
        Who claims (unique per running node process).
    lease_seconds
        How long a claim holds before another node may take it over.
    """

    def create(
        self, inbox_path: Path, item_kind: str, *, signature: str | None = None, now: float | None = None
    ) -> int:
        """The job of one inbox item, created PENDING unless that version of the item already has one.

        ``signature`` identifies this version of the item and defaults to
        :func:`~node.state.model.item_signature` (the item must exist then). Returns the job id: the same for
        the same path and signature, whatever its state.
        """
        if not item_kind:
            raise InputError(f"{inbox_path}: item kind must not be empty")
        if signature is None:
            signature = item_signature(inbox_path)
        stored, absolute = self.paths.store(inbox_path), str(self.paths.load(self.paths.store(inbox_path)))
        stamp = now_or_clock(now)
        with self.database.writing(f"create the job of {inbox_path}") as conn:
            # A database from before relative paths holds the absolute path of the same item.
            row = conn.execute(
                "SELECT id, state FROM jobs WHERE signature = ? AND inbox_path IN (?, ?)", (signature, stored, absolute)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO jobs (inbox_path, signature, item_kind, state, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (stored, signature, str(item_kind), JobState.PENDING.value, stamp, stamp),
                )
                row = conn.execute(
                    "SELECT id, state FROM jobs WHERE inbox_path = ? AND signature = ?", (stored, signature)
                ).fetchone()
        log.debug("job %d for %s (%s)", row["id"], inbox_path, row["state"])
        return int(row["id"])

    def get(self, job_id: int) -> JobRow:
        """One job with its sends; InputError when it does not exist."""
        with self.database.reading(f"read job {job_id}") as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise InputError(f"job {job_id} does not exist; `segnode jobs` lists the known jobs")
            return self._job_row(conn, row)

    def list_jobs(self, state: JobState | str | None = None, limit: int | None = 50) -> list[JobRow]:
        """Jobs newest first (for ``segnode jobs``), optionally only those in ``state``."""
        query, params = "SELECT * FROM jobs", []
        if state is not None:
            query += " WHERE state = ?"
            params.append(JobState(state).value)
        query += " ORDER BY id DESC" + ("" if limit is None else f" LIMIT {int(limit)}")
        with self.database.reading("list jobs") as conn:
            return self._jobs(conn, query, params)

    def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present), for ``segnode status``."""
        counts = dict.fromkeys(JobState, 0)
        with self.database.reading("count jobs") as conn:
            for row in conn.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
                counts[JobState(row["state"])] = row["n"]
        return counts

    def resumable(self) -> list[JobRow]:
        """Jobs a restart must carry on (every state but SENT and FAILED), oldest first."""
        with self.database.reading("list resumable jobs") as conn:
            return self._jobs(conn, "SELECT * FROM jobs WHERE state NOT IN ('sent', 'failed') ORDER BY id", ())

    def oldest_unfinished_at(self) -> float | None:
        """When the oldest job not SENT or FAILED was created (one aggregate: health asks at every probe)."""
        with self.database.reading("find the oldest unfinished job") as conn:
            row = conn.execute("SELECT MIN(created_at) FROM jobs WHERE state NOT IN ('sent', 'failed')").fetchone()
        return None if row[0] is None else float(row[0])

    def claim_jobs(self, *, now: float | None = None, limit: int | None = None) -> list[JobRow]:
        """Claim the jobs whose SEG is to be built (PENDING, MATCHED, or RETRY_WAIT before a SEG and due)."""
        stamp = now_or_clock(now)
        query = (
            f"SELECT j.id FROM jobs j WHERE {_TO_BUILD} AND (j.state != 'retry_wait' OR j.next_at <= ?)"
            " AND (j.claimed_by IS NULL OR j.lease_until < ?) ORDER BY j.id"
        )
        query += "" if limit is None else f" LIMIT {int(limit)}"
        with self.database.writing("claim jobs") as conn:
            ids = [row[0] for row in conn.execute(query, (stamp, stamp)).fetchall()]
            return [self._claim_job(conn, job_id, stamp) for job_id in ids]

    def claim_job(self, job_id: int, *, now: float | None = None) -> JobRow | None:
        """Claim one job to build it now (whatever its next attempt time); None when it is not to be built or
        another node holds it."""
        stamp = now_or_clock(now)
        with self.database.writing(f"claim job {job_id}") as conn:
            row = conn.execute(
                f"SELECT j.id FROM jobs j WHERE j.id = ? AND {_TO_BUILD}"
                " AND (j.claimed_by IS NULL OR j.claimed_by = ? OR j.lease_until < ?)",
                (job_id, self.node_id, stamp),
            ).fetchone()
            return None if row is None else self._claim_job(conn, job_id, stamp)

    def _claim_job(self, conn: sqlite3.Connection, job_id: int, now: float) -> JobRow:
        conn.execute(
            "UPDATE jobs SET claimed_by = ?, lease_until = ? WHERE id = ?",
            (self.node_id, now + self.lease_seconds, job_id),
        )
        return self._job_row(conn, conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def release_claims(self) -> int:
        """Give up every job and send claim this node holds (on stop); returns how many."""
        with self.database.writing("release job claims") as conn:
            jobs = conn.execute(f"UPDATE jobs SET {_RELEASE} WHERE claimed_by = ?", (self.node_id,)).rowcount
            sends = conn.execute(f"UPDATE sends SET {_RELEASE} WHERE claimed_by = ?", (self.node_id,)).rowcount
        return int(jobs + sends)

    def mark_matched(self, job_id: int, series_uid: str, *, how: str | None = None, now: float | None = None) -> bool:
        """A job to build -> MATCHED with the series the item belongs to (found by ``how``); the claim stays (the
        build goes on) and its lease starts again. False when this node no longer holds the claim."""
        stamp = now_or_clock(now)
        with self.database.writing(f"mark job {job_id} matched") as conn:
            if not self._holds(conn, "jobs", job_id, "mark it matched"):
                return False
            self._require_to_build(conn, job_id, "match")
            self._set_job(
                conn,
                job_id,
                JobState.MATCHED,
                stamp,
                series_uid=series_uid,
                matched_by=how,
                reason=None,
                lease_until=stamp + self.lease_seconds,
            )
        return True

    def mark_built(
        self, job_id: int, seg_path: Path, seg_sop_uid: str, destinations: Sequence[str], *, now: float | None = None
    ) -> bool:
        """MATCHED -> BUILT (SENT when there is no destination): the SEG is on disk, one send per destination is
        due at once; the claim is released. False when this node no longer holds the claim."""
        stamp = now_or_clock(now)
        names = list(dict.fromkeys(destinations))
        if not all(isinstance(name, str) and name for name in names):
            raise InputError(f"job {job_id}: destination names must be non-empty strings, not {names!r}")
        with self.database.writing(f"mark job {job_id} built") as conn:
            if not self._holds(conn, "jobs", job_id, "record its SEG"):
                return False
            self._require(conn, job_id, "record the SEG of", (JobState.MATCHED,))
            state = JobState.BUILT if names else JobState.SENT
            self._set_job(
                conn,
                job_id,
                state,
                stamp,
                seg_path=self.paths.store(seg_path),
                seg_sop_uid=seg_sop_uid,
                reason=None,
                next_at=None,
                claimed_by=None,
                lease_until=None,
            )
            for name in names:
                conn.execute(
                    "INSERT INTO sends (job_id, destination, state, next_at, updated_at)"
                    " VALUES (?, ?, 'pending', ?, ?)",
                    (job_id, name, stamp, stamp),
                )
        return True

    def mark_retry_later(self, job_id: int, reason: str, next_at: float, *, now: float | None = None) -> bool:
        """A job to build -> RETRY_WAIT after a transient failure (disk full, database busy): one more attempt
        counted, due again at ``next_at``; the claim is released. False when this node no longer holds it."""
        stamp = now_or_clock(now)
        with self.database.writing(f"mark job {job_id} for a retry") as conn:
            if not self._holds(conn, "jobs", job_id, "mark it for a retry"):
                return False
            self._require_to_build(conn, job_id, "retry the build of")
            conn.execute(
                f"UPDATE jobs SET state = 'retry_wait', reason = ?, next_at = ?, attempts = attempts + 1,"
                f" updated_at = ?, {_RELEASE} WHERE id = ?",
                (reason, next_at, stamp, job_id),
            )
        log.info("job %d: %s; next attempt at %.0f", job_id, reason, next_at)
        return True

    def mark_failed(self, job_id: int, reason: str, *, now: float | None = None) -> bool:
        """Any state but SENT -> FAILED with ``reason``; its open sends are failed too (nothing more is sent); the
        claim is released. False when this node no longer holds the claim."""
        stamp = now_or_clock(now)
        with self.database.writing(f"mark job {job_id} failed") as conn:
            if not self._holds(conn, "jobs", job_id, "mark it failed"):
                return False
            self._require(conn, job_id, "fail", [s for s in JobState if s is not JobState.SENT])
            self._set_job(conn, job_id, JobState.FAILED, stamp, reason=reason, claimed_by=None, lease_until=None)
            conn.execute(
                f"UPDATE sends SET state = 'failed', reason = ?, updated_at = ?, {_RELEASE}"
                " WHERE job_id = ? AND state IN ('pending', 'retry_wait')",
                (f"job failed: {reason}", stamp, job_id),
            )
        log.info("job %d failed: %s", job_id, reason)
        return True

    def retry(self, job_id: int, *, now: float | None = None) -> JobState:
        """Re-open a job for ``segnode retry`` (claims on it dropped); returns its new state.

        * FAILED with a SEG built: its failed sends start again from attempt 0, due now -> BUILT.
        * FAILED before a SEG was built -> PENDING (the caller puts the inbox item back where the watcher sees it).
        * RETRY_WAIT: waiting sends, or the waiting build, become due now (state unchanged).

        Raises JobStateError when the job is pending, matched, built (already in progress) or sent.
        """
        stamp = now_or_clock(now)
        with self.database.writing(f"retry job {job_id}") as conn:
            state = self._require(conn, job_id, "retry", (JobState.FAILED, JobState.RETRY_WAIT))
            has_seg = conn.execute(
                "SELECT seg_path IS NOT NULL AND EXISTS (SELECT 1 FROM sends WHERE job_id = ?) FROM jobs WHERE id = ?",
                (job_id, job_id),
            ).fetchone()[0]
            new_state = state
            if state is JobState.RETRY_WAIT:
                conn.execute(
                    f"UPDATE sends SET next_at = ?, updated_at = ?, {_RELEASE} WHERE job_id = ?"
                    " AND state = 'retry_wait'",
                    (stamp, stamp, job_id),
                )
                conn.execute(
                    f"UPDATE jobs SET next_at = ?, {_RELEASE} WHERE id = ? AND seg_path IS NULL", (stamp, job_id)
                )
            elif has_seg:
                conn.execute(
                    f"UPDATE sends SET state = 'pending', attempts = 0, next_at = ?, reason = NULL,"
                    f" updated_at = ?, {_RELEASE} WHERE job_id = ? AND state != 'ok'",
                    (stamp, stamp, job_id),
                )
                new_state = JobState.BUILT
                self._set_job(conn, job_id, new_state, stamp, reason=None, claimed_by=None, lease_until=None)
            else:
                new_state = JobState.PENDING
                self._set_job(
                    conn,
                    job_id,
                    new_state,
                    stamp,
                    reason=None,
                    series_uid=None,
                    matched_by=None,
                    attempts=0,
                    next_at=None,
                    claimed_by=None,
                    lease_until=None,
                )
        log.info("job %d re-opened by retry: %s -> %s", job_id, state.value, new_state.value)
        return new_state

    def expired_jobs(self, before: float, *, now: float | None = None, limit: int | None = None) -> list[JobRow]:
        """Jobs retention may remove: SENT or FAILED, every send done, last updated before ``before``, unclaimed;
        oldest first."""
        query = f"SELECT * FROM jobs j WHERE {_EXPIRED} ORDER BY j.updated_at, j.id"
        query += "" if limit is None else f" LIMIT {int(limit)}"
        with self.database.reading("list expired jobs") as conn:
            return self._jobs(conn, query, {"before": before, "now": now_or_clock(now)})

    def remove_job(self, job_id: int, *, before: float, now: float | None = None) -> RemovedJob | None:
        """Delete an expired job and its sends in one transaction, checking in it that the job is still expired;
        the row as it was and whether another job shares its SEG file, or None when it was kept."""
        params = {"id": job_id, "before": before, "now": now_or_clock(now)}
        with self.database.writing(f"remove job {job_id}") as conn:
            row = conn.execute(f"SELECT * FROM jobs j WHERE j.id = :id AND {_EXPIRED}", params).fetchone()
            if row is None:
                return None
            job = self._job_row(conn, row)
            shared = row["seg_path"] is not None and (
                conn.execute(
                    "SELECT 1 FROM jobs WHERE seg_path = ? AND id != ? LIMIT 1", (row["seg_path"], job_id)
                ).fetchone()
                is not None
            )
            # Its sends go with it: ON DELETE CASCADE (foreign keys are on in every connection, see connect()).
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        log.debug("job %d removed (%s, last updated %.0f)", job_id, job.state.value, job.updated_at)
        return RemovedJob(job, seg_shared=shared)
