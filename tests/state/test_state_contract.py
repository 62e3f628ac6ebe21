"""The contract of node.state's Protocols (SeriesIndex, JobStore), written against the Protocols only.

Every back end must pass it: the ``backend`` fixture is parametrized by back end (SQLite today; PostgreSQL adds a
parameter). Tests that need the back end's own storage (a database in the previous schema, a damaged file) say
so by name and skip for other back ends.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from node.errors import InputError, StateUnavailableError, TransientError
from node.state import State, open_state
from node.state.model import (
    HINT_GRACE_SECONDS,
    JobState,
    JobStateError,
    SendState,
    SeriesState,
    StateError,
    item_signature,
)

STUDY = "1.2.826.0.1.3680043.8.498.9"
CT = "1.2.840.10008.5.1.4.1.1.2"
SEG_UID = "1.2.826.0.1.3680043.8.498.77"
QUIET = 30.0
LEASE = 60.0
T0 = 10_000.0


def series_uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.{100 + n}"


@dataclass
class Backend:
    """Opens states of one back end on ONE database, as different nodes would."""

    name: str
    data: Path
    database: Path
    opened: list[State] = field(default_factory=list)

    def open(
        self,
        node_id: str = "node-a",
        *,
        data: Path | None = None,
        lease_seconds: float = LEASE,
        busy_timeout: float = 5.0,
    ) -> State:
        state = open_state(
            data or self.data, self.database, node_id=node_id, lease_seconds=lease_seconds, busy_timeout=busy_timeout
        )
        self.opened.append(state)
        return state


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    data = tmp_path / "data"
    data.mkdir()
    handle = Backend(request.param, data, data / "segnode.sqlite3")
    try:
        yield handle
    finally:
        for state in handle.opened:
            state.close()


@pytest.fixture
def state(backend: Backend) -> State:
    return backend.open()


def receive(state: State, data: Path, series: str, sop: str, at: float, size: int = 100) -> Path:
    path = data / "instances" / series / f"{sop}.dcm"
    state.series.record_instance(series, STUDY, sop, CT, path, size, at)
    return path


def due_uids(state: State, now: float) -> list[str]:
    """Claim what is due at ``now`` and give the claims back: which series are due, oldest first."""
    rows = state.series.claim_due(QUIET, now=now)
    for row in rows:
        state.series.release(row.series_uid)
    return [row.series_uid for row in rows]


def new_job(state: State, data: Path, name: str = "liver.nii.gz", at: float = T0) -> int:
    return state.jobs.create(data / "inbox" / name, "nifti", signature=f"file:1:{name}", now=at)


def built_job(state: State, data: Path, destinations: list[str], name: str = "liver.nii.gz") -> int:
    job_id = new_job(state, data, name)
    assert state.jobs.claim_job(job_id, now=T0) is not None
    assert state.jobs.mark_matched(job_id, series_uid(1), now=T0 + 1)
    assert state.jobs.mark_built(job_id, data / "segs" / f"{name}.dcm", SEG_UID, destinations, now=T0 + 2)
    return job_id


# -- series ----------------------------------------------------------------------------------------------------------


def test_series_life_cycle_through_claims(backend: Backend, state: State) -> None:
    first = receive(state, backend.data, series_uid(1), "1.1", T0)
    receive(state, backend.data, series_uid(1), "1.2", T0 + 1)
    assert state.series.claim_due(QUIET, now=T0 + 10) == []
    [row] = state.series.claim_due(QUIET, now=T0 + 1 + QUIET)
    assert (row.series_uid, row.state, row.instance_count, row.claimed_by) == (
        series_uid(1),
        SeriesState.RECEIVING,
        2,
        "node-a",
    )
    assert state.series.claim_due(QUIET, now=T0 + 1 + QUIET) == []  # claimed: not handed out twice
    assert state.series.mark(row.series_uid, SeriesState.COMPLETE, if_revision=row.revision, now=T0 + 40)
    [complete] = state.series.claim_in_state(SeriesState.COMPLETE, now=T0 + 41)
    assert state.series.mark(complete.series_uid, "exported", if_revision=complete.revision, now=T0 + 42)
    done = state.series.get(series_uid(1))
    assert done is not None and done.state is SeriesState.EXPORTED and done.export_version == row.revision
    assert done.claimed_by is None  # completing released the claim
    assert state.series.instances(series_uid(1))[0] == first
    assert state.series.counts()[SeriesState.EXPORTED] == 1
    assert [r.series_uid for r in state.series.list_series(SeriesState.EXPORTED)] == [series_uid(1)]
    # A late instance re-opens it.
    receive(state, backend.data, series_uid(1), "1.3", T0 + 100)
    again = state.series.get(series_uid(1))
    assert again is not None and again.state is SeriesState.RECEIVING and again.revision > done.revision


def test_a_series_that_changed_while_claimed_is_released_not_marked(backend: Backend, state: State) -> None:
    receive(state, backend.data, series_uid(1), "1.1", T0)
    [row] = state.series.claim_due(QUIET, now=T0 + QUIET)
    receive(state, backend.data, series_uid(1), "1.2", T0 + QUIET + 1)
    assert not state.series.mark(row.series_uid, SeriesState.COMPLETE, if_revision=row.revision)
    current = state.series.get(row.series_uid)
    assert current is not None and current.state is SeriesState.RECEIVING and current.claimed_by is None
    [due] = state.series.claim_due(QUIET, now=T0 + 2 * QUIET + 1)
    assert due.revision == row.revision + 1


def test_hinted_series_is_due_after_the_grace(backend: Backend, state: State) -> None:
    receive(state, backend.data, series_uid(1), "1.1", T0)
    assert state.series.hint_complete([series_uid(1), series_uid(1)], now=T0 + 1) == 1
    assert state.series.claim_due(QUIET, now=T0 + 2, grace_seconds=2.0) == []
    assert [r.series_uid for r in state.series.claim_due(QUIET, now=T0 + 3, grace_seconds=2.0)] == [series_uid(1)]


def test_instances_group_into_a_receiving_series(backend: Backend, state: State) -> None:
    s1, s2 = series_uid(1), series_uid(2)
    path = backend.data / "instances" / s1 / "1.1.dcm"
    assert state.series.record_instance(s1, STUDY, "1.1", CT, path, 100, T0) is False  # a new series: not re-opened
    receive(state, backend.data, s1, "1.2", T0 + 2)
    receive(state, backend.data, s2, "2.1", T0 + 1)
    row = state.series.get(s1)
    assert row is not None
    assert (row.state, row.study_uid, row.instance_count, row.reason) == (SeriesState.RECEIVING, STUDY, 2, None)
    assert (row.first_received_at, row.last_received_at) == (T0, T0 + 2)
    assert state.series.instances(s1) == [path, path.with_name("1.2.dcm")]
    assert [r.series_uid for r in state.series.list_series()] == [s1, s2]  # most recently received first
    assert [r.series_uid for r in state.series.list_series(limit=1)] == [s1]
    assert state.series.counts() == {
        SeriesState.RECEIVING: 2,
        SeriesState.COMPLETE: 0,
        SeriesState.EXPORTED: 0,
        SeriesState.FAILED: 0,
    }


def test_a_resent_instance_replaces_the_earlier_one(backend: Backend, state: State) -> None:
    path = receive(state, backend.data, series_uid(1), "1.1", T0, size=100)
    receive(state, backend.data, series_uid(1), "1.1", T0 + 10, size=250)
    row = state.series.get(series_uid(1))
    assert row is not None and (row.instance_count, row.last_received_at) == (1, T0 + 10)
    assert state.series.instances(series_uid(1)) == [path]
    if backend.name == "sqlite":
        raw = sqlite3.connect(backend.database)
        try:
            assert raw.execute("SELECT size FROM instances").fetchall() == [(250,)]
        finally:
            raw.close()


def test_a_series_is_due_only_after_the_quiet_period_oldest_first(backend: Backend, state: State) -> None:
    s1, s2 = series_uid(1), series_uid(2)
    receive(state, backend.data, s1, "1.1", T0)
    receive(state, backend.data, s2, "2.1", T0 + 10)
    assert due_uids(state, T0 + QUIET - 0.5) == []
    assert due_uids(state, T0 + QUIET) == [s1]
    assert due_uids(state, T0 + 100) == [s1, s2]
    [row, _] = state.series.claim_due(QUIET, now=T0 + 100)
    assert state.series.mark(s1, SeriesState.COMPLETE, if_revision=row.revision)
    assert state.series.release(s2)
    assert due_uids(state, T0 + 100) == [s2]


def test_a_late_instance_reopens_an_exported_series(backend: Backend, state: State) -> None:
    s1 = series_uid(1)
    receive(state, backend.data, s1, "1.1", T0)
    [due] = state.series.claim_due(QUIET, now=T0 + 100)
    assert state.series.mark(s1, "complete", if_revision=due.revision)
    assert state.series.claim_in_state("complete")
    assert state.series.mark(s1, SeriesState.EXPORTED, if_revision=due.revision)
    exported = state.series.get(s1)
    assert exported is not None and exported.export_version == due.revision
    path = backend.data / "instances" / s1 / "1.2.dcm"
    assert state.series.record_instance(s1, STUDY, "1.2", CT, path, 100, T0 + 200) is True
    reopened = state.series.get(s1)
    assert reopened is not None
    assert (reopened.state, reopened.last_received_at, reopened.instance_count) == (SeriesState.RECEIVING, T0 + 200, 2)
    assert reopened.revision > exported.revision and reopened.export_version == exported.export_version
    assert due_uids(state, T0 + 200 + QUIET - 1) == []
    assert due_uids(state, T0 + 200 + QUIET) == [s1]


def test_a_failed_series_keeps_its_reason_until_an_instance_reopens_it(backend: Backend, state: State) -> None:
    s1 = series_uid(1)
    receive(state, backend.data, s1, "1.1", T0)
    state.series.claim_due(QUIET, now=T0 + QUIET)
    assert state.series.mark(s1, SeriesState.FAILED, reason="slices are not parallel")
    row = state.series.get(s1)
    assert row is not None and (row.state, row.reason, row.claimed_by) == (
        SeriesState.FAILED,
        "slices are not parallel",
        None,
    )
    assert [r.series_uid for r in state.series.list_series(state="failed")] == [s1]
    assert state.series.list_series(SeriesState.RECEIVING) == []
    assert state.series.counts() == {
        SeriesState.RECEIVING: 0,
        SeriesState.COMPLETE: 0,
        SeriesState.EXPORTED: 0,
        SeriesState.FAILED: 1,
    }
    with pytest.raises(InputError, match="not known"):
        state.series.mark(series_uid(9), SeriesState.COMPLETE)
    with pytest.raises(ValueError):
        state.series.mark(s1, "finished")
    path = backend.data / "instances" / s1 / "1.2.dcm"
    assert state.series.record_instance(s1, STUDY, "1.2", CT, path, 100, T0 + 100) is True
    again = state.series.get(s1)
    assert again is not None and (again.state, again.reason) == (SeriesState.RECEIVING, None)


def test_a_release_hint_makes_the_series_due_after_the_default_grace(backend: Backend, state: State) -> None:
    receive(state, backend.data, series_uid(1), "1.1", T0)
    receive(state, backend.data, series_uid(2), "2.1", T0)
    assert state.series.hint_complete([series_uid(1)], now=T0 + 0.5) == 1
    assert due_uids(state, T0 + 0.5 + HINT_GRACE_SECONDS - 0.1) == []
    assert due_uids(state, T0 + 0.5 + HINT_GRACE_SECONDS) == [series_uid(1)]


def test_an_instance_after_the_hint_voids_it(backend: Backend, state: State) -> None:
    """A second association still sending the series: the first one's release must not complete it."""
    s1, s2 = series_uid(1), series_uid(2)
    for series in (s1, s2):
        receive(state, backend.data, series, "1", T0)
    assert state.series.hint_complete([s1, s2], now=T0 + 0.5) == 2
    for series in (s1, s2):
        receive(state, backend.data, series, "2", T0 + 1)  # from the other association
    assert due_uids(state, T0 + 10) == []
    assert state.series.hint_complete([s1], now=T0 + 11) == 1  # the other association is released in turn
    assert due_uids(state, T0 + 11 + HINT_GRACE_SECONDS) == [s1]
    assert due_uids(state, T0 + 1 + QUIET) == [s1, s2]  # the quiet period still applies to the voided one


def test_a_hint_ignores_series_that_are_not_receiving(backend: Backend, state: State) -> None:
    receive(state, backend.data, series_uid(1), "1.1", T0)
    state.series.claim_due(QUIET, now=T0 + QUIET)
    assert state.series.mark(series_uid(1), SeriesState.EXPORTED)
    assert state.series.hint_complete([series_uid(1), series_uid(9)], now=T0 + 100) == 0
    assert state.series.hint_complete([], now=T0 + 100) == 0
    row = state.series.get(series_uid(1))
    assert row is not None and row.hint_at is None


def test_threads_and_nodes_record_at_once_without_losing_rows(backend: Backend, state: State) -> None:
    other = backend.open("node-b")
    errors: list[BaseException] = []

    def writer(on: State, series: str) -> None:
        try:
            for i in range(20):
                receive(on, backend.data, series, f"{i + 1}", T0 + i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(on, series_uid(n))) for n, on in enumerate((state, state, other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(row.instance_count for row in backend.open("node-c").series.list_series()) == [20, 20, 20]


def test_unknown_series(state: State) -> None:
    assert state.series.get(series_uid(9)) is None
    assert state.series.instances(series_uid(9)) == []
    with pytest.raises(InputError):
        state.series.mark(series_uid(9), SeriesState.FAILED, reason="x")


# -- jobs ------------------------------------------------------------------------------------------------------------


def test_job_happy_path_to_sent(backend: Backend, state: State) -> None:
    assert state.jobs.oldest_unfinished_at() is None
    job_id = new_job(state, backend.data)
    assert state.jobs.oldest_unfinished_at() == state.jobs.get(job_id).created_at
    assert new_job(state, backend.data) == job_id  # one job per item version
    [claimed] = state.jobs.claim_jobs(now=T0)
    assert claimed.id == job_id and claimed.state is JobState.PENDING and claimed.claimed_by == "node-a"
    assert state.jobs.claim_jobs(now=T0) == []
    assert state.jobs.get(job_id).matched_by is None
    assert state.jobs.mark_matched(job_id, series_uid(1), how="sidecar", now=T0 + 1)
    seg = backend.data / "segs" / "x.dcm"
    assert state.jobs.mark_built(job_id, seg, SEG_UID, ["pacs", "archive"], now=T0 + 2)
    job = state.jobs.get(job_id)
    assert job.state is JobState.BUILT and job.seg_path == seg and job.claimed_by is None
    assert job.matched_by == "sidecar"  # kept for the status page
    sends = state.jobs.claim_sends(now=T0 + 2)
    assert sorted(s.destination for s in sends) == ["archive", "pacs"]
    assert all(s.seg_path == seg and s.seg_sop_uid == SEG_UID for s in sends)
    assert state.jobs.claim_sends(now=T0 + 2) == []
    for send in sends:
        assert state.jobs.mark_send_ok(send.id, now=T0 + 3)
    assert state.jobs.get(job_id).state is JobState.SENT
    assert state.jobs.resumable() == [] and state.jobs.oldest_unfinished_at() is None
    assert state.jobs.counts()[JobState.SENT] == 1
    assert [j.id for j in state.jobs.list_jobs(JobState.SENT)] == [job_id]


def test_transient_build_failure_waits_then_is_due_again(backend: Backend, state: State) -> None:
    job_id = new_job(state, backend.data)
    state.jobs.claim_jobs(now=T0)
    assert state.jobs.mark_retry_later(job_id, "disk full", T0 + 60, now=T0 + 1)
    job = state.jobs.get(job_id)
    assert (job.state, job.attempts, job.next_at, job.reason, job.claimed_by) == (
        JobState.RETRY_WAIT,
        1,
        T0 + 60,
        "disk full",
        None,
    )
    assert state.jobs.claim_jobs(now=T0 + 59) == []
    [again] = state.jobs.claim_jobs(now=T0 + 60)
    assert again.id == job_id and again.attempts == 1
    assert state.jobs.mark_matched(job_id, series_uid(1), now=T0 + 61)
    assert state.jobs.mark_built(job_id, backend.data / "segs" / "x.dcm", SEG_UID, [], now=T0 + 62)
    assert state.jobs.get(job_id).state is JobState.SENT  # no destination: nothing to deliver


def test_send_retry_failure_and_segnode_retry(backend: Backend, state: State) -> None:
    job_id = built_job(state, backend.data, ["pacs", "archive"])
    by_name = {s.destination: s for s in state.jobs.claim_sends(now=T0 + 2)}
    assert state.jobs.mark_send_retry(by_name["pacs"].id, "connection refused", T0 + 60, now=T0 + 3)
    assert state.jobs.get(job_id).state is JobState.RETRY_WAIT
    assert state.jobs.mark_send_ok(by_name["archive"].id, now=T0 + 3)
    assert state.jobs.claim_sends(now=T0 + 59) == []
    [due] = state.jobs.claim_sends(now=T0 + 60)
    assert (due.destination, due.attempts, due.state) == ("pacs", 1, SendState.RETRY_WAIT)
    assert state.jobs.mark_send_failed(due.id, "0xA900 refused", now=T0 + 61)
    job = state.jobs.get(job_id)
    assert job.state is JobState.FAILED and "pacs: 0xA900 refused" in (job.reason or "")
    assert state.jobs.retry(job_id, now=T0 + 70) is JobState.BUILT
    [resend] = state.jobs.claim_sends(now=T0 + 70)
    assert (resend.destination, resend.attempts, resend.state, resend.reason) == ("pacs", 0, SendState.PENDING, None)
    assert [s.state for s in state.jobs.get(job_id).sends] == [SendState.OK, SendState.PENDING]  # archive: not resent
    with pytest.raises(JobStateError):
        state.jobs.retry(job_id)


def test_failed_before_the_seg_is_retried_from_pending(backend: Backend, state: State) -> None:
    job_id = new_job(state, backend.data)
    state.jobs.claim_job(job_id, now=T0)
    assert state.jobs.mark_matched(job_id, series_uid(1), how="geometry", now=T0 + 1)
    assert state.jobs.mark_failed(job_id, "grid does not overlap", now=T0 + 1)
    assert state.jobs.claim_jobs(now=T0 + 2) == []
    assert state.jobs.retry(job_id, now=T0 + 3) is JobState.PENDING
    job = state.jobs.get(job_id)
    assert (job.state, job.reason, job.series_uid, job.claimed_by) == (JobState.PENDING, None, None, None)
    assert job.matched_by is None  # matched afresh: the old match says nothing about the next one
    assert [j.id for j in state.jobs.claim_jobs(now=T0 + 3)] == [job_id]
    assert state.jobs.mark_matched(job_id, series_uid(1), now=T0 + 4)  # and it goes on from there


def test_retry_of_a_waiting_job_makes_it_due_now(backend: Backend, state: State) -> None:
    sending = built_job(state, backend.data, ["pacs"])
    [send] = state.jobs.claim_sends(now=T0 + 2)
    assert state.jobs.mark_send_retry(send.id, "busy", T0 + 600, now=T0 + 3)
    building = new_job(state, backend.data, "other.nii.gz")
    state.jobs.claim_job(building, now=T0)
    assert state.jobs.mark_retry_later(building, "disk full", T0 + 600, now=T0 + 3)
    assert state.jobs.claim_sends(now=T0 + 5) == [] and state.jobs.claim_jobs(now=T0 + 5) == []
    assert state.jobs.retry(sending, now=T0 + 5) is JobState.RETRY_WAIT
    assert state.jobs.retry(building, now=T0 + 5) is JobState.RETRY_WAIT
    assert [s.destination for s in state.jobs.claim_sends(now=T0 + 5)] == ["pacs"]
    assert [j.id for j in state.jobs.claim_jobs(now=T0 + 5)] == [building]


def test_invalid_transitions_by_the_claim_holder_raise(backend: Backend, state: State) -> None:
    job_id = new_job(state, backend.data)
    state.jobs.claim_job(job_id, now=T0)
    with pytest.raises(JobStateError, match=f"job {job_id}: cannot record the SEG of a job that is pending"):
        state.jobs.mark_built(job_id, backend.data / "x.dcm", SEG_UID, ["pacs"])  # not matched yet
    sent = built_job(state, backend.data, ["pacs"], name="other.nii.gz")
    [send] = state.jobs.claim_sends(now=T0 + 2)
    assert state.jobs.mark_send_ok(send.id, now=T0 + 3)
    assert state.jobs.claim_job(sent, now=T0 + 4) is None  # a sent job is never built again
    assert not state.jobs.mark_matched(sent, series_uid(1)) and not state.jobs.mark_failed(sent, "too late")
    assert state.jobs.get(sent).state is JobState.SENT
    with pytest.raises(JobStateError, match="cannot retry a job that is sent"):
        state.jobs.retry(sent)
    with pytest.raises(JobStateError, match="cannot retry a job that is pending"):
        state.jobs.retry(job_id)
    with pytest.raises(InputError, match="job 999 does not exist"):
        state.jobs.get(999)
    with pytest.raises(InputError):
        state.jobs.mark_matched(999, series_uid(1))
    with pytest.raises(InputError):
        state.jobs.mark_send_ok(999)


def test_a_refused_transition_changes_nothing(backend: Backend, state: State) -> None:
    job_id = new_job(state, backend.data)
    state.jobs.claim_job(job_id, now=T0)
    assert state.jobs.mark_matched(job_id, series_uid(1), now=T0 + 1)
    with pytest.raises(InputError, match="destination names"):
        state.jobs.mark_built(job_id, backend.data / "x.dcm", SEG_UID, ["pacs", object()])  # type: ignore[list-item]
    job = state.jobs.get(job_id)
    assert (job.state, job.seg_path, job.sends, job.claimed_by) == (JobState.MATCHED, None, (), "node-a")


def test_create_is_idempotent_per_item_version(backend: Backend, state: State) -> None:
    item = backend.data / "inbox" / "liver.nii.gz"
    item.parent.mkdir()
    item.write_bytes(b"nifti bytes")
    first = state.jobs.create(item, "nifti")  # signed by item_signature
    assert state.jobs.create(item, "nifti") == first
    item.write_bytes(b"a new result under the same name")
    os.utime(item, ns=(1, 1))
    second = state.jobs.create(item, "nifti")
    assert second != first
    row = state.jobs.get(second)
    assert (row.state, row.inbox_path, row.item_kind, row.sends, row.attempts) == (
        JobState.PENDING,
        item,
        "nifti",
        (),
        0,
    )
    with pytest.raises(InputError):
        state.jobs.create(item, "")


def test_a_folder_signature_changes_when_a_mask_changes(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    folder.mkdir()
    (folder / "liver.nii.gz").write_bytes(b"1")
    before = item_signature(folder)
    assert item_signature(folder) == before
    (folder / "spleen.nii.gz").write_bytes(b"2")
    assert item_signature(folder) != before


def test_one_send_per_destination_and_the_job_settles_when_all_are_done(backend: Backend, state: State) -> None:
    job_id = built_job(state, backend.data, ["pacs", "archive", "pacs"])
    job = state.jobs.get(job_id)
    assert (job.state, job.series_uid, job.seg_sop_uid) == (JobState.BUILT, series_uid(1), SEG_UID)
    assert [(s.destination, s.state, s.attempts) for s in job.sends] == [
        ("archive", SendState.PENDING, 0),
        ("pacs", SendState.PENDING, 0),
    ]
    by_name = {s.destination: s for s in state.jobs.claim_sends(now=T0 + 2)}
    assert state.jobs.mark_send_ok(by_name["pacs"].id, now=T0 + 3)
    assert state.jobs.get(job_id).state is JobState.BUILT  # archive is still to be sent
    assert state.jobs.mark_send_ok(by_name["archive"].id, now=T0 + 4)
    assert state.jobs.get(job_id).state is JobState.SENT
    assert state.jobs.claim_sends(now=T0 + 100) == [] and state.jobs.resumable() == []


def test_a_send_waits_for_its_next_attempt(backend: Backend, state: State) -> None:
    job_id = built_job(state, backend.data, ["pacs"])
    [send] = state.jobs.claim_sends(now=T0 + 2)
    assert state.jobs.mark_send_retry(send.id, "connection refused", T0 + 60, now=T0 + 3)
    assert state.jobs.get(job_id).state is JobState.RETRY_WAIT
    assert state.jobs.claim_sends(now=T0 + 59) == []
    [due] = state.jobs.claim_sends(now=T0 + 60)
    assert (due.id, due.attempts, due.reason, due.state) == (send.id, 1, "connection refused", SendState.RETRY_WAIT)
    assert state.jobs.mark_send_ok(send.id, now=T0 + 61)
    job = state.jobs.get(job_id)
    assert (job.state, job.sends[0].attempts, job.sends[0].state) == (JobState.SENT, 2, SendState.OK)


def test_one_destination_failing_does_not_stop_the_other(backend: Backend, state: State) -> None:
    job_id = built_job(state, backend.data, ["pacs", "archive"])
    [pacs] = state.jobs.claim_sends(now=T0 + 2, limit=1)
    assert pacs.destination == "pacs"
    assert state.jobs.mark_send_failed(pacs.id, "0xA900 refused", now=T0 + 3)
    assert state.jobs.get(job_id).state is JobState.BUILT
    [archive] = state.jobs.claim_sends(now=T0 + 3)
    assert archive.destination == "archive" and state.jobs.mark_send_ok(archive.id, now=T0 + 4)
    job = state.jobs.get(job_id)
    assert (job.state, job.reason) == (JobState.FAILED, "pacs: 0xA900 refused")


def test_states_are_str_enums_stored_as_their_values(backend: Backend, state: State) -> None:
    job_id = built_job(state, backend.data, ["pacs"])
    assert isinstance(JobState.BUILT, str) and JobState("built") is JobState.BUILT
    assert [j.id for j in state.jobs.list_jobs(state="built")] == [job_id]
    if backend.name == "sqlite":
        raw = sqlite3.connect(backend.database)
        try:
            assert raw.execute("SELECT state FROM jobs").fetchall() == [("built",)]
        finally:
            raw.close()


def test_resumable_listed_and_counted_jobs(backend: Backend, state: State) -> None:
    names = ("pending", "matched", "built", "waiting", "sent", "failed")
    ids = {name: new_job(state, backend.data, f"{name}.nii.gz") for name in names}
    for name in names[1:]:
        assert state.jobs.claim_job(ids[name], now=T0) is not None
        assert state.jobs.mark_matched(ids[name], series_uid(1), now=T0)
    for name in ("built", "waiting", "sent"):
        assert state.jobs.mark_built(ids[name], backend.data / "segs" / f"{name}.dcm", SEG_UID, ["pacs"], now=T0 + 1)
    sends = {s.job_id: s for s in state.jobs.claim_sends(now=T0 + 2)}
    assert state.jobs.mark_send_retry(sends[ids["waiting"]].id, "busy", T0 + 60, now=T0 + 3)
    assert state.jobs.mark_send_ok(sends[ids["sent"]].id, now=T0 + 3)
    assert state.jobs.mark_failed(ids["failed"], "no series matches", now=T0 + 3)
    resumable = state.jobs.resumable()  # oldest first
    assert [j.id for j in resumable] == [ids[n] for n in ("pending", "matched", "built", "waiting")]
    assert [j.state for j in resumable] == [JobState.PENDING, JobState.MATCHED, JobState.BUILT, JobState.RETRY_WAIT]
    assert [j.id for j in state.jobs.list_jobs()] == sorted(ids.values(), reverse=True)  # newest first
    assert [j.id for j in state.jobs.list_jobs(limit=2)] == [ids["failed"], ids["sent"]]
    assert state.jobs.counts() == dict.fromkeys(JobState, 1)


# -- claims across nodes ---------------------------------------------------------------------------------------------


def test_each_due_item_is_claimed_by_exactly_one_node(backend: Backend) -> None:
    a, b = backend.open("node-a"), backend.open("node-b")
    for n in range(12):
        receive(a, backend.data, series_uid(n), f"{n}.1", T0)
        built_job(a, backend.data, ["pacs"], name=f"item{n}.nii.gz")
    for n in range(12):
        new_job(a, backend.data, f"new{n}.nii.gz")
    now = T0 + QUIET + 10
    results: dict[str, dict[str, list[object]]] = {"node-a": {}, "node-b": {}}
    start = threading.Barrier(2)

    def work(state: State) -> None:
        start.wait()
        mine = results[state.node_id]
        mine["series"], mine["jobs"], mine["sends"] = [], [], []
        for _ in range(6):  # small batches, interleaved with the other node
            mine["series"] += [r.series_uid for r in state.series.claim_due(QUIET, now=now, limit=2)]
            mine["jobs"] += [r.id for r in state.jobs.claim_jobs(now=now, limit=2)]
            mine["sends"] += [r.id for r in state.jobs.claim_sends(now=now, limit=2)]

    threads = [threading.Thread(target=work, args=(s,)) for s in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for kind, total in (("series", 12), ("jobs", 12), ("sends", 12)):
        got_a, got_b = results["node-a"][kind], results["node-b"][kind]
        assert not set(got_a) & set(got_b), kind
        assert len(got_a) + len(got_b) == len(set(got_a) | set(got_b)) == total, kind


def test_an_expired_claim_is_taken_over_and_the_losers_completion_is_reported(backend: Backend) -> None:
    a, b = backend.open("node-a"), backend.open("node-b")
    job_id = built_job(a, backend.data, ["pacs"])
    [send] = a.jobs.claim_sends(now=T0 + 2)
    assert b.jobs.claim_sends(now=T0 + 2 + LEASE - 1) == []  # A's lease still holds
    [taken] = b.jobs.claim_sends(now=T0 + 2 + LEASE + 1)
    assert taken.id == send.id and taken.claimed_by == "node-b"
    assert not a.jobs.mark_send_retry(send.id, "timed out", T0 + 500)  # lost: reported, nothing changed
    assert b.jobs.mark_send_ok(send.id)
    assert not a.jobs.mark_send_ok(send.id)  # the second "ok" neither raises nor changes anything
    assert not b.jobs.mark_send_ok(send.id)
    job = a.jobs.get(job_id)
    assert job.state is JobState.SENT and job.sends[0].attempts == 1


def test_expired_series_and_job_claims_are_taken_over(backend: Backend) -> None:
    a, b = backend.open("node-a"), backend.open("node-b")
    receive(a, backend.data, series_uid(1), "1.1", T0)
    [row] = a.series.claim_due(QUIET, now=T0 + QUIET)
    [taken] = b.series.claim_due(QUIET, now=T0 + QUIET + LEASE + 1)
    assert taken.series_uid == row.series_uid
    assert not a.series.mark(row.series_uid, SeriesState.COMPLETE, if_revision=row.revision)
    assert b.series.mark(row.series_uid, SeriesState.COMPLETE, if_revision=row.revision)
    job_id = new_job(a, backend.data)
    assert a.jobs.claim_job(job_id, now=T0) is not None
    assert b.jobs.claim_job(job_id, now=T0 + 1) is None
    assert b.jobs.claim_job(job_id, now=T0 + LEASE + 1) is not None
    assert not a.jobs.mark_matched(job_id, series_uid(1))
    assert not a.jobs.mark_failed(job_id, "too late")
    assert b.jobs.mark_matched(job_id, series_uid(1))
    assert a.jobs.get(job_id).state is JobState.MATCHED


def test_released_claims_are_free_at_once(backend: Backend) -> None:
    a, b = backend.open("node-a"), backend.open("node-b")
    receive(a, backend.data, series_uid(1), "1.1", T0)
    built_job(a, backend.data, ["pacs"])
    a.series.claim_due(QUIET, now=T0 + QUIET)
    a.jobs.claim_sends(now=T0 + QUIET)
    assert a.release_claims() == 2
    assert len(b.series.claim_due(QUIET, now=T0 + QUIET)) == 1
    assert len(b.jobs.claim_sends(now=T0 + QUIET)) == 1
    assert b.series.release(series_uid(1)) and not b.series.release(series_uid(1))


# -- paths -----------------------------------------------------------------------------------------------------------


def test_paths_round_trip_and_follow_a_moved_data_folder(backend: Backend, tmp_path: Path) -> None:
    state = backend.open()
    instance = receive(state, backend.data, series_uid(1), "1.1", T0)
    outside = tmp_path / "elsewhere" / "inbox" / "a.nii.gz"
    inside = state.jobs.create(backend.data / "inbox" / "b.nii.gz", "nifti", signature="s1")
    elsewhere = state.jobs.create(outside, "nifti", signature="s2")
    state.jobs.claim_job(inside)
    state.jobs.mark_matched(inside, series_uid(1))
    state.jobs.mark_built(inside, backend.data / "segs" / "b.dcm", SEG_UID, ["pacs"])
    assert state.series.instances(series_uid(1)) == [instance]
    assert state.jobs.get(inside).inbox_path == backend.data / "inbox" / "b.nii.gz"
    assert state.jobs.get(elsewhere).inbox_path == outside
    state.close()
    moved = tmp_path / "moved"
    shutil.copytree(backend.data, moved)
    there = backend.open(data=moved)
    assert there.series.instances(series_uid(1)) == [moved / "instances" / series_uid(1) / "1.1.dcm"]
    job = there.jobs.get(inside)
    assert job.inbox_path == moved / "inbox" / "b.nii.gz" and job.seg_path == moved / "segs" / "b.dcm"
    assert job.sends[0].seg_path == moved / "segs" / "b.dcm"
    assert there.jobs.get(elsewhere).inbox_path == outside  # outside the data folder: kept absolute


def test_sqlite_stores_paths_inside_the_data_folder_relative(backend: Backend) -> None:
    if backend.name != "sqlite":
        pytest.skip("inspects the SQLite file")
    state = backend.open()
    receive(state, backend.data, series_uid(1), "1.1", T0)
    raw = sqlite3.connect(backend.database)
    try:
        assert raw.execute("SELECT path FROM instances").fetchone()[0] == f"instances/{series_uid(1)}/1.1.dcm"
    finally:
        raw.close()


# -- SQLite's own settings and transactions --------------------------------------------------------------------------


def test_sqlite_is_wal_with_foreign_keys_and_a_reopened_state_keeps_its_rows(backend: Backend) -> None:
    if backend.name != "sqlite":
        pytest.skip("reads SQLite's settings")
    from node.state.sqlite_schema import SCHEMA_VERSION, SqliteDatabase

    state = backend.open()
    receive(state, backend.data, series_uid(1), "1.1", T0)
    assert isinstance(state.backend, SqliteDatabase)
    with state.backend.reading("read the settings") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    state.close()
    again = backend.open()  # re-opening migrates nothing and keeps the data
    assert [row.series_uid for row in again.series.list_series()] == [series_uid(1)]


def test_a_database_of_a_newer_schema_is_refused_not_misread(backend: Backend) -> None:
    if backend.name != "sqlite":
        pytest.skip("writes SQLite's schema version")
    from node.state.sqlite_schema import SCHEMA_VERSION

    backend.open().close()
    raw = sqlite3.connect(backend.database)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(InputError, match="newer than this segnode understands"):
        backend.open()


def test_a_sqlite_write_that_raises_is_rolled_back(backend: Backend, state: State) -> None:
    if backend.name != "sqlite":
        pytest.skip("writes through SQLite's connection")
    from node.state.sqlite_schema import SqliteDatabase

    assert isinstance(state.backend, SqliteDatabase)
    with pytest.raises(RuntimeError), state.backend.writing("crash before commit") as conn:
        conn.execute(
            "INSERT INTO series (series_uid, study_uid, state, first_received_at, last_received_at,"
            " updated_at) VALUES (?, ?, 'receiving', 1, 1, 1)",
            (series_uid(1), STUDY),
        )
        raise RuntimeError("crash before commit")
    assert state.series.list_series() == []
    receive(state, backend.data, series_uid(2), "2.1", T0)  # the pooled connection is usable again
    assert [row.series_uid for row in state.series.list_series()] == [series_uid(2)]


# -- migration from the previous schema ------------------------------------------------------------------------------

#: Schema version 1 exactly as segnode wrote it before claims and relative paths.
_SCHEMA_V1 = """
CREATE TABLE series (series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('receiving', 'complete', 'exported', 'failed')), reason TEXT,
    first_received_at REAL NOT NULL, last_received_at REAL NOT NULL, hint_at REAL,
    revision INTEGER NOT NULL DEFAULT 1, export_version INTEGER, updated_at REAL NOT NULL);
CREATE INDEX series_by_state ON series (state, last_received_at);
CREATE TABLE instances (series_uid TEXT NOT NULL REFERENCES series (series_uid) ON DELETE CASCADE,
    sop_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
    received_at REAL NOT NULL, PRIMARY KEY (series_uid, sop_uid));
CREATE TABLE jobs (id INTEGER PRIMARY KEY, inbox_path TEXT NOT NULL, signature TEXT NOT NULL,
    item_kind TEXT NOT NULL, state TEXT NOT NULL, series_uid TEXT, seg_path TEXT, seg_sop_uid TEXT, reason TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, UNIQUE (inbox_path, signature));
CREATE INDEX jobs_by_state ON jobs (state);
CREATE TABLE sends (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    destination TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at REAL,
    reason TEXT, updated_at REAL NOT NULL, UNIQUE (job_id, destination));
CREATE INDEX sends_due ON sends (state, next_at);
PRAGMA user_version = 1;
"""


def test_a_database_of_the_previous_schema_is_migrated_and_its_absolute_paths_read(backend: Backend) -> None:
    if backend.name != "sqlite":
        pytest.skip("builds a database file in SQLite's previous schema")
    from node.state.sqlite_schema import SCHEMA_VERSION

    data = backend.data
    instance = data / "instances" / series_uid(1) / "1.1.dcm"
    item, seg = data / "inbox" / "old.nii.gz", data / "segs" / "old.dcm"
    raw = sqlite3.connect(backend.database)
    raw.executescript(_SCHEMA_V1)
    raw.execute(
        "INSERT INTO series VALUES (?, ?, 'receiving', NULL, ?, ?, NULL, 1, NULL, ?)",
        (series_uid(1), STUDY, T0, T0, T0),
    )
    raw.execute("INSERT INTO instances VALUES (?, '1.1', ?, ?, 100, ?)", (series_uid(1), CT, str(instance), T0))
    raw.execute(
        "INSERT INTO jobs VALUES (1, ?, 'sig', 'nifti', 'built', ?, ?, ?, NULL, ?, ?)",
        (str(item), series_uid(1), str(seg), SEG_UID, T0, T0),
    )
    raw.execute("INSERT INTO sends VALUES (1, 1, 'pacs', 'pending', 0, ?, NULL, ?)", (T0, T0))
    raw.commit()
    raw.close()
    state = backend.open()
    assert state.series.instances(series_uid(1)) == [instance]
    assert state.jobs.create(item, "nifti", signature="sig") == 1  # the same item, stored absolute before
    [send] = state.jobs.claim_sends(now=T0 + 1)
    assert send.seg_path == seg and state.jobs.mark_send_ok(send.id)
    assert state.jobs.get(1).state is JobState.SENT
    assert state.jobs.get(1).matched_by is None  # a job matched before schema 3 kept no record of how
    [due] = state.series.claim_due(QUIET, now=T0 + QUIET)
    assert due.series_uid == series_uid(1)
    raw = sqlite3.connect(backend.database)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    finally:
        raw.close()


# -- back-end errors -------------------------------------------------------------------------------------------------


def test_a_locked_database_is_state_unavailable(backend: Backend) -> None:
    if backend.name != "sqlite":
        pytest.skip("locks the SQLite file")
    state = backend.open(busy_timeout=0.1)
    locker = sqlite3.connect(backend.database, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StateUnavailableError, match="locked") as caught:
            receive(state, backend.data, series_uid(1), "1.1", T0)
        assert isinstance(caught.value, TransientError) and caught.value.retryable
        with pytest.raises(StateUnavailableError):
            state.jobs.claim_sends(now=T0)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    receive(state, backend.data, series_uid(1), "1.1", T0)  # and it passes


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes read-only files anyway")
def test_a_read_only_database_is_state_unavailable(backend: Backend) -> None:
    if backend.name != "sqlite":
        pytest.skip("makes the SQLite file read-only")
    backend.open().close()
    for path in backend.data.glob("segnode.sqlite3*"):
        path.chmod(0o444)
    backend.data.chmod(0o555)
    try:
        with pytest.raises(StateUnavailableError):
            state = backend.open()
            receive(state, backend.data, series_uid(1), "1.1", T0)
    finally:
        backend.data.chmod(0o755)


def test_a_file_that_is_no_database_is_a_state_error_not_sqlite3(backend: Backend) -> None:
    if backend.name != "sqlite":
        pytest.skip("writes a damaged SQLite file")
    backend.database.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StateError):
        backend.open()


def test_a_closed_state_refuses_work_with_a_transient_error(state: State, backend: Backend) -> None:
    state.close()
    calls: list[Callable[[], object]] = [lambda: state.series.counts(), lambda: state.jobs.claim_sends()]
    for call in calls:
        with pytest.raises(StateUnavailableError):
            call()


# -- retention -------------------------------------------------------------------------------------------------------

DAY = 86_400.0


def finished_series(state: State, data: Path, n: int, at: float, final: SeriesState = SeriesState.EXPORTED) -> str:
    """Series ``n`` received at ``at`` and taken to ``final`` (exported or failed) a minute later."""
    uid = series_uid(n)
    receive(state, data, uid, f"{n}.1", at)
    receive(state, data, uid, f"{n}.2", at)
    claimed = [r.series_uid for r in state.series.claim_due(QUIET, now=at + 60)]
    for other in claimed:
        if other != uid:
            state.series.release(other)  # others due too are not this helper's to finish
    assert uid in claimed
    assert state.series.mark(uid, final, reason="bad pixels" if final is SeriesState.FAILED else None, now=at + 60)
    return uid


def job_of(state: State, data: Path, name: str, series: str, at: float, *, seg: str | None = None) -> int:
    """A job for ``series`` built at ``at`` with one send to "pacs" (still open), its SEG ``segs/<seg>.dcm``."""
    job_id = new_job(state, data, name, at=at)
    assert state.jobs.claim_job(job_id, now=at) is not None
    assert state.jobs.mark_matched(job_id, series, now=at)
    assert state.jobs.mark_built(job_id, data / "segs" / f"{seg or name}.dcm", SEG_UID, ["pacs"], now=at)
    return job_id


def send_all(state: State, job_id: int, at: float, *, ok: bool = True) -> None:
    """The job's sends done at ``at`` (ok or failed); other jobs' sends are left as they were."""
    others = False
    for send in state.jobs.claim_sends(now=at):
        if send.job_id != job_id:
            others = True
        elif ok:
            assert state.jobs.mark_send_ok(send.id, now=at)
        else:
            assert state.jobs.mark_send_failed(send.id, "no", now=at)
    if others:
        state.jobs.release_claims()


def test_expired_series_are_finished_old_unclaimed_and_needed_by_no_job(backend: Backend, state: State) -> None:
    data, before = backend.data, T0 + 30 * DAY
    old_exported = finished_series(state, data, 1, T0)
    old_failed = finished_series(state, data, 2, T0 + 1, SeriesState.FAILED)
    young = finished_series(state, data, 3, before - 30)  # exported after `before`
    receive(state, data, series_uid(4), "4.1", T0)  # still receiving, however old
    needed = finished_series(state, data, 5, T0)
    job_of(state, data, "pending-send.nii.gz", needed, T0 + 100)  # its send is still open
    recently_sent = finished_series(state, data, 6, T0)
    sent = job_of(state, data, "recent.nii.gz", recently_sent, T0 + 100)
    send_all(state, sent, before + 1)  # finished, but after `before`: it may still be retried
    long_sent = finished_series(state, data, 7, T0)
    old_job = job_of(state, data, "old.nii.gz", long_sent, T0 + 100)
    send_all(state, old_job, T0 + 200)

    expired = state.series.expired_series(before, now=before)
    assert [r.series_uid for r in expired] == [old_exported, long_sent, old_failed]
    assert young not in {r.series_uid for r in expired}
    assert [r.series_uid for r in state.series.expired_series(before, now=before, limit=1)] == [old_exported]
    # Complete series count only when the caller says so (export turned off: complete is as far as they go).
    assert state.series.expired_series(before, states=[SeriesState.COMPLETE], now=before) == []
    with pytest.raises(InputError):
        state.series.expired_series(before, states=[])


def test_a_job_waiting_to_be_matched_keeps_every_series(backend: Backend, state: State) -> None:
    old = finished_series(state, backend.data, 1, T0)
    waiting = new_job(state, backend.data, "unmatched.nii.gz", at=T0)  # may match any series
    assert state.series.expired_series(T0 + DAY, now=T0 + DAY) == []
    assert state.series.remove_series(old, before=T0 + DAY, now=T0 + DAY) is None
    state.jobs.claim_job(waiting, now=T0 + 1)
    assert state.jobs.mark_failed(waiting, "no series fits", now=T0 + 2)
    assert [r.series_uid for r in state.series.expired_series(T0 + DAY, now=T0 + DAY)] == [old]


def test_a_removed_series_is_forgotten_and_a_resent_instance_starts_a_fresh_one(backend: Backend, state: State) -> None:
    data, before = backend.data, T0 + DAY
    uid = finished_series(state, data, 1, T0)
    kept = finished_series(state, data, 2, T0)
    files = state.series.instances(uid)
    assert state.series.remove_series(uid, before=before, now=before) == files and len(files) == 2
    assert state.series.get(uid) is None and state.series.instances(uid) == []
    assert state.series.remove_series(uid, before=before, now=before) is None  # gone: nothing more to remove
    assert [r.series_uid for r in state.series.list_series()] == [kept]
    assert state.series.counts()[SeriesState.EXPORTED] == 1
    # The same series sent again: a new series from its first instance, not the old one re-opened.
    assert receive(state, data, uid, "1.9", before + 5) and not state.series.record_instance(
        uid, STUDY, "1.10", CT, data / "instances" / uid / "1.10.dcm", 100, before + 6
    )
    fresh = state.series.get(uid)
    assert fresh is not None
    assert (fresh.state, fresh.revision, fresh.instance_count, fresh.export_version) == (
        SeriesState.RECEIVING,
        2,
        2,
        None,
    )
    assert fresh.first_received_at == before + 5
    assert [r.series_uid for r in state.series.claim_due(QUIET, now=before + 6 + QUIET)] == [uid]


def test_a_series_that_changed_or_was_claimed_since_it_was_listed_is_kept(backend: Backend) -> None:
    state, other = backend.open("node-a"), backend.open("node-b")
    before = T0 + DAY
    changed = finished_series(state, backend.data, 1, T0)
    claimed = finished_series(state, backend.data, 2, T0)
    assert len(state.series.expired_series(before, now=before)) == 2
    receive(state, backend.data, changed, "1.3", before - 1)  # a late instance re-opens it
    assert [r.series_uid for r in other.series.claim_in_state(SeriesState.EXPORTED, now=before)] == [claimed]
    assert state.series.remove_series(changed, before=before, now=before) is None
    assert state.series.remove_series(claimed, before=before, now=before) is None
    still = state.series.get(changed)
    assert still is not None and still.instance_count == 3 and still.state is SeriesState.RECEIVING
    assert state.series.get(claimed) is not None
    # Once the other node's lease has run out, the claim no longer protects it.
    later = before + LEASE + 1
    assert state.series.remove_series(claimed, before=before, now=later) is not None


def test_expired_jobs_are_finished_old_and_unclaimed(backend: Backend, state: State) -> None:
    data, before = backend.data, T0 + DAY
    sent = job_of(state, data, "sent.nii.gz", series_uid(1), T0)
    send_all(state, sent, T0 + 10)
    failed = job_of(state, data, "failed.nii.gz", series_uid(1), T0)
    send_all(state, failed, T0 + 20, ok=False)
    waiting = job_of(state, data, "waiting.nii.gz", series_uid(1), T0)
    [send] = [s for s in state.jobs.claim_sends(now=T0 + 30) if s.job_id == waiting]
    assert state.jobs.mark_send_retry(send.id, "busy", before + 600, now=T0 + 30)
    pending = new_job(state, data, "pending.nii.gz", at=T0)
    young = job_of(state, data, "young.nii.gz", series_uid(1), T0)
    send_all(state, young, before)  # finished exactly at `before`: not before it
    never_built = new_job(state, data, "never.nii.gz", at=T0)
    state.jobs.claim_job(never_built, now=T0)
    assert state.jobs.mark_failed(never_built, "not a NIfTI file", now=T0 + 40)

    assert [j.id for j in state.jobs.expired_jobs(before, now=before)] == [sent, failed, never_built]
    assert [j.id for j in state.jobs.expired_jobs(before, now=before, limit=2)] == [sent, failed]
    assert pending not in {j.id for j in state.jobs.expired_jobs(T0 + 100 * DAY)}


def test_a_removed_job_is_forgotten_with_its_sends_and_a_shared_seg_is_said_so(backend: Backend, state: State) -> None:
    data, before = backend.data, T0 + DAY
    # The same item dropped twice (new signature) builds the same SEG UID, so the same file.
    first = job_of(state, data, "liver.nii.gz", series_uid(1), T0, seg="same")
    second = job_of(state, data, "liver-again.nii.gz", series_uid(1), T0 + 5, seg="same")
    for job_id in (first, second):
        send_all(state, job_id, T0 + 10)
    removed = state.jobs.remove_job(first, before=before, now=before)
    assert removed is not None and removed.seg_shared
    assert (removed.job.id, removed.job.state, removed.job.seg_path) == (first, JobState.SENT, data / "segs/same.dcm")
    assert removed.job.inbox_path == data / "inbox" / "liver.nii.gz" and removed.job.signature == "file:1:liver.nii.gz"
    with pytest.raises(InputError):
        state.jobs.get(first)
    assert state.jobs.remove_job(first, before=before, now=before) is None
    last = state.jobs.remove_job(second, before=before, now=before)
    assert last is not None and not last.seg_shared
    assert state.jobs.list_jobs() == [] and state.jobs.claim_sends(now=before + DAY) == []
    if backend.name == "sqlite":
        from node.state.sqlite_schema import SqliteDatabase

        assert isinstance(state.backend, SqliteDatabase)
        with state.backend.reading("count sends") as conn:  # gone with their job (ON DELETE CASCADE)
            assert conn.execute("SELECT COUNT(*) FROM sends").fetchone()[0] == 0
    # The item dropped again after its job was removed is a new job, not the old one's state.
    again = state.jobs.get(new_job(state, data, "liver.nii.gz", at=before))
    assert (again.state, again.created_at, again.seg_path, again.sends) == (JobState.PENDING, before, None, ())


def test_a_job_reopened_since_it_was_listed_is_kept(backend: Backend, state: State) -> None:
    before = T0 + DAY
    job_id = job_of(state, backend.data, "liver.nii.gz", series_uid(1), T0)
    send_all(state, job_id, T0 + 10, ok=False)
    assert [j.id for j in state.jobs.expired_jobs(before, now=before)] == [job_id]
    assert state.jobs.retry(job_id, now=T0 + 20) is JobState.BUILT  # `segnode retry`, e.g. by the operator
    assert state.jobs.remove_job(job_id, before=before, now=before) is None
    assert state.jobs.get(job_id).state is JobState.BUILT
