"""`segnode demo` (node/service/demo.py) as a user runs it, and its phantom and segmenter on their own.

The SEG the demo leaves behind is checked in patient space: each segment's voxels are placed by the SEG's own frame
positions, orientation and pixel spacing, and must be where the phantom has the structure, voxel for voxel.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from synthetic import nib

from node.convert.label_tables import read_label_table
from node.service import demo_segmenter
from node.service.demo_phantom import (
    NOISE_HU,
    PATIENT_NAME,
    STRUCTURES,
    PhantomGrid,
    phantom_hu,
    structure,
    truth_masks,
    write_phantom,
)

pytestmark = pytest.mark.slow

DEMO_SECONDS = 180
GRID = PhantomGrid()
#: One voxel of the phantom grid along x, y and z (mm).
VOXEL_MM = np.array([GRID.pixel_mm, GRID.pixel_mm, GRID.slice_mm])


def read_hu_volume(paths: list[Path]) -> tuple[npt.NDArray[np.float64], list[pydicom.Dataset]]:
    """The series in HU as (slice, row, column), slices sorted along +z by their own positions."""
    read: list[pydicom.Dataset] = [pydicom.dcmread(p) for p in paths]
    datasets = sorted(read, key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    return hu, datasets


def position_mm(ds: pydicom.Dataset, row: int, column: int) -> npt.NDArray[np.float64]:
    """Patient position (LPS mm) of one pixel of a slice, from its own header."""
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return np.asarray(
        np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        + column * column_spacing * orientation[:3]
        + row * row_spacing * orientation[3:],
        dtype=np.float64,
    )


def test_phantom_structures_are_where_the_table_says_with_their_hu(tmp_path: Path) -> None:
    phantom = write_phantom(tmp_path / "ct")
    hu, datasets = read_hu_volume(list(phantom.paths))
    assert hu.shape == (GRID.slices, GRID.rows, GRID.columns)
    first = datasets[0]
    assert str(first.PatientName) == PATIENT_NAME and first.Modality == "CT"
    assert float(first.RescaleIntercept) == -1024 and float(first.RescaleSlope) == 1
    assert float(first.WindowCenter) == 40 and float(first.WindowWidth) == 400
    assert float(first.SliceThickness) == GRID.slice_mm
    assert len({ds.SOPInstanceUID for ds in datasets}) == GRID.slices
    assert {ds.SeriesInstanceUID for ds in datasets} == {phantom.series_uid}
    for item in (s for s in STRUCTURES if s.name):
        # The voxel nearest the structure's centre, found through the files' own geometry.
        target = np.asarray(item.shape.centre)
        z = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
        k = int(np.argmin(np.abs(z - target[2])))
        corner = position_mm(datasets[k], 0, 0)
        column, row = (round(float(v)) for v in (target[:2] - corner[:2]) / GRID.pixel_mm)
        assert np.all(np.abs(position_mm(datasets[k], row, column) - target) <= VOXEL_MM / 2 + 1e-6)
        assert abs(hu[k, row, column] - item.hu) <= NOISE_HU, item.name
    # The liver is on the patient's right (LPS -x), the spine rod behind the aorta (+y).
    liver = structure("liver").shape.centre
    assert liver[0] < 0
    assert structure("vertebrae_lumbar").shape.centre[1] > structure("aorta").shape.centre[1]
    assert abs(hu[0, 0, 0] + 1000) <= NOISE_HU  # air in the corner
    assert abs(hu[GRID.index_of((80.0, -40.0, 0.0))] - 40) <= NOISE_HU  # soft tissue


def test_segmenter_labels_exactly_the_phantom_structures_and_writes_atomically(tmp_path: Path) -> None:
    hu = phantom_hu(GRID)
    labels = demo_segmenter.segment(hu)
    truth = truth_masks(GRID)
    for band in demo_segmenter.BANDS:
        assert np.array_equal(labels == band.label, truth[band.name]), band.name
    # Through files, as the export hook runs it: the node's export layout is (column, row, slice).
    nifti = tmp_path / "export" / "ct.nii.gz"
    nifti.parent.mkdir()
    affine = np.diag([-GRID.pixel_mm, -GRID.pixel_mm, GRID.slice_mm, 1.0])
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)), affine), nifti)
    out = tmp_path / "inbox" / "1.2.3.nii.gz"
    out.parent.mkdir()
    assert demo_segmenter.main([str(nifti), str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["1.2.3.json", "1.2.3.nii.gz"]  # no .tmp left
    written = nib.load(out)
    np.testing.assert_array_equal(written.affine, affine)
    assert np.array_equal(np.asanyarray(written.dataobj), np.transpose(labels, (2, 1, 0)))
    table = read_label_table(out.parent / "1.2.3.json")
    assert {value: entry.name for value, entry in table.items()} == {b.label: b.name for b in demo_segmenter.BANDS}
    assert demo_segmenter.main([str(tmp_path / "missing.nii.gz"), str(out)]) == 1


def demo_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "node", "demo", *extra]


def demo_env(tmp: Path) -> dict[str, str]:
    """The demo's temporary folder goes under ``tmp``, so the test can see that nothing is left there."""
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp)}


def line_value(text: str, prefix: str) -> str:
    match = re.search(rf"^{re.escape(prefix)}(\S+)", text, re.MULTILINE)
    assert match is not None, f"no line starting {prefix!r} in:\n{text}"
    return match.group(1)


def frame_voxels(seg: pydicom.Dataset) -> dict[str, npt.NDArray[np.float64]]:
    """LPS mm of every voxel of each segment (by label), placed by the SEG's own frames."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    pixels = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    found: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in names.values()}
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        origin = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64)
        rows, columns = np.nonzero(frame)
        found[names[number]].append(
            origin + columns[:, None] * column_spacing * orientation[:3] + rows[:, None] * row_spacing * orientation[3:]
        )
    return {name: np.concatenate(parts) for name, parts in found.items() if parts}


def assert_seg_is_the_phantom(seg_path: Path) -> None:
    seg = hd.seg.segread(seg_path)
    assert isinstance(seg, hd.seg.Segmentation)
    ds = pydicom.dcmread(seg_path)
    assert str(ds.PatientName) == PATIENT_NAME
    voxels = frame_voxels(ds)
    assert sorted(voxels) == sorted(b.name for b in demo_segmenter.BANDS)
    centres = GRID.centres()
    for name, mask in truth_masks(GRID).items():
        got = voxels[name]
        assert len(got) == int(mask.sum()), f"{name}: {len(got)} voxels, the phantom has {int(mask.sum())}"
        expected = centres[mask].mean(axis=0)
        assert np.all(np.abs(got.mean(axis=0) - expected) <= VOXEL_MM), f"{name}: {got.mean(axis=0)} vs {expected}"
    # The bone rod's centre, in mm, as the phantom's table gives it (the rod spans every slice: its mean z is 0).
    rod = np.asarray(structure("vertebrae_lumbar").shape.centre)
    assert np.all(np.abs(voxels["vertebrae_lumbar"].mean(axis=0) - rod) <= VOXEL_MM)
    assert voxels["liver"][:, 0].max() < 0, "the liver must be on the patient's right"


def test_demo_leaves_a_seg_whose_segments_are_where_the_phantom_has_them(tmp_path: Path) -> None:
    output = tmp_path / "out"
    done = subprocess.run(
        demo_command("--exit-when-done", "--output", str(output)),
        env=demo_env(tmp_path / "tmp"),
        capture_output=True,
        text=True,
        timeout=DEMO_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == "", done.stderr
    seg_path = Path(line_value(done.stdout, "SEG ready: "))
    assert seg_path.parent == output.resolve() and seg_path.is_file()
    assert_seg_is_the_phantom(seg_path)
    assert re.search(r"^QC picture: ", done.stdout, re.MULTILINE)
    assert re.search(r"^status page: (http://127\.0\.0\.1:\d+/|not served)", done.stdout, re.MULTILINE)
    assert (output / "node.log").stat().st_size > 0
    work = Path(line_value(done.stdout, "working folder "))
    assert not work.exists() and not list((tmp_path / "tmp").iterdir())


def read_until(stream: IO[str], wanted: str, seen: list[str]) -> None:
    """Read lines into ``seen`` until one starts with ``wanted``; fail if the stream ends first."""
    for line in stream:
        seen.append(line)
        if line.startswith(wanted):
            return
    raise AssertionError(f"the demo ended before printing {wanted!r}:\n{''.join(seen)}")


def test_ctrl_c_after_the_seg_stops_the_node_and_removes_the_working_folder(tmp_path: Path) -> None:
    output = tmp_path / "out"
    process = subprocess.Popen(
        demo_command("--output", str(output), "--timeout", str(DEMO_SECONDS)),
        env=demo_env(tmp_path / "tmp"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    seen: list[str] = []
    try:
        assert process.stdout is not None and process.stderr is not None
        read_until(process.stdout, "SEG ready: ", seen)
        read_until(process.stdout, "running; press Ctrl-C", seen)
        assert process.poll() is None, "without --exit-when-done the demo keeps running"
        process.send_signal(signal.SIGINT)
        rest, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = "".join(seen) + rest
    assert process.returncode == 0, text + errors
    work = Path(line_value(text, "working folder "))
    assert f"stopped; removed {work}" in rest
    assert not work.exists() and not list((tmp_path / "tmp").iterdir())
    assert Path(line_value(text, "SEG ready: ")).is_file()  # the output outlives the demo


def run_failing_demo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        demo_command("--exit-when-done", "--output", str(tmp_path / "out"), *extra),
        env=demo_env(tmp_path / "tmp"),
        capture_output=True,
        text=True,
        timeout=DEMO_SECONDS,
        check=False,
    )
    assert done.returncode != 0, done.stdout
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert not list((tmp_path / "tmp").iterdir()), "the working folder must be removed after a failure"
    return done


def test_a_busy_port_is_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_failing_demo(tmp_path, "--port", str(port))
    assert done.stderr.startswith("segnode demo: starting the node: ") and f"port {port} is busy" in done.stderr


def test_a_timeout_says_which_step_it_was_stuck_in(tmp_path: Path) -> None:
    done = run_failing_demo(tmp_path, "--timeout", "0.1")
    assert re.match(r"segnode demo: timed out after 0\.1 s (waiting for|exporting|building|delivering)", done.stderr)
    assert "SEG ready" not in done.stdout
