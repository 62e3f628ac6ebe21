"""Tests of the synthetic builders themselves: if these are wrong, every end-to-end test is wrong with them.

The strongest checks compare against tools that know nothing of this module: dcm2niix and dicom2nifti convert
the series we write, and the phantom's pixels must land where our geometry says they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import synthetic as syn
from pydicom.sr.codedict import codes
from synthetic import nib

NONSQUARE: dict[str, Any] = {"rows": 40, "cols": 56, "row_spacing": 0.9, "col_spacing": 1.3, "slice_step": 2.5}
PRESETS = {
    "axial": syn.GridSpec.axial,
    "sagittal": syn.GridSpec.sagittal,
    "coronal": syn.GridSpec.coronal,
    "oblique": syn.GridSpec.oblique,
}


def all_grids() -> list[Any]:
    grids = []
    for name, preset in PRESETS.items():
        grids.append(pytest.param(preset(), id=f"{name}-square"))
        grids.append(pytest.param(preset(**NONSQUARE), id=f"{name}-nonsquare"))
    grids.append(pytest.param(syn.GridSpec.axial(slice_step=-2.0), id="axial-superior-first"))
    return grids


# -- GridSpec -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", all_grids())
def test_centres_follow_the_dicom_pixel_formula(grid: syn.GridSpec) -> None:
    centres = grid.centres_lps()
    assert centres.shape == (grid.slices, grid.rows, grid.cols, 3)
    col, row = np.asarray(grid.col_dir), np.asarray(grid.row_dir)
    for k, r, c in [(0, 0, 0), (grid.slices - 1, 3, 7), (2, grid.rows - 1, grid.cols - 1)]:
        expected = grid.position(k) + c * grid.col_spacing * col + r * grid.row_spacing * row
        np.testing.assert_allclose(centres[k, r, c], expected, atol=1e-9)
        np.testing.assert_allclose(grid.affine_lps() @ [k, r, c, 1], [*expected, 1], atol=1e-9)
    np.testing.assert_allclose(grid.position(1) - grid.position(0), grid.slice_step * grid.normal, atol=1e-12)
    np.testing.assert_allclose(grid.centre_lps(), syn.PRESET_CENTRE_LPS, atol=1e-9)
    assert grid.pixel_spacing == [grid.row_spacing, grid.col_spacing]
    assert grid.image_orientation == [*grid.col_dir, *grid.row_dir]


def test_preset_normals_and_obliqueness() -> None:
    np.testing.assert_allclose(syn.GridSpec.axial().normal, [0, 0, 1])
    np.testing.assert_allclose(syn.GridSpec.sagittal().normal, [-1, 0, 0])
    np.testing.assert_allclose(syn.GridSpec.coronal().normal, [0, 1, 0])
    oblique = syn.GridSpec.oblique()
    directions = np.array([oblique.col_dir, oblique.row_dir, oblique.normal])
    # Rotated about two axes: no direction is close to a coordinate axis.
    assert np.abs(directions).max() < 0.95
    assert np.abs(directions).min(axis=1).max() > 0.05


def test_gridspec_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="orthonormal"):
        syn.GridSpec.axial().replace(row_dir=(1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="non-zero"):
        syn.GridSpec.axial(slice_step=0.0)


@pytest.mark.parametrize("grid", all_grids())
def test_snap_returns_the_nearest_pixel_centre(grid: syn.GridSpec) -> None:
    centres = grid.centres_lps()
    rng = np.random.default_rng(1)
    jitter = rng.uniform(-0.3, 0.3, centres.shape) * min(grid.row_spacing, grid.col_spacing, abs(grid.slice_step))
    np.testing.assert_allclose(grid.snap(centres + jitter), centres, atol=1e-9)


# -- Phantom ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", all_grids())
def test_phantom_is_inside_every_grid_and_asymmetric(grid: syn.GridSpec) -> None:
    phantom = syn.Phantom.fitting(grid)
    truth = phantom.truth(grid)
    counts = {v: int((truth == v).sum()) for v in phantom.values}
    assert len(counts) >= 3
    assert min(counts.values()) >= 20, counts
    # Nothing touches the border, so nothing is clipped by the grid.
    border = np.ones(truth.shape, dtype=bool)
    border[1:-1, 1:-1, 1:-1] = False
    assert not truth[border].any()
    for axis in range(3):
        assert not np.array_equal(np.flip(truth, axis), truth), f"symmetric along axis {axis}"
        assert not np.array_equal(np.roll(truth, 1, axis), truth), f"shift along axis {axis} invisible"
    if grid.rows == grid.cols:
        assert not np.array_equal(np.swapaxes(truth, 1, 2), truth)


def test_labels_at_snap_removes_boundary_ambiguity() -> None:
    grid = syn.GridSpec.oblique(**NONSQUARE)
    phantom = syn.Phantom.fitting(grid)
    centres = grid.centres_lps()
    # float32 round-off as a NIfTI header would introduce.
    noisy = centres.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(phantom.labels_at(noisy, snap=grid), phantom.truth(grid))
    # A shape boundary through a pixel centre: without snapping, a tiny error flips the label.
    box = syn.Shape(label=1, name="edge", kind="box", centre=tuple(centres[3, 5, 5]), half_size=(5.0, 5.0, 5.0))
    edge = syn.Phantom((box,))
    on_boundary = centres[3, 5, 5] + np.array([5.0, 0.0, 0.0])
    assert edge.labels_at(on_boundary + np.array([1e-6, 0, 0])) != edge.labels_at(on_boundary - np.array([1e-6, 0, 0]))
    # Odd counts: the box centre, and so its boundary, falls on pixel centres of this grid.
    fine = syn.GridSpec.axial(centre=tuple(centres[3, 5, 5]), rows=41, cols=41, slices=13)
    nudge = np.array([1e-4, 0, 0])
    assert edge.labels_at(on_boundary + nudge, snap=fine) == edge.labels_at(on_boundary - nudge, snap=fine)


def test_phantom_values_and_names() -> None:
    phantom = syn.Phantom.fitting(syn.GridSpec.axial(), values=(2, 5, 9, 11))
    assert phantom.values == [2, 5, 9, 11]
    assert phantom.names == {2: "liver", 5: "spleen", 9: "kidney_left", 11: "aorta"}
    assert set(np.unique(phantom.truth(syn.GridSpec.axial()))) == {0, 2, 5, 9, 11}


# -- DICOM series -------------------------------------------------------------------------------------------------


def read_all(info: syn.SeriesInfo) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in info.paths]


@pytest.mark.parametrize("how", ["ascending", "reversed", "shuffled"])
def test_write_series_single_frame(tmp_path: Path, how: str) -> None:
    grid = syn.GridSpec.oblique(**NONSQUARE)
    info = syn.write_series(grid, tmp_path / "dicom", instance_numbers=how)  # type: ignore[arg-type]
    datasets = read_all(info)
    assert len(datasets) == grid.slices == len(set(info.sop_uids))
    numbers = [int(ds.InstanceNumber) for ds in datasets]
    expected = {"ascending": list(range(1, 13)), "reversed": list(range(12, 0, -1))}.get(how)
    if expected is None:
        assert sorted(numbers) == list(range(1, 13))
        assert numbers not in (list(range(1, 13)), list(range(12, 0, -1)))
    else:
        assert numbers == expected
    for k, ds in enumerate(datasets):
        assert ds.SOPInstanceUID == info.sop_uids[k]
        assert ds.SOPClassUID == syn.CT_IMAGE_STORAGE
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SeriesInstanceUID == info.series_uid and ds.StudyInstanceUID == info.study_uid
        assert ds.FrameOfReferenceUID == info.frame_of_reference_uid
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], grid.position(k), atol=1e-6)
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], grid.image_orientation, atol=1e-9)
        assert [float(v) for v in ds.PixelSpacing] == [0.9, 1.3]
        assert (ds.Rows, ds.Columns) == (40, 56)
        assert ds.pixel_array.shape == (40, 56)
    assert info.paths[0].name == f"IM_{numbers[0]:04d}"


def test_write_series_shuffled_names_subfolders_and_type2(tmp_path: Path) -> None:
    info = syn.write_series(
        syn.GridSpec.axial(),
        tmp_path / "dicom",
        shuffle_file_names=True,
        subfolders=2,
        omit_type2=True,
        modality="MR",
        seed=3,
    )
    assert all(not p.name.startswith("IM_") and len(p.name) == 16 for p in info.paths)
    assert len({p.parent for p in info.paths}) > 1
    assert all(tmp_path / "dicom" in p.parents for p in info.paths)
    for ds in read_all(info):
        assert ds.SOPClassUID == syn.MR_IMAGE_STORAGE and ds.Modality == "MR"
        for keyword in syn.TYPE2_OPTIONAL:
            assert keyword not in ds


def test_write_series_uses_given_uids(tmp_path: Path) -> None:
    uids = {"study": "1.2.3.4", "series": "1.2.3.4.5", "frame_of_reference": "1.2.3.4.6"}
    info = syn.write_series(syn.GridSpec.axial(slices=3), tmp_path / "d", uids=uids)
    ds = pydicom.dcmread(info.paths[0])
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) == ("1.2.3.4", "1.2.3.4.5", "1.2.3.4.6")


@pytest.mark.parametrize("how", ["ascending", "shuffled"])
def test_write_series_enhanced(tmp_path: Path, how: str) -> None:
    grid = syn.GridSpec.sagittal(**NONSQUARE)
    info = syn.write_series(grid, tmp_path / "dicom", enhanced=True, instance_numbers=how)  # type: ignore[arg-type]
    assert len(info.paths) == 1 and info.frame_numbers is not None
    ds = pydicom.dcmread(info.paths[0])
    assert ds.SOPClassUID == syn.ENHANCED_CT_IMAGE_STORAGE and int(ds.NumberOfFrames) == grid.slices
    shared = ds.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
        grid.image_orientation,
        atol=1e-9,
    )
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.9, 1.3]
    pixels = ds.pixel_array
    image = syn.phantom_image(grid, syn.Phantom.fitting(grid))
    for k in range(grid.slices):
        frame = info.frame_numbers[k] - 1
        position = ds.PerFrameFunctionalGroupsSequence[frame].PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position], grid.position(k), atol=1e-6)
        np.testing.assert_array_equal(pixels[frame], image[k])
    assert (list(info.frame_numbers) == list(range(1, 13))) == (how == "ascending")


@pytest.mark.skipif(not syn.have_tool("dciodvfy"), reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize(
    ("modality", "enhanced", "omit"), [("CT", False, False), ("MR", False, False), ("CT", True, False)]
)
def test_written_series_pass_dciodvfy(tmp_path: Path, modality: str, enhanced: bool, omit: bool) -> None:
    info = syn.write_series(
        syn.GridSpec.oblique(**NONSQUARE),
        tmp_path / "d",
        modality=modality,  # type: ignore[arg-type]
        enhanced=enhanced,
        omit_type2=omit,
    )
    assert syn.run_dciodvfy(info.paths[0]) == []


# -- the geometry agrees with real converters ---------------------------------------------------------------------


def expected_pixels_on_nifti(image: Any, grid: syn.GridSpec, stored: npt.NDArray[np.uint16]) -> npt.NDArray[Any]:
    """What a converter's NIfTI must hold at each voxel if our geometry is right: the stored DICOM value there."""
    centres = syn.voxel_centres_ras(syn.LPS_RAS @ image.affine, image.shape)
    snapped = grid.snap(centres)
    np.testing.assert_allclose(snapped, centres, atol=syn.POSITION_TOLERANCE_MM)
    affine = grid.affine_lps()
    index = np.rint((snapped - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
    return np.asarray(stored[index[..., 0], index[..., 1], index[..., 2]], dtype=np.float64) - 1024.0


CONVERTER_GRIDS = [
    pytest.param(syn.GridSpec.axial(**NONSQUARE), id="axial-nonsquare"),
    pytest.param(syn.GridSpec.axial(slice_step=-2.0), id="axial-superior-first"),
    pytest.param(syn.GridSpec.sagittal(**NONSQUARE), id="sagittal-nonsquare"),
    pytest.param(syn.GridSpec.coronal(), id="coronal"),
    pytest.param(syn.GridSpec.oblique(**NONSQUARE), id="oblique-nonsquare"),
]


@pytest.mark.skipif(not syn.have_tool("dcm2niix"), reason="dcm2niix not installed")
@pytest.mark.parametrize("enhanced", [False, True], ids=["single", "enhanced"])
@pytest.mark.parametrize("grid", CONVERTER_GRIDS)
def test_dcm2niix_sees_our_geometry(tmp_path: Path, grid: syn.GridSpec, enhanced: bool) -> None:
    info = syn.write_series(grid, tmp_path / "d", enhanced=enhanced, instance_numbers="shuffled")
    (path,) = syn.run_dcm2niix(info.folder, tmp_path / "nii")
    image = nib.load(path)
    assert (int(image.header["sform_code"]), int(image.header["qform_code"])) == (1, 1)
    stored = syn.phantom_image(grid, syn.Phantom.fitting(grid))
    np.testing.assert_array_equal(image.get_fdata(), expected_pixels_on_nifti(image, grid, stored))


@pytest.mark.parametrize("grid", CONVERTER_GRIDS)
def test_dicom2nifti_sees_our_geometry(tmp_path: Path, grid: syn.GridSpec) -> None:
    pytest.importorskip("dicom2nifti")
    info = syn.write_series(grid, tmp_path / "d", instance_numbers="reversed")
    image = nib.load(syn.run_dicom2nifti(info.folder, tmp_path / "out.nii.gz"))
    assert nib.aff2axcodes(image.affine) == ("L", "A", "S")
    assert (int(image.header["sform_code"]), int(image.header["qform_code"])) == (2, 0)
    stored = syn.phantom_image(grid, syn.Phantom.fitting(grid))
    np.testing.assert_array_equal(image.get_fdata(), expected_pixels_on_nifti(image, grid, stored))


# -- NIfTI builders -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", all_grids())
def test_export_grid_label_map_is_the_truth_transposed(tmp_path: Path, grid: syn.GridSpec) -> None:
    phantom = syn.Phantom.fitting(grid)
    reference = (syn.export_grid_affine(grid), syn.export_grid_shape(grid))
    path = syn.label_nifti_on_grid(reference, phantom, tmp_path / "labels.nii.gz", snap=grid)
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    assert data.dtype == np.uint8
    assert (int(image.header["sform_code"]), int(image.header["qform_code"])) == (1, 1)
    np.testing.assert_array_equal(data.transpose(2, 1, 0), phantom.truth(grid))


def test_label_nifti_copies_the_reference_header(tmp_path: Path) -> None:
    grid = syn.GridSpec.coronal(**NONSQUARE)
    affine = syn.export_grid_affine(grid)
    ct = nib.Nifti1Image(np.zeros(syn.export_grid_shape(grid), dtype=np.int16), affine)
    ct.set_sform(affine, code=2)
    ct.set_qform(affine, code=0)
    ct.header.set_slope_inter(1.0, -1024.0)
    phantom = syn.Phantom.fitting(grid)
    path = syn.label_nifti_on_grid(ct, phantom, tmp_path / "seg.nii", dtype=np.float32, trailing_singleton=True)
    image = nib.load(path)
    assert (int(image.header["sform_code"]), int(image.header["qform_code"])) == (2, 0)
    assert image.shape == (*syn.export_grid_shape(grid), 1)
    data = np.asanyarray(image.dataobj)
    # The CT's rescale must not leak into the labels.
    assert data.dtype == np.float32 and set(np.unique(data)) == {0.0, 1.0, 2.0, 3.0, 4.0}
    np.testing.assert_allclose(image.affine, affine, atol=1e-4)
    zero = syn.label_nifti_on_grid(ct, phantom, tmp_path / "zero.nii.gz", header_from=_with_codes(ct, 0, 0))
    assert (int(nib.load(zero).header["sform_code"]), int(nib.load(zero).header["qform_code"])) == (0, 0)


def _with_codes(image: Any, sform: int, qform: int) -> Any:
    copy = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header.copy())
    copy.set_sform(image.affine, code=sform)
    copy.set_qform(image.affine, code=qform)
    return copy


@pytest.mark.parametrize("codes", ["LAS", "RAS", "SRA", "PIL"])
def test_reoriented_keeps_every_voxel_in_place(tmp_path: Path, codes: str) -> None:
    grid = syn.GridSpec.axial(**NONSQUARE)
    phantom = syn.Phantom.fitting(grid)
    affine = syn.export_grid_affine(grid)
    labels = syn.labels_on_nifti_grid((affine, syn.export_grid_shape(grid)), phantom, snap=grid)
    image = nib.Nifti1Image(labels.astype(np.uint8), affine)
    turned = syn.reoriented(image, codes)
    assert "".join(nib.aff2axcodes(turned.affine)) == codes
    np.testing.assert_array_equal(np.asanyarray(turned.dataobj), syn.labels_on_nifti_grid(turned, phantom, snap=grid))
    # Same result from an orientation array.
    again = syn.reoriented(image, nib.orientations.axcodes2ornt(tuple(codes)))
    np.testing.assert_allclose(again.affine, turned.affine)


def test_lower_resolution_grid() -> None:
    grid = syn.GridSpec.oblique(**NONSQUARE)
    fine = syn.export_grid_affine(grid)
    coarse, shape = syn.lower_resolution(fine, syn.export_grid_shape(grid))
    assert shape == (28, 20, 6)
    np.testing.assert_allclose(np.linalg.norm(coarse[:3, :3], axis=0), [2.6, 1.8, 5.0])
    # Its first centre lies between the first two fine centres along every axis: no ties.
    np.testing.assert_allclose(coarse[:3, 3], fine[:3, :] @ [0.5, 0.5, 0.5, 1.0])


def test_masks_folder(tmp_path: Path) -> None:
    grid = syn.GridSpec.axial()
    phantom = syn.Phantom.fitting(grid)
    reference = (syn.export_grid_affine(grid), syn.export_grid_shape(grid))
    paths = syn.masks_folder(reference, phantom, tmp_path / "masks", snap=grid, empty=["gallbladder"])
    assert sorted(p.name for p in paths) == sorted(f"{n}.nii.gz" for n in [*phantom.names.values(), "gallbladder"])
    union = np.zeros(syn.export_grid_shape(grid), dtype=np.int64)
    for value, name in phantom.names.items():
        mask = np.asanyarray(nib.load(tmp_path / "masks" / f"{name}.nii.gz").dataobj)
        assert set(np.unique(mask)) == {0, 1}
        assert not (union[mask > 0]).any()
        union[mask > 0] = value
    np.testing.assert_array_equal(union.transpose(2, 1, 0), phantom.truth(grid))
    assert not np.asanyarray(nib.load(tmp_path / "masks" / "gallbladder.nii.gz").dataobj).any()


# -- reading a SEG back: checked on SEGs highdicom builds directly -----------------------------------------------


def build_reference_seg(info: syn.SeriesInfo, truth: npt.NDArray[np.int64], seg_type: str, out: Path) -> Path:
    sources = read_all(info)
    names = syn.Phantom.fitting(info.grid).names
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=names[value],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for i, value in enumerate(sorted(names))
    ]
    if seg_type == "LABELMAP":
        pixels: npt.NDArray[Any] = truth.astype(np.uint8)
    else:
        pixels = np.stack([truth == value for value in sorted(names)], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="tests",
        manufacturer_model_name="tests",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(out)
    return out


@pytest.mark.parametrize("seg_type", ["BINARY", "FRACTIONAL", "LABELMAP"])
def test_seg_labels_on_source_reads_what_highdicom_wrote(tmp_path: Path, seg_type: str) -> None:
    grid = syn.GridSpec.oblique(**NONSQUARE)
    info = syn.write_series(grid, tmp_path / "d", instance_numbers="shuffled")
    truth = syn.Phantom.fitting(grid).truth(grid)
    seg = build_reference_seg(info, truth, seg_type, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(syn.seg_labels_on_source(seg, grid), truth)
    by_name = {"liver": 1, "spleen": 2, "kidney_left": 3, "aorta": 4}
    np.testing.assert_array_equal(syn.seg_labels_on_source(seg, grid, by_name), truth)
    assert syn.segment_names(seg) == {1: "liver", 2: "spleen", 3: "kidney_left", 4: "aorta"}
    for frame, (sop_uid, number) in enumerate(syn.seg_frame_sources(seg)):
        k = syn.seg_frames_on_source(pydicom.dcmread(seg), grid)[frame]
        assert (sop_uid, number) == info.source_of_slice(k)


def test_seg_labels_on_source_fails_loudly_on_an_offgrid_frame(tmp_path: Path) -> None:
    grid = syn.GridSpec.axial()
    info = syn.write_series(grid, tmp_path / "d")
    truth = syn.Phantom.fitting(grid).truth(grid)
    seg = build_reference_seg(info, truth, "BINARY", tmp_path / "seg.dcm")
    ds = pydicom.dcmread(seg)
    position = ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0]
    position.ImagePositionPatient = [float(v) for v in position.ImagePositionPatient[:2]] + [
        float(position.ImagePositionPatient[2]) + 0.5
    ]
    ds.save_as(tmp_path / "shifted.dcm")
    with pytest.raises(AssertionError, match=r"frame 3 .* not on a slice"):
        syn.seg_labels_on_source(tmp_path / "shifted.dcm", grid)
    ds = pydicom.dcmread(seg)
    ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    ds.save_as(tmp_path / "turned.dcm")
    with pytest.raises(AssertionError, match="orientation"):
        syn.seg_labels_on_source(tmp_path / "turned.dcm", grid)


@pytest.mark.skipif(not syn.have_tool("dciodvfy"), reason="dciodvfy (dicom3tools) not installed")
def test_run_dciodvfy_reports_errors(tmp_path: Path) -> None:
    info = syn.write_series(syn.GridSpec.axial(slices=2), tmp_path / "d")
    ds = pydicom.dcmread(info.paths[0])
    del ds.Modality
    del ds.SOPInstanceUID
    ds.save_as(tmp_path / "broken.dcm")
    errors = syn.run_dciodvfy(tmp_path / "broken.dcm")
    assert errors and all(line.startswith("Error") for line in errors)
    assert any("Modality" in line for line in errors)
    (tmp_path / "garbage.dcm").write_bytes(b"not DICOM at all\n")
    assert syn.run_dciodvfy(tmp_path / "garbage.dcm") != []


def test_dice_and_centroid() -> None:
    grid = syn.GridSpec.axial(slices=4, rows=4, cols=4)
    a = np.zeros(grid.shape, dtype=bool)
    a[1, 1, 1:3] = True
    b = a.copy()
    b[1, 1, 2] = False
    assert syn.dice(a, b) == pytest.approx(2 / 3)
    np.testing.assert_allclose(syn.centroid_lps(a, grid), (grid.affine_lps() @ [1, 1, 1.5, 1])[:3])
    assert syn.describe_mismatch(a.astype(np.int64), b.astype(np.int64)).startswith("1 of 64 pixels differ")
    assert syn.describe_mismatch(a.astype(np.int64), a.astype(np.int64)) == "identical"
