"""What each panel of a QC picture shows: a rectangle in patient space and its edge letters.

A :class:`View` is a plane in LPS mm with two unit vectors, the directions in which the panel's pixels run to the
right and down. Sampling a view on the source planes (:func:`sample_indices`, :class:`PlaneStack`) is nearest
neighbour, so every panel pixel is one source pixel, and the letters on its edges (:func:`orientation_letters`)
are computed from the same two vectors: a panel can never be labelled one way and drawn another.

>>> view = View("axial", np.zeros(3), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), 1.0, 3, 3)
>>> view.edge_letters()
{'left': 'R', 'right': 'L', 'top': 'A', 'bottom': 'P'}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from node.convert.geometry import FloatArray, Grid, normal_of
from node.convert.series import SourceSeries

IntArray = npt.NDArray[np.int64]

#: The letter for the positive direction of each LPS axis, then for the negative one.
_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))
#: An axis contributes its letter when the direction has at least this component along it (about 17° off it).
LETTER_COMPONENT = 0.3


def orientation_letters(direction: npt.ArrayLike) -> str:
    """Where a direction in patient space (LPS) points, as the letters viewers print on image edges.

    The dominant axis comes first; a second or third one is added when the direction leans towards it by at
    least :data:`LETTER_COMPONENT` (an oblique plane's edge reads e.g. "LA").

    >>> orientation_letters([1, 0, 0]), orientation_letters([0, 0, -1]), orientation_letters([0.8, -0.6, 0])
    ('L', 'I', 'LA')
    """
    vector = np.asarray(direction, dtype=np.float64)
    length = float(np.linalg.norm(vector))
    if vector.shape != (3,) or length == 0 or not np.isfinite(length):
        raise ValueError(f"a direction needs three finite numbers, not all zero; got {vector.tolist()}")
    unit = vector / length
    order = np.argsort(-np.abs(unit), kind="stable")
    letters = [
        _LETTERS[axis][0 if unit[axis] > 0 else 1]
        for rank, axis in enumerate(order)
        if rank == 0 or abs(unit[axis]) >= LETTER_COMPONENT
    ]
    return "".join(letters)


@dataclass(frozen=True)
class View:
    """A panel's plane: pixel (x, y) shows the patient at ``centre + (x - (width-1)/2)·pixel_mm·right
    + (y - (height-1)/2)·pixel_mm·down`` (LPS mm)."""

    title: str
    centre: FloatArray
    right: FloatArray
    down: FloatArray
    pixel_mm: float
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("centre", "right", "down"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        if abs(float(self.right @ self.down)) > 1e-6 or min(self.width, self.height) < 1 or self.pixel_mm <= 0:
            raise ValueError(f"view {self.title!r}: axes must be orthogonal, size and pixel size positive")

    @property
    def normal(self) -> FloatArray:
        return np.asarray(np.cross(self.right, self.down), dtype=np.float64)

    def points(self) -> FloatArray:
        """(height, width, 3) LPS centres of the panel's pixels."""
        x = (np.arange(self.width) - (self.width - 1) / 2) * self.pixel_mm
        y = (np.arange(self.height) - (self.height - 1) / 2) * self.pixel_mm
        return np.asarray(self.centre + x[None, :, None] * self.right + y[:, None, None] * self.down, dtype=np.float64)

    def pixel_of(self, point: npt.ArrayLike) -> tuple[float, float]:
        """(x, y) panel coordinates of an LPS point projected onto the view."""
        offset = np.asarray(point, dtype=np.float64) - self.centre
        return (
            float(offset @ self.right) / self.pixel_mm + (self.width - 1) / 2,
            float(offset @ self.down) / self.pixel_mm + (self.height - 1) / 2,
        )

    def edge_letters(self) -> dict[str, str]:
        """The letters for each edge: where the panel's right and down directions point, and their opposites."""
        return {
            "left": orientation_letters(-self.right),
            "right": orientation_letters(self.right),
            "top": orientation_letters(-self.down),
            "bottom": orientation_letters(self.down),
        }


def _unit(vector: FloatArray) -> FloatArray:
    return np.asarray(vector / np.linalg.norm(vector), dtype=np.float64)


def _scaled(view: View, box_px: int) -> View:
    """``view`` with pixel size and pixel count chosen so that its longer side fills ``box_px``."""
    width_mm, height_mm = view.width * view.pixel_mm, view.height * view.pixel_mm
    pixel_mm = max(width_mm, height_mm) / box_px
    width, height = max(1, round(width_mm / pixel_mm)), max(1, round(height_mm / pixel_mm))
    return View(view.title, view.centre, view.right, view.down, pixel_mm, width, height)


#: Radiological convention for the resliced planes: (title, right, down) in LPS. The patient's right is on the
#: viewer's left in axial and coronal panels, anterior on the left in the sagittal one, head up.
ORTHOGONAL = (
    ("axial", (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    ("coronal", (1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    ("sagittal", (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
)


def orthogonal_views(grid: Grid, through: npt.ArrayLike, box_px: int) -> list[View]:
    """Axial, coronal and sagittal planes through the point ``through`` (LPS mm), each covering the grid's
    extent on one common scale, so the three panels can be compared by eye."""
    extent = grid.extent()
    middle = extent.mean(axis=1)
    sizes = extent[:, 1] - extent[:, 0]
    point = np.asarray(through, dtype=np.float64)
    pixel_mm = float(sizes.max()) / box_px
    views = []
    for title, right, down in ORTHOGONAL:
        r, d = np.asarray(right), np.asarray(down)
        normal = np.cross(r, d)
        # In-plane, the panel is centred on the grid; along its normal it passes through the point.
        centre = middle + float((point - middle) @ normal) * normal
        width = max(1, round(float(np.abs(r) @ sizes) / pixel_mm))
        height = max(1, round(float(np.abs(d) @ sizes) / pixel_mm))
        views.append(View(title, centre, r, d, pixel_mm, width, height))
    return views


@dataclass(frozen=True, eq=False)
class PlaneStack:
    """The source planes as acquired, each placed by its own position: what a panel pixel can show.

    A point belongs to the plane nearest to it along the normal (beyond the end planes: within half their slab),
    and to the pixel whose centre is nearest within the plane. For an evenly spaced stack
    this is nearest-neighbour sampling of its grid; for unevenly spaced planes it is what each plane (and the
    SEG frame on it) stands for, with no resampled slices in between.
    """

    positions: FloatArray
    col_dir: FloatArray
    row_dir: FloatArray
    normal: FloatArray
    #: DICOM PixelSpacing: [between rows, between columns].
    spacing: tuple[float, float]
    rows: int
    cols: int
    slabs: FloatArray

    @classmethod
    def of(cls, series: SourceSeries) -> PlaneStack:
        iop = np.asarray(series.orientation, dtype=np.float64)
        return cls(
            positions=np.asarray(series.positions, dtype=np.float64),
            col_dir=iop[:3],
            row_dir=iop[3:],
            normal=normal_of(iop),
            spacing=series.pixel_spacing,
            rows=series.grid.shape[1],
            cols=series.grid.shape[2],
            slabs=series.slabs(),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.positions), self.rows, self.cols

    def nearest(self, point: npt.ArrayLike) -> int:
        """The plane nearest to ``point`` along the normal."""
        along = float(np.asarray(point, dtype=np.float64) @ self.normal)
        return int(np.argmin(np.abs(self.positions @ self.normal - along)))

    def indices(self, points: FloatArray) -> IntArray:
        """Linear indices (C order over (plane, row, col)) of the pixels showing ``points`` (..., 3); -1 where a
        point is in no plane's slab or beyond the plane's edge."""
        along = self.positions @ self.normal
        distance = points @ self.normal
        after = np.clip(np.searchsorted(along, distance), 1, max(len(along) - 1, 1))
        before = after - 1
        if len(along) == 1:
            plane = np.zeros(distance.shape, dtype=np.int64)
        else:
            plane = np.where(np.abs(distance - along[before]) <= np.abs(distance - along[after]), before, after)
        offset = points - self.positions[plane]
        row = np.rint(offset @ self.row_dir / self.spacing[0]).astype(np.int64)
        col = np.rint(offset @ self.col_dir / self.spacing[1]).astype(np.int64)
        # Between the first and the last plane every point has a nearest plane (slabs of unevenly spaced planes
        # are not symmetric about them); beyond them, the end plane reaches half its slab.
        beyond = (distance < along[0]) | (distance > along[-1])
        inside = (
            (~beyond | (np.abs(distance - along[plane]) <= self.slabs[plane] / 2 + 1e-6))
            & (row >= 0)
            & (row < self.rows)
            & (col >= 0)
            & (col < self.cols)
        )
        linear = (plane * self.rows + np.where(inside, row, 0)) * self.cols + np.where(inside, col, 0)
        return np.asarray(np.where(inside, linear, -1), dtype=np.int64)

    def native_view(self, plane: int, box_px: int, title: str) -> View:
        """Plane ``plane`` as acquired: columns to the right, rows down, square pixels."""
        delta_row, delta_col = self.spacing
        centre = (
            self.positions[plane]
            + (self.cols - 1) / 2 * delta_col * self.col_dir
            + (self.rows - 1) / 2 * delta_row * self.row_dir
        )
        fine = min(delta_row, delta_col)
        width, height = round(self.cols * delta_col / fine), round(self.rows * delta_row / fine)
        return _scaled(View(title, centre, self.col_dir, self.row_dir, fine, width, height), box_px)


def sample_indices(view: View, stack: PlaneStack) -> IntArray:
    """(height, width) source pixel (linear index over (plane, row, col)) each panel pixel shows; -1 for none."""
    return stack.indices(view.points())
