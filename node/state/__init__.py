"""The node's durable state: the only package that knows SQL.

The pipeline sees two Protocols, :class:`SeriesIndex` (received instances grouped into series) and
:class:`JobStore` (inbox items on their way to the destinations), and gets both from :func:`open_state`. Rows and
states are :mod:`node.state.model`'s. Back-end failures (database locked, busy, read-only, disk I/O, disk full)
are :class:`~node.errors.StateUnavailableError` (a TransientError: back off and retry); nothing from a database
driver leaks out.

Claims: work that a node takes (a series to complete or export, a job to build, a send) is claimed with this
node's id and a lease in one transaction, so two nodes never both take it; a claim whose lease ran out is taken
over. A completion (``mark*``) needs the caller's claim and releases it; when another node took the claim over,
it changes nothing and returns False (never raises), so a stage thread never dies of a lost race.

Paths are stored relative to the data folder when inside it (the folder can move); others stay absolute. Paths
returned are absolute.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node.state.model import (
    CLAIM_LEASE_SECONDS,
    FINISHED_SERIES,
    HINT_GRACE_SECONDS,
    JobRow,
    JobState,
    RemovedJob,
    SendRow,
    SeriesRow,
    SeriesState,
)

__all__ = ["JobStore", "SeriesIndex", "State", "default_node_id", "open_state"]


class SeriesIndex(Protocol):
    """Received instances grouped into series; ``receiving -> complete -> exported`` (or ``failed``)."""

    def record_instance(
        self,
        series_uid: str,
        study_uid: str,
        sop_uid: str,
        sop_class_uid: str,
        path: Path,
        size: int,
        received_at: float,
    ) -> bool:
        """Index one stored instance (a re-sent one replaces the earlier row); the series is receiving again.
        True when that re-opened a complete, exported or failed series."""
        ...

    def hint_complete(self, series_uids: Iterable[str], now: float | None = None) -> int:
        """An association that sent these series was released: they are due after a short grace. How many."""
        ...

    def claim_due(
        self,
        quiet_seconds: float,
        *,
        now: float | None = None,
        grace_seconds: float = HINT_GRACE_SECONDS,
        limit: int | None = None,
    ) -> list[SeriesRow]:
        """Claim the receiving series quiet for ``quiet_seconds`` (or hinted and quiet for ``grace_seconds``)."""
        ...

    def claim_in_state(
        self, state: SeriesState | str, *, now: float | None = None, limit: int | None = None
    ) -> list[SeriesRow]:
        """Claim the series in ``state`` (e.g. COMPLETE, to export them), oldest first."""
        ...

    def mark(
        self,
        series_uid: str,
        state: SeriesState | str,
        *,
        reason: str | None = None,
        export_version: int | None = None,
        if_revision: int | None = None,
        now: float | None = None,
    ) -> bool:
        """Move a claimed series to ``state``, releasing the claim. False (only the claim released) when its
        revision is no longer ``if_revision`` or this node lost the claim; InputError for an unknown series."""
        ...

    def release(self, series_uid: str) -> bool:
        """Give up this node's claim on the series, changing nothing else. False when it held none."""
        ...

    def release_claims(self) -> int:
        """Give up every series claim this node holds (on stop). How many."""
        ...

    def get(self, series_uid: str) -> SeriesRow | None:
        """One series, or None when unknown."""
        ...

    def instances(self, series_uid: str) -> list[Path]:
        """The stored files of a series (absolute paths), sorted; empty when unknown."""
        ...

    def list_series(self, state: SeriesState | str | None = None, limit: int | None = None) -> list[SeriesRow]:
        """Known series, most recently received first, optionally only those in ``state``."""
        ...

    def counts(self) -> dict[SeriesState, int]:
        """How many series are in each state (every state present)."""
        ...

    def expired_series(
        self,
        before: float,
        *,
        states: Iterable[SeriesState | str] = FINISHED_SERIES,
        now: float | None = None,
        limit: int | None = None,
    ) -> list[SeriesRow]:
        """Series retention may remove, oldest first: in ``states``, last active (an instance received, a state
        change) before ``before``, claimed by no node, and needed by no job (none that is unfinished or finished
        at or after ``before``; none at all while a job waits to be matched, as it may match any series)."""
        ...

    def remove_series(
        self,
        series_uid: str,
        *,
        before: float,
        states: Iterable[SeriesState | str] = FINISHED_SERIES,
        now: float | None = None,
    ) -> list[Path] | None:
        """Forget one series and its instances (one transaction) if it is still expired as
        :meth:`expired_series` says; the instance files it listed, for the caller to delete. None: kept (an
        instance arrived, a job needs it, a node claimed it). A re-sent instance afterwards starts a new series."""
        ...


class JobStore(Protocol):
    """Jobs (one inbox item each) and their sends (one per destination); see :mod:`node.state.sqlite_jobs`."""

    def create(
        self, inbox_path: Path, item_kind: str, *, signature: str | None = None, now: float | None = None
    ) -> int:
        """The job of this version of an inbox item (created PENDING, or the existing one). Its id."""
        ...

    def get(self, job_id: int) -> JobRow:
        """One job with its sends; InputError when it does not exist."""
        ...

    def list_jobs(self, state: JobState | str | None = None, limit: int | None = 50) -> list[JobRow]:
        """Jobs newest first, optionally only those in ``state``."""
        ...

    def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present)."""
        ...

    def resumable(self) -> list[JobRow]:
        """Jobs not SENT or FAILED, oldest first (start-up recovery)."""
        ...

    def oldest_unfinished_at(self) -> float | None:
        """When the oldest job not SENT or FAILED was created; None when there is none (health, at every probe)."""
        ...

    def claim_jobs(self, *, now: float | None = None, limit: int | None = None) -> list[JobRow]:
        """Claim the jobs whose SEG is to be built: PENDING, MATCHED, or RETRY_WAIT without a SEG and due."""
        ...

    def claim_job(self, job_id: int, *, now: float | None = None) -> JobRow | None:
        """Claim one job to build it now; None when it is not to be built or another node holds it."""
        ...

    def mark_matched(self, job_id: int, series_uid: str, *, how: str | None = None, now: float | None = None) -> bool:
        """A claimed job -> MATCHED with its series, found by ``how`` ("name", "sidecar", "geometry"); the claim
        stays and its lease restarts."""
        ...

    def mark_built(
        self, job_id: int, seg_path: Path, seg_sop_uid: str, destinations: Sequence[str], *, now: float | None = None
    ) -> bool:
        """A claimed MATCHED job -> BUILT (SENT without destinations), one send per destination due now; the
        claim is released."""
        ...

    def mark_retry_later(self, job_id: int, reason: str, next_at: float, *, now: float | None = None) -> bool:
        """A claimed job to build -> RETRY_WAIT after a transient error: attempts + 1, due again at ``next_at``."""
        ...

    def mark_failed(self, job_id: int, reason: str, *, now: float | None = None) -> bool:
        """A claimed job -> FAILED with ``reason`` (terminal; its open sends fail too); the claim is released."""
        ...

    def claim_sends(self, *, now: float | None = None, limit: int | None = None) -> list[SendRow]:
        """Claim the open sends whose (next) attempt is due, oldest due first."""
        ...

    def mark_send_ok(self, send_id: int, *, now: float | None = None) -> bool:
        """A claimed send was accepted; the job settles (SENT once every send is done)."""
        ...

    def mark_send_retry(self, send_id: int, reason: str, next_at: float, *, now: float | None = None) -> bool:
        """A claimed send failed in a way that may pass: attempts + 1, due again at ``next_at``."""
        ...

    def mark_send_failed(self, send_id: int, reason: str, *, now: float | None = None) -> bool:
        """A claimed send failed for good (the other destinations go on)."""
        ...

    def release_claims(self) -> int:
        """Give up every job and send claim this node holds (on stop). How many."""
        ...

    def retry(self, job_id: int, *, now: float | None = None) -> JobState:
        """``segnode retry``: re-open a FAILED job (BUILT when it has a SEG, else PENDING) or make a RETRY_WAIT
        one due now; JobStateError for a job in progress or sent. Its new state."""
        ...

    def expired_jobs(self, before: float, *, now: float | None = None, limit: int | None = None) -> list[JobRow]:
        """Jobs retention may remove, oldest first: SENT or FAILED (every send done), last updated before
        ``before``, claimed by no node."""
        ...

    def remove_job(self, job_id: int, *, before: float, now: float | None = None) -> RemovedJob | None:
        """Forget one job and its sends (one transaction) if it is still expired as :meth:`expired_jobs` says;
        None when it was kept (re-opened by ``segnode retry``, or unknown)."""
        ...


class Backend(Protocol):
    """What a back end's connection holder offers :class:`State`."""

    def close(self) -> None: ...


@dataclass
class State:
    """What :func:`open_state` returns: the two stores, on one back end, claiming as ``node_id``."""

    series: SeriesIndex
    jobs: JobStore
    node_id: str
    backend: Backend

    def release_claims(self) -> int:
        """Give up every claim this node holds (series, jobs, sends); call on a clean stop."""
        return self.series.release_claims() + self.jobs.release_claims()

    def close(self) -> None:
        """Close the back end's connections; the stores refuse work afterwards."""
        self.backend.close()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def default_node_id() -> str:
    """``hostname:pid``: unique per running node process, readable in ``segnode jobs``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def open_state(
    data_folder: Path,
    database: Path,
    *,
    node_id: str | None = None,
    lease_seconds: float = CLAIM_LEASE_SECONDS,
    busy_timeout: float = 30.0,
) -> State:
    """Open (creating or migrating) the state in ``database`` for the data folder ``data_folder``.

    Parameters
    ----------
    data_folder
        Stored paths inside it are kept relative to it.
    database
        The SQLite file (``[paths] data``/segnode.sqlite3).
    node_id
        Who claims work; default :func:`default_node_id`. Two nodes on one database need different ids.
    lease_seconds
        How long a claim holds before another node may take it over.
    busy_timeout
        Seconds a write waits for another writer before StateUnavailableError.

    Raises
    ------
    StateUnavailableError
        The database cannot be opened or written now (locked, read-only, disk full or I/O error).
    StateError
        The file is not a usable database (damaged, not SQLite).
    InputError
        The database was written by a newer segnode.
    """
    from node.state.sqlite_jobs import SqliteJobStore
    from node.state.sqlite_schema import SqliteDatabase
    from node.state.sqlite_series import SqliteSeriesIndex

    who = node_id or default_node_id()
    backend = SqliteDatabase(database, data_folder, timeout=busy_timeout)
    return State(
        series=SqliteSeriesIndex(backend, who, lease_seconds=lease_seconds),
        jobs=SqliteJobStore(backend, who, lease_seconds=lease_seconds),
        node_id=who,
        backend=backend,
    )
