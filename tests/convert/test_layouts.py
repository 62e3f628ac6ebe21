"""End-to-end ``segnode convert`` on the layouts scanners write: Enhanced objects, series of several stacks,
orientation jitter, uneven spacing, a single plane, mosaics, and one-segment inputs.

Every SEG is read back alone (its own frame positions, orientation, spacing and references) and compared with the
phantom at the source pixel centres in LPS mm, as tests/synthetic_layouts.py wrote them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import synthetic as syn
import synthetic_layouts as lay
from synthetic import nib

GRID = syn.GridSpec.oblique(rows=16, cols=20, slices=6, row_spacing=0.9, col_spacing=1.3, slice_step=2.5)
AXIAL = syn.GridSpec.axial(rows=16, cols=20, slices=6, row_spacing=0.9, col_spacing=1.3, slice_step=2.5)
SAGITTAL = syn.GridSpec.sagittal(rows=16, cols=20, slices=8, row_spacing=1.1, col_spacing=0.8, slice_step=3.0)
HAVE_DCIODVFY = syn.have_tool("dciodvfy")


# -- helpers ------------------------------------------------------------------------------------------------------


def label_map(tmp_path: Path, grid: syn.GridSpec, phantom: syn.Phantom, name: str = "labels.nii.gz") -> Path:
    """The phantom as the "DICOM pixels in RAS" label map over ``grid`` (snapped: exact on that grid)."""
    reference = (syn.export_grid_affine(grid), syn.export_grid_shape(grid))
    return syn.label_nifti_on_grid(reference, phantom, tmp_path / name, snap=grid)


def convert(run: syn.ConvertRunner, folder: Path, nifti: Path, out: Path, *extra: str) -> syn.CliResult:
    return run("--dicom", str(folder), "--nifti", str(nifti), "--out", str(out), *extra)


def convert_ok(run: syn.ConvertRunner, folder: Path, nifti: Path, out: Path, *extra: str) -> Path:
    result = convert(run, folder, nifti, out, *extra)
    assert result.code == 0, result.stderr
    assert out.is_file()
    return out


def numbering(expected: syn.IntArray) -> dict[int, int]:
    """Segment number -> label value: segments run 1..K over the label values present, ascending."""
    return {n: v for n, v in enumerate(sorted(set(np.unique(expected).tolist()) - {0}), start=1)}


def check_identity(seg_path: Path, layout: lay.LayoutInfo, stack: lay.StackTruth) -> None:
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    assert ds.Modality == "SEG"
    assert ds.StudyInstanceUID == layout.study_uid
    assert ds.FrameOfReferenceUID == layout.frame_of_reference_uid
    assert [str(item.SeriesInstanceUID) for item in ds.ReferencedSeriesSequence] == [layout.series_uid]
    referenced = {
        str(item.ReferencedSOPInstanceUID) for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {uid for uid, _ in stack.sources}, "ReferencedInstanceSequence names other instances"


def check_exact_on_stack(
    seg_path: Path, layout: lay.LayoutInfo, name: str, *, seg_type: str = "binary", phantom: syn.Phantom | None = None
) -> None:
    """Every pixel of a regular stack equals the phantom's truth; every frame names the instance and frame it lies
    on; the SEG belongs to the source study, series and frame of reference; dciodvfy clean for BINARY."""
    stack = layout.stack(name)
    info = layout.series_info(name)
    phantom = phantom or layout.phantom
    truth = phantom.truth(info.grid)
    got = syn.seg_labels_on_source(seg_path, info.grid, numbering(truth))
    assert np.array_equal(got, truth), syn.describe_mismatch(got, truth)
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    slices = syn.seg_frames_on_source(ds, info.grid)
    sources = syn.seg_frame_sources(seg_path)
    assert sources == [info.source_of_slice(k) for k in slices]
    check_identity(seg_path, layout, stack)
    if seg_type == "binary" and HAVE_DCIODVFY:
        assert syn.run_dciodvfy(seg_path) == []


def stack_of_seg(seg_path: Path, layout: lay.LayoutInfo) -> str:
    """The one written stack all of a SEG's frames reference (by SOP instance and frame number)."""
    referenced = set(syn.seg_frame_sources(seg_path))
    names = [s.name for s in layout.stacks if referenced <= set(s.sources)]
    assert len(names) == 1, f"SEG frames reference {sorted(referenced, key=str)[:4]}..., in stacks {names}"
    return names[0]


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    return lines[0]


def check_each_stack_then_ambiguous(run: syn.ConvertRunner, tmp_path: Path, info: lay.LayoutInfo) -> Path:
    """Stacks sharing one grid: each --stack N gives a SEG exact on one stack and the N cover every stack once;
    without --stack, convert fails in one line that names --stack and every stack. The label map is returned."""
    nifti = label_map(tmp_path, GRID, info.phantom)
    seen = []
    for n in range(1, len(info.stacks) + 1):
        seg = convert_ok(run, info.folder, nifti, tmp_path / f"seg{n}.dcm", "--stack", str(n))
        name = stack_of_seg(seg, info)
        check_exact_on_stack(seg, info, name)
        seen.append(name)
    assert sorted(seen) == sorted(s.name for s in info.stacks)
    result = convert(run, info.folder, nifti, tmp_path / "ambiguous.dcm")
    assert result.code != 0
    line = one_line(result.stderr)
    assert "--stack" in line and all(f"stack {n}" in line for n in range(1, len(info.stacks) + 1))
    return nifti


# -- Enhanced objects ---------------------------------------------------------------------------------------------


ENHANCED: list[Any] = [
    pytest.param({"modality": "CT", "geometry": "shared"}, id="ct-shared"),
    pytest.param({"modality": "CT", "geometry": "per_frame"}, id="ct-per-frame"),
    pytest.param({"modality": "MR", "geometry": "shared"}, id="mr-shared"),
    pytest.param({"modality": "MR", "geometry": "per_frame", "frame_order": "reversed"}, id="mr-per-frame"),
]


@pytest.mark.parametrize("layout", ENHANCED)
def test_enhanced_one_volume_exact(tmp_path: Path, segnode_convert: syn.ConvertRunner, layout: dict[str, Any]) -> None:
    info = lay.write_enhanced(GRID, tmp_path / "dicom", **layout)
    grid = info.stack("volume").grid
    assert grid is not None
    seg = convert_ok(segnode_convert, info.folder, label_map(tmp_path, grid, info.phantom), tmp_path / "seg.dcm")
    check_exact_on_stack(seg, info, "volume")


ENHANCED_MULTI: list[Any] = [
    pytest.param({"modality": "MR", "temporal_positions": 2}, id="temporal-shared"),
    pytest.param({"modality": "CT", "temporal_positions": 2, "geometry": "per_frame"}, id="ct-temporal-per-frame"),
    pytest.param({"modality": "MR", "echo_times": (9.5, 21.0), "geometry": "per_frame"}, id="echoes-one-object"),
    pytest.param({"modality": "MR", "echo_times": (9.5, 21.0), "object_per_echo": True}, id="object-per-echo"),
]


@pytest.mark.parametrize("layout", ENHANCED_MULTI)
def test_enhanced_several_volumes_each_stack_exact(
    tmp_path: Path, segnode_convert: syn.ConvertRunner, layout: dict[str, Any]
) -> None:
    """Frames at repeated positions: each --stack N gives a SEG whose every frame names a frame of one volume."""
    info = lay.write_enhanced(GRID, tmp_path / "dicom", **layout)
    # Without --stack the volumes are ambiguous: they share one grid.
    check_each_stack_then_ambiguous(segnode_convert, tmp_path, info)
    assert not (tmp_path / "ambiguous.dcm").exists()


# -- classic series of several stacks -----------------------------------------------------------------------------


AMBIGUOUS: list[Any] = [
    pytest.param(lambda f: lay.write_layout(f, lay.echo_stacks(GRID), modality="MR"), id="echoes"),
    pytest.param(lambda f: lay.write_layout(f, lay.magnitude_phase_stacks(GRID), modality="MR"), id="magnitude-phase"),
    pytest.param(lambda f: lay.write_layout(f, lay.dynamic_stacks(GRID, 2)), id="dynamics"),
    pytest.param(
        lambda f: lay.write_layout(f, lay.diffusion_stacks(GRID, directions=((0.0, 0.6, 0.8),)), modality="MR"),
        id="diffusion",
    ),
    pytest.param(
        lambda f: lay.write_layout(
            f, [lay.StackSpec.of_grid("classic", GRID)], [lay.EnhancedSpec((lay.StackSpec.of_grid("enhanced", GRID),))]
        ),
        id="classic-and-enhanced-same-grid",
    ),
]


@pytest.mark.parametrize("build", AMBIGUOUS)
def test_stacks_at_the_same_positions(
    tmp_path: Path, segnode_convert: syn.ConvertRunner, build: Callable[[Path], lay.LayoutInfo]
) -> None:
    info = build(tmp_path / "dicom")
    nifti = check_each_stack_then_ambiguous(segnode_convert, tmp_path, info)
    result = convert(segnode_convert, info.folder, nifti, tmp_path / "none.dcm", "--stack", str(len(info.stacks) + 1))
    assert result.code != 0
    assert f"stack {len(info.stacks) + 1}" in one_line(result.stderr)


DISTINCT: list[Any] = [
    pytest.param(lambda f: lay.write_layout(f, lay.localizer_stacks()), id="localizer"),
    pytest.param(
        lambda f: lay.write_layout(
            f,
            [lay.StackSpec.of_grid("classic", GRID)],
            [lay.EnhancedSpec((lay.StackSpec.of_grid("enhanced", SAGITTAL),), geometry="per_frame")],
        ),
        id="classic-and-enhanced",
    ),
]


@pytest.mark.parametrize("build", DISTINCT)
def test_stack_picked_by_geometry(
    tmp_path: Path, segnode_convert: syn.ConvertRunner, build: Callable[[Path], lay.LayoutInfo]
) -> None:
    """Stacks on different grids: a label map on one stack's grid needs no --stack, and --stack N agrees."""
    info = build(tmp_path / "dicom")
    for stack in info.stacks:
        assert stack.grid is not None
        phantom = syn.Phantom.fitting(stack.grid)
        nifti = label_map(tmp_path, stack.grid, phantom, name=f"{stack.name}.nii.gz")
        seg = convert_ok(segnode_convert, info.folder, nifti, tmp_path / f"{stack.name}.dcm")
        assert stack_of_seg(seg, info) == stack.name
        check_exact_on_stack(seg, info, stack.name, phantom=phantom)
    # A label map on another grid fits no stack: refused in one line that lists them.
    other = syn.GridSpec.coronal(rows=12, cols=12, slices=4)
    result = convert(
        segnode_convert,
        info.folder,
        label_map(tmp_path, other, syn.Phantom.fitting(other), "x.nii.gz"),
        tmp_path / "x.dcm",
    )
    assert result.code != 0
    line = one_line(result.stderr)
    assert "--stack" in line and all(f"stack {n}" in line for n in range(1, len(info.stacks) + 1))


# -- orientation jitter -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["classic", "enhanced"])
@pytest.mark.parametrize("grid", [pytest.param(GRID, id="oblique"), pytest.param(AXIAL, id="axial")])
def test_orientation_jitter_exact(
    tmp_path: Path, segnode_convert: syn.ConvertRunner, grid: syn.GridSpec, container: str
) -> None:
    spec = lay.jittered_stack(grid, low=1e-6, high=5e-5, seed=9)
    info = classic_or_enhanced(tmp_path / "dicom", spec, container, syn.Phantom.fitting(grid))
    seg = convert_ok(segnode_convert, info.folder, label_map(tmp_path, grid, info.phantom), tmp_path / "seg.dcm")
    check_exact_on_stack(seg, info, "jittered")
    # Each frame is on its own source plane's pixels: position within 1e-3 mm, orientation within 1e-4.
    ds = pydicom.dcmread(seg, stop_before_pixels=True)
    planes = info.stack("jittered").planes
    frames = syn.seg_frames_on_planes(ds, planes)
    sources = syn.seg_frame_sources(seg)
    assert sources == [info.stack("jittered").sources[k] for k in frames]


# -- uneven spacing -----------------------------------------------------------------------------------------------


UNEVEN: list[Any] = [
    pytest.param(lambda g: lay.missing_slice_stack(g.replace(slices=8), missing=(3,)), 2.5, id="missing-slice"),
    pytest.param(lambda g: lay.uneven_stack(g, [2.0, 2.0, 3.0, 2.0, 4.0, 2.0]), 1.0, id="variable-spacing"),
    pytest.param(
        lambda g: lay.uneven_stack(g, [2.0, 3.0, 2.0, 4.0, 2.0], tilt_degrees=15.0), 1.0, id="gantry-tilt-uneven"
    ),
]


def classic_or_enhanced(folder: Path, spec: lay.StackSpec, container: str, phantom: syn.Phantom) -> lay.LayoutInfo:
    """One stack as classic images, or as one Enhanced CT object with its geometry per frame."""
    if container == "classic":
        return lay.write_layout(folder, [spec], phantom=phantom)
    return lay.write_layout(folder, enhanced=[lay.EnhancedSpec((spec,), geometry="per_frame")], phantom=phantom)


@pytest.mark.parametrize("container", ["classic", "enhanced"])
@pytest.mark.parametrize("grid", [pytest.param(AXIAL, id="axial"), pytest.param(GRID, id="oblique")])
@pytest.mark.parametrize(("make", "step"), UNEVEN)
def test_uneven_spacing(
    tmp_path: Path,
    segnode_convert: syn.ConvertRunner,
    grid: syn.GridSpec,
    make: Callable[[syn.GridSpec], lay.StackSpec],
    step: float,
    container: str,
) -> None:
    """A label map on an evenly spaced grid over the planes: one frame per labelled plane, at that plane."""
    spec = make(grid)
    extent = grid.replace(slices=8)
    phantom = syn.Phantom.fitting(extent)
    info = classic_or_enhanced(tmp_path / "dicom", spec, container, phantom)
    stack = info.stack(spec.name)
    affine, shape = lay.even_grid_over(spec, step)
    labels = syn.labels_on_nifti_grid((affine, shape), phantom).astype(np.uint8)
    nifti = syn.save_nifti(labels, affine, tmp_path / "even.nii.gz")
    seg = convert_ok(segnode_convert, info.folder, nifti, tmp_path / "seg.dcm")
    check_identity(seg, info, stack)
    if HAVE_DCIODVFY:
        assert syn.run_dciodvfy(seg) == []
    # Every plane lies on a slice of the even grid, so nearest-neighbour sampling of the label map is exact.
    expected = lay.nearest_labels_on_planes(labels, affine, stack.planes)
    got = syn.seg_labels_on_planes(seg, stack.planes, numbering(expected))
    assert np.array_equal(got, expected), syn.describe_mismatch(got, expected)
    truth = stack.truth(phantom)
    for value in phantom.values:
        score = syn.dice(got == value, truth == value)
        assert score >= 0.9, f"label {value}: Dice {score:.3f} against the truth at source pixel centres"
    # One frame per labelled (segment, plane), each at its plane's position and naming that plane's instance.
    ds = pydicom.dcmread(seg, stop_before_pixels=True)
    frames = syn.seg_frames_on_planes(ds, stack.planes)
    labelled = {k for k in range(len(stack.planes)) if expected[k].any()}
    assert set(frames) == labelled
    per_plane = sum(len(set(np.unique(expected[k]).tolist()) - {0}) for k in range(len(stack.planes)))
    assert len(frames) == per_plane
    assert syn.seg_frame_sources(seg) == [stack.sources[k] for k in frames]


# -- a single plane -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["classic", "enhanced"])
@pytest.mark.parametrize(
    "grid", [pytest.param(AXIAL, id="axial"), pytest.param(GRID, id="oblique"), pytest.param(SAGITTAL, id="sagittal")]
)
def test_single_plane_exact(
    tmp_path: Path, segnode_convert: syn.ConvertRunner, grid: syn.GridSpec, container: str
) -> None:
    """A label map on the one-slice grid dcm2niix writes (rows flipped, slice thickness as z spacing)."""
    spec = lay.single_plane_stack(grid, thickness=5.0)
    phantom = syn.Phantom.fitting(grid)
    info = classic_or_enhanced(tmp_path / "dicom", spec, container, phantom)
    single = info.stack("single").grid
    assert single is not None
    affine = lay.dcm2niix_affine(single)
    nifti = syn.label_nifti_on_grid(
        (affine, (single.cols, single.rows, 1)), phantom, tmp_path / "single.nii.gz", snap=single
    )
    seg = convert_ok(segnode_convert, info.folder, nifti, tmp_path / "seg.dcm")
    assert int(pydicom.dcmread(seg, stop_before_pixels=True).NumberOfFrames) == len(
        set(np.unique(phantom.truth(single)).tolist()) - {0}
    )
    check_exact_on_stack(seg, info, "single")


@pytest.mark.skipif(not syn.have_tool("dcm2niix"), reason="dcm2niix not installed")
def test_single_plane_on_a_real_dcm2niix_grid(tmp_path: Path, segnode_convert: syn.ConvertRunner) -> None:
    spec = lay.single_plane_stack(GRID, thickness=4.0)
    phantom = syn.Phantom.fitting(GRID)
    info = lay.write_layout(tmp_path / "dicom", [spec], phantom=phantom)
    single = info.stack("single").grid
    assert single is not None
    (converted,) = syn.run_dcm2niix(info.folder, tmp_path / "nii")
    image = nib.load(converted)
    assert np.linalg.norm(image.affine[:3, 2]) == pytest.approx(4.0, abs=1e-4)
    nifti = syn.label_nifti_on_grid(image, phantom, tmp_path / "labels.nii.gz", snap=single)
    check_exact_on_stack(convert_ok(segnode_convert, info.folder, nifti, tmp_path / "seg.dcm"), info, "single")


# -- mosaics ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("private", [True, False], ids=["with-csa-count", "image-type-only"])
def test_mosaic_is_refused_in_one_line(tmp_path: Path, segnode_convert: syn.ConvertRunner, private: bool) -> None:
    info = lay.write_mosaic(tmp_path / "dicom", with_private_count=private, count=2)
    grid = info.stacks[0].grid
    assert grid is not None
    result = convert(segnode_convert, info.folder, label_map(tmp_path, grid, info.phantom), tmp_path / "seg.dcm")
    assert result.code != 0
    assert "mosaic" in one_line(result.stderr).lower()
    assert not (tmp_path / "seg.dcm").exists()


# -- one segment --------------------------------------------------------------------------------------------------


SEG_TYPES = ["binary", "labelmap", "fractional"]


@pytest.mark.parametrize("seg_type", SEG_TYPES)
@pytest.mark.parametrize("source", ["classic", "enhanced-per-frame"])
def test_one_segment_label_map(tmp_path: Path, segnode_convert: syn.ConvertRunner, seg_type: str, source: str) -> None:
    phantom = syn.Phantom(syn.Phantom.fitting(GRID).shapes[:1])
    if source == "classic":
        info = lay.write_layout(tmp_path / "dicom", [lay.StackSpec.of_grid("volume", GRID)], phantom=phantom)
    else:
        info = lay.write_enhanced(GRID, tmp_path / "dicom", geometry="per_frame", phantom=phantom)
    seg = convert_ok(
        segnode_convert, info.folder, label_map(tmp_path, GRID, phantom), tmp_path / "seg.dcm", "--type", seg_type
    )
    ds = pydicom.dcmread(seg, stop_before_pixels=True)
    assert ds.SegmentationType == seg_type.upper()
    assert list(syn.segment_names(ds)) == [1]
    check_exact_on_stack(seg, info, "volume", seg_type=seg_type)


@pytest.mark.parametrize("seg_type", SEG_TYPES)
def test_one_segment_mask_folder(tmp_path: Path, segnode_convert: syn.ConvertRunner, seg_type: str) -> None:
    phantom = syn.Phantom(syn.Phantom.fitting(GRID).shapes[1:2])
    info = lay.write_layout(tmp_path / "dicom", [lay.StackSpec.of_grid("volume", GRID)], phantom=phantom)
    reference = (syn.export_grid_affine(GRID), syn.export_grid_shape(GRID))
    (mask,) = syn.masks_folder(reference, phantom, tmp_path / "masks", snap=GRID)
    seg = convert_ok(segnode_convert, info.folder, mask.parent, tmp_path / "seg.dcm", "--type", seg_type)
    ds = pydicom.dcmread(seg, stop_before_pixels=True)
    assert syn.segment_names(ds) == {1: phantom.shapes[0].name}
    # The mask's segment is number 1; on the source it carries the shape's label value.
    value = phantom.shapes[0].label
    got = syn.seg_labels_on_source(seg, GRID, {1: value})
    truth = phantom.truth(GRID)
    assert np.array_equal(got, truth), syn.describe_mismatch(got, truth)
    check_identity(seg, info, info.stack("volume"))
    if seg_type == "binary" and HAVE_DCIODVFY:
        assert syn.run_dciodvfy(seg) == []


def test_a_structure_in_the_gap_of_a_missing_slice_is_refused_saying_so(
    tmp_path: Path, segnode_convert: syn.ConvertRunner
) -> None:
    """Most of a small structure lies where the slice is missing: no plane can show it, and the refusal says why."""
    grid = syn.GridSpec.oblique(rows=16, cols=20, slices=6, row_spacing=0.9, col_spacing=1.3, slice_step=2.5)
    phantom = syn.Phantom.fitting(grid)
    spec = lay.missing_slice_stack(grid.replace(slices=8))
    info = lay.write_layout(tmp_path / "dicom", [spec], phantom=phantom)
    affine, shape = lay.even_grid_over(spec, 2.5)
    labels = syn.labels_on_nifti_grid((affine, shape), phantom).astype(np.uint8)
    nifti = syn.save_nifti(labels, affine, tmp_path / "even.nii.gz")
    result = convert(segnode_convert, info.folder, nifti, tmp_path / "seg.dcm")
    assert result.code != 0 and not (tmp_path / "seg.dcm").exists()
    line = one_line(result.stderr)
    assert "self-verification" in line and "unevenly spaced" in line and "no plane to go on" in line
