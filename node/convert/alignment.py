"""Putting a label grid on a source grid: exact reorientation (transposes and flips) or nearest-neighbour
resampling, and what the labels hold in patient space.

Pure: arrays and :class:`~node.convert.geometry.Grid` in, arrays out. :func:`plan_alignment` decides how, and
refuses what would lose detail; :func:`align_labels` (a regular stack) or :func:`align_planes` (unevenly spaced
planes) does it; :func:`label_stats` measures voxels and centroids, the yardstick of verification.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from node.convert.geometry import GRID_TOLERANCE_VOXELS, FloatArray, Grid
from node.errors import GeometryError


class NoOverlapError(GeometryError):
    """A label grid and a source grid have no voxel in common."""


@dataclass(frozen=True)
class Alignment:
    """How a label grid maps onto a source grid.

    ``transform`` maps source indices ``[slice, row, col, 1]`` to label indices. ``exact`` means every source voxel
    centre lies on a label voxel centre (within :data:`GRID_TOLERANCE_VOXELS`) and the axes are a signed
    permutation: the label array can be reordered with transposes and flips, no interpolation.
    """

    transform: FloatArray
    exact: bool
    #: Largest distance (in label voxels) of a mapped source voxel centre from the nearest label voxel centre.
    offset_voxels: float
    #: Number of source voxels that fall outside the label grid (filled with background).
    outside_voxels: int
    #: Each source plane was placed on its own (unevenly spaced planes); ``transform`` is then that of the first.
    per_plane: bool = False

    def describe(self) -> str:
        kind = "exact (permutation and flips)" if self.exact else "resampled (nearest neighbour)"
        if self.per_plane:
            kind = "resampled plane by plane (nearest neighbour; uneven slice spacing)"
        return (
            f"{kind}, grids off by up to {self.offset_voxels:.3g} label voxels,"
            f" {self.outside_voxels} source voxels outside the label grid"
        )


def _signed_permutation(matrix: FloatArray, tolerance: float) -> FloatArray | None:
    """The signed permutation ``matrix`` is close to, or None."""
    rounded = np.round(matrix)
    if np.abs(matrix - rounded).max() > tolerance:
        return None
    if not (np.all(np.abs(rounded).sum(axis=0) == 1) and np.all(np.abs(rounded).sum(axis=1) == 1)):
        return None
    return rounded


def _axis_angle_to_permutation(source: Grid, label: Grid) -> float:
    """Largest angle (degrees) between a label axis and the nearest source axis direction."""
    src = source.affine[:3, :3] / source.spacing
    lab = label.affine[:3, :3] / label.spacing
    cosines = np.abs(lab.T @ src).max(axis=1)
    return float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))


def plan_alignment(source: Grid, label: Grid, *, tolerance: float = GRID_TOLERANCE_VOXELS) -> Alignment:
    """Work out how ``label`` maps onto ``source``; refuse when they do not overlap or a resample would lose detail.

    >>> src = Grid(np.diag([2.0, 1.0, 1.0, 1.0]), (3, 4, 5))
    >>> plan_alignment(src, src).exact
    True
    >>> flipped = Grid(src.affine @ np.array([[-1, 0, 0, 2], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), (3, 4, 5))
    >>> plan_alignment(src, flipped).transform[:3].round(6).tolist()
    [[-1.0, 0.0, 0.0, 2.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    """
    transform = np.linalg.inv(label.affine) @ source.affine
    corners = source.corners() @ transform[:3, :3].T + transform[:3, 3]
    # A linear map reaches its extremes at the corners, so the corners bound every mapped voxel centre.
    offset = float(np.abs(corners - np.round(corners)).max())
    low, high = corners.min(axis=0), corners.max(axis=0)
    limits = np.asarray(label.shape, dtype=np.float64) - 0.5
    if np.any(high < -0.5) or np.any(low > limits):
        raise NoOverlapError(
            f"the NIfTI grid does not overlap the series (NIfTI {label.describe()};"
            f" series {source.describe()}): it belongs to another series or study"
        )
    permutation = _signed_permutation(transform[:3, :3], tolerance / max(source.shape))
    exact = permutation is not None and offset <= tolerance
    if not exact:
        angle = _axis_angle_to_permutation(source, label)
        # A single plane has no depth of its own to compare (its slab is a bookkeeping choice): it samples at the
        # label's finest spacing, so only a label finer in the plane counts as losing detail.
        source_volume = (
            source.voxel_volume
            if source.shape[0] > 1
            else source.voxel_volume / source.spacing[0] * float(label.spacing.min())
        )
        if angle > 1.0 and label.voxel_volume < 0.5 * source_volume:
            raise GeometryError(
                f"the NIfTI grid is rotated {angle:.1f}° against the series and finer than it, so a resample would"
                f" lose detail (NIfTI {label.describe()}; series {source.describe()}); export the label map on the"
                " series grid"
            )
    if exact and permutation is not None:
        transform = transform.copy()
        transform[:3, :3] = permutation
        transform[:3, 3] = np.round(transform[:3, 3])
        ranges = _exact_ranges(source.shape, transform, label.shape)
        outside = int(np.prod(source.shape)) - int(np.prod([len(r[0]) for r in ranges]))
    else:
        outside = _count_outside(source, transform, label.shape)
    return Alignment(transform=transform, exact=exact, offset_voxels=offset, outside_voxels=outside)


def _count_outside(source: Grid, transform: FloatArray, label_shape: Sequence[int]) -> int:
    inside = 0
    for mapped in _mapped_slices(source.shape, transform):
        inside += int(_inside_mask(mapped, label_shape).sum())
    return int(np.prod(source.shape)) - inside


def _mapped_slices(shape: Sequence[int], transform: FloatArray) -> Any:
    """Yield, per source slice, rounded label indices of every source voxel centre: arrays (rows, cols, 3)."""
    rows, cols = shape[1], shape[2]
    r, c = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    in_plane = r[..., None] * transform[:3, 1] + c[..., None] * transform[:3, 2]
    for s in range(shape[0]):
        yield np.rint(in_plane + (s * transform[:3, 0] + transform[:3, 3])).astype(np.intp)


def _inside_mask(indices: npt.NDArray[np.intp], shape: Sequence[int]) -> npt.NDArray[np.bool_]:
    upper = np.asarray(shape[:3], dtype=np.intp)
    inside: npt.NDArray[np.bool_] = np.all((indices >= 0) & (indices < upper), axis=-1)
    return inside


def align_labels(labels: npt.NDArray[Any], source_shape: Sequence[int], alignment: Alignment) -> npt.NDArray[Any]:
    """Put a label array onto the source grid: result has ``source_shape`` (slice, row, col), outside → 0.

    Exact alignments reorder with transposes and flips (a view where possible, then one copy); others sample the
    nearest label voxel of each source voxel centre, one slice at a time to bound memory.

    >>> labels = np.arange(8).reshape(2, 2, 2)
    >>> swap = Alignment(np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1.0]]), True, 0.0, 0)
    >>> align_labels(labels, (2, 2, 2), swap)[0, 1].tolist() == [labels[1, 0, 1], labels[1, 0, 0]]
    True
    """
    shape = tuple(int(n) for n in source_shape)
    if alignment.exact:
        return _reorder_exact(labels, shape, alignment.transform)
    out = np.zeros(shape, dtype=labels.dtype)
    for s, mapped in enumerate(_mapped_slices(shape, alignment.transform)):
        inside = _inside_mask(mapped, labels.shape)
        picked = mapped[inside]
        out[s][inside] = labels[picked[:, 0], picked[:, 1], picked[:, 2]]
    return out


def align_planes(labels: npt.NDArray[Any], label: Grid, planes: Sequence[Grid]) -> tuple[npt.NDArray[Any], Alignment]:
    """Put a label array onto planes that are not one regular grid (uneven spacing), each from its own position.

    ``planes`` are single-plane grids; the result is (plane, row, col). Planes outside the label grid stay 0.

    Raises
    ------
    NoOverlapError
        When no plane overlaps the label grid.
    """
    rows, cols = planes[0].shape[1:]
    out = np.zeros((len(planes), rows, cols), dtype=labels.dtype)
    offset, outside, first = 0.0, 0, None
    for s, plane in enumerate(planes):
        try:
            alignment = plan_alignment(plane, label)
        except NoOverlapError:
            outside += rows * cols
            continue
        out[s] = align_labels(labels, plane.shape, alignment)[0]
        offset, outside = max(offset, alignment.offset_voxels), outside + alignment.outside_voxels
        first = first if first is not None else alignment.transform
    if first is None:
        raise NoOverlapError(
            f"the NIfTI grid does not overlap any of the series' {len(planes)} planes"
            f" (NIfTI {label.describe()}; first plane {planes[0].describe()})"
        )
    return out, Alignment(transform=first, exact=False, offset_voxels=offset, outside_voxels=outside, per_plane=True)


def _exact_ranges(
    shape: Sequence[int], transform: FloatArray, label_shape: Sequence[int]
) -> list[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], int]]:
    """Per source axis: source indices inside the label grid, the label indices they take, and the label axis."""
    ranges = []
    for d in range(3):
        axis = int(np.argmax(np.abs(transform[:3, d])))
        along = int(transform[axis, 3]) + int(transform[axis, d]) * np.arange(shape[d])
        valid = np.flatnonzero((along >= 0) & (along < label_shape[axis]))
        ranges.append((valid, along[valid], axis))
    return ranges


def label_box(
    alignment: Alignment, source_shape: Sequence[int], label_shape: Sequence[int]
) -> tuple[slice, slice, slice] | None:
    """For an exact alignment, the block of the label array that lies on the source grid (None if nothing does)."""
    ranges = _exact_ranges(source_shape, alignment.transform, label_shape)
    box = [slice(0, 0)] * 3
    for _, label_indices, axis in ranges:
        if label_indices.size == 0:
            return None
        box[axis] = slice(int(label_indices.min()), int(label_indices.max()) + 1)
    return box[0], box[1], box[2]


def _reorder_exact(labels: npt.NDArray[Any], shape: tuple[int, ...], transform: FloatArray) -> npt.NDArray[Any]:
    ranges = _exact_ranges(shape, transform, labels.shape)
    if any(valid.size == 0 for valid, _, _ in ranges):
        return np.zeros(shape, dtype=labels.dtype)
    view = np.transpose(labels, [axis for _, _, axis in ranges])
    index: list[slice] = []
    for d, (_, label_indices, _) in enumerate(ranges):
        first, last = int(label_indices[0]), int(label_indices[-1])
        step = int(transform[ranges[d][2], d])
        stop = last + step if last + step >= 0 else None
        index.append(slice(first, stop, step))
    block = view[tuple(index)]
    if block.shape == shape:
        return np.ascontiguousarray(block)
    out = np.zeros(shape, dtype=labels.dtype)
    out[tuple(slice(int(v[0]), int(v[-1]) + 1) for v, _, _ in ranges)] = block
    return out


@dataclass(frozen=True)
class SegmentStats:
    """Voxel count and centroid (LPS mm) of one label, for self-verification."""

    count: int
    centroid: FloatArray


def label_stats(
    labels: npt.NDArray[Any], grid: Grid, values: Sequence[int] | None = None, *, within: Grid | None = None
) -> dict[int, SegmentStats]:
    """Count and centroid in mm of each non-zero label value.

    With ``within``, voxels whose centre falls outside that grid (nearest voxel rule) are left out, so the input's
    statistics cover what a SEG on ``within`` can hold. The array is walked along its outermost axis in memory
    order and only labelled voxels are weighed, so a NIfTI's Fortran-ordered data is not copied.

    >>> stats = label_stats(np.array([[[0, 1], [1, 2]]]), Grid(np.diag([1.0, 2.0, 3.0, 1.0]), (1, 2, 2)))
    >>> stats[1].count, stats[1].centroid.tolist()
    (2, [0.0, 1.0, 1.5])
    """
    if values is None:
        values = [int(v) for v in np.unique(labels) if v != 0]
    order = [int(a) for a in np.argsort([-abs(s) for s in labels.strides], kind="stable")]
    view = np.transpose(labels, order)
    affine = grid.affine.copy()
    affine[:, :3] = grid.affine[:, order]
    walked = Grid(affine, view.shape)
    size = int(max(values, default=0)) + 1
    counts = np.zeros(size, dtype=np.int64)
    sums = np.zeros((size, 3), dtype=np.float64)
    mapped_slices = None
    if within is not None:
        mapped_slices = _mapped_slices(view.shape, np.linalg.inv(within.affine) @ walked.affine)
    cols = view.shape[2]
    for s in range(view.shape[0]):
        plane = np.asarray(view[s])
        inside = next(mapped_slices) if mapped_slices is not None else None
        flat = plane.ravel()
        where = np.flatnonzero((flat > 0) & (flat < size))
        if inside is not None:
            where = where[_inside_mask(inside, within.shape).ravel()[where]]  # type: ignore[union-attr]
        if where.size == 0:
            continue
        picked = flat[where].astype(np.intp)
        rows_of, cols_of = np.divmod(where, cols)
        per_label = np.bincount(picked, minlength=size)
        counts += per_label
        sums[:, 0] += per_label * s
        sums[:, 1] += np.bincount(picked, weights=rows_of, minlength=size)
        sums[:, 2] += np.bincount(picked, weights=cols_of, minlength=size)
    result: dict[int, SegmentStats] = {}
    for value in values:
        n = int(counts[value])
        mean_index = sums[value] / n if n else np.full(3, np.nan)
        result[int(value)] = SegmentStats(n, walked.point(mean_index))
    return result
