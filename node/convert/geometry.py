"""Pure geometry of DICOM stacks and NIfTI grids: affines, LPS/RAS, the regular grid of a stack.

Putting one grid's labels on another (exact reorientation, resampling) is :mod:`node.convert.alignment`.

No I/O here: arrays and headers in, arrays out.

Conventions
-----------
* Patient space is DICOM LPS, in mm. NIfTI affines (RAS) are converted on entry with :data:`LPS_FROM_RAS`.
* A DICOM stack is indexed ``(slice, row, col)``, the order of ``pixel_array`` frames in highdicom.
  Its affine maps ``[slice, row, col, 1]`` to LPS.
* A NIfTI grid is indexed ``(i, j, k)`` as stored; its affine maps ``[i, j, k, 1]`` to LPS (after conversion).

Examples
--------
An axial stack of two 2×3 slices, 0.5 mm rows, 0.8 mm columns, 2 mm apart:

>>> grid = stack_grid([1, 0, 0, 0, 1, 0], [0.5, 0.8], [[0, 0, 0], [0, 0, 2]], rows=2, cols=3)
>>> grid.shape
(2, 2, 3)
>>> grid.point((1, 1, 2)).tolist()  # slice 1, row 1, column 2
[1.6, 0.5, 2.0]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from node.errors import GeometryError

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Converts a RAS point or affine to LPS (and back: it is its own inverse).
LPS_FROM_RAS: FloatArray = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Direction cosines of slices in one stack may differ by this much (DICOM writers round differently).
ORIENTATION_TOLERANCE = 1e-4
#: NIfTI headers are float32: grids whose voxel centres coincide within this fraction of a voxel are the same.
GRID_TOLERANCE_VOXELS = 1e-3
#: Relative deviation of a slice from its place on an evenly spaced stack before the spacing counts as uneven.
SPACING_TOLERANCE = 1e-2


class UnevenSpacingError(GeometryError):
    """The slices of a stack are not evenly spaced along their line: no single affine describes them."""


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid in patient space: ``affine @ [i, j, k, 1]`` is the voxel centre in LPS mm."""

    affine: FloatArray
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise GeometryError(f"affine must be a finite 4x4 matrix, got {affine.shape}")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise GeometryError("affine is singular: the grid has a zero-length or degenerate axis")
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise GeometryError(f"grid shape must be three positive sizes, got {self.shape}")
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))

    @property
    def spacing(self) -> FloatArray:
        """Distance in mm between neighbouring voxel centres along each index axis."""
        return np.asarray(np.linalg.norm(self.affine[:3, :3], axis=0), dtype=np.float64)

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm³."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def point(self, index: npt.ArrayLike) -> FloatArray:
        """LPS position (mm) of a (possibly fractional) index."""
        return self.affine[:3, :3] @ np.asarray(index, dtype=np.float64) + self.affine[:3, 3]

    def corners(self) -> FloatArray:
        """The 8 corner voxel centres in index space, shape (8, 3)."""
        limits = [(0, n - 1) for n in self.shape]
        return np.array([[a, b, c] for a in limits[0] for b in limits[1] for c in limits[2]], dtype=np.float64)

    def extent(self) -> FloatArray:
        """Bounding box of the grid's outer voxel faces in LPS: shape (3, 2), rows x/y/z, columns min/max."""
        faces = np.array(
            [
                [a, b, c]
                for a in (-0.5, self.shape[0] - 0.5)
                for b in (-0.5, self.shape[1] - 0.5)
                for c in (-0.5, self.shape[2] - 0.5)
            ]
        )
        points = faces @ self.affine[:3, :3].T + self.affine[:3, 3]
        return np.stack([points.min(axis=0), points.max(axis=0)], axis=1)

    def describe(self) -> str:
        """One-line description for error messages: size, spacing and extent in LPS.

        >>> Grid(np.diag([2.0, 1.0, 1.0, 1.0]), (3, 4, 5)).describe()
        '3x4x5 voxels of 2x1x1 mm, LPS x -1…5 y -0.5…3.5 z -0.5…4.5 mm'
        """
        spacing = "x".join(f"{s:.3g}" for s in self.spacing)
        ext = self.extent()
        axes = " ".join(f"{name} {lo:.4g}…{hi:.4g}" for name, (lo, hi) in zip("xyz", ext, strict=True))
        return f"{'x'.join(str(n) for n in self.shape)} voxels of {spacing} mm, LPS {axes} mm"


def normal_of(orientation: npt.ArrayLike) -> FloatArray:
    """Slice normal (column direction × row direction) of an ImageOrientationPatient value.

    >>> normal_of([1, 0, 0, 0, 1, 0]).tolist()
    [0.0, 0.0, 1.0]
    """
    iop = np.asarray(orientation, dtype=np.float64)
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        raise GeometryError(f"ImageOrientationPatient must be six finite numbers, got {iop.tolist()}")
    col_dir, row_dir = iop[:3], iop[3:]
    if abs(np.linalg.norm(col_dir) - 1) > 1e-2 or abs(np.linalg.norm(row_dir) - 1) > 1e-2:
        raise GeometryError(f"ImageOrientationPatient vectors are not unit length: {iop.tolist()}")
    if abs(col_dir @ row_dir) > 1e-2:
        raise GeometryError(f"ImageOrientationPatient vectors are not orthogonal: {iop.tolist()}")
    normal = np.cross(col_dir, row_dir)
    return np.asarray(normal / np.linalg.norm(normal), dtype=np.float64)


def slice_order(orientation: npt.ArrayLike, positions: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Order of slices along the normal (never InstanceNumber or file names): indices that sort ``positions``.

    >>> slice_order([1, 0, 0, 0, 1, 0], [[0, 0, 5], [0, 0, -5], [0, 0, 0]]).tolist()
    [1, 2, 0]
    """
    distances = np.asarray(positions, dtype=np.float64) @ normal_of(orientation)
    return np.argsort(distances, kind="stable")


def check_orientations(orientations: Sequence[npt.ArrayLike]) -> FloatArray:
    """Return the stack's one orientation, or raise when slices disagree (a mixed or localiser series)."""
    stacked = np.asarray(orientations, dtype=np.float64)
    first: FloatArray = stacked[0]
    deviation = np.abs(stacked - first).max(axis=1)
    worst = int(np.argmax(deviation))
    if deviation[worst] > ORIENTATION_TOLERANCE:
        raise GeometryError(
            f"slices have different orientations ({first.round(4).tolist()} vs {stacked[worst].round(4).tolist()}):"
            " the series mixes stacks (localiser or several planes); split it or send one plane"
        )
    return first


def stack_grid(
    orientation: npt.ArrayLike,
    pixel_spacing: npt.ArrayLike,
    positions: npt.ArrayLike,
    *,
    rows: int,
    cols: int,
    thickness: float | None = None,
) -> Grid:
    """Grid of a stack of equally oriented slices whose positions are already sorted along the normal.

    ``pixel_spacing`` is DICOM PixelSpacing: ``[spacing between rows, spacing between columns]``. The slice step is
    the actual step from first to last position divided by N−1 (not SliceThickness); a step that is not parallel to
    the normal (gantry tilt) is kept as it is, so the grid is sheared exactly as the pixels are.

    A single slice has no step: it covers ``thickness`` (its SliceThickness; 1 mm when unknown) along the normal.

    Raises
    ------
    GeometryError
        On duplicate positions (several phases or echoes).
    UnevenSpacingError
        On uneven spacing or slices off a straight line.

    A sagittal stack (normal towards the patient's right, −x):

    >>> stack_grid([0, 1, 0, 0, 0, -1], [2.0, 1.0], [[0, 0, 0], [-3, 0, 0]], rows=4, cols=5).point((1, 1, 1)).tolist()
    [-3.0, 1.0, -2.0]
    """
    iop = np.asarray(orientation, dtype=np.float64)
    normal = normal_of(iop)
    spacing = np.asarray(pixel_spacing, dtype=np.float64).ravel()
    if spacing.shape != (2,) or not np.all(spacing > 0):
        raise GeometryError(f"PixelSpacing must be two positive numbers, got {spacing.tolist()}")
    delta_row, delta_col = float(spacing[0]), float(spacing[1])
    ipp = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    n = len(ipp)
    if n > 1:
        step = (ipp[-1] - ipp[0]) / (n - 1)
        distances = ipp @ normal
        gaps = np.diff(distances)
        if np.any(gaps < -1e-3):
            raise ValueError("positions must be sorted along the slice normal (see slice_order)")
        if np.any(gaps < 1e-3):
            at = int(np.argmin(gaps))
            raise GeometryError(
                f"{int(np.count_nonzero(gaps < 1e-3))} slice position(s) occur twice (e.g. at {distances[at]:.2f} mm"
                " along the normal): the series holds several phases, echoes or stacks; split it"
            )
        expected = ipp[0] + np.arange(n)[:, None] * step
        off_line = np.linalg.norm(ipp - expected, axis=1).max()
        if off_line > SPACING_TOLERANCE * np.linalg.norm(step):
            raise UnevenSpacingError(f"slice spacing is uneven (gaps from {gaps.min():.3f} to {gaps.max():.3f} mm)")
        tilt = np.degrees(np.arccos(min(1.0, abs(step @ normal) / np.linalg.norm(step))))
        if tilt > 0.01:
            log.info("slice step is %.2f° off the slice normal (gantry tilt): the grid is sheared", tilt)
    else:
        step = normal * (thickness if thickness is not None and thickness > 0 else 1.0)
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = iop[3:] * delta_row
    affine[:3, 2] = iop[:3] * delta_col
    affine[:3, 3] = ipp[0]
    return Grid(affine, (n, rows, cols))


#: An evenly resampled stack has at most this many times the slices of the stack it stands for.
MAX_RESAMPLE_FACTOR = 4


def even_stack_grid(
    orientation: npt.ArrayLike, pixel_spacing: npt.ArrayLike, positions: npt.ArrayLike, *, rows: int, cols: int
) -> Grid:
    """An evenly spaced grid over unevenly spaced slices (sorted along the normal) that lie on one straight line.

    Its step is the smallest gap between slices (capped at :data:`MAX_RESAMPLE_FACTOR` times the slice count), so
    every slice has a grid slice within half a step; like dcm2niix's ``_Eq_`` output it lets a tool segment a
    regular volume whose labels map back onto the real slices.

    >>> grid = even_stack_grid([1, 0, 0, 0, 1, 0], [1, 1], [[0, 0, 0], [0, 0, 2], [0, 0, 6]], rows=2, cols=2)
    >>> grid.shape, grid.point((3, 0, 0)).tolist()
    ((4, 2, 2), [0.0, 0.0, 6.0])

    Raises
    ------
    GeometryError
        When the slices are not on one line (their in-plane offsets differ irregularly).
    """
    iop = np.asarray(orientation, dtype=np.float64)
    ipp = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    span = ipp[-1] - ipp[0]
    length = float(np.linalg.norm(span))
    if len(ipp) < 2 or length < 1e-3:
        raise GeometryError("an evenly resampled grid needs at least two distinct slice positions")
    direction = span / length
    along = (ipp - ipp[0]) @ direction
    off_line = float(np.linalg.norm(ipp - ipp[0] - along[:, None] * direction, axis=1).max())
    smallest_pixel = float(np.min(np.asarray(pixel_spacing, dtype=np.float64)))
    if off_line > 0.1 * smallest_pixel:
        raise GeometryError(
            f"slices are not on one straight line (up to {off_line:.3g} mm off it): they cannot be"
            " resampled onto one regular grid"
        )
    smallest_gap = float(np.diff(along).min())
    count = min(round(length / smallest_gap) + 1, MAX_RESAMPLE_FACTOR * len(ipp))
    grid = stack_grid(iop, pixel_spacing, [ipp[0], ipp[0] + span], rows=rows, cols=cols)
    affine = grid.affine.copy()
    affine[:3, 0] = span / (count - 1)
    return Grid(affine, (count, rows, cols))


def nifti_affine(header: Any) -> tuple[FloatArray, str]:
    """Choose a NIfTI header's affine (RAS) the way the standard says: sform if coded, else qform, else refuse.

    Returns the affine and which one it was ("sform" or "qform"). Warns when both are set and disagree.
    """
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    if sform is not None and int(sform_code) > 0:
        if qform is not None and int(qform_code) > 0:
            disagreement = float(np.abs(np.asarray(sform) - np.asarray(qform)).max())
            if disagreement > 1e-3:
                # Info, not a warning: dcm2niix writes such pairs for every tilted CT (a qform cannot shear).
                log.info(
                    "sform and qform disagree by up to %.3g mm; using the sform as the standard says", disagreement
                )
        return np.asarray(sform, dtype=np.float64), "sform"
    if qform is not None and int(qform_code) > 0:
        return np.asarray(qform, dtype=np.float64), "qform"
    raise GeometryError(
        "NIfTI has neither an sform nor a qform (both codes 0): its position in the patient is"
        " unknown; write it with the image's header"
    )


def nifti_grid(affine_ras: npt.ArrayLike, shape: Sequence[int]) -> Grid:
    """The grid of a NIfTI array (first three axes) in LPS, from its RAS affine.

    >>> nifti_grid(np.eye(4), (2, 2, 2)).point((1, 1, 1)).tolist()
    [-1.0, -1.0, 1.0]
    """
    return Grid(LPS_FROM_RAS @ np.asarray(affine_ras, dtype=np.float64), tuple(int(n) for n in shape[:3]))  # type: ignore[arg-type]
