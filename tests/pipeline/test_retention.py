"""node/pipeline/retention.py: finished series, exports, inbox items and SEGs older than [retention] days go;
anything still on its way, or younger, stays. The stage's clock is moved on, never slept for."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import synthetic as syn
from dcmtk import free_port, storescu
from nodes import Burst, folder_destination, write_config

from node.config import load_config
from node.convert.seg import SegOptions
from node.pipeline.filing import move_item
from node.pipeline.inbox import InboxItem, ItemKind
from node.pipeline.retention import SWEEP_SECONDS, Retention
from node.pipeline.stage import PipelineContext
from node.state import State, open_state
from node.state.model import JobState, SeriesState

DAY = 86_400.0
STUDY = "1.2.826.0.1.3680043.8.498.9"
CT = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Site:
    """A node's folders and state with a retention stage on a clock the test moves."""

    data: Path
    state: State
    stage: Retention
    now: float

    def sweep(self, *, later: float) -> int:
        """Move the clock on by ``later`` and step as the node's loop does: again at once while a step did
        something (one batch each); how much the steps did in all."""
        self.now += later
        steps = [self.stage.step()]
        while steps[-1]:
            assert len(steps) < 100, steps
            steps.append(self.stage.step())
        return sum(steps)


def site_of(tmp_path: Path, days: float) -> Iterator[Site]:
    config = load_config(
        write_config(tmp_path / "node", free_port(), folder_destination(), sections={"retention": {"days": days}})
    )
    state = open_state(config.paths.data, config.paths.database, node_id="test")
    site = Site(config.paths.data, state, None, time.time())  # type: ignore[arg-type]
    site.stage = Retention(PipelineContext(config, SegOptions(), state, clock=lambda: site.now))
    try:
        yield site
    finally:
        state.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from site_of(tmp_path, 30)


def received(site: Site, n: int, *, at: float, final: SeriesState | None = SeriesState.EXPORTED) -> str:
    """Series ``n``: two instance files and their rows, exported (files too) or failed a minute after ``at``."""
    uid = f"1.2.826.0.1.3680043.8.498.{100 + n}"
    for sop in ("1", "2"):
        path = site.data / "instances" / uid / f"{uid}.{sop}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"DICM")
        site.state.series.record_instance(uid, STUDY, f"{uid}.{sop}", CT, path, 4, at)
    if final is not None:
        claimed = [r.series_uid for r in site.state.series.claim_due(30, now=at + 60)]
        assert uid in claimed
        site.state.series.mark(uid, final, now=at + 60)
        for other in claimed:
            site.state.series.release(other)
    export = site.data / "export"
    export.mkdir(exist_ok=True)
    for name in (f"{uid}.nii.gz", f"{uid}.json", f"{uid}_stack2.nii.gz", f"{uid}_stack2.json"):
        (export / name).write_text("{}")
    return uid


def item_job(
    site: Site, name: str, series: str, *, at: float, sent: bool | None = True, seg_name: str | None = None
) -> tuple[int, Path, Path]:
    """A job for an inbox item matched to ``series``: built (SEG in segs/, item in processed/) and sent
    (``sent``), failed to send (False) or with its send still open (None)."""
    inbox = site.data / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    path = inbox / name
    path.write_bytes(b"label map " + name.encode())
    item = InboxItem(path, ItemKind.LABEL_MAP, None, f"file:{name}")
    jobs = site.state.jobs
    job_id = jobs.create(path, item.kind.value, signature=item.signature, now=at)
    assert jobs.claim_job(job_id, now=at) and jobs.mark_matched(job_id, series, now=at)
    seg = site.data / "segs" / f"{seg_name or name}.dcm"
    seg.parent.mkdir(exist_ok=True)
    seg.write_bytes(b"SEG")
    qc = site.data / "qc"
    qc.mkdir(exist_ok=True)
    for suffix in (".png", ".json", ".sc.dcm"):  # what the QC step writes beside a SEG
        (qc / f"{seg.stem}{suffix}").write_bytes(b"QC")
    assert jobs.mark_built(job_id, seg, "1.2.3", ["out"], now=at)
    moved = move_item(item, site.data / "processed", "built")
    if sent is not None:
        for send in jobs.claim_sends(now=at):
            assert jobs.mark_send_ok(send.id, now=at) if sent else jobs.mark_send_failed(send.id, "no", now=at)
    return job_id, seg, moved.parent


def test_old_finished_things_go_and_one_line_says_so(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    t0 = site.now
    exported = received(site, 1, at=t0)
    failed = received(site, 2, at=t0, final=SeriesState.FAILED)
    _sent_job, sent_seg, sent_item = item_job(site, "a.nii.gz", exported, at=t0 + 100)
    _failed_job, failed_seg, failed_item = item_job(site, "b.nii.gz", exported, at=t0 + 100, sent=False)
    assert site.sweep(later=0) == 0  # all of it is younger than 30 days

    with caplog.at_level(logging.INFO, logger="node.pipeline.retention"):
        assert site.sweep(later=31 * DAY) == 4  # two series, two jobs
    [line] = [r.getMessage() for r in caplog.records if r.name == "node.pipeline.retention"]
    assert line == (
        "retention: removed 2 series (4 instance files, 8 export files) and 2 jobs (2 SEGs, 2 inbox items)"
        " finished more than 30 days ago"
    )
    assert not (site.data / "instances" / exported).exists() and not (site.data / "instances" / failed).exists()
    assert list((site.data / "export").iterdir()) == []
    assert not sent_seg.exists() and not failed_seg.exists()
    assert not sent_item.exists() and not failed_item.exists()
    assert list((site.data / "processed").iterdir()) == []
    assert list((site.data / "qc").iterdir()) == []  # the SEGs' pictures, figures and SC images went with them
    assert site.state.series.list_series() == [] and site.state.jobs.list_jobs() == []
    assert site.sweep(later=1) == 0  # at most one sweep every few minutes
    assert site.sweep(later=SWEEP_SECONDS) == 0  # and nothing left to remove


def test_a_backlog_goes_one_batch_per_step_and_the_sweep_ends_at_an_empty_batch(
    site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("node.pipeline.retention.BATCH", 2)
    t0 = site.now
    uids = [received(site, n, at=t0) for n in range(1, 4)]
    for n in range(3):
        item_job(site, f"{n}.nii.gz", uids[0], at=t0)
    site.now += 31 * DAY
    with caplog.at_level(logging.INFO, logger="node.pipeline.retention"):
        # Jobs first, then series, at most two per step, with no wait between steps: the clock stands still.
        assert [site.stage.step() for _ in range(4)] == [2, 1, 2, 1]
        assert site.state.jobs.list_jobs() == [] and site.state.series.list_series() == []
        assert not [r for r in caplog.records if r.name == "node.pipeline.retention"]  # the sweep is not done yet
        assert site.stage.step() == 0  # the empty batch ends the sweep, with its one line
    [line] = [r.getMessage() for r in caplog.records if r.name == "node.pipeline.retention"]
    assert line.startswith("retention: removed 3 series") and " and 3 jobs " in line
    # Only now is the sweep's time taken: the next sweep is due SWEEP_SECONDS after the empty batch.
    later = received(site, 9, at=t0)
    site.now += SWEEP_SECONDS - 1
    assert site.stage.step() == 0 and site.state.series.get(later) is not None
    site.now += 1
    assert site.stage.step() == 1 and site.state.series.get(later) is None


def test_what_is_still_on_its_way_or_young_stays(site: Site) -> None:
    t0 = site.now
    receiving = received(site, 1, at=t0, final=None)
    needed = received(site, 2, at=t0)
    waiting, waiting_seg, waiting_item = item_job(site, "open.nii.gz", needed, at=t0, sent=None)
    [send] = site.state.jobs.claim_sends(now=t0)
    assert site.state.jobs.mark_send_retry(send.id, "busy", t0 + 40 * DAY, now=t0)
    young = received(site, 3, at=t0 + 10 * DAY)
    _young_job, young_seg, young_item = item_job(site, "young.nii.gz", young, at=t0 + 10 * DAY)

    assert site.sweep(later=31 * DAY) == 0
    assert {r.series_uid for r in site.state.series.list_series()} == {receiving, needed, young}
    assert all(len(site.state.series.instances(uid)) == 2 for uid in (receiving, needed, young))
    assert all(path.exists() for uid in (receiving, needed, young) for path in site.state.series.instances(uid))
    assert (site.data / "export" / f"{needed}.nii.gz").exists()
    assert site.state.jobs.get(waiting).state is JobState.RETRY_WAIT
    assert waiting_seg.exists() and waiting_item.exists() and young_seg.exists() and young_item.exists()
    # Once the young ones are old and the waiting send is done, they go too; the receiving series never.
    [send] = site.state.jobs.claim_sends(now=t0 + 40 * DAY)
    assert site.state.jobs.mark_send_ok(send.id, now=t0 + 40 * DAY)
    assert site.sweep(later=40 * DAY) == 4
    assert [r.series_uid for r in site.state.series.list_series()] == [receiving]
    assert not waiting_seg.exists() and not young_item.exists()


def test_a_seg_another_job_still_sends_is_kept(site: Site) -> None:
    t0 = site.now
    uid = received(site, 1, at=t0)
    # The same item dropped again: the same SEG UID, so the same file, which the new job still has to send.
    old_job, seg, old_item = item_job(site, "a.nii.gz", uid, at=t0, seg_name="same")
    new_job, _, new_item = item_job(site, "b.nii.gz", uid, at=t0 + 20 * DAY, sent=None, seg_name="same")
    assert site.sweep(later=31 * DAY) == 1  # the old job; its series stays for the open one
    assert seg.exists() and not old_item.exists() and new_item.exists()
    assert (site.data / "qc" / "same.png").exists()  # the kept SEG keeps its picture
    assert [j.id for j in site.state.jobs.list_jobs()] == [new_job] and old_job != new_job
    assert site.state.series.get(uid) is not None


def test_the_pictures_of_a_seg_already_gone_go_too(site: Site) -> None:
    t0 = site.now
    uid = received(site, 1, at=t0)
    _job, seg, _item = item_job(site, "a.nii.gz", uid, at=t0)
    seg.unlink()  # e.g. an operator cleaned segs/ by hand
    assert site.sweep(later=31 * DAY) == 2
    assert list((site.data / "qc").iterdir()) == []


def test_an_inbox_item_folder_changed_after_the_cut_off_is_kept(site: Site) -> None:
    t0 = site.now
    uid = received(site, 1, at=t0)
    _old, _, old_item = item_job(site, "liver_ct.nii.gz", uid, at=t0)
    _touched, _, touched_item = item_job(site, "kidney_ct.nii.gz", uid, at=t0)
    later = t0 + 31 * DAY
    os.utime(touched_item, (later, later))  # e.g. an operator copied something into it
    assert site.sweep(later=31 * DAY) == 3  # both jobs (their state is old), the series
    assert not old_item.exists()
    assert touched_item.is_dir() and (touched_item / "kidney_ct.nii.gz").exists()


def test_days_zero_removes_nothing(tmp_path: Path) -> None:
    for site in site_of(tmp_path, 0):
        t0 = site.now
        uid = received(site, 1, at=t0)
        item_job(site, "a.nii.gz", uid, at=t0)
        assert site.sweep(later=3650 * DAY) == 0
        assert site.state.series.get(uid) is not None and len(site.state.jobs.list_jobs()) == 1
        assert (site.data / "export" / f"{uid}.json").exists()


@pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed (scripts/test.sh installs it)")
def test_a_series_sent_again_after_removal_is_received_and_exported_afresh(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "node", free_port(), folder_destination(), receive_processes=1, sections={"retention": {"days": 30}}
    )
    node = Burst(config)
    try:
        retention = Retention(node.node.context)
        series = syn.write_series(syn.GridSpec.axial(rows=8, cols=8, slices=4), tmp_path / "dicom")
        assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
        node.run(later=3600)
        export = node.data / "export" / f"{series.series_uid}.json"
        assert export.exists()
        node.offset += 31 * DAY
        assert retention.step() == 1
        assert not export.exists() and node.node.state.series.get(series.series_uid) is None
        assert not (node.data / "instances" / series.series_uid).exists()

        # The receiver stamps instances with the real time: the node's clock comes back to it, or the node's own
        # retention stage would find the new instances 31 days old at once.
        node.offset -= 31 * DAY
        assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
        node.run(later=3600)
        again = node.node.state.series.get(series.series_uid)
        assert again is not None and again.state is SeriesState.EXPORTED
        assert again.instance_count == len(series.paths) and again.revision == len(series.paths)
        assert export.exists() and len(node.node.state.series.instances(series.series_uid)) == len(series.paths)
    finally:
        node.stop()
