"""The pipeline's stages driven in burst mode (node.service.Node.run_until_idle): no wall-clock waits.

What a test sees after ``run`` is what the stages did; DCMTK's storescu pushes the series, as a modality would.
"""

from __future__ import annotations

import errno
import gzip
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import synthetic as syn
from dcmtk import free_port, storescu
from nodes import Burst, folder_destination, write_config
from synthetic import nib

import node.pipeline.build as build_module
from node.config import load_config
from node.convert import build_seg_from_input, write_dataset_atomically
from node.destinations import SendResult
from node.destinations.folder import FolderWriter
from node.service import Node
from node.state.model import JobState

pytestmark = pytest.mark.skipif(
    shutil.which("storescu") is None, reason="DCMTK not installed (scripts/test.sh installs it)"
)

QUIET = 3600.0


@pytest.fixture
def series(tmp_path: Path) -> syn.SeriesInfo:
    grid = syn.GridSpec.oblique(rows=12, cols=16, slices=6, row_spacing=1.1, col_spacing=0.8, slice_step=2.0)
    return syn.write_series(grid, tmp_path / "dicom", instance_numbers="shuffled")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Burst]:
    started = Burst(write_config(tmp_path / "node", free_port(), folder_destination(), receive_processes=1))
    yield started
    started.stop()


def label_map(node: Burst, series: syn.SeriesInfo) -> bytes:
    export = nib.load(node.data / "export" / f"{series.series_uid}.nii.gz")
    labels = syn.labels_on_nifti_grid(export, syn.Phantom.fitting(series.grid), snap=series.grid).astype(np.uint8)
    return gzip.compress(nib.Nifti1Image(labels, export.affine, export.header).to_bytes())


def drop(inbox: Path, name: str, data: bytes) -> Path:
    partial = inbox / f"{name}.part"
    partial.write_bytes(data)
    return partial.rename(inbox / name)


def test_a_burst_takes_a_series_from_push_to_seg(node: Burst, series: syn.SeriesInfo) -> None:
    assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
    node.run(later=QUIET)  # past the quiet period: complete, exported
    assert (node.data / "export" / f"{series.series_uid}.json").exists()
    drop(node.data / "inbox", f"{series.series_uid}.nii.gz", label_map(node, series))
    node.run()
    (seg,) = (node.data / "outgoing").iterdir()
    got = syn.seg_labels_on_source(seg, series.grid)
    assert np.array_equal(got > 0, syn.Phantom.fitting(series.grid).truth(series.grid) > 0)
    beats = node.node.heartbeats()
    assert set(beats) == {"completion", "export", "intake", "build", "deliver", "retention"}
    assert max(beats.values()) < 60


def test_a_full_disk_while_building_leaves_the_input_and_builds_once_space_returns(
    node: Burst, series: syn.SeriesInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
    node.run(later=QUIET)
    real_write = write_dataset_atomically
    calls: list[Path] = []

    def disk_full(dataset: object, out: Path) -> None:
        calls.append(out)
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(build_module, "write_dataset_atomically", disk_full)
    item = drop(node.data / "inbox", f"{series.series_uid}.nii.gz", label_map(node, series))
    node.run()
    assert calls and item.exists(), "the input must stay in the inbox"
    assert not list((node.data / "failed").iterdir())
    (job,) = node.node.state.jobs.list_jobs()
    assert job.state is JobState.RETRY_WAIT and job.attempts == 1 and "No space left" in (job.reason or "")
    node.run()  # not due yet: nothing happens
    assert len(calls) == 1
    # Space returns; the retry is due once its wait has passed.
    monkeypatch.setattr(build_module, "write_dataset_atomically", real_write)
    node.run(later=QUIET)
    assert not item.exists() and len(list((node.data / "processed").iterdir())) == 1
    assert len(list((node.data / "outgoing").iterdir())) == 1
    (job,) = node.node.state.jobs.list_jobs()
    assert job.state is JobState.SENT


def test_two_nodes_on_one_data_folder_stepped_in_turns_send_each_seg_exactly_once(
    tmp_path: Path, series: syn.SeriesInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Count the work itself: a SEG built or copied twice would land under the same (deterministic) name.
    builds: list[str] = []
    copies: list[Path] = []
    real_build, real_send = build_seg_from_input, FolderWriter.send

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        builds.append(str(args[1]))
        return real_build(*args, **kwargs)

    def counting_send(self: FolderWriter, paths: Sequence[Path]) -> list[SendResult]:
        copies.extend(paths)
        return real_send(self, paths)

    monkeypatch.setattr(build_module, "build_seg_from_input", counting_build)
    monkeypatch.setattr(FolderWriter, "send", counting_send)
    first_port, second_port = free_port(), free_port()
    first_config = write_config(tmp_path / "node", first_port, folder_destination(), receive_processes=1)
    second_config = first_config.with_name("second.toml")
    second_config.write_text(first_config.read_text().replace(f"port = {first_port}", f"port = {second_port}"))
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    nodes = [
        Node(load_config(path), clock=clock, node_id=name)
        for path, name in ((first_config, "node-a"), (second_config, "node-b"))
    ]
    for one in nodes:
        one.start(threads=False)
    try:
        data = nodes[0].paths.data
        assert nodes[1].paths.data == data
        assert storescu(first_port, series.paths[:3], called_ae="SEGNODE").ok
        assert storescu(second_port, series.paths[3:], called_ae="SEGNODE").ok

        def turns(until: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 30
            while not until():
                assert time.monotonic() < deadline, "the two nodes did not finish the work"
                for pair in zip(*(one.stages for one in nodes), strict=True):
                    for stage in pair:
                        stage.step()
                time.sleep(0.05)

        offset[0] = QUIET
        export = data / "export" / f"{series.series_uid}.json"
        turns(export.exists)
        image = nib.load(data / "export" / f"{series.series_uid}.nii.gz")
        labels = syn.labels_on_nifti_grid(image, syn.Phantom.fitting(series.grid), snap=series.grid).astype(np.uint8)
        drop(
            data / "inbox",
            f"{series.series_uid}.nii.gz",
            gzip.compress(nib.Nifti1Image(labels, image.affine, image.header).to_bytes()),
        )
        outgoing = data / "outgoing"

        def sent() -> bool:
            jobs_now = nodes[0].state.jobs.list_jobs()
            return bool(jobs_now) and all(j.state is JobState.SENT for j in jobs_now)

        turns(sent)
        for _ in range(5):  # more turns change nothing: nothing is done twice
            for one in nodes:
                one.run_until_idle()
        (job,) = nodes[1].state.jobs.list_jobs()
        assert len(builds) == 1 and len(copies) == 1 and [s.attempts for s in job.sends] == [1]
        assert len(list(outgoing.iterdir())) == 1 and len(list((data / "segs").iterdir())) == 1
        assert len(list((data / "processed").iterdir())) == 1 and not list((data / "failed").iterdir())
        row = nodes[0].state.series.get(series.series_uid)
        assert row is not None and row.export_version == row.revision
    finally:
        for one in nodes:
            one.stop()
