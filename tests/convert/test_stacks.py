"""node.convert.stacks and node.convert.series.find_stacks on series that hold several volumes, or one volume in an
awkward layout.

Which SOP instance and frame belongs to which stack is checked against what tests/synthetic_layouts.py wrote; the
node's stack numbering is checked against its documented rule (largest first), not against its own code.
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

from node.convert.series import SourceSeries, find_stacks
from node.errors import GeometryError

GRID = syn.GridSpec.oblique(rows=16, cols=20, slices=6, row_spacing=0.9, col_spacing=1.3, slice_step=2.5)
SAGITTAL = syn.GridSpec.sagittal(rows=16, cols=20, slices=8, row_spacing=1.1, col_spacing=0.8, slice_step=3.0)

Source = tuple[str, int | None]


def sources_of(stack: SourceSeries) -> list[Source]:
    """(SOP Instance UID, 1-based frame or None) of each plane, in the stack's own (sorted) order."""
    if stack.frame_order is not None:
        uid = str(stack.datasets[0].SOPInstanceUID)
        return [(uid, f + 1) for f in stack.frame_order]
    return [(str(ds.SOPInstanceUID), None) for ds in stack.datasets]


def matched(stacks: list[SourceSeries], info: lay.LayoutInfo) -> dict[str, SourceSeries]:
    """Builder stack name -> the node's stack holding exactly its planes; fails unless it is a bijection."""
    by_sources = {frozenset(s.sources): s.name for s in info.stacks}
    result: dict[str, SourceSeries] = {}
    for stack in stacks:
        name = by_sources.get(frozenset(sources_of(stack)))
        assert name is not None, (
            f"{stack.stack.describe()} holds {len(sources_of(stack))} planes that are no"
            f" written stack: {sources_of(stack)[:3]}..."
        )
        assert name not in result
        result[name] = stack
    assert sorted(result) == sorted(s.name for s in info.stacks)
    return result


def check_stacks(stacks: list[SourceSeries], info: lay.LayoutInfo) -> dict[str, SourceSeries]:
    """Bijection with the written stacks; order, numbering, stems; planes sorted along the normal in mm."""
    found = matched(stacks, info)
    assert [s.stack.index for s in stacks] == list(range(1, len(stacks) + 1))
    assert {s.stack.count for s in stacks} == {len(stacks)}
    sizes = [s.plane_count for s in stacks]
    assert sizes == sorted(sizes, reverse=True), "stack 1 must be the largest"
    for s in stacks:
        assert s.series_uid == info.series_uid
        assert s.stem == (info.series_uid if s.stack.index == 1 else f"{info.series_uid}_stack{s.stack.index}")
    for name, stack in found.items():
        truth = info.stack(name)
        normal = truth.planes[0].normal
        assert sources_of(stack) == truth.sorted_sources()
        distances = stack.positions @ normal
        assert np.all(np.diff(distances) > 0), f"{name}: planes not sorted along the normal: {distances}"
        assert np.abs(distances - np.sort(truth.distances())).max() < 1e-4
        order = np.argsort(truth.distances())
        assert np.abs(stack.positions - truth.positions()[order]).max() < 1e-4
        assert np.abs(stack.orientation - truth.planes[0].image_orientation).max() < 1e-4
    return found


def keys_contain(found: dict[str, SourceSeries], expected: dict[str, dict[str, str]]) -> None:
    for name, entries in expected.items():
        key = found[name].stack.key
        for attribute, value in entries.items():
            assert key.get(attribute) == value, f"{name}: key {key} lacks {attribute} = {value}"


# -- several volumes in one series --------------------------------------------------------------------------------


def _mixture(folder: Path) -> lay.LayoutInfo:
    return lay.write_layout(
        folder,
        [lay.StackSpec.of_grid("classic", GRID)],
        [lay.EnhancedSpec((lay.StackSpec.of_grid("enhanced", SAGITTAL),), geometry="per_frame")],
    )


def _mixture_same_grid(folder: Path) -> lay.LayoutInfo:
    return lay.write_layout(
        folder, [lay.StackSpec.of_grid("classic", GRID)], [lay.EnhancedSpec((lay.StackSpec.of_grid("enhanced", GRID),))]
    )


MULTI_STACK: list[Any] = [
    pytest.param(
        lambda f: lay.write_layout(f, lay.echo_stacks(GRID), modality="MR"),
        {"echo1": {"EchoNumbers": "1"}, "echo2": {"EchoNumbers": "2"}},
        id="classic-echoes",
    ),
    pytest.param(
        lambda f: lay.write_layout(f, lay.magnitude_phase_stacks(GRID), modality="MR"),
        {"magnitude": {"ImageType": "ORIGINAL\\PRIMARY\\M\\ND"}, "phase": {"ImageType": "ORIGINAL\\PRIMARY\\P\\ND"}},
        id="magnitude-phase",
    ),
    pytest.param(
        lambda f: lay.write_layout(f, lay.dynamic_stacks(GRID, 3)),
        {f"t{i}": {"TemporalPositionIdentifier": str(i)} for i in (1, 2, 3)},
        id="dynamics",
    ),
    pytest.param(
        lambda f: lay.write_layout(f, lay.diffusion_stacks(GRID), modality="MR"),
        {
            "b0": {"DiffusionBValue": "0"},
            "b1000_dir1": {"DiffusionBValue": "1000", "DiffusionGradientOrientation": "1\\0\\0"},
            "b1000_dir2": {"DiffusionBValue": "1000", "DiffusionGradientOrientation": "0\\1\\0"},
            "b1000_dir3": {"DiffusionBValue": "1000", "DiffusionGradientOrientation": "0\\0\\1"},
        },
        id="diffusion",
    ),
    pytest.param(
        lambda f: lay.write_layout(f, lay.localizer_stacks()),
        {name: {"orientation": name} for name in ("axial", "coronal", "sagittal")},
        id="localizer",
    ),
    pytest.param(_mixture, {"classic": {"object": "single-frame images"}}, id="classic-and-enhanced"),
    pytest.param(
        _mixture_same_grid, {"classic": {"object": "single-frame images"}}, id="classic-and-enhanced-same-positions"
    ),
    pytest.param(
        lambda f: lay.write_enhanced(GRID, f, modality="MR", temporal_positions=3),
        {f"t{i}": {"TemporalPositionIndex": str(i)} for i in (1, 2, 3)},
        id="enhanced-temporal",
    ),
    pytest.param(
        lambda f: lay.write_enhanced(GRID, f, modality="MR", geometry="per_frame", echo_times=(9.5, 21.0)),
        {"echo1": {"EffectiveEchoTime": "9.5"}, "echo2": {"EffectiveEchoTime": "21"}},
        id="enhanced-echoes-one-object",
    ),
    pytest.param(
        lambda f: lay.write_enhanced(GRID, f, modality="MR", echo_times=(9.5, 21.0), object_per_echo=True),
        {"echo1": {"EffectiveEchoTime": "9.5"}, "echo2": {"EffectiveEchoTime": "21"}},
        id="enhanced-object-per-echo",
    ),
    pytest.param(
        lambda f: lay.write_enhanced(GRID, f, modality="MR", temporal_positions=2, echo_times=(9.5, 21.0)),
        {"t2_echo1": {"TemporalPositionIndex": "2", "EffectiveEchoTime": "9.5"}},
        id="enhanced-temporal-and-echoes",
    ),
]


@pytest.mark.parametrize(("build", "keys"), MULTI_STACK)
def test_multi_stack_series(
    tmp_path: Path, build: Callable[[Path], lay.LayoutInfo], keys: dict[str, dict[str, str]]
) -> None:
    info = build(tmp_path / "dicom")
    stacks = find_stacks(info.folder)
    assert len(stacks) == len(info.stacks)
    found = check_stacks(stacks, info)
    keys_contain(found, keys)
    # Every key tells its stack apart: no two stacks share one.
    assert len({tuple(sorted(s.stack.key.items())) for s in stacks}) == len(stacks)
    assert all(s.regular for s in stacks)
    assert any("stacks" in notice for notice in stacks[0].notices)


def test_enhanced_objects_are_keyed_by_object(tmp_path: Path) -> None:
    info = lay.write_enhanced(GRID, tmp_path / "dicom", modality="MR", echo_times=(9.5, 21.0), object_per_echo=True)
    found = check_stacks(find_stacks(info.folder), info)
    for name, stack in found.items():
        assert stack.stack.key.get("object") == info.stack(name).sources[0][0]
        assert stack.is_multiframe and len(stack.datasets) == 1


def test_main_stack_is_the_largest(tmp_path: Path) -> None:
    small = GRID.replace(slices=3)
    info = lay.write_layout(
        tmp_path / "dicom",
        [lay.StackSpec.of_grid("small", small)],
        [lay.EnhancedSpec((lay.StackSpec.of_grid("large", SAGITTAL),))],
    )
    stacks = find_stacks(info.folder)
    found = check_stacks(stacks, info)
    assert found["large"].stack.index == 1 and found["large"].stem == info.series_uid
    assert found["small"].stack.index == 2 and found["small"].stem == f"{info.series_uid}_stack2"


def test_localizer_with_uneven_plane_counts(tmp_path: Path) -> None:
    axial = syn.GridSpec.axial(rows=16, cols=20, slices=5, col_spacing=1.25, slice_step=5.0)
    stacks = [lay.StackSpec.of_grid("axial", axial), *lay.localizer_stacks()[1:]]
    info = lay.write_layout(tmp_path / "dicom", stacks)
    found = check_stacks(find_stacks(info.folder), info)
    assert found["axial"].stack.index == 1


# -- one volume, however it is written ----------------------------------------------------------------------------


ONE_STACK: list[Any] = [
    pytest.param(
        lambda f: lay.write_layout(f, [lay.acquisition_number_stack(GRID)]), True, id="acquisition-number-per-slice"
    ),
    pytest.param(lambda f: lay.write_layout(f, [lay.jittered_stack(GRID, seed=4)]), True, id="orientation-jitter"),
    pytest.param(
        lambda f: lay.write_layout(f, [lay.jittered_stack(GRID, low=4e-5, high=5e-5, seed=5)]),
        True,
        id="orientation-jitter-5e-5",
    ),
    pytest.param(lambda f: lay.write_enhanced(GRID, f, geometry="per_frame"), True, id="enhanced-ct-per-frame"),
    pytest.param(lambda f: lay.write_enhanced(GRID, f, modality="MR"), True, id="enhanced-mr-shared"),
    pytest.param(
        lambda f: lay.write_layout(
            f, [lay.missing_slice_stack(GRID.replace(slices=8))], phantom=syn.Phantom.fitting(GRID)
        ),
        False,
        id="missing-slice",
    ),
    pytest.param(
        lambda f: lay.write_layout(
            f, [lay.uneven_stack(GRID, [2.0, 2.0, 3.0, 2.0, 4.0])], phantom=syn.Phantom.fitting(GRID)
        ),
        False,
        id="variable-spacing",
    ),
    pytest.param(
        lambda f: lay.write_layout(
            f, [lay.uneven_stack(GRID, [2.0, 3.0, 2.0, 4.0, 2.0], tilt_degrees=15)], phantom=syn.Phantom.fitting(GRID)
        ),
        False,
        id="gantry-tilt-uneven",
    ),
    pytest.param(lambda f: lay.write_layout(f, [lay.single_plane_stack(GRID)]), True, id="single-plane"),
]


@pytest.mark.parametrize(("build", "regular"), ONE_STACK)
def test_one_volume_stays_one_stack(tmp_path: Path, build: Callable[[Path], lay.LayoutInfo], regular: bool) -> None:
    info = build(tmp_path / "dicom")
    stacks = find_stacks(info.folder)
    assert len(stacks) == 1, [s.stack.describe() for s in stacks]
    (stack,) = stacks
    check_stacks(stacks, info)
    assert stack.stack.index == stack.stack.count == 1 and stack.stack.key == {}
    assert stack.stem == info.series_uid
    assert stack.regular is regular
    grid = info.stacks[0].grid
    if grid is not None and grid.slices > 1:
        # A regular stack's grid is the written grid, to float32-free precision (mm).
        first = np.argmin(info.stacks[0].distances())
        assert np.abs(stack.grid.affine[:3, 3] - info.stacks[0].planes[first].position).max() < 1e-4
        assert abs(abs(float(stack.grid.affine[:3, 0] @ grid.normal)) - abs(grid.slice_step)) < 1e-4


def test_jitter_is_in_the_headers_and_within_the_tolerance(tmp_path: Path) -> None:
    """The jittered layout really differs per slice (1e-6..5e-5), yet stays one stack with one orientation."""
    spec = lay.jittered_stack(GRID, low=1e-6, high=5e-5, seed=4)
    info = lay.write_layout(tmp_path / "dicom", [spec])
    written = np.array(
        [pydicom.dcmread(p, stop_before_pixels=True).ImageOrientationPatient for p in info.paths], dtype=np.float64
    )
    deviation = np.abs(written - np.asarray(GRID.image_orientation)).max(axis=1)
    assert deviation.min() > 1e-7 and deviation.max() < 1e-4
    assert len({tuple(row) for row in written}) == GRID.slices
    (stack,) = find_stacks(info.folder)
    assert np.abs(stack.orientation - GRID.image_orientation).max() < 1e-4


def test_single_plane_takes_its_thickness(tmp_path: Path) -> None:
    info = lay.write_layout(tmp_path / "dicom", [lay.single_plane_stack(GRID, thickness=4.5)])
    (stack,) = find_stacks(info.folder)
    assert stack.plane_count == 1 and stack.thickness == pytest.approx(4.5)
    assert stack.grid.shape == (1, GRID.rows, GRID.cols)


# -- repeated positions that nothing tells apart ------------------------------------------------------------------


def test_repeated_positions_without_a_difference_are_refused(tmp_path: Path) -> None:
    twins = [lay.StackSpec.of_grid("a", GRID), lay.StackSpec.of_grid("b", GRID)]
    info = lay.write_layout(tmp_path / "dicom", twins)
    with pytest.raises(GeometryError) as caught:
        find_stacks(info.folder)
    message = str(caught.value)
    assert "\n" not in message
    assert "repeat" in message and "tells them apart" in message
    assert info.series_uid in message


def test_untellable_group_is_left_out_and_the_rest_kept(tmp_path: Path) -> None:
    """A localiser whose sagittal plane was sent twice: the axial and coronal stacks remain; a notice says so."""
    axial, coronal, sagittal = lay.localizer_stacks()
    twin = lay.StackSpec(name="sagittal-again", planes=sagittal.planes, grid=sagittal.grid)
    info = lay.write_layout(tmp_path / "dicom", [axial, coronal, sagittal, twin])
    stacks = find_stacks(info.folder)
    assert len(stacks) == 2
    kept = {frozenset(sources_of(s)) for s in stacks}
    assert kept == {frozenset(info.stack("axial").sources), frozenset(info.stack("coronal").sources)}
    assert any("left out" in notice for notice in stacks[0].notices)
