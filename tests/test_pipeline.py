"""The pipeline's stages driven in burst mode (node.service.Node.run_until_idle): no wall-clock waits.

What a test sees after ``run`` is what the stages did; DCMTK's storescu pushes the series, as a modality would.
"""

from __future__ import annotations

import errno
import gzip
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import synthetic as syn
from dcmtk import free_port, storescu
from nodes import Burst, folder_destination, write_config
from synthetic import nib

import node.pipeline.build as build_module
from node.convert import write_dataset_atomically
from node.state import jobs

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None,
                                reason="DCMTK not installed (scripts/test.sh installs it)")

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
    assert set(beats) == {"completion", "export", "intake", "build", "deliver"}
    assert max(beats.values()) < 60


def test_a_full_disk_while_building_leaves_the_input_and_builds_once_space_returns(
        node: Burst, series: syn.SeriesInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
    node.run(later=QUIET)
    real_write = write_dataset_atomically
    calls: list[Path] = []

    def disk_full(dataset: object, out: Path) -> None:
        calls.append(out)
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(build_module, "write_dataset_atomically", disk_full)
    item = drop(node.data / "inbox", f"{series.series_uid}.nii.gz", label_map(node, series))
    with pytest.raises(TimeoutError):
        node.run(timeout=2.0)  # the job waits for its retry: the pipeline is not idle
    assert calls and item.exists(), "the input must stay in the inbox"
    assert not list((node.data / "failed").iterdir())
    with node.node._connect() as conn:
        (job,) = jobs.list_jobs(conn)
    assert job.state is not jobs.JobState.FAILED
    # Space returns; the retry is due once its wait has passed.
    monkeypatch.setattr(build_module, "write_dataset_atomically", real_write)
    node.run(later=QUIET)
    assert not item.exists() and len(list((node.data / "processed").iterdir())) == 1
    assert len(list((node.data / "outgoing").iterdir())) == 1
    with node.node._connect() as conn:
        (job,) = jobs.list_jobs(conn)
    assert job.state is jobs.JobState.SENT
