"""End-to-end tests of the node (node/service.py) with real peers: Orthanc as the PACS, DCMTK as modality.

Every SEG that arrives is checked in patient space against the phantom's ground truth, using only the SEG's own
frame positions.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import synthetic as syn
import synthetic_layouts as lay
from dcmtk import free_port, storescu, wait_for_echo
from nodes import (
    Burst,
    dicom_destination,
    folder_destination,
    run_node_process,
    start_node,
    wait_for,
    write_config,
)
from orthanc import OrthancServer, orthanc_binary
from synthetic import nib

from node.service.node import Node

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed (scripts/test.sh installs it)"),
]


@pytest.fixture
def series(tmp_path: Path) -> syn.SeriesInfo:
    """A small oblique series with a non-square matrix and non-square pixels, InstanceNumbers shuffled."""
    grid = syn.GridSpec.oblique(rows=24, cols=32, slices=10, row_spacing=1.1, col_spacing=0.8, slice_step=2.0)
    return syn.write_series(grid, tmp_path / "dicom", instance_numbers="shuffled", shuffle_file_names=True)


@pytest.fixture
def burst(tmp_path: Path) -> Iterator[Callable[[str], Burst]]:
    """Start burst-mode nodes (folder destination unless told otherwise); all are stopped after the test."""
    started: list[Burst] = []

    def start(extra: str = "") -> Burst:
        started.append(Burst(write_config(tmp_path / "node", free_port(), extra + folder_destination())))
        return started[-1]

    yield start
    for node in started:
        node.stop()


#: Moves a burst node's clock past every series' quiet period and hint grace.
QUIET = 3600.0


def drop_into_inbox(
    inbox: Path, name: str, make: Callable[[Path], object], labels: dict[int, str] | None = None
) -> Path:
    """Write an inbox item under a .part name and rename it, as a careful tool does; optionally a label sidecar."""
    if labels is not None:
        stem = name.removesuffix(".gz").removesuffix(".nii")
        (inbox / f"{stem}.json").write_text(json.dumps({"labels": {str(k): v for k, v in labels.items()}}))
    partial = inbox / f"{name}.part"
    make(partial)
    final = inbox / name
    partial.rename(final)
    return final


def label_map_on(reference: nib.Nifti1Image, phantom: syn.Phantom, grid: syn.GridSpec) -> Callable[[Path], object]:
    def make(path: Path) -> None:
        labels = syn.labels_on_nifti_grid(reference, phantom, snap=grid).astype(np.uint8)
        image = nib.Nifti1Image(labels, reference.affine, reference.header)
        # nibabel picks the format from the name; write as .nii.gz bytes under the .part name
        path.write_bytes(image.to_bytes() if not str(path).endswith(".gz.part") else _gzip(image))

    return make


def _gzip(image: nib.Nifti1Image) -> bytes:
    import gzip

    return gzip.compress(image.to_bytes())


def assert_seg_matches_truth(seg_bytes: bytes, info: syn.SeriesInfo, phantom: syn.Phantom, tmp_path: Path) -> None:
    seg_path = tmp_path / f"seg_{time.monotonic_ns()}.dcm"
    seg_path.write_bytes(seg_bytes)
    by_name = {name: value for value, name in phantom.names.items()}
    got = syn.seg_labels_on_source(seg_path, info.grid, mapping=by_name)
    expected = phantom.truth(info.grid)
    assert np.array_equal(got, expected), syn.describe_mismatch(got, expected)
    ds = pydicom.dcmread(seg_path)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == info.series_uid
    assert ds.FrameOfReferenceUID == info.frame_of_reference_uid
    assert ds.StudyInstanceUID == info.study_uid


@pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed (scripts/test.sh installs it)")
@pytest.mark.skipif(not syn.have_tool("dcm2niix"), reason="dcm2niix not installed")
def test_pacs_pushes_series_and_gets_two_correct_segs_back(
    tmp_path: Path, series: syn.SeriesInfo, running: list[Node]
) -> None:
    port = free_port()
    with OrthancServer(tmp_path, known_modalities={"segnode": ("SEGNODE", "127.0.0.1", port)}) as orthanc:
        config = write_config(tmp_path / "node", port, dicom_destination(orthanc))
        running.append(start_node(config))
        data = tmp_path / "node" / "data"
        for path in series.paths:
            orthanc.upload(path)
        (series_id,) = orthanc.series()
        orthanc.push_series(series_id, "segnode")
        export_json = data / "export" / f"{series.series_uid}.json"
        wait_for("the export of the pushed series", export_json.exists)
        phantom = syn.Phantom.fitting(series.grid)

        # 1. A tool's output on the export grid, named by the series UID.
        export_image = nib.load(data / "export" / f"{series.series_uid}.nii.gz")
        drop_into_inbox(
            data / "inbox",
            f"{series.series_uid}.nii.gz",
            label_map_on(export_image, phantom, series.grid),
            phantom.names,
        )
        # 2. A tool's output on dcm2niix's own conversion of the same files: matched by geometry.
        (converted,) = syn.run_dcm2niix(series.folder, tmp_path / "dcm2niix")
        dcm2niix_image = nib.load(converted)
        drop_into_inbox(
            data / "inbox", "totalseg_output.nii.gz", label_map_on(dcm2niix_image, phantom, series.grid), phantom.names
        )

        segs = wait_for(
            "two SEGs in Orthanc", lambda: len(orthanc.find_seg_instances()) == 2 and orthanc.find_seg_instances()
        )
        assert isinstance(segs, list)
        for instance in segs:
            assert_seg_matches_truth(orthanc.get_instance_file(instance), series, phantom, tmp_path)
        processed = sorted(p.name for p in (data / "processed").iterdir())
        assert len(processed) == 2 and not list((data / "failed").iterdir())
        reasons = [(p / "reason.txt").read_text() for p in (data / "processed").iterdir()]
        assert any("matched by name" in r for r in reasons) and any("matched by geometry" in r for r in reasons)


@pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed (scripts/test.sh installs it)")
def test_pacs_down_then_up_gets_its_seg(tmp_path: Path, series: syn.SeriesInfo, running: list[Node]) -> None:
    port = free_port()
    with OrthancServer(tmp_path) as orthanc:
        config = write_config(tmp_path / "node", port, dicom_destination(orthanc))
        orthanc.stop()
        running.append(start_node(config))
        data = tmp_path / "node" / "data"
        assert storescu(port, series.paths, called_ae="SEGNODE").ok
        wait_for("export", (data / "export" / f"{series.series_uid}.json").exists)
        phantom = syn.Phantom.fitting(series.grid)
        export_image = nib.load(data / "export" / f"{series.series_uid}.nii.gz")
        drop_into_inbox(
            data / "inbox",
            f"{series.series_uid}.nii.gz",
            label_map_on(export_image, phantom, series.grid),
            phantom.names,
        )
        node = running[0]

        def retrying() -> bool:
            rows = node.state.jobs.list_jobs()
            sends = rows[0].sends if rows else ()  # the job exists a moment before its sends do
            return bool(sends) and sends[0].attempts >= 2 and "unreachable" in (sends[0].reason or "")

        wait_for("at least two failed attempts while the PACS is down", retrying)
        orthanc.start()
        segs = wait_for("the SEG once the PACS is back", orthanc.find_seg_instances)
        assert isinstance(segs, list) and len(segs) == 1
        assert_seg_matches_truth(orthanc.get_instance_file(segs[0]), series, phantom, tmp_path)


def test_bad_inbox_items_go_to_failed_with_a_reason_and_the_node_keeps_serving(
    tmp_path: Path, series: syn.SeriesInfo, burst: Callable[[str], Burst]
) -> None:
    node = burst("")
    data = node.data
    assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
    node.run(later=QUIET)
    assert (data / "export" / f"{series.series_uid}.json").exists()
    inbox = data / "inbox"
    phantom = syn.Phantom.fitting(series.grid)
    export_image = nib.load(data / "export" / f"{series.series_uid}.nii.gz")
    good = _gzip(
        nib.Nifti1Image(
            syn.labels_on_nifti_grid(export_image, phantom, snap=series.grid).astype(np.uint8),
            export_image.affine,
            export_image.header,
        )
    )
    # A truncated gzip, a grid of no received series, and a valid file named after a series we never received.
    drop_into_inbox(inbox, "corrupt.nii.gz", lambda p: p.write_bytes(good[: len(good) // 2]))
    elsewhere = export_image.affine.copy()
    elsewhere[:3, 3] += 900.0
    drop_into_inbox(
        inbox,
        "stranger.nii.gz",
        lambda p: p.write_bytes(_gzip(nib.Nifti1Image(np.ones(export_image.shape, np.uint8), elsewhere))),
    )
    drop_into_inbox(inbox, "1.2.3.4.5.nii.gz.json", lambda p: p.write_text("{}"))
    node.run()
    failed = data / "failed"
    assert len(list(failed.iterdir())) == 2
    reasons = {p.name.split("_", 1)[1]: (p / "reason.txt").read_text().splitlines()[0] for p in failed.iterdir()}
    assert "corrupt.nii.gz" in reasons["corrupt.nii.gz"] and "corrupt" in reasons["corrupt.nii.gz"]
    assert "no received series has this grid" in reasons["stranger.nii.gz"]
    # Inputs are kept, byte for byte.
    kept = {p.name.split("_", 1)[1]: p for p in failed.iterdir()}
    assert (kept["corrupt.nii.gz"] / "corrupt.nii.gz").read_bytes() == good[: len(good) // 2]
    # The node still serves: a good item afterwards becomes a SEG.
    drop_into_inbox(inbox, f"{series.series_uid}.nii.gz", lambda p: p.write_bytes(good), phantom.names)
    node.run()
    (seg_file,) = (data / "outgoing").iterdir()
    assert_seg_matches_truth(seg_file.read_bytes(), series, phantom, tmp_path)


def test_late_instance_reopens_series_and_exports_again(
    tmp_path: Path, series: syn.SeriesInfo, burst: Callable[[str], Burst]
) -> None:
    node = burst("")
    data = node.data
    assert storescu(node.port, series.paths[:-1], called_ae="SEGNODE").ok
    node.run(later=QUIET)
    first = nib.load(data / "export" / f"{series.series_uid}.nii.gz")
    assert first.shape[2] == series.grid.slices - 1
    assert storescu(node.port, series.paths[-1:], called_ae="SEGNODE").ok
    node.run(later=QUIET)
    second = nib.load(data / "export" / f"{series.series_uid}.nii.gz")
    assert second.shape[2] == series.grid.slices
    # The new export's affine still maps exactly onto the full series: its first voxel is slice 0's first pixel.
    lps_origin = np.diag([-1.0, -1.0, 1.0]) @ second.affine[:3, 3]
    np.testing.assert_allclose(lps_origin, series.grid.centres_lps()[0, 0, 0], atol=1e-4)


def test_kill_9_during_transfer_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    grid = syn.GridSpec.axial(rows=256, cols=256, slices=60)
    info = syn.write_series(grid, tmp_path / "dicom")
    port = free_port()
    config = write_config(tmp_path / "node", port, folder_destination(), quiet=2.0)
    log = tmp_path / "node.log"
    process = run_node_process(config, log)
    try:
        wait_for_echo(port, called_ae="SEGNODE")
        sender_log = tmp_path / "storescu.log"
        # Output to a file: a pipe nobody reads would fill and stall storescu mid-transfer.
        sender = subprocess.Popen(
            ["storescu", "-v", "-aec", "SEGNODE", "127.0.0.1", str(port), *map(str, info.paths)],
            stdout=sender_log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        store = tmp_path / "node" / "data" / "instances" / info.series_uid
        wait_for("some instances stored", lambda: store.exists() and len(list(store.glob("*.dcm"))) >= 10)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        sender.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    text = sender_log.read_text(errors="replace")
    acknowledged = text.count("Received Store Response (Success)")
    assert 10 <= acknowledged < len(info.paths), text[-2000:]
    # Every acknowledged instance is on disk and intact after a restart's recovery.
    process = run_node_process(config, log)
    try:
        wait_for_echo(port, called_ae="SEGNODE")
        stored = {p.stem: p for p in store.glob("*.dcm")}
        for sop_uid, original in list(zip(info.sop_uids, info.paths, strict=True))[:acknowledged]:
            assert sop_uid in stored, f"acknowledged instance {sop_uid} lost"
            assert np.array_equal(pydicom.dcmread(stored[sop_uid]).pixel_array, pydicom.dcmread(original).pixel_array)
        assert not [p for p in store.parent.rglob(".*.tmp")], "half-written files left after recovery"
        # The sender resends everything; the series then completes with every slice.
        assert storescu(port, info.paths, called_ae="SEGNODE").ok
        export = tmp_path / "node" / "data" / "export" / f"{info.series_uid}.nii.gz"
        wait_for("the complete series exported", lambda: export.exists() and nib.load(export).shape[2] == grid.slices)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


def test_sigterm_exits_promptly(tmp_path: Path) -> None:
    port = free_port()
    process = run_node_process(write_config(tmp_path / "node", port, folder_destination()), tmp_path / "node.log")
    try:
        wait_for_echo(port, called_ae="SEGNODE")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert time.monotonic() - started < 10, "SIGTERM must stop the node within 10 s"
    finally:
        if process.poll() is None:
            process.kill()


def test_export_command_runs_a_tool_whose_mask_folder_becomes_one_seg(
    tmp_path: Path, series: syn.SeriesInfo, burst: Callable[[str], Burst]
) -> None:
    tool = Path(__file__).resolve().parents[1] / "fake_segmenter.py"
    node = burst(
        f'[export]\ncommand = "{sys.executable} {tool} {{nifti}} {{inbox}} {{series_uid}}"\ncommand_timeout = 60\n'
    )
    data = node.data
    assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
    node.run(later=QUIET)
    (seg_file,) = (data / "outgoing").iterdir()
    phantom = syn.Phantom.fitting(series.grid)
    assert_seg_matches_truth(seg_file.read_bytes(), series, phantom, tmp_path)
    assert sorted(syn.segment_names(seg_file).values()) == sorted(phantom.names.values())
    (item,) = (data / "processed").iterdir()
    assert sorted(p.name for p in (item / series.series_uid).iterdir()) == sorted(
        f"{name}.nii.gz" for name in phantom.names.values()
    )


def test_series_whose_repeated_positions_nothing_tells_apart_is_refused(
    tmp_path: Path, burst: Callable[[str], Burst]
) -> None:
    grid = syn.GridSpec.axial(rows=16, cols=16, slices=4)
    first = syn.write_series(grid, tmp_path / "phase1")
    # A second phase: same series, same positions, other instances, and no header attribute that differs.
    uids = {"study": first.study_uid, "series": first.series_uid, "frame_of_reference": first.frame_of_reference_uid}
    second = syn.write_series(grid, tmp_path / "phase2", uids=uids, seed=1)
    node = burst("")
    assert storescu(node.port, [*first.paths, *second.paths], called_ae="SEGNODE").ok
    node.run(later=QUIET)
    from node.state.model import SeriesState

    row = node.node.state.series.get(first.series_uid)
    assert row is not None and row.state is SeriesState.FAILED
    assert row.reason is not None and "nothing in their headers" in row.reason
    assert not (node.data / "export" / f"{first.series_uid}.nii.gz").exists()


def test_a_series_of_two_echoes_is_exported_and_segmented_per_stack(
    tmp_path: Path, burst: Callable[[str], Burst]
) -> None:
    grid = syn.GridSpec.oblique(rows=16, cols=20, slices=6, row_spacing=1.1, col_spacing=0.8, slice_step=2.0)
    layout = lay.write_layout(tmp_path / "dicom", lay.echo_stacks(grid), modality="MR")
    node = burst("")
    data = node.data
    assert storescu(node.port, list(layout.paths), called_ae="SEGNODE").ok
    node.run(later=QUIET)
    uid = layout.series_uid
    sidecars = [json.loads((data / "export" / f"{stem}.json").read_text()) for stem in (uid, f"{uid}_stack2")]
    assert [s["stack"]["index"] for s in sidecars] == [1, 2]
    assert [s["stack"]["key"]["EchoNumbers"] for s in sidecars] == ["1", "2"]
    # Each export holds its own echo's instances, and the geometry of the shared positions (mm).
    for sidecar, echo in zip(sidecars, ("echo1", "echo2"), strict=True):
        assert sidecar["stack"]["sop_instance_uids"] == sorted(u for u, _ in layout.stack(echo).sources)
        np.testing.assert_allclose(np.asarray(sidecar["affine_ras"]), syn.export_grid_affine(grid), atol=1e-4)
    # By name: the second stack's export stem builds a SEG on the second echo's instances only.
    export_image = nib.load(data / "export" / f"{uid}_stack2.nii.gz")
    drop_into_inbox(
        data / "inbox",
        f"{uid}_stack2.nii.gz",
        label_map_on(export_image, layout.phantom, grid),
        labels=layout.phantom.names,
    )
    node.run()
    (seg_path,) = list((data / "outgoing").iterdir())
    assert_seg_matches_truth(seg_path.read_bytes(), layout.series_info("echo2"), layout.phantom, tmp_path)
    referenced = {uid for uid, _ in syn.seg_frame_sources(seg_path)}
    assert referenced <= {u for u, _ in layout.stack("echo2").sources}
    # By geometry alone the item fits both echoes: refused, naming both exports.
    drop_into_inbox(data / "inbox", "tool_output.nii.gz", label_map_on(export_image, layout.phantom, grid))
    node.run()
    (reason_file,) = (data / "failed").rglob("reason.txt")
    reason = reason_file.read_text()
    assert "ambiguous" in reason and f"{uid}_stack2" in reason and "internal" not in reason


def test_retry_puts_a_failed_input_back_once_its_series_has_arrived(
    tmp_path: Path, series: syn.SeriesInfo, burst: Callable[[str], Burst]
) -> None:
    node = burst("")
    data = node.data
    phantom = syn.Phantom.fitting(series.grid)
    affine, shape = syn.export_grid_affine(series.grid), syn.export_grid_shape(series.grid)
    labels = nib.Nifti1Image(
        syn.labels_on_nifti_grid((affine, shape), phantom, snap=series.grid).astype(np.uint8), affine
    )
    # The segmentation arrives before its series: nothing to match yet.
    drop_into_inbox(data / "inbox", "early.nii.gz", lambda p: p.write_bytes(_gzip(labels)), phantom.names)
    node.run()
    assert list((data / "failed").iterdir())
    from node.state.model import JobState

    (job,) = node.node.state.jobs.list_jobs()
    assert job.state is JobState.FAILED and "no received series" in (job.reason or "")
    assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
    node.run(later=QUIET)
    assert (data / "export" / f"{series.series_uid}.json").exists()
    assert "back in the inbox" in node.node.requeue(job.id)
    node.run()
    (seg_file,) = (data / "outgoing").iterdir()
    assert_seg_matches_truth(seg_file.read_bytes(), series, phantom, tmp_path)
