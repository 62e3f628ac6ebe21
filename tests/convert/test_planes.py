"""node.convert.planes on the layouts scanners write: Enhanced objects with geometry in the shared or per-frame groups,
the traits that tell stacks apart, mosaics, and headers whose geometry cannot be read.

Every expectation comes from what tests/synthetic_layouts.py wrote (positions, frame numbers, attribute values).
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
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from node.convert.planes import TRAITS, Plane, is_mosaic, is_multiframe, planes_of
from node.convert.series import find_stacks
from node.errors import GeometryError

GRID = syn.GridSpec.oblique(rows=16, cols=20, slices=6, row_spacing=0.9, col_spacing=1.3, slice_step=2.5)


def header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def trait(plane: Plane, keyword: str) -> str:
    return plane.traits[TRAITS.index(keyword)]


def check_planes_match(planes: list[Plane], stack: lay.StackTruth) -> None:
    """Each plane (0-based frame f) is the builder's plane that went into frame f + 1."""
    by_frame = {frame: k for k, (_, frame) in enumerate(stack.sources)}
    for plane in planes:
        assert plane.frame is not None
        k = by_frame[plane.frame + 1]
        want = stack.planes[k]
        assert np.abs(plane.position - want.position).max() < 1e-6
        assert np.abs(plane.orientation - want.image_orientation).max() < 1e-9
        assert plane.spacing == pytest.approx(tuple(want.pixel_spacing), abs=1e-9)
        assert (plane.rows, plane.cols) == (want.rows, want.cols)
        assert plane.thickness == pytest.approx(want.thickness)


# -- Enhanced objects ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_shared_and_per_frame_groups_give_equal_planes(tmp_path: Path, modality: lay.Modality) -> None:
    shared = lay.write_enhanced(GRID, tmp_path / "shared", modality=modality, geometry="shared", seed=3)
    per_frame = lay.write_enhanced(GRID, tmp_path / "per_frame", modality=modality, geometry="per_frame", seed=3)
    a = header(shared.paths[0])
    b = header(per_frame.paths[0])
    assert "PlaneOrientationSequence" in a.SharedFunctionalGroupsSequence[0]
    assert "PlaneOrientationSequence" not in b.SharedFunctionalGroupsSequence[0]
    assert "PixelMeasuresSequence" in b.PerFrameFunctionalGroupsSequence[0]
    assert is_multiframe(a) and is_multiframe(b)
    planes_a, planes_b = planes_of(a, 0), planes_of(b, 0)
    assert len(planes_a) == len(planes_b) == GRID.slices
    # The same seed stores the frames in the same (shuffled) order: plane i of one is plane i of the other.
    for pa, pb in zip(planes_a, planes_b, strict=True):
        assert (pa.frame, pa.rows, pa.cols, pa.spacing, pa.thickness, pa.traits) == (
            pb.frame,
            pb.rows,
            pb.cols,
            pb.spacing,
            pb.thickness,
            pb.traits,
        )
        assert np.array_equal(pa.position, pb.position) and np.array_equal(pa.orientation, pb.orientation)
    check_planes_match(planes_a, shared.stack("volume"))
    check_planes_match(planes_b, per_frame.stack("volume"))


def test_enhanced_mr_temporal_positions_and_echoes_are_traits(tmp_path: Path) -> None:
    info = lay.write_enhanced(
        GRID, tmp_path / "dicom", modality="MR", geometry="per_frame", temporal_positions=2, echo_times=(9.5, 21.0)
    )
    planes = planes_of(header(info.paths[0]), 0)
    assert len(planes) == 4 * GRID.slices
    for stack in info.stacks:
        frames = {frame for _, frame in stack.sources}
        mine = [p for p in planes if p.frame is not None and p.frame + 1 in frames]
        assert len(mine) == GRID.slices
        check_planes_match(mine, stack)
        assert {trait(p, "TemporalPositionIndex") for p in mine} == {str(stack.spec.temporal_position)}
        assert {trait(p, "EffectiveEchoTime") for p in mine} == {f"{stack.spec.echo_time:g}"}
        assert {trait(p, "StackID") for p in mine} == {"1"}
        assert {trait(p, "ImageType") for p in mine} == {"ORIGINAL\\PRIMARY\\VOLUME\\NONE"}


def test_enhanced_ct_frame_type_is_the_image_type_trait(tmp_path: Path) -> None:
    info = lay.write_enhanced(GRID, tmp_path / "dicom", modality="CT")
    planes = planes_of(header(info.paths[0]), 0)
    assert {trait(p, "ImageType") for p in planes} == {"DERIVED\\PRIMARY\\VOLUME\\NONE"}
    assert {trait(p, "EchoNumbers") for p in planes} == {""}


# -- classic images -----------------------------------------------------------------------------------------------


CLASSIC_TRAITS: list[Any] = [
    pytest.param(lay.echo_stacks, "MR", {"echo1": {"EchoNumbers": "1"}, "echo2": {"EchoNumbers": "2"}}, id="echoes"),
    pytest.param(
        lay.magnitude_phase_stacks,
        "MR",
        {"magnitude": {"ImageType": "ORIGINAL\\PRIMARY\\M\\ND"}, "phase": {"ImageType": "ORIGINAL\\PRIMARY\\P\\ND"}},
        id="magnitude-phase",
    ),
    pytest.param(
        lambda g: lay.dynamic_stacks(g, 2),
        "CT",
        {"t1": {"TemporalPositionIdentifier": "1"}, "t2": {"TemporalPositionIdentifier": "2"}},
        id="dynamics",
    ),
    pytest.param(
        lambda g: lay.diffusion_stacks(g, 800.0, ((0.6, 0.8, 0.0),)),
        "MR",
        {
            "b0": {"DiffusionBValue": "0", "DiffusionGradientOrientation": ""},
            "b800_dir1": {"DiffusionBValue": "800", "DiffusionGradientOrientation": "0.6\\0.8\\0"},
        },
        id="diffusion",
    ),
    pytest.param(
        lambda g: [lay.acquisition_number_stack(g)],
        "CT",
        {"volume": {"AcquisitionNumber": None}},
        id="acquisition-numbers",
    ),
]


@pytest.mark.parametrize(("stacks", "modality", "expected"), CLASSIC_TRAITS)
def test_classic_traits(
    tmp_path: Path,
    stacks: Callable[[syn.GridSpec], list[lay.StackSpec]],
    modality: lay.Modality,
    expected: dict[str, dict[str, str | None]],
) -> None:
    grid = GRID.replace(slices=3)
    info = lay.write_layout(tmp_path / "dicom", stacks(grid), modality=modality)
    for stack in info.stacks:
        for k, path in enumerate(stack.paths):
            (plane,) = planes_of(header(path), 0)
            assert plane.frame is None
            assert np.abs(plane.position - stack.planes[k].position).max() < 1e-6
            for keyword, value in expected[stack.name].items():
                # None: the value differs per plane (AcquisitionNumber k + 1).
                assert trait(plane, keyword) == (str(k + 1) if value is None else value), keyword


def test_private_siemens_b_value_stands_in_for_the_standard_one(tmp_path: Path) -> None:
    info = lay.write_layout(tmp_path / "dicom", [lay.StackSpec.of_grid("dwi", GRID.replace(slices=1))], modality="MR")
    ds = header(info.paths[0])
    ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", "500")
    (plane,) = planes_of(ds, 0)
    assert trait(plane, "DiffusionBValue") == "500"


# -- mosaics ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_type", "private"),
    [(True, True), (True, False), (False, True)],
    ids=["both", "image-type-only", "private-count-only"],
)
def test_mosaic_is_detected_and_refused_in_one_line(tmp_path: Path, image_type: bool, private: bool) -> None:
    info = lay.write_mosaic(tmp_path / "dicom", with_image_type=image_type, with_private_count=private)
    ds = header(info.paths[0])
    assert ("MOSAIC" in ds.ImageType) is image_type
    if private:
        assert ds[Tag(0x0019, 0x0010)].value == lay.SIEMENS_CSA_CREATOR
        assert ds[lay.MOSAIC_COUNT_TAG].VR == "US" and ds[lay.MOSAIC_COUNT_TAG].value == 12
    assert is_mosaic(ds)
    with pytest.raises(GeometryError) as caught:
        planes_of(ds, 0)
    message = str(caught.value)
    assert "mosaic" in message.lower() and "\n" not in message
    assert str(ds.SOPInstanceUID) in message
    if private:
        assert "12" in message


def test_ordinary_images_are_not_mosaics(tmp_path: Path) -> None:
    info = lay.write_layout(tmp_path / "dicom", lay.magnitude_phase_stacks(GRID.replace(slices=1)), modality="MR")
    assert not any(is_mosaic(header(p)) for p in info.paths)


# -- headers whose geometry cannot be read ------------------------------------------------------------------------


def _drop(keyword: str) -> Callable[[Dataset], None]:
    return lambda ds: delattr(ds, keyword)


def _set(keyword: str, value: Any) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds, keyword, value)


CLASSIC_DAMAGE = [
    pytest.param(_set("ImageOrientationPatient", ["1", "0", "0", "0", "1"]), id="orientation-5-values"),
    pytest.param(_set("ImageOrientationPatient", ["1", "0", "0", "0", "1", "nan"]), id="orientation-nan"),
    pytest.param(_drop("ImageOrientationPatient"), id="orientation-missing"),
    pytest.param(_drop("PixelSpacing"), id="pixel-spacing-missing"),
    pytest.param(_set("PixelSpacing", ["0.9"]), id="pixel-spacing-one-value"),
    pytest.param(_set("ImagePositionPatient", ["1", "2", "inf"]), id="position-inf"),
    pytest.param(_set("ImagePositionPatient", ["1", "2"]), id="position-2-values"),
    pytest.param(_set("Rows", 0), id="rows-zero"),
    pytest.param(_drop("Columns"), id="columns-missing"),
    pytest.param(_set("NumberOfFrames", 3), id="frames-without-functional-groups"),
]


def damaged_geometry_message(path: Path, damage: Callable[[Dataset], None]) -> str:
    """The GeometryError message planes_of gives for the header at ``path`` after ``damage``: checked to be one
    line naming the instance."""
    ds = header(path)
    damage(ds)
    with pytest.raises(GeometryError) as caught:
        planes_of(ds, 0)
    message = str(caught.value)
    assert "\n" not in message
    assert str(ds.SOPInstanceUID) in message
    return message


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("damage", CLASSIC_DAMAGE)
def test_bad_classic_geometry_is_one_line_naming_the_instance(
    tmp_path: Path, damage: Callable[[Dataset], None]
) -> None:
    info = lay.write_layout(tmp_path / "dicom", [lay.StackSpec.of_grid("volume", GRID.replace(slices=2))])
    damaged_geometry_message(info.paths[0], damage)


def _drop_in(group: Callable[[Dataset], Dataset], *path: str) -> Callable[[Dataset], None]:
    """Delete ``path[-1]`` from the functional groups item ``group(ds)``, down the sequences ``path[:-1]``."""

    def damage(ds: Dataset) -> None:
        node = group(ds)
        for keyword in path[:-1]:
            node = node[keyword].value[0]
        delattr(node, path[-1])

    return damage


def _frame(index: int, *path: str) -> Callable[[Dataset], None]:
    return _drop_in(lambda ds: ds.PerFrameFunctionalGroupsSequence[index], *path)


def _shared(*path: str) -> Callable[[Dataset], None]:
    return _drop_in(lambda ds: ds.SharedFunctionalGroupsSequence[0], *path)


ENHANCED_DAMAGE = [
    pytest.param("shared", _frame(2, "PlanePositionSequence"), 3, id="frame-without-position"),
    pytest.param("per_frame", _frame(4, "PlaneOrientationSequence"), 5, id="per-frame-orientation-missing"),
    pytest.param("per_frame", _frame(1, "PixelMeasuresSequence", "PixelSpacing"), 2, id="per-frame-spacing-missing"),
    pytest.param("shared", _shared("PlaneOrientationSequence"), 1, id="shared-orientation-missing"),
    pytest.param("shared", _set("NumberOfFrames", 9), None, id="frame-count-mismatch"),
]


@pytest.mark.parametrize(("geometry", "damage", "frame"), ENHANCED_DAMAGE)
def test_bad_enhanced_geometry_is_one_line_naming_the_instance(
    tmp_path: Path, geometry: str, damage: Callable[[Dataset], None], frame: int | None
) -> None:
    info = lay.write_enhanced(
        GRID,
        tmp_path / "dicom",
        modality="MR",
        geometry=geometry,  # type: ignore[arg-type]
        frame_order="ascending",
    )
    message = damaged_geometry_message(info.paths[0], damage)
    if frame is not None:
        assert f"frame {frame}" in message


def test_bad_geometry_through_find_stacks_names_series_and_instance(tmp_path: Path) -> None:
    info = lay.write_layout(tmp_path / "dicom", [lay.StackSpec.of_grid("volume", GRID.replace(slices=3))])
    ds = pydicom.dcmread(info.paths[1])
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1"]
    ds.save_as(info.paths[1])
    with pytest.raises(GeometryError) as caught:
        find_stacks(info.folder)
    message = str(caught.value)
    assert "\n" not in message
    assert info.series_uid in message and str(ds.SOPInstanceUID) in message
