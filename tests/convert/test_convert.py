"""End-to-end tests of ``segnode convert``: synthetic series + NIfTI in, DICOM SEG out, read back from the SEG alone.

Exact cases compare every pixel with the phantom's ground truth on the source grid; the SEG is placed by its own
per-frame positions (tests/synthetic.py: seg_labels_on_source), never by the node's code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import synthetic as syn
from synthetic import nib

NONSQUARE: dict[str, Any] = {"rows": 40, "cols": 56, "row_spacing": 0.9, "col_spacing": 1.3, "slice_step": 2.5}
needs_dcm2niix = pytest.mark.skipif(not syn.have_tool("dcm2niix"), reason="dcm2niix not installed")
needs_dciodvfy = syn.have_tool("dciodvfy")


def grids() -> list[Any]:
    params = []
    for name in ("axial", "sagittal", "coronal", "oblique"):
        preset = getattr(syn.GridSpec, name)
        params.append(pytest.param(preset(), id=f"{name}-square"))
        params.append(pytest.param(preset(**NONSQUARE), id=f"{name}-nonsquare"))
    params.append(pytest.param(syn.GridSpec.axial(slice_step=-2.0), id="axial-superior-first"))
    params.append(pytest.param(syn.GridSpec.oblique(**{**NONSQUARE, "slice_step": -2.5}), id="oblique-reversed"))
    return params


# -- helpers ------------------------------------------------------------------------------------------------------


def export_labels(
    tmp_path: Path, grid: syn.GridSpec, phantom: syn.Phantom, name: str = "labels.nii.gz", **kwargs: Any
) -> Path:
    """The phantom as the simple "DICOM pixels in RAS" label map over ``grid``."""
    reference = (syn.export_grid_affine(grid), syn.export_grid_shape(grid))
    return syn.label_nifti_on_grid(reference, phantom, tmp_path / name, snap=grid, **kwargs)


def dciodvfy_errors(seg: Path) -> list[str]:
    return syn.run_dciodvfy(seg)


def check_identity(seg_path: Path, info: syn.SeriesInfo, *, sop_class: str = syn.SEGMENTATION_STORAGE) -> None:
    """The SEG belongs to the source study, series and frame of reference, and each frame names its source."""
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    assert ds.SOPClassUID == sop_class
    assert ds.Modality == "SEG"
    assert ds.StudyInstanceUID == info.study_uid
    assert ds.FrameOfReferenceUID == info.frame_of_reference_uid
    assert ds.SeriesInstanceUID != info.series_uid
    assert [str(item.SeriesInstanceUID) for item in ds.ReferencedSeriesSequence] == [info.series_uid]
    slices = syn.seg_frames_on_source(ds, info.grid)
    sources = syn.seg_frame_sources(seg_path)
    assert [sources[f] for f in range(len(slices))] == [info.source_of_slice(k) for k in slices]


def check_exact(
    seg_path: Path,
    info: syn.SeriesInfo,
    phantom: syn.Phantom,
    *,
    mapping: Mapping[int, int] | Mapping[str, int] | None = None,
    sop_class: str = syn.SEGMENTATION_STORAGE,
    validate: bool = True,
) -> None:
    """Every source pixel carries exactly the phantom's label; identity checks; dciodvfy clean for BINARY."""
    truth = phantom.truth(info.grid)
    got = syn.seg_labels_on_source(seg_path, info.grid, mapping)
    assert np.array_equal(got, truth), syn.describe_mismatch(got, truth)
    check_identity(seg_path, info, sop_class=sop_class)
    if validate and needs_dciodvfy:
        assert dciodvfy_errors(seg_path) == []


def convert_ok(run: syn.ConvertRunner, info: syn.SeriesInfo, nifti: Path, out: Path, *extra: str) -> Path:
    result = run("--dicom", str(info.folder), "--nifti", str(nifti), "--out", str(out), *extra)
    assert result.code == 0, result.stderr
    assert out.is_file()
    return out


# -- orientation and matrix shape ---------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", grids())
def test_orientations_exact(tmp_path: Path, segnode_convert: syn.ConvertRunner, grid: syn.GridSpec) -> None:
    info = syn.write_series(grid, tmp_path / "dicom")
    phantom = syn.Phantom.fitting(grid)
    seg = convert_ok(segnode_convert, info, export_labels(tmp_path, grid, phantom), tmp_path / "seg.dcm")
    check_exact(seg, info, phantom)


# -- how the source series is stored ------------------------------------------------------------------------------


SOURCE_LAYOUTS = [
    pytest.param({"enhanced": True}, id="enhanced"),
    pytest.param({"enhanced": True, "instance_numbers": "shuffled"}, id="enhanced-frames-shuffled"),
    pytest.param({"enhanced": True, "instance_numbers": "reversed"}, id="enhanced-frames-reversed"),
    pytest.param({"instance_numbers": "reversed"}, id="instance-numbers-reversed"),
    pytest.param({"instance_numbers": "shuffled"}, id="instance-numbers-shuffled"),
    pytest.param(
        {"shuffle_file_names": True, "subfolders": 3, "instance_numbers": "shuffled"},
        id="file-names-shuffled-subfolders",
    ),
    pytest.param({"modality": "MR"}, id="mr"),
    pytest.param({"omit_type2": True}, id="omit-type2"),
]


@pytest.mark.parametrize("layout", SOURCE_LAYOUTS)
@pytest.mark.parametrize(
    "grid",
    [
        pytest.param(syn.GridSpec.oblique(**NONSQUARE), id="oblique-nonsquare"),
        pytest.param(syn.GridSpec.coronal(**NONSQUARE), id="coronal-nonsquare"),
    ],
)
def test_source_layouts_exact(
    tmp_path: Path, segnode_convert: syn.ConvertRunner, grid: syn.GridSpec, layout: dict[str, Any]
) -> None:
    info = syn.write_series(grid, tmp_path / "dicom", seed=5, **layout)
    phantom = syn.Phantom.fitting(grid)
    seg = convert_ok(segnode_convert, info, export_labels(tmp_path, grid, phantom), tmp_path / "out" / "seg.dcm")
    check_exact(seg, info, phantom)
    if layout.get("omit_type2"):
        # The SEG is a valid object even when its source left out Type 2 attributes (dciodvfy above), and it
        # must not invent patient/study values.
        ds = pydicom.dcmread(seg, stop_before_pixels=True)
        assert all(not ds.get(keyword) for keyword in syn.TYPE2_OPTIONAL)


def test_non_dicom_files_beside_the_series_are_ignored(tmp_path: Path, segnode_convert: syn.ConvertRunner) -> None:
    grid = syn.GridSpec.axial(**NONSQUARE)
    info = syn.write_series(grid, tmp_path / "dicom", subfolders=1)
    (info.folder / "README.txt").write_text("exported by a PACS\n")
    (info.folder / "empty").write_bytes(b"")
    (info.folder / ".DS_Store").write_bytes(b"\0\1\2")
    (info.folder / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    phantom = syn.Phantom.fitting(grid)
    check_exact(
        convert_ok(segnode_convert, info, export_labels(tmp_path, grid, phantom), tmp_path / "seg.dcm"), info, phantom
    )


def test_series_option_picks_one_of_two(tmp_path: Path, segnode_convert: syn.ConvertRunner) -> None:
    grid = syn.GridSpec.axial(**NONSQUARE)
    other = syn.GridSpec.sagittal()
    wanted = syn.write_series(grid, tmp_path / "dicom" / "a", seed=1)
    syn.write_series(other, tmp_path / "dicom" / "b", seed=2, uids={"study": wanted.study_uid})
    phantom = syn.Phantom.fitting(grid)
    nifti = export_labels(tmp_path, grid, phantom)
    result = segnode_convert(
        "--dicom",
        str(tmp_path / "dicom"),
        "--nifti",
        str(nifti),
        "--out",
        str(tmp_path / "seg.dcm"),
        "--series",
        wanted.series_uid,
    )
    assert result.code == 0, result.stderr
    check_exact(tmp_path / "seg.dcm", wanted, phantom)


# -- NIfTI grids users bring --------------------------------------------------------------------------------------


CONVERTER_GRIDS = [
    pytest.param(syn.GridSpec.axial(**NONSQUARE), id="axial-nonsquare"),
    pytest.param(syn.GridSpec.axial(slice_step=-2.0), id="axial-superior-first"),
    pytest.param(syn.GridSpec.sagittal(**NONSQUARE), id="sagittal-nonsquare"),
    pytest.param(syn.GridSpec.coronal(**NONSQUARE), id="coronal-nonsquare"),
    pytest.param(syn.GridSpec.oblique(**NONSQUARE), id="oblique-nonsquare"),
]


@needs_dcm2niix
@pytest.mark.parametrize("enhanced", [False, True], ids=["single", "enhanced"])
@pytest.mark.parametrize("grid", CONVERTER_GRIDS)
def test_dcm2niix_grid_exact(
    tmp_path: Path, segnode_convert: syn.ConvertRunner, grid: syn.GridSpec, enhanced: bool
) -> None:
    info = syn.write_series(grid, tmp_path / "dicom", enhanced=enhanced, instance_numbers="shuffled")
    (converted,) = syn.run_dcm2niix(info.folder, tmp_path / "nii")
    phantom = syn.Phantom.fitting(grid)
    # A segmentation tool writes its output with the input's header: same grid, same codes.
    nifti = syn.label_nifti_on_grid(nib.load(converted), phantom, tmp_path / "seg_in.nii.gz", snap=grid)
    check_exact(convert_ok(segnode_convert, info, nifti, tmp_path / "seg.dcm"), info, phantom)


@pytest.mark.parametrize("grid", CONVERTER_GRIDS)
def test_dicom2nifti_grid_exact(tmp_path: Path, segnode_convert: syn.ConvertRunner, grid: syn.GridSpec) -> None:
    pytest.importorskip("dicom2nifti")
    info = syn.write_series(grid, tmp_path / "dicom", instance_numbers="reversed")
    converted = nib.load(syn.run_dicom2nifti(info.folder, tmp_path / "ct.nii.gz"))
    assert nib.aff2axcodes(converted.affine) == ("L", "A", "S")
    phantom = syn.Phantom.fitting(grid)
    nifti = syn.label_nifti_on_grid(converted, phantom, tmp_path / "seg_in.nii.gz", snap=grid)
    assert int(nib.load(nifti).header["qform_code"]) == 0
    check_exact(convert_ok(segnode_convert, info, nifti, tmp_path / "seg.dcm"), info, phantom)


@pytest.mark.parametrize("codes", ["LAS", "RAS", "LPS", "SRA", "PIL", "ASL"])
@pytest.mark.parametrize(
    "grid",
    [
        pytest.param(syn.GridSpec.axial(**NONSQUARE), id="axial-nonsquare"),
        pytest.param(syn.GridSpec.oblique(**NONSQUARE), id="oblique-nonsquare"),
    ],
)
def test_reoriented_grid_exact(
    tmp_path: Path, segnode_convert: syn.ConvertRunner, grid: syn.GridSpec, codes: str
) -> None:
    info = syn.write_series(grid, tmp_path / "dicom")
    phantom = syn.Phantom.fitting(grid)
    plain = nib.load(export_labels(tmp_path, grid, phantom))
    turned = syn.reoriented(plain, codes)
    nifti = tmp_path / f"labels_{codes}.nii.gz"
    nib.save(turned, nifti)
    check_exact(convert_ok(segnode_convert, info, nifti, tmp_path / "seg.dcm"), info, phantom)


@pytest.mark.parametrize(("sform", "qform"), [(1, 0), (0, 1), (2, 1)], ids=["sform-only", "qform-only", "both"])
def test_sform_or_qform_geometry_exact(
    tmp_path: Path, segnode_convert: syn.ConvertRunner, sform: int, qform: int
) -> None:
    grid = syn.GridSpec.coronal(**NONSQUARE)
    info = syn.write_series(grid, tmp_path / "dicom")
    phantom = syn.Phantom.fitting(grid)
    affine = syn.export_grid_affine(grid)
    labels = syn.labels_on_nifti_grid((affine, syn.export_grid_shape(grid)), phantom, snap=grid).astype(np.uint8)
    nifti = syn.save_nifti(labels, affine, tmp_path / "labels.nii.gz", codes=(sform, qform))
    check_exact(convert_ok(segnode_convert, info, nifti, tmp_path / "seg.dcm"), info, phantom)


LOWRES_GRIDS = [
    pytest.param(
        syn.GridSpec.oblique(rows=56, cols=64, slices=40, row_spacing=1.1, col_spacing=1.0, slice_step=1.5),
        id="oblique",
    ),
    pytest.param(syn.GridSpec.axial(rows=60, cols=60, slices=30, slice_step=2.0), id="axial"),
]


@pytest.mark.parametrize("grid", LOWRES_GRIDS)
def test_lower_resolution_grid_is_resampled(
    tmp_path: Path, segnode_convert: syn.ConvertRunner, grid: syn.GridSpec
) -> None:
    info = syn.write_series(grid, tmp_path / "dicom")
    phantom = syn.Phantom.fitting(grid)
    affine, shape = syn.lower_resolution(syn.export_grid_affine(grid), syn.export_grid_shape(grid))
    nifti = syn.label_nifti_on_grid((affine, shape), phantom, tmp_path / "coarse.nii.gz")
    seg = convert_ok(segnode_convert, info, nifti, tmp_path / "seg.dcm")
    check_identity(seg, info)
    if needs_dciodvfy:
        assert dciodvfy_errors(seg) == []
    got = syn.seg_labels_on_source(seg, grid)
    truth = phantom.truth(grid)
    coarse_voxel_mm = float(np.linalg.norm(affine[:3, :3], axis=0).max())
    for value in phantom.values:
        score = syn.dice(got == value, truth == value)
        assert score > 0.8, f"label {value}: Dice {score:.3f}"
        shift = np.linalg.norm(syn.centroid_lps(got == value, grid) - syn.centroid_lps(truth == value, grid))
        assert shift <= coarse_voxel_mm, f"label {value}: centroid {shift:.2f} mm off"


# -- label inputs -------------------------------------------------------------------------------------------------


def test_mask_folder_names_segments_by_file_stem(tmp_path: Path, segnode_convert: syn.ConvertRunner) -> None:
    grid = syn.GridSpec.sagittal(**NONSQUARE)
    info = syn.write_series(grid, tmp_path / "dicom")
    phantom = syn.Phantom.fitting(grid)
    reference = (syn.export_grid_affine(grid), syn.export_grid_shape(grid))
    syn.masks_folder(reference, phantom, tmp_path / "masks", snap=grid)
    seg = convert_ok(segnode_convert, info, tmp_path / "masks", tmp_path / "seg.dcm")
    assert sorted(syn.segment_names(seg).values()) == sorted(phantom.names.values())
    by_name = {name: value for value, name in phantom.names.items()}
    check_exact(seg, info, phantom, mapping=by_name)


def test_labels_json_names_become_segment_labels(tmp_path: Path, segnode_convert: syn.ConvertRunner) -> None:
    grid = syn.GridSpec.axial(**NONSQUARE)
    info = syn.write_series(grid, tmp_path / "dicom")
    phantom = syn.Phantom.fitting(grid)
    names = {1: "Liver", 2: "Spleen", 3: "Left kidney", 4: "Aorta"}
    table = syn.write_labels_json(tmp_path / "labels.json", names)
    seg = convert_ok(
        segnode_convert, info, export_labels(tmp_path, grid, phantom), tmp_path / "seg.dcm", "--labels", str(table)
    )
    assert sorted(syn.segment_names(seg).values()) == sorted(names.values())
    check_exact(seg, info, phantom, mapping={name: value for value, name in names.items()})


ORGAN_CODES = {1: ("10200004", "Liver"), 2: ("78961009", "Spleen"), 3: ("64033007", "Kidney"), 4: ("15825003", "Aorta")}


@pytest.mark.parametrize("with_segment_label", [True, False], ids=["SegmentLabel", "SegmentDescription-only"])
def test_dcmqi_labels_json(tmp_path: Path, segnode_convert: syn.ConvertRunner, with_segment_label: bool) -> None:
    """A dcmqi metadata JSON names and codes the segments. dcmqi's own itkimage2segimage uses SegmentDescription
    as SegmentLabel when SegmentLabel is absent (as in many published examples); segnode should read it the same."""
    grid = syn.GridSpec.sagittal(**NONSQUARE)
    info = syn.write_series(grid, tmp_path / "dicom")
    phantom = syn.Phantom.fitting(grid)
    category = {"CodeValue": "123037004", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Anatomical Structure"}
    items = []
    for value, (code, meaning) in ORGAN_CODES.items():
        item: dict[str, Any] = {
            "labelID": value,
            "SegmentDescription": meaning,
            "SegmentAlgorithmType": "AUTOMATIC",
            "SegmentAlgorithmName": "test",
            "SegmentedPropertyCategoryCodeSequence": category,
            "SegmentedPropertyTypeCodeSequence": {
                "CodeValue": code,
                "CodingSchemeDesignator": "SCT",
                "CodeMeaning": meaning,
            },
        }
        if with_segment_label:
            item["SegmentLabel"] = meaning
        items.append(item)
    table = tmp_path / "meta.json"
    table.write_text(
        json.dumps(
            {"ContentCreatorName": "Test^Reader", "SeriesDescription": "Segmentation", "segmentAttributes": [items]}
        )
    )
    seg = convert_ok(
        segnode_convert, info, export_labels(tmp_path, grid, phantom), tmp_path / "seg.dcm", "--labels", str(table)
    )
    by_name = {meaning: value for value, (_, meaning) in ORGAN_CODES.items()}
    assert sorted(syn.segment_names(seg).values()) == sorted(by_name)
    check_exact(seg, info, phantom, mapping=by_name)
    for segment in pydicom.dcmread(seg, stop_before_pixels=True).SegmentSequence:
        code, _ = ORGAN_CODES[by_name[segment.SegmentLabel]]
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == code
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"


@pytest.mark.parametrize(
    ("seg_type", "sop_class"),
    [
        ("labelmap", syn.LABEL_MAP_SEGMENTATION_STORAGE),
        ("fractional", syn.SEGMENTATION_STORAGE),
        ("binary", syn.SEGMENTATION_STORAGE),
    ],
)
def test_seg_types(tmp_path: Path, segnode_convert: syn.ConvertRunner, seg_type: str, sop_class: str) -> None:
    grid = syn.GridSpec.oblique(**NONSQUARE)
    info = syn.write_series(grid, tmp_path / "dicom", enhanced=seg_type == "fractional")
    phantom = syn.Phantom.fitting(grid)
    seg = convert_ok(
        segnode_convert, info, export_labels(tmp_path, grid, phantom), tmp_path / "seg.dcm", "--type", seg_type
    )
    assert pydicom.dcmread(seg, stop_before_pixels=True).SegmentationType == seg_type.upper()
    # dcm3tools' dciodvfy predates the LABELMAP SOP class ("Information Object Not found"): validate the others.
    check_exact(seg, info, phantom, sop_class=sop_class, validate=seg_type != "labelmap")


ENCODINGS = [
    pytest.param({"dtype": np.float32}, ".nii.gz", id="float32-whole-numbers"),
    pytest.param({"dtype": np.float64}, ".nii", id="float64-uncompressed"),
    pytest.param({"dtype": np.int64}, ".nii.gz", id="int64"),
    pytest.param({"dtype": np.int16}, ".nii.gz", id="int16"),
    pytest.param({"dtype": np.uint16}, ".nii.gz", id="uint16"),
    pytest.param({"trailing_singleton": True}, ".nii.gz", id="4d-trailing-singleton"),
]


@pytest.mark.parametrize(("options", "suffix"), ENCODINGS)
def test_label_map_encodings(
    tmp_path: Path, segnode_convert: syn.ConvertRunner, options: dict[str, Any], suffix: str
) -> None:
    grid = syn.GridSpec.axial(**NONSQUARE)
    info = syn.write_series(grid, tmp_path / "dicom")
    phantom = syn.Phantom.fitting(grid)
    nifti = export_labels(tmp_path, grid, phantom, name=f"labels{suffix}", **options)
    check_exact(convert_ok(segnode_convert, info, nifti, tmp_path / "seg.dcm"), info, phantom)


def test_sparse_label_values_keep_their_order(tmp_path: Path, segnode_convert: syn.ConvertRunner) -> None:
    grid = syn.GridSpec.coronal(**NONSQUARE)
    info = syn.write_series(grid, tmp_path / "dicom")
    phantom = syn.Phantom.fitting(grid, values=(3, 7, 12, 200))
    seg = convert_ok(segnode_convert, info, export_labels(tmp_path, grid, phantom), tmp_path / "seg.dcm")
    # Segment numbers must run 1..N; they follow the label values in ascending order.
    assert sorted(syn.segment_names(seg)) == [1, 2, 3, 4]
    check_exact(seg, info, phantom, mapping={1: 3, 2: 7, 3: 12, 4: 200})


def test_label_outside_the_series_is_dropped_not_fatal(tmp_path: Path, segnode_convert: syn.ConvertRunner) -> None:
    grid = syn.GridSpec.axial(**NONSQUARE)
    info = syn.write_series(grid, tmp_path / "dicom")
    phantom = syn.Phantom.fitting(grid)
    # The NIfTI covers more slices than the series; label 9 lives only in the extra slices.
    bigger = grid.replace(slices=grid.slices + 6)
    centre = bigger.position(grid.slices + 3) + 20.0 * np.asarray(grid.col_dir) + 15.0 * np.asarray(grid.row_dir)
    extra = syn.Shape(label=9, name="outside", kind="box", centre=syn.vec3(centre), half_size=(3.0, 3.0, 2.0))
    with_extra = syn.Phantom((*phantom.shapes, extra))
    nifti = export_labels(tmp_path, bigger, with_extra)
    seg = convert_ok(segnode_convert, info, nifti, tmp_path / "seg.dcm")
    check_exact(seg, info, phantom)


def test_console_script_end_to_end(tmp_path: Path) -> None:
    grid = syn.GridSpec.oblique()
    info = syn.write_series(grid, tmp_path / "dicom")
    phantom = syn.Phantom.fitting(grid)
    nifti = export_labels(tmp_path, grid, phantom)
    result = syn.run_segnode(
        ["convert", "--dicom", str(info.folder), "--nifti", str(nifti), "--out", str(tmp_path / "seg.dcm")]
    )
    assert result.returncode == 0, result.stderr
    check_exact(tmp_path / "seg.dcm", info, phantom)
