"""What the node's state holds, whatever stores it: the states (str Enums), the rows, the claim policy.

Every back end (SQLite today, :mod:`node.state.sqlite_schema` and its two stores; PostgreSQL later) returns
these rows and accepts these states, so the pipeline never sees a back end's types. Times are POSIX seconds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from node.errors import SegnodeError

#: How long a claim on due work (a series, a job to build, a send) holds before another node may take it over.
#: Longer than the slowest step (export of a large series, a SEG build); a node that stops releases its claims.
CLAIM_LEASE_SECONDS = 900.0

#: After an association that sent a series is released, the series becomes due once no instance of it has
#: arrived for this long (instead of the full quiet period).
HINT_GRACE_SECONDS = 2.0


class SeriesState(str, Enum):
    """Where a received series is on its way to export."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    EXPORTED = "exported"
    FAILED = "failed"


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


class StateError(SegnodeError):
    """The state back end refused an operation in a way retrying cannot fix (a damaged file, a bug)."""


@dataclass(frozen=True)
class SeriesRow:
    """One series as the index knows it.

    ``revision`` grows with every instance received; pass it back as ``if_revision`` when marking the series, so
    a series that changed while it was being exported is not marked done. ``export_version`` is the revision the
    last export was made from. ``claimed_by``/``lease_until``: the node working on it, and until when.
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
    claimed_by: str | None = None
    lease_until: float | None = None


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
    claimed_by: str | None = None
    lease_until: float | None = None


@dataclass(frozen=True)
class JobRow:
    """One job and its sends.

    ``attempts``/``next_at``: transient build failures so far and when the next build attempt is due (a job in
    RETRY_WAIT without a SEG); sends count their own attempts.
    """

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
    attempts: int = 0
    next_at: float | None = None
    claimed_by: str | None = None
    lease_until: float | None = None
    #: How the input was matched to its series: "name", "sidecar" or "geometry" (None before it was matched).
    matched_by: str | None = None


#: Series states in which a series is finished with: what retention may remove once it is old enough.
FINISHED_SERIES = (SeriesState.EXPORTED, SeriesState.FAILED)


@dataclass(frozen=True)
class RemovedJob:
    """A job retention removed from the state, for deleting its files: the row as it was, and whether another
    job still uses its SEG file (the same item built again gets the same SEG UID, so the same file)."""

    job: JobRow
    seg_shared: bool


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
