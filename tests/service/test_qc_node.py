"""QC pictures in the running node (node/pipeline/qc.py, node/pipeline/deliver.py): burst-mode nodes, DCMTK as the
modality, Orthanc and a pynetdicom SCP as PACS.

Every SEG the node builds gets ``data/qc/<uid>.png`` and ``.json``, checked against the phantom's ground truth;
with ``[qc] send = true`` the picture also reaches the PACS as a Secondary Capture image in its own series.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import synthetic as syn
from dcmtk import free_port, storescu
from nodes import Burst, dicom_destination, folder_destination, write_config
from orthanc import OrthancServer, orthanc_binary
from pynetdicom import AE, evt
from synthetic import nib

from node.convert.pixels import read_volume
from node.convert.qc import qc_picture
from node.convert.qc_sc import QC_SERIES_DESCRIPTION, SECONDARY_CAPTURE_STORAGE, png_pixels
from node.convert.series import load_series
from node.state.model import JobState, SendState

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed (scripts/test.sh installs it)"),
]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: Moves a burst node's clock past every series' quiet period.
QUIET = 3600.0


@pytest.fixture
def series(tmp_path: Path) -> syn.SeriesInfo:
    """A small oblique series with non-square pixels: figures in mm must come out of the SEG's own geometry."""
    grid = syn.GridSpec.oblique(rows=24, cols=32, slices=10, row_spacing=1.1, col_spacing=0.8, slice_step=2.0)
    return syn.write_series(grid, tmp_path / "dicom")


@pytest.fixture
def burst(tmp_path: Path) -> Iterator[Callable[..., Burst]]:
    """Start a burst-mode node with the given destinations and ``[qc]`` keys; stopped after the test."""
    started: list[Burst] = []

    def start(destinations: str, **qc: Any) -> Burst:
        config = write_config(tmp_path / "node", free_port(), destinations, sections={"qc": qc})
        started.append(Burst(config))
        return started[-1]

    yield start
    for node in started:
        node.stop()


def segment(node: Burst, series: syn.SeriesInfo) -> syn.Phantom:
    """Push ``series`` to the node, let it export, drop the phantom's label map into the inbox, build and send."""
    assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
    node.run(later=QUIET)
    export = nib.load(node.data / "export" / f"{series.series_uid}.nii.gz")
    phantom = syn.Phantom.fitting(series.grid)
    labels = syn.labels_on_nifti_grid(export, phantom, snap=series.grid).astype(np.uint8)
    inbox = node.data / "inbox"
    (inbox / f"{series.series_uid}.json").write_text(
        json.dumps({"labels": {str(k): v for k, v in phantom.names.items()}})
    )
    # Under a .part name first, as a careful tool writes: the watcher takes only the renamed file.
    partial = inbox / f"{series.series_uid}.nii.gz.part"
    partial.write_bytes(gzip.compress(nib.Nifti1Image(labels, export.affine, export.header).to_bytes()))
    partial.rename(inbox / f"{series.series_uid}.nii.gz")
    node.run()
    return phantom


def only_job(node: Burst) -> Any:
    (job,) = node.node.state.jobs.list_jobs()
    return job


def test_every_seg_gets_a_picture_and_figures_that_match_it(
    tmp_path: Path, series: syn.SeriesInfo, burst: Callable[..., Burst]
) -> None:
    node = burst(folder_destination())
    phantom = segment(node, series)
    job = only_job(node)
    assert job.state is JobState.SENT
    (seg_file,) = (node.data / "outgoing").iterdir()
    uid = job.seg_sop_uid
    assert seg_file.name == f"{uid}.dcm"
    qc = node.data / "qc"
    assert sorted(p.name for p in qc.iterdir()) == [f"{uid}.json", f"{uid}.png"]  # no image without [qc] send

    document = json.loads((qc / f"{uid}.json").read_text())
    assert document["sop_instance_uid"] == uid
    assert document["source_series_instance_uids"] == [series.series_uid]
    truth = phantom.truth(series.grid)
    grid = series.grid
    voxel_mm3 = grid.row_spacing * grid.col_spacing * grid.slice_step
    by_name = {segment["name"]: segment for segment in document["segments"]}
    assert sorted(by_name) == sorted(phantom.names.values())
    for value, name in phantom.names.items():
        mask = truth == value
        figure = by_name[name]
        assert figure["voxels"] == int(mask.sum()), name
        assert figure["volume_ml"] == pytest.approx(mask.sum() * voxel_mm3 / 1000, abs=1e-3), name
        np.testing.assert_allclose(figure["centroid_mm_lps"], syn.centroid_lps(mask, grid), atol=0.01)

    # The picture is the one drawn from the SEG that went out, over the series as received.
    png = (qc / f"{uid}.png").read_bytes()
    source = load_series(series.folder)
    assert png == qc_picture(pydicom.dcmread(seg_file), source, read_volume(source))


def test_a_qc_failure_still_delivers_the_seg(
    tmp_path: Path,
    series: syn.SeriesInfo,
    burst: Callable[..., Burst],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the drawing library fell over")

    monkeypatch.setattr("node.convert.qc_files.qc_figure", broken)
    node = burst(folder_destination(), send=True)
    with caplog.at_level(logging.WARNING, logger="node.pipeline.qc"):
        segment(node, series)
    job = only_job(node)
    assert job.state is JobState.SENT
    assert [p.name for p in (node.data / "outgoing").iterdir()] == [f"{job.seg_sop_uid}.dcm"]
    assert not (node.data / "qc").exists() or not list((node.data / "qc").iterdir())
    warnings = [r.getMessage() for r in caplog.records if r.name == "node.pipeline.qc"]
    assert len(warnings) == 1, warnings
    assert job.seg_sop_uid in warnings[0] and "the drawing library fell over" in warnings[0]


@pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed (scripts/test.sh installs it)")
@pytest.mark.skipif(not syn.have_tool("dciodvfy"), reason="dciodvfy (dicom3tools) not installed")
def test_with_qc_send_the_picture_reaches_the_pacs_as_secondary_capture_in_its_own_series(
    tmp_path: Path, series: syn.SeriesInfo, burst: Callable[..., Burst]
) -> None:
    with OrthancServer(tmp_path / "pacs") as pacs:
        node = burst(dicom_destination(pacs), send=True)
        segment(node, series)
        job = only_job(node)
        assert job.state is JobState.SENT
        uid = job.seg_sop_uid
        instances = {i: pacs.get_json(f"/instances/{i}") for i in pacs.instances()}
        assert len(instances) == 2, instances
        tags = {i: pacs.instance_tags(i) for i in instances}
        (seg_id,) = [i for i in tags if tags[i]["SOPInstanceUID"] == uid]
        (sc_id,) = [i for i in tags if tags[i]["SOPClassUID"] == SECONDARY_CAPTURE_STORAGE]
        sc_tags, seg_tags = tags[sc_id], tags[seg_id]
        # The source's study, a series of its own holding only the picture.
        assert sc_tags["StudyInstanceUID"] == seg_tags["StudyInstanceUID"] == series.study_uid
        assert sc_tags["SeriesInstanceUID"] not in (seg_tags["SeriesInstanceUID"], series.series_uid)
        assert instances[sc_id]["ParentSeries"] != instances[seg_id]["ParentSeries"]
        assert pacs.get_json(f"/series/{instances[sc_id]['ParentSeries']}")["Instances"] == [sc_id]
        assert sc_tags["SeriesDescription"] == QC_SERIES_DESCRIPTION
        assert sc_tags["PatientID"] == seg_tags["PatientID"]

        received = tmp_path / "received_sc.dcm"
        received.write_bytes(pacs.get_instance_file(sc_id))
    assert syn.run_dciodvfy(received) == []
    sc = pydicom.dcmread(received)
    assert sc.PhotometricInterpretation == "RGB"
    assert sc.SourceInstanceSequence[0].ReferencedSOPInstanceUID == uid
    assert {item.SeriesInstanceUID for item in sc.ReferencedSeriesSequence} == {
        series.series_uid,
        seg_tags["SeriesInstanceUID"],
    }
    png = (node.data / "qc" / f"{uid}.png").read_bytes()
    assert np.array_equal(sc.pixel_array, png_pixels(png))


class ScriptedPacs:
    """A pynetdicom Storage SCP for SEG and, unless ``secondary_capture`` is False, Secondary Capture; it answers a
    Secondary Capture C-STORE with ``sc_status`` (a test may change it between runs)."""

    def __init__(self, *, secondary_capture: bool = True, sc_status: int = 0x0000) -> None:
        self.stored: list[str] = []
        self.sc_status = sc_status
        self.lock = threading.Lock()
        ae = AE(ae_title="SCRIPTED")
        syntaxes = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
        ae.add_supported_context(SEGMENTATION_STORAGE, syntaxes)
        if secondary_capture:
            ae.add_supported_context(SECONDARY_CAPTURE_STORAGE, syntaxes)
        self.port = free_port()
        self.server: Any = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: Any) -> int:
        sop_class = str(event.request.AffectedSOPClassUID)
        status = self.sc_status if sop_class == SECONDARY_CAPTURE_STORAGE else 0x0000
        with self.lock:
            if status == 0x0000:
                self.stored.append(sop_class)
        return status

    def destination(self) -> str:
        return f'[[destinations]]\nname = "scripted"\nae_title = "SCRIPTED"\nhost = "127.0.0.1"\nport = {self.port}\n'


def test_a_pacs_that_refuses_the_picture_still_gets_the_seg_and_folders_get_the_seg_only(
    series: syn.SeriesInfo, burst: Callable[..., Burst], caplog: pytest.LogCaptureFixture
) -> None:
    pacs = ScriptedPacs(secondary_capture=False)
    try:
        node = burst(pacs.destination() + folder_destination(), send=True)
        with caplog.at_level(logging.WARNING, logger="node.pipeline.deliver"):
            segment(node, series)
    finally:
        pacs.server.shutdown()
    job = only_job(node)
    assert job.state is JobState.SENT, job.reason
    assert {send.destination: send.attempts for send in job.sends} == {"scripted": 1, "out": 1}
    assert pacs.stored == [SEGMENTATION_STORAGE]
    assert (node.data / "qc" / f"{job.seg_sop_uid}.sc.dcm").is_file()
    assert [p.name for p in (node.data / "outgoing").iterdir()] == [f"{job.seg_sop_uid}.dcm"]
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "node.pipeline.deliver"]
    assert job.seg_sop_uid in warning and "QC image did not" in warning and "scripted" in warning


def test_a_picture_that_may_still_pass_is_not_retried_once_the_seg_went(
    series: syn.SeriesInfo, burst: Callable[..., Burst], caplog: pytest.LogCaptureFixture
) -> None:
    pacs = ScriptedPacs(sc_status=0xA700)  # Out of Resources: might pass later, but the SEG is there already
    try:
        node = burst(pacs.destination(), send=True)
        with caplog.at_level(logging.WARNING, logger="node.pipeline.deliver"):
            segment(node, series)
        job = only_job(node)
        (send,) = job.sends
        assert job.state is JobState.SENT, job.reason
        assert (send.state, send.attempts) == (SendState.OK, 1), send
        assert pacs.stored == [SEGMENTATION_STORAGE]
        # Nothing is due again: the SEG is not sent a second time for its picture's sake.
        pacs.sc_status = 0x0000
        node.run(later=3600.0)
    finally:
        pacs.server.shutdown()
    assert pacs.stored == [SEGMENTATION_STORAGE]
    assert only_job(node).state is JobState.SENT
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "node.pipeline.deliver"]
    assert job.seg_sop_uid in warning and "QC image did not" in warning and "scripted" in warning
    assert "A700" in warning.upper() or "out of resources" in warning.lower(), warning
