"""Unit tests of convert/geometry.py and alignment.py: every check is made in patient space, against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from synthetic import nib

from node.convert.alignment import NoOverlapError, align_labels, align_planes, label_stats, plan_alignment
from node.convert.geometry import LPS_FROM_RAS, Grid, even_stack_grid, nifti_affine, nifti_grid, slice_order, stack_grid
from node.errors import GeometryError

# A non-square matrix with non-square pixels and an oblique orientation catches row/column swaps.
COL_DIR = np.array([0.8660254, 0.5, 0.0])
ROW_DIR = np.array([-0.1736482 * 0.5, 0.1736482 * 0.8660254, -0.9848078])
ROW_DIR /= np.linalg.norm(ROW_DIR)
IOP = [*COL_DIR, *ROW_DIR]
DELTA_ROW, DELTA_COL, STEP = 0.9, 1.3, 2.5
ROWS, COLS, SLICES = 7, 5, 4


def source_grid() -> Grid:
    normal = np.cross(COL_DIR, ROW_DIR)
    positions = np.array([[-20.0, 10.0, 30.0]]) + np.arange(SLICES)[:, None] * STEP * normal
    return stack_grid(IOP, [DELTA_ROW, DELTA_COL], positions, rows=ROWS, cols=COLS)


def centres(grid: Grid) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), axis=-1).astype(float)
    return index @ grid.affine[:3, :3].T + grid.affine[:3, 3]


def nearest_label(labels: np.ndarray, label_grid: Grid, points: np.ndarray) -> np.ndarray:
    """Brute force: the label of the label voxel whose centre is nearest each point in mm; 0 off the grid.

    A point is on the grid when it lies within half a voxel of it along every axis.
    """
    label_points = centres(label_grid).reshape(-1, 3)
    flat = labels.reshape(-1)
    inverse = np.linalg.inv(label_grid.affine)
    out = np.zeros(points.shape[:-1], dtype=labels.dtype)
    for idx in np.ndindex(points.shape[:-1]):
        continuous = inverse[:3, :3] @ points[idx] + inverse[:3, 3]
        if np.any(continuous < -0.5) or np.any(continuous > np.array(label_grid.shape) - 0.5):
            continue
        out[idx] = flat[int(np.argmin(np.linalg.norm(label_points - points[idx], axis=1)))]
    return out


def test_pixel_centre_follows_dicom_formula() -> None:
    grid = source_grid()
    r, c, s = 5, 3, 2
    expected = (
        grid.point((0, 0, 0))
        + s * STEP * np.cross(COL_DIR, ROW_DIR)
        + c * DELTA_COL * COL_DIR
        + r * DELTA_ROW * ROW_DIR
    )
    np.testing.assert_allclose(grid.point((s, r, c)), expected, atol=1e-9)
    np.testing.assert_allclose(grid.spacing, [STEP, DELTA_ROW, DELTA_COL], atol=1e-9)


def test_slices_sort_along_normal_not_input_order() -> None:
    normal = np.cross(COL_DIR, ROW_DIR)
    positions = np.array([k * STEP * normal for k in (2, 0, 3, 1)])
    assert slice_order(IOP, positions).tolist() == [1, 3, 0, 2]


def test_duplicate_positions_are_refused() -> None:
    positions = [[0, 0, 0], [0, 0, 2], [0, 0, 2], [0, 0, 4]]
    with pytest.raises(GeometryError, match="occur twice"):
        stack_grid([1, 0, 0, 0, 1, 0], [1, 1], positions, rows=2, cols=2)


def test_uneven_spacing_is_refused() -> None:
    positions = [[0, 0, 0], [0, 0, 2], [0, 0, 5], [0, 0, 6]]
    with pytest.raises(GeometryError, match="uneven"):
        stack_grid([1, 0, 0, 0, 1, 0], [1, 1], positions, rows=2, cols=2)


def test_gantry_tilt_keeps_sheared_step() -> None:
    positions = [[0, 0.0, 0], [0, 0.5, 2], [0, 1.0, 4]]
    grid = stack_grid([1, 0, 0, 0, 1, 0], [1, 1], positions, rows=2, cols=2)
    np.testing.assert_allclose(grid.point((2, 0, 0)), [0, 1.0, 4], atol=1e-12)


def test_nifti_affine_prefers_sform_then_qform_and_refuses_neither() -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((2, 2, 2))
    sform = np.diag([2.0, 2.0, 2.0, 1.0])
    qform = np.diag([3.0, 3.0, 3.0, 1.0])
    header.set_sform(sform, code=1)
    header.set_qform(qform, code=1)
    assert nifti_affine(header)[1] == "sform"
    header.set_sform(sform, code=0)
    affine, which = nifti_affine(header)
    assert which == "qform"
    np.testing.assert_allclose(affine, qform)
    header.set_qform(qform, code=0)
    with pytest.raises(GeometryError, match="neither an sform nor a qform"):
        nifti_affine(header)


def _nifti_variant(source: Grid, ornt: np.ndarray) -> tuple[np.ndarray, Grid, np.ndarray]:
    """Labels on a NIfTI grid that is the source grid reordered by ``ornt``, with a float32 affine."""
    rng = np.random.default_rng(1)
    source_labels = rng.integers(0, 4, size=source.shape).astype(np.uint8)
    ras = LPS_FROM_RAS @ source.affine
    transform = nib.orientations.inv_ornt_aff(ornt, source.shape)
    new_ras = (ras @ transform).astype(np.float32).astype(np.float64)
    labels = nib.orientations.apply_orientation(source_labels, ornt)
    return labels, nifti_grid(new_ras, labels.shape), source_labels


ORIENTATIONS = [
    np.array([[p[0], s[0]], [p[1], s[1]], [p[2], s[2]]], dtype=float)
    for p in itertools.permutations(range(3))
    for s in itertools.product((1, -1), repeat=3)
]


@pytest.mark.parametrize("ornt", ORIENTATIONS, ids=lambda o: "".join(f"{int(a)}{'+' if s > 0 else '-'}" for a, s in o))
def test_every_axis_permutation_and_flip_is_exact(ornt: np.ndarray) -> None:
    source = source_grid()
    labels, label_grid, source_labels = _nifti_variant(source, ornt)
    alignment = plan_alignment(source, label_grid)
    assert alignment.exact, alignment.describe()
    aligned = align_labels(labels, source.shape, alignment)
    # The truth in patient space: each source voxel takes the label whose voxel centre is at the same mm position.
    np.testing.assert_array_equal(aligned, nearest_label(labels, label_grid, centres(source)))
    np.testing.assert_array_equal(aligned, source_labels)


def test_crop_and_pad_are_exact_with_background_outside() -> None:
    source = source_grid()
    rng = np.random.default_rng(2)
    labels = rng.integers(1, 5, size=(3, 9, 4)).astype(np.uint8)
    # Label grid shifted by (+1 slice, -1 row, +2 cols): partly outside the source on every axis.
    shift = np.eye(4)
    shift[:3, 3] = [1, -1, 2]
    label_grid = Grid(source.affine @ shift, labels.shape)
    alignment = plan_alignment(source, label_grid)
    assert alignment.exact
    aligned = align_labels(labels, source.shape, alignment)
    np.testing.assert_array_equal(aligned, nearest_label(labels, label_grid, centres(source)))
    assert alignment.outside_voxels == int(
        np.count_nonzero(nearest_label(np.ones_like(labels), label_grid, centres(source)) == 0)
    )


def test_coarser_shifted_grid_is_resampled_to_nearest_voxel() -> None:
    source = source_grid()
    coarse = np.eye(4)
    coarse[:3, :3] = np.diag([1.0, 2.0, 2.0])
    coarse[:3, 3] = [0.0, 0.5, 0.5]
    label_grid = Grid(source.affine @ coarse, (4, 4, 3))
    labels = np.random.default_rng(3).integers(0, 6, size=label_grid.shape).astype(np.uint8)
    alignment = plan_alignment(source, label_grid)
    assert not alignment.exact
    assert alignment.offset_voxels == pytest.approx(0.25)
    aligned = align_labels(labels, source.shape, alignment)
    # Ties (exactly half-way) do not occur: the shift puts every source centre a quarter voxel from a label centre.
    np.testing.assert_array_equal(aligned, nearest_label(labels, label_grid, centres(source)))


def test_float32_noise_stays_exact() -> None:
    source = source_grid()
    noisy = source.affine.copy()
    noisy[:3, :] += np.random.default_rng(4).normal(scale=2e-6, size=(3, 4))
    assert plan_alignment(source, Grid(noisy, source.shape)).exact


def test_half_voxel_shift_is_not_exact() -> None:
    source = source_grid()
    shifted = source.affine.copy()
    shifted[:3, 3] += 0.5 * source.affine[:3, 2]
    assert not plan_alignment(source, Grid(shifted, source.shape)).exact


def test_grids_that_do_not_overlap_are_refused_naming_both() -> None:
    source = source_grid()
    far = source.affine.copy()
    far[:3, 3] += [500.0, 0, 0]
    with pytest.raises(GeometryError, match=r"does not overlap.*NIfTI 4x7x5 voxels.*series 4x7x5 voxels"):
        plan_alignment(source, Grid(far, source.shape))


def test_rotated_finer_grid_is_refused_as_lossy() -> None:
    source = source_grid()
    angle = np.radians(30)
    rotation = np.eye(4)
    rotation[:3, :3] = [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    finer = source.affine.copy()
    finer[:3, :3] = rotation[:3, :3] @ source.affine[:3, :3] * 0.5
    with pytest.raises(GeometryError, match=r"rotated (29\.9|30\.0)°"):
        plan_alignment(source, Grid(finer, (8, 14, 10)))


def test_label_stats_centroid_in_mm_and_within_grid() -> None:
    grid = source_grid()
    labels = np.zeros(grid.shape, dtype=np.uint8)
    labels[1, 2, 3] = 1
    labels[2, 4, 3] = 1
    labels[0, 0, 0] = 2
    stats = label_stats(labels, grid)
    assert stats[1].count == 2
    np.testing.assert_allclose(stats[1].centroid, (grid.point((1, 2, 3)) + grid.point((2, 4, 3))) / 2, atol=1e-9)
    # Within a grid that starts at slice 2, only the second voxel of label 1 counts and label 2 vanishes.
    shift = np.eye(4)
    shift[0, 3] = 2
    within = Grid(grid.affine @ shift, (2, ROWS, COLS))
    inside = label_stats(labels, grid, [1, 2], within=within)
    assert inside[1].count == 1
    np.testing.assert_allclose(inside[1].centroid, grid.point((2, 4, 3)), atol=1e-9)
    assert inside[2].count == 0


# -- unevenly spaced planes ------------------------------------------------------------------------------------------


def uneven_positions(distances: list[float], shear: float = 0.0) -> np.ndarray:
    """Plane positions at ``distances`` (mm) along the normal, each shifted by ``shear`` mm per mm along a row."""
    normal = np.cross(COL_DIR, ROW_DIR)
    return np.array([[-20.0, 10.0, 30.0] + d * normal + shear * d * ROW_DIR for d in distances])


@pytest.mark.parametrize("shear", [0.0, 0.3])
def test_even_grid_covers_uneven_planes_with_a_slice_near_each(shear: float) -> None:
    positions = uneven_positions([0.0, 2.0, 3.0, 7.5, 9.0], shear)
    grid = even_stack_grid(IOP, [DELTA_ROW, DELTA_COL], positions, rows=ROWS, cols=COLS)
    slices = np.array([grid.point((k, 0, 0)) for k in range(grid.shape[0])])
    np.testing.assert_allclose(slices[0], positions[0], atol=1e-9)
    np.testing.assert_allclose(slices[-1], positions[-1], atol=1e-9)
    step = float(np.linalg.norm(slices[1] - slices[0]))
    assert abs((slices[1] - slices[0]) @ np.cross(COL_DIR, ROW_DIR)) <= 1.0 + 1e-9  # at most the smallest gap
    for position in positions:
        assert np.linalg.norm(slices - position, axis=1).min() <= step / 2 + 1e-9
    # In-plane axes are the planes' own: pixel (r, c) of every slice is r·Δrow·row_dir + c·Δcol·col_dir away.
    np.testing.assert_allclose(
        grid.point((0, 2, 3)) - grid.point((0, 0, 0)), 2 * DELTA_ROW * ROW_DIR + 3 * DELTA_COL * COL_DIR, atol=1e-9
    )


def test_even_grid_refuses_planes_off_one_line() -> None:
    positions = uneven_positions([0.0, 2.0, 3.0])
    positions[1] += 3 * COL_DIR
    with pytest.raises(GeometryError, match="not on one straight line"):
        even_stack_grid(IOP, [DELTA_ROW, DELTA_COL], positions, rows=ROWS, cols=COLS)


def test_align_planes_samples_each_plane_at_its_own_position() -> None:
    positions = uneven_positions([0.0, 2.5, 3.5, 9.0])
    label = Grid(np.diag([1.0, 1.1, 1.2, 1.0]), (50, 40, 45))
    label = Grid(
        label.affine + np.array([[0, 0, 0, -25.0], [0, 0, 0, -10.0], [0, 0, 0, 15.0], [0, 0, 0, 0]]), label.shape
    )
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=label.shape).astype(np.uint8)
    planes = []
    normal = np.cross(COL_DIR, ROW_DIR)
    for position in positions:
        affine = stack_grid(IOP, [DELTA_ROW, DELTA_COL], [position], rows=ROWS, cols=COLS).affine
        affine[:3, 0] = normal
        planes.append(Grid(affine, (1, ROWS, COLS)))
    aligned, alignment = align_planes(labels, label, planes)
    assert alignment.per_plane and not alignment.exact
    expected = np.concatenate([nearest_label(labels, label, centres(p)) for p in planes])
    np.testing.assert_array_equal(aligned, expected)


def test_align_planes_refuses_when_no_plane_overlaps() -> None:
    plane = stack_grid(IOP, [DELTA_ROW, DELTA_COL], [[500.0, 500.0, 500.0]], rows=ROWS, cols=COLS)
    with pytest.raises(NoOverlapError, match="does not overlap any"):
        align_planes(np.ones((4, 4, 4), np.uint8), Grid(np.eye(4), (4, 4, 4)), [plane])


def test_a_single_plane_covers_its_thickness() -> None:
    grid = stack_grid(IOP, [DELTA_ROW, DELTA_COL], [[1.0, 2.0, 3.0]], rows=ROWS, cols=COLS, thickness=5.0)
    assert grid.voxel_volume == pytest.approx(DELTA_ROW * DELTA_COL * 5.0)
