"""QC pictures and per-segment figures (node/convert/qc*.py), checked in patient space.

The SEG is built by the engine, written to bytes and read back; the picture and figures are made from that
read-back dataset. Places in the picture are found from LPS points (the panel's placement), and what should be
there comes from the phantom's ground truth (tests/synthetic.py), never from the node's arrays.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import real_data as rd
import synthetic as syn
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pack_bits

from node.convert import build_seg_from_input
from node.convert.pixels import read_volume
from node.convert.qc import QcPicture, figures_json, orientation_letters, qc_figure, qc_picture, segment_figures
from node.convert.qc_draw import FILL_ALPHA, NO_SOURCE, PlacedPanel
from node.convert.qc_sc import png_pixels, qc_sc_uids, qc_secondary_capture
from node.convert.seg import SegOptions, SegType
from node.convert.series import SourceSeries, load_series
from node.pipeline.export import export_series

RED = (220, 30, 30)
NONSQUARE: dict[str, Any] = {"rows": 40, "cols": 56, "row_spacing": 0.9, "col_spacing": 1.3, "slice_step": 2.5}
#: The lesion's centre relative to the grid centre (LPS mm): well to the patient's left, a little anterior.
LESION_OFFSET = (18.0, -4.0, 2.0)


class Built:
    """A synthetic series, a one-segment phantom on it, and the SEG written and read back."""

    def __init__(
        self,
        tmp_path: Path,
        grid: syn.GridSpec,
        offset: tuple[float, float, float] = LESION_OFFSET,
        *,
        seg_type: SegType = SegType.BINARY,
        enhanced: bool = False,
    ):
        self.grid = grid
        centre = syn.vec3(grid.centre_lps() + np.asarray(offset))
        self.phantom = syn.Phantom((syn.Shape(1, "lesion", "box", centre, (6.0, 5.0, 5.0)),))
        info = syn.write_series(grid, tmp_path / "dicom", phantom=self.phantom, enhanced=enhanced)
        nifti = syn.label_nifti_on_grid(
            (syn.export_grid_affine(grid), syn.export_grid_shape(grid)), self.phantom, tmp_path / "l.nii.gz", snap=grid
        )
        labels = tmp_path / "labels.json"
        labels.write_text(json.dumps({"1": {"name": "lesion", "color": list(RED)}}))
        self.series: SourceSeries = load_series(info.folder)
        self.pixels = read_volume(self.series)
        result = build_seg_from_input(self.series, nifti, labels_file=labels, options=SegOptions(seg_type=seg_type))
        self.seg = written(result.dataset)
        self.mask = self.phantom.truth(grid) == 1
        self.centre = syn.centroid_lps(self.mask, grid)

    def picture(self, seg: Dataset | None = None) -> QcPicture:
        return qc_figure(self.seg if seg is None else seg, self.series, self.pixels)


def written(ds: Dataset) -> Dataset:
    """``ds`` as a receiver sees it: written to bytes and read back."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def frames_of(seg: Dataset) -> npt.NDArray[Any]:
    pixels = np.asarray(seg.pixel_array)
    return pixels[np.newaxis] if pixels.ndim == 2 else pixels


def with_frames(seg: Dataset, frames: npt.NDArray[Any]) -> Dataset:
    """A copy of a BINARY SEG with other pixel data (same frames, same positions)."""
    changed = copy.deepcopy(seg)
    changed.PixelData = pack_bits(frames.astype(np.uint8))
    return written(changed)


def rgb_at(picture: QcPicture, placed: PlacedPanel, point: npt.ArrayLike) -> tuple[int, int, int]:
    xy = placed.pixel_of(point)
    assert placed.contains(xy), (
        f"{placed.title}: {np.round(np.asarray(point, dtype=np.float64), 2).tolist()} maps to {xy}, outside the panel"
    )
    pixel = picture.image.getpixel(xy)
    assert isinstance(pixel, tuple)
    return int(pixel[0]), int(pixel[1]), int(pixel[2])


def is_red(rgb: tuple[int, int, int]) -> bool:
    """Tinted towards the segment colour: red clearly above green and blue."""
    return rgb[0] - max(rgb[1], rgb[2]) > 40


def is_grey(rgb: tuple[int, int, int]) -> bool:
    return rgb[0] == rgb[1] == rgb[2]


def shows_colour(rgb: npt.NDArray[np.int64], color: tuple[int, int, int]) -> npt.NDArray[np.bool_]:
    """Per pixel of (..., 3): the segment colour itself (outline) or a grey lightly filled with it."""
    tint = np.asarray(color, dtype=np.float64)
    grey = (rgb - FILL_ALPHA * tint) / (1 - FILL_ALPHA)
    filled = np.ptp(grey, axis=-1) <= 2.0
    return np.asarray(filled | np.all(rgb == tint, axis=-1), dtype=np.bool_)


def mirrored_x(point: npt.ArrayLike, grid: syn.GridSpec) -> npt.NDArray[np.float64]:
    """Where a point goes when an axial grid's columns (running to the patient's left) are reversed."""
    out = np.array(point, dtype=np.float64)
    out[0] = 2 * grid.centre_lps()[0] - out[0]
    return out


def lps_of(placed: PlacedPanel, x: int, y: int) -> npt.NDArray[np.float64]:
    view = placed.view
    dx, dy = x - placed.x - (view.width - 1) / 2, y - placed.y - (view.height - 1) / 2
    return np.asarray(view.centre + dx * view.pixel_mm * view.right + dy * view.pixel_mm * view.down)


def in_box(point: npt.NDArray[np.float64], low: npt.ArrayLike, high: npt.ArrayLike, margin: float) -> bool:
    return bool(np.all(point >= np.asarray(low) - margin) and np.all(point <= np.asarray(high) + margin))


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return Built(tmp_path, syn.GridSpec.axial(**NONSQUARE))


# -- figures --------------------------------------------------------------------------------------------------------


def test_figures_match_the_ground_truth_in_mm(built: Built) -> None:
    (figure,) = segment_figures(built.seg)
    grid, mask = built.grid, built.mask
    assert (figure.number, figure.name) == (1, "lesion")
    assert figure.voxels == int(mask.sum()) > 0
    assert figure.volume_ml == pytest.approx(int(mask.sum()) * grid.voxel_volume() / 1000.0)
    assert figure.centroid_mm is not None and figure.bbox_min_mm is not None and figure.bbox_max_mm is not None
    np.testing.assert_allclose(figure.centroid_mm, built.centre, atol=1e-6)
    centres = grid.centres_lps()[mask]
    np.testing.assert_allclose(figure.bbox_min_mm, centres.min(axis=0), atol=1e-6)
    np.testing.assert_allclose(figure.bbox_max_mm, centres.max(axis=0), atol=1e-6)
    # The lesion is on the patient's left: larger x (LPS) than the grid's centre.
    assert figure.centroid_mm[0] > grid.centre_lps()[0] + 10
    assert max(abs(a - b) for a, b in zip(figure.color, RED, strict=True)) <= 2
    assert figure.code is not None and figure.code.scheme == "SCT"


def test_volumes_weigh_by_the_step_between_planes_not_the_stated_thickness(tmp_path: Path) -> None:
    """An overlapping reconstruction: 2 mm thick planes every 1 mm, so each voxel stands for 1 mm along the normal.
    One plane away from the lesion is missing: the stack is uneven, and the SEG then states its nominal Slice
    Thickness (2 mm) and no Spacing Between Slices; that must not double the volume."""
    grid = syn.GridSpec.axial(**{**NONSQUARE, "slice_step": 1.0})
    centre = syn.vec3(grid.centre_lps() + np.asarray(LESION_OFFSET))
    phantom = syn.Phantom((syn.Shape(1, "lesion", "box", centre, (6.0, 5.0, 5.0)),))
    truth = phantom.truth(grid) == 1
    assert not truth[:2].any()
    info = syn.write_series(grid, tmp_path / "dicom", phantom=phantom)
    for path in info.paths:
        ds = pydicom.dcmread(path)
        ds.SliceThickness = "2"
        ds.save_as(path)
    (second,) = [p for p in info.paths if np.allclose(pydicom.dcmread(p).ImagePositionPatient, grid.position(1))]
    second.unlink()
    nifti = syn.label_nifti_on_grid(
        (syn.export_grid_affine(grid), syn.export_grid_shape(grid)), phantom, tmp_path / "l.nii.gz", snap=grid
    )
    series = load_series(info.folder)
    assert series.thickness == 2.0 and not series.regular
    seg = written(build_seg_from_input(series, nifti).dataset)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == 2.0 and "SpacingBetweenSlices" not in measures
    count = int(truth.sum())
    pixel_area = grid.row_spacing * grid.col_spacing
    (figure,) = qc_figure(seg, series, read_volume(series)).figures
    assert figure.voxels == count > 0
    assert figure.volume_ml == pytest.approx(count * pixel_area * 1.0 / 1000.0)
    (with_series,) = segment_figures(seg, series.slab_at)
    assert with_series.volume_ml == pytest.approx(figure.volume_ml)
    # Without the series only the SEG's own statement is at hand: its nominal thickness.
    (alone,) = segment_figures(seg)
    assert alone.volume_ml == pytest.approx(count * pixel_area * 2.0 / 1000.0)


@pytest.mark.parametrize(
    ("seg_type", "enhanced"),
    [(SegType.LABELMAP, False), (SegType.FRACTIONAL, False), (SegType.BINARY, True)],
    ids=["labelmap", "fractional", "enhanced-source"],
)
def test_every_kind_of_seg_is_read_back_in_place(tmp_path: Path, seg_type: SegType, enhanced: bool) -> None:
    built = Built(tmp_path, syn.GridSpec.coronal(**NONSQUARE), seg_type=seg_type, enhanced=enhanced)
    (figure,) = segment_figures(built.seg)
    assert figure.voxels == int(built.mask.sum())
    assert figure.centroid_mm is not None
    np.testing.assert_allclose(figure.centroid_mm, built.centre, atol=1e-6)
    picture = built.picture()
    for title in ("axial", "coronal", "sagittal", "plane "):
        assert is_red(rgb_at(picture, picture.panel(title), built.centre)), title
    assert is_grey(rgb_at(picture, picture.panel("axial"), mirrored_x(built.centre, built.grid)))


def test_figures_json_holds_the_figures_and_no_patient(built: Built) -> None:
    document = json.loads(figures_json(built.seg))
    assert document["sop_instance_uid"] == built.seg.SOPInstanceUID
    assert document["source_series_instance_uids"] == [built.series.series_uid]
    (segment,) = document["segments"]
    assert segment["voxels"] == int(built.mask.sum())
    np.testing.assert_allclose(segment["centroid_mm_lps"], built.centre, atol=0.01)
    assert segment["volume_ml"] == pytest.approx(int(built.mask.sum()) * built.grid.voxel_volume() / 1000, abs=1e-3)
    text = json.dumps(document)
    assert str(built.seg.PatientName) not in text and str(built.seg.PatientID) not in text


def test_a_mirrored_seg_has_mirrored_figures(built: Built) -> None:
    mirrored = with_frames(built.seg, frames_of(built.seg)[:, :, ::-1])
    (figure,) = segment_figures(mirrored)
    assert figure.centroid_mm is not None
    np.testing.assert_allclose(figure.centroid_mm, mirrored_x(built.centre, built.grid), atol=1e-6)


# -- the picture in patient space -----------------------------------------------------------------------------------


def test_the_segment_is_drawn_where_it_is_in_every_panel(built: Built) -> None:
    picture = built.picture()
    for title in ("axial", "coronal", "sagittal", "plane "):
        placed = picture.panel(title)
        assert is_red(rgb_at(picture, placed, built.centre)), title
    axial = picture.panel("axial")
    # Radiological convention: the patient's left is on the viewer's right, and the letters say so.
    assert axial.pixel_of(built.centre)[0] > axial.x + axial.view.width / 2
    assert axial.view.edge_letters() == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    # Nothing is drawn on the patient's right, where the segment is not.
    assert is_grey(rgb_at(picture, axial, mirrored_x(built.centre, built.grid)))


def test_a_mirrored_seg_looks_mirrored_exactly_where_the_segment_moved(built: Built) -> None:
    good = built.picture()
    bad = built.picture(with_frames(built.seg, frames_of(built.seg)[:, :, ::-1]))
    moved = mirrored_x(built.centre, built.grid)
    for title in ("axial", "coronal"):
        assert is_red(rgb_at(good, good.panel(title), built.centre)) and is_grey(rgb_at(good, good.panel(title), moved))
        assert is_grey(rgb_at(bad, bad.panel(title), built.centre)) and is_red(rgb_at(bad, bad.panel(title), moved))
    (figure,) = good.figures
    low, high = np.asarray(figure.bbox_min_mm), np.asarray(figure.bbox_max_mm)
    low_m, high_m = np.sort([mirrored_x(low, built.grid), mirrored_x(high, built.grid)], axis=0)
    margin = 1.5 * max(NONSQUARE["col_spacing"], NONSQUARE["row_spacing"], NONSQUARE["slice_step"])
    a, b = np.asarray(good.image), np.asarray(bad.image)
    assert a.shape == b.shape
    for title in ("axial", "coronal"):
        placed = good.panel(title)
        window = (slice(placed.y, placed.y + placed.view.height), slice(placed.x, placed.x + placed.view.width))
        ys, xs = np.nonzero(np.any(a[window] != b[window], axis=-1))
        assert len(xs) > 0
        for y, x in zip(ys + placed.y, xs + placed.x, strict=True):
            point = lps_of(placed, int(x), int(y))
            assert in_box(point, low, high, margin) or in_box(point, low_m, high_m, margin), (title, point.tolist())


def test_a_shifted_seg_is_drawn_shifted(built: Built) -> None:
    shift = np.array([0.0, 9.0, 0.0])  # 10 rows of 0.9 mm towards posterior
    shifted = copy.deepcopy(built.seg)
    for item in shifted.PerFrameFunctionalGroupsSequence:
        plane = item.PlanePositionSequence[0]
        plane.ImagePositionPatient = [float(v) + d for v, d in zip(plane.ImagePositionPatient, shift, strict=True)]
    picture = built.picture(written(shifted))
    axial = picture.panel("axial")
    assert is_red(rgb_at(picture, axial, built.centre + shift))
    assert is_grey(rgb_at(picture, axial, built.centre))


def test_no_patient_identity_unless_asked(built: Built) -> None:
    renamed = copy.deepcopy(built.series.datasets[0])
    renamed.PatientName, renamed.PatientID = "Other^Person", "OTHER-9"
    other = dataclasses.replace(built.series, datasets=(renamed, *built.series.datasets[1:]))
    plain = qc_picture(built.seg, built.series, built.pixels)
    assert qc_picture(built.seg, other, built.pixels) == plain
    with_phi = qc_picture(built.seg, built.series, built.pixels, include_phi=True)
    assert with_phi != plain
    assert qc_picture(built.seg, other, built.pixels, include_phi=True) != with_phi
    assert Image.open(io.BytesIO(plain)).format == "PNG"


def test_the_secondary_capture_holds_the_pixels_of_the_png(built: Built) -> None:
    picture = built.picture()
    sc = qc_secondary_capture(built.seg, np.asarray(picture.image))
    assert np.array_equal(sc.pixel_array, png_pixels(picture.png()))
    assert (sc.SeriesInstanceUID, sc.SOPInstanceUID) == qc_sc_uids(built.seg, png_pixels(picture.png()))


# -- orientation letters --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "letters"),
    [
        ((1, 0, 0), "L"),
        ((-1, 0, 0), "R"),
        ((0, 1, 0), "P"),
        ((0, -1, 0), "A"),
        ((0, 0, 1), "S"),
        ((0, 0, -2), "I"),
        ((0.866, 0.5, 0), "LP"),
        ((0.96, -0.28, 0), "L"),
        ((-0.554, 0.735, 0.391), "PRS"),
    ],
)
def test_orientation_letters_of_known_directions(direction: tuple[float, float, float], letters: str) -> None:
    assert orientation_letters(direction) == letters


def test_native_letters_follow_a_sagittal_acquisition(tmp_path: Path) -> None:
    built = Built(tmp_path, syn.GridSpec.sagittal(**NONSQUARE), offset=(0.0, 12.0, -8.0))
    picture = built.picture()
    native = picture.panel("plane ")
    # Columns run posterior, rows inferior (GridSpec.sagittal).
    assert native.view.edge_letters() == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    assert is_red(rgb_at(picture, native, built.centre))
    assert native.pixel_of(built.centre)[0] > native.x + native.view.width / 2  # posterior: towards "P"
    assert picture.panel("axial").view.edge_letters() == {"left": "R", "right": "L", "top": "A", "bottom": "P"}


def test_native_letters_follow_an_oblique_acquisition(tmp_path: Path) -> None:
    built = Built(tmp_path, syn.GridSpec.oblique(**NONSQUARE), offset=(8.0, 0.0, 0.0))
    picture = built.picture()
    # Columns: 37° spun from L towards P; rows: P, leaning right and (23° tilt) superior.
    assert picture.panel("plane ").view.edge_letters() == {"left": "RA", "right": "LP", "top": "ALI", "bottom": "PRS"}
    assert picture.panel("coronal").view.edge_letters() == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    for title in ("axial", "coronal", "sagittal", "plane "):
        assert is_red(rgb_at(picture, picture.panel(title), built.centre)), title


# -- a real scanner series ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", ["mr_si_sag_hfs", "ct_ge_tilt_uneven"])
def test_real_scanner_series(tmp_path: Path, case_id: str) -> None:
    """A sagittal MR (percentile window, sagittal native letters) and a tilted CT with uneven spacing."""
    folder = rd.corpus_folder()
    if missing := rd.corpus_missing(folder):
        pytest.skip(missing)
    (case,) = [c for c in rd.load_cases(folder) if c.id == case_id]
    source = rd.unpack(case, tmp_path / "corpus")
    (stack,) = rd.split_stacks(rd.read_planes(source).planes)
    truth = rd.ground_truth(stack, labels=2)
    series = load_series(source)
    exported = export_series(series, tmp_path / "export")
    labels = rd.write_label_map(exported.nifti, truth, tmp_path / "labels.nii.gz")
    seg = written(build_seg_from_input(series, labels).dataset)
    picture = qc_figure(seg, series, read_volume(series))
    on_planes = rd.truth_on_planes(truth, stack)
    # The export of unevenly spaced planes is resampled: its labels go back onto the planes by nearest neighbour.
    exact = series.regular
    for figure in picture.figures:
        mask = on_planes == figure.number
        assert figure.voxels == pytest.approx(int(mask.sum()), rel=0 if exact else 0.02)
        assert figure.centroid_mm is not None
        distance = float(np.linalg.norm(np.asarray(figure.centroid_mm) - rd.centroid_mm(mask, stack)))
        assert distance < (1e-3 if exact else rd.source_voxel_diagonal(stack)), (figure.name, distance)
    image = np.asarray(picture.image).astype(np.int64)
    for title in ("axial", "coronal", "sagittal", "plane "):
        placed = picture.panel(title)
        # Where the ground truth's ellipsoid is, the panel is tinted: no plane left out, none misplaced.
        inside = truth.labels_at(placed.view.points()) == 1
        region = image[placed.y : placed.y + placed.view.height, placed.x : placed.x + placed.view.width]
        tinted = shows_colour(region, picture.figures[0].color)
        assert inside.sum() > 100, title
        assert tinted[inside].mean() > 0.9, (title, float(tinted[inside].mean()))
        # Every point of the ellipsoid lies within the stack: none may be shown as having no source pixel.
        assert not np.all(region[inside] == NO_SOURCE, axis=-1).any(), title
    letters = picture.panel("plane ").view.edge_letters()
    native = {"mr_si_sag_hfs": ({"A", "P"}, {"S", "I"}), "ct_ge_tilt_uneven": ({"R", "L"}, {"A", "P"})}[case_id]
    assert {letters["left"][0], letters["right"][0]} == native[0]
    assert {letters["top"][0], letters["bottom"][0]} == native[1]


# -- segnode convert --qc -------------------------------------------------------------------------------------------


def test_convert_writes_the_picture_and_figures_of_the_seg_it_wrote(
    tmp_path: Path, segnode_convert: syn.ConvertRunner
) -> None:
    grid = syn.GridSpec.axial(**NONSQUARE)
    centre = syn.vec3(grid.centre_lps() + np.asarray(LESION_OFFSET))
    phantom = syn.Phantom((syn.Shape(1, "lesion", "box", centre, (6.0, 5.0, 5.0)),))
    info = syn.write_series(grid, tmp_path / "dicom", phantom=phantom)
    nifti = syn.label_nifti_on_grid(
        (syn.export_grid_affine(grid), syn.export_grid_shape(grid)), phantom, tmp_path / "l.nii.gz", snap=grid
    )
    out, png = tmp_path / "seg.dcm", tmp_path / "qc" / "seg.png"
    result = segnode_convert("--dicom", str(info.folder), "--nifti", str(nifti), "--out", str(out), "--qc", str(png))
    assert result.code == 0, result.stderr
    assert str(png) in result.stdout
    seg = pydicom.dcmread(out)
    series = load_series(info.folder)
    assert png.read_bytes() == qc_picture(seg, series, read_volume(series))
    document = json.loads(png.with_suffix(".json").read_text())
    assert document["sop_instance_uid"] == seg.SOPInstanceUID
    mask = phantom.truth(grid) == 1
    (segment,) = document["segments"]
    assert segment["voxels"] == int(mask.sum())
    np.testing.assert_allclose(segment["centroid_mm_lps"], syn.centroid_lps(mask, grid), atol=0.01)
