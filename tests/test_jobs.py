"""Tests of node/jobs.py: the job state machine, per-destination sends, retries and start-up recovery."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from node.errors import InputError
from node.state import jobs
from node.state.jobs import JobState, JobStateError, SendState

SERIES = "1.2.826.0.1.3680043.8.498.1"
SEG_UID = "1.2.826.0.1.3680043.8.498.77"
T0 = 1000.0


@pytest.fixture
def item(tmp_path: Path) -> Path:
    path = tmp_path / "inbox" / "liver.nii.gz"
    path.parent.mkdir()
    path.write_bytes(b"nifti bytes")
    return path


def built_job(conn: sqlite3.Connection, item: Path, destinations: list[str]) -> int:
    job_id = jobs.create_job(conn, item, "nifti", now=T0)
    jobs.mark_matched(conn, job_id, SERIES, now=T0 + 1)
    jobs.mark_built(conn, job_id, Path("/data/seg/x.dcm"), SEG_UID, destinations, now=T0 + 2)
    return job_id


def send_of(conn: sqlite3.Connection, job_id: int, destination: str) -> jobs.SendRow:
    return next(s for s in jobs.get_job(conn, job_id).sends if s.destination == destination)


def test_create_job_is_idempotent_per_item_version(conn: sqlite3.Connection, item: Path) -> None:
    first = jobs.create_job(conn, item, "nifti")
    assert jobs.create_job(conn, item, "nifti") == first
    item.write_bytes(b"a new result under the same name")
    os.utime(item, ns=(1, 1))
    second = jobs.create_job(conn, item, "nifti")
    assert second != first
    row = jobs.get_job(conn, second)
    assert (row.state, row.inbox_path, row.item_kind, row.sends) == (JobState.PENDING, item, "nifti", ())


def test_folder_signature_changes_when_a_mask_changes(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    folder.mkdir()
    (folder / "liver.nii.gz").write_bytes(b"1")
    before = jobs.item_signature(folder)
    assert jobs.item_signature(folder) == before
    (folder / "spleen.nii.gz").write_bytes(b"2")
    assert jobs.item_signature(folder) != before


def test_happy_path_to_sent(conn: sqlite3.Connection, item: Path) -> None:
    job_id = built_job(conn, item, ["pacs", "archive", "pacs"])
    job = jobs.get_job(conn, job_id)
    assert job.state is JobState.BUILT and job.series_uid == SERIES and job.seg_sop_uid == SEG_UID
    assert [(s.destination, s.state, s.attempts) for s in job.sends] == [
        ("archive", SendState.PENDING, 0), ("pacs", SendState.PENDING, 0)]
    due = jobs.due_sends(conn, T0 + 2)
    assert {s.destination for s in due} == {"pacs", "archive"}
    assert all(s.seg_path == Path("/data/seg/x.dcm") and s.seg_sop_uid == SEG_UID for s in due)
    assert jobs.mark_send_ok(conn, send_of(conn, job_id, "pacs").id, now=T0 + 3) is JobState.BUILT
    assert jobs.mark_send_ok(conn, send_of(conn, job_id, "archive").id, now=T0 + 4) is JobState.SENT
    assert jobs.get_job(conn, job_id).state is JobState.SENT
    assert jobs.due_sends(conn, T0 + 100) == []
    assert jobs.resumable_jobs(conn) == []


def test_retry_wait_until_next_attempt(conn: sqlite3.Connection, item: Path) -> None:
    job_id = built_job(conn, item, ["pacs"])
    send_id = send_of(conn, job_id, "pacs").id
    assert jobs.mark_send_retry(conn, send_id, "connection refused", T0 + 60, now=T0 + 3) is JobState.RETRY_WAIT
    assert jobs.due_sends(conn, T0 + 59) == []
    [due] = jobs.due_sends(conn, T0 + 60)
    assert (due.id, due.attempts, due.reason, due.state) == (send_id, 1, "connection refused", SendState.RETRY_WAIT)
    assert jobs.mark_send_ok(conn, send_id, now=T0 + 61) is JobState.SENT
    assert send_of(conn, job_id, "pacs").attempts == 2


def test_one_destination_failing_does_not_stop_the_other(conn: sqlite3.Connection, item: Path) -> None:
    job_id = built_job(conn, item, ["pacs", "archive"])
    state = jobs.mark_send_failed(conn, send_of(conn, job_id, "pacs").id, "0xA900 refused", now=T0 + 3)
    assert state is JobState.BUILT  # archive is still to be sent
    assert [s.destination for s in jobs.due_sends(conn, T0 + 3)] == ["archive"]
    assert jobs.mark_send_ok(conn, send_of(conn, job_id, "archive").id, now=T0 + 4) is JobState.FAILED
    job = jobs.get_job(conn, job_id)
    assert job.state is JobState.FAILED and job.reason == "pacs: 0xA900 refused"


def test_job_without_destinations_is_sent_at_once(conn: sqlite3.Connection, item: Path) -> None:
    job_id = built_job(conn, item, [])
    assert jobs.get_job(conn, job_id).state is JobState.SENT


def test_failing_a_job_closes_its_open_sends(conn: sqlite3.Connection, item: Path) -> None:
    job_id = built_job(conn, item, ["pacs"])
    jobs.mark_failed(conn, job_id, "SEG verification failed", now=T0 + 3)
    job = jobs.get_job(conn, job_id)
    assert job.state is JobState.FAILED and job.reason == "SEG verification failed"
    assert job.sends[0].state is SendState.FAILED
    assert jobs.due_sends(conn, T0 + 100) == []


def test_transitions_the_state_does_not_allow(conn: sqlite3.Connection, item: Path) -> None:
    job_id = jobs.create_job(conn, item, "nifti")
    with pytest.raises(JobStateError, match=f"job {job_id}: cannot record the SEG of a job that is pending"):
        jobs.mark_built(conn, job_id, Path("/x.dcm"), SEG_UID, ["pacs"])
    other = item.with_name("other.nii.gz")
    other.write_bytes(b"x")
    sent = built_job(conn, other, ["pacs"])
    send_id = send_of(conn, sent, "pacs").id
    jobs.mark_send_ok(conn, send_id)
    with pytest.raises(JobStateError):
        jobs.mark_send_ok(conn, send_id)
    with pytest.raises(JobStateError):
        jobs.mark_matched(conn, sent, SERIES)
    with pytest.raises(JobStateError):
        jobs.mark_failed(conn, sent, "too late")
    with pytest.raises(JobStateError, match="cannot retry a job that is sent"):
        jobs.retry_job(conn, sent)
    with pytest.raises(InputError, match="job 999 does not exist"):
        jobs.get_job(conn, 999)
    with pytest.raises(InputError):
        jobs.mark_matched(conn, 999, SERIES)


def test_a_failed_transition_changes_nothing(conn: sqlite3.Connection, item: Path) -> None:
    job_id = jobs.create_job(conn, item, "nifti")
    jobs.mark_matched(conn, job_id, SERIES)
    with pytest.raises(InputError, match="destination names"):
        jobs.mark_built(conn, job_id, Path("/x.dcm"), SEG_UID, ["pacs", object()])  # type: ignore[list-item]
    job = jobs.get_job(conn, job_id)
    assert (job.state, job.seg_path, job.sends) == (JobState.MATCHED, None, ())


def test_states_survive_sql_as_their_values(conn: sqlite3.Connection, item: Path) -> None:
    job_id = built_job(conn, item, ["pacs"])
    stored = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    assert stored == JobState.BUILT.value == "built" and isinstance(JobState.BUILT, str)
    assert JobState(stored) is JobState.BUILT
    assert [j.id for j in jobs.list_jobs(conn, state="built")] == [job_id]


def test_resumable_and_listed_jobs(conn: sqlite3.Connection, tmp_path: Path) -> None:
    ids = {}
    for name in ("pending", "matched", "built", "waiting", "sent", "failed"):
        path = tmp_path / f"{name}.nii.gz"
        path.write_bytes(name.encode())
        ids[name] = jobs.create_job(conn, path, "nifti")
    for name in ("matched", "built", "waiting", "sent", "failed"):
        jobs.mark_matched(conn, ids[name], SERIES)
    for name in ("built", "waiting", "sent"):
        jobs.mark_built(conn, ids[name], Path(f"/seg/{name}.dcm"), SEG_UID, ["pacs"])
    jobs.mark_send_retry(conn, send_of(conn, ids["waiting"], "pacs").id, "busy", T0)
    jobs.mark_send_ok(conn, send_of(conn, ids["sent"], "pacs").id)
    jobs.mark_failed(conn, ids["failed"], "no series matches")
    resumable = jobs.resumable_jobs(conn)
    assert [j.id for j in resumable] == [ids[n] for n in ("pending", "matched", "built", "waiting")]
    assert [j.state for j in resumable] == [JobState.PENDING, JobState.MATCHED, JobState.BUILT,
                                            JobState.RETRY_WAIT]
    listed = jobs.list_jobs(conn)
    assert [j.id for j in listed] == sorted(ids.values(), reverse=True)
    assert [j.id for j in jobs.list_jobs(conn, limit=2)] == [ids["failed"], ids["sent"]]
    assert jobs.job_counts(conn)[JobState.RETRY_WAIT] == 1
    assert sum(jobs.job_counts(conn).values()) == 6


def test_retry_of_a_built_job_resends_from_attempt_zero(conn: sqlite3.Connection, item: Path) -> None:
    job_id = built_job(conn, item, ["pacs", "archive"])
    jobs.mark_send_ok(conn, send_of(conn, job_id, "archive").id, now=T0 + 3)
    jobs.mark_send_failed(conn, send_of(conn, job_id, "pacs").id, "attempts used up", now=T0 + 4)
    assert jobs.get_job(conn, job_id).state is JobState.FAILED
    assert jobs.retry_job(conn, job_id, now=T0 + 10) is JobState.BUILT
    [due] = jobs.due_sends(conn, T0 + 10)
    assert (due.destination, due.attempts, due.state, due.reason) == ("pacs", 0, SendState.PENDING, None)
    assert send_of(conn, job_id, "archive").state is SendState.OK  # not sent twice


def test_retry_of_a_job_that_failed_before_its_seg_restarts_it(conn: sqlite3.Connection, item: Path) -> None:
    job_id = jobs.create_job(conn, item, "nifti")
    jobs.mark_matched(conn, job_id, SERIES)
    jobs.mark_failed(conn, job_id, "grid does not overlap")
    assert jobs.retry_job(conn, job_id) is JobState.PENDING
    job = jobs.get_job(conn, job_id)
    assert (job.state, job.reason, job.series_uid) == (JobState.PENDING, None, None)
    jobs.mark_matched(conn, job_id, SERIES)  # and it can go on from there


def test_retry_of_a_waiting_job_makes_it_due_now(conn: sqlite3.Connection, item: Path) -> None:
    job_id = built_job(conn, item, ["pacs"])
    jobs.mark_send_retry(conn, send_of(conn, job_id, "pacs").id, "busy", T0 + 600, now=T0 + 3)
    assert jobs.due_sends(conn, T0 + 5) == []
    assert jobs.retry_job(conn, job_id, now=T0 + 5) is JobState.RETRY_WAIT
    assert [s.destination for s in jobs.due_sends(conn, T0 + 5)] == ["pacs"]
