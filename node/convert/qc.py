"""QC pictures of a SEG: does it lie where it belongs? Pure: a SEG dataset and the source pixels in, PNG bytes out.

The picture shows the source series resliced in patient space (axial, coronal, sagittal through the segments'
centre) and a row of native planes through the largest segments, each segment as a light fill with a solid
outline in its recommended display colour, orientation letters on every panel edge, and a legend with names and
volumes. The masks are drawn from the SEG **as written**: every frame is placed by its own Image Position and
Orientation (:mod:`node.convert.qc_figures`) onto the source planes, so a mirrored or shifted SEG looks mirrored
or shifted in its own picture.

``pixels`` are the source's values as (plane, row, col) over ``series``' planes, rescaled (HU for CT), as
:func:`node.convert.pixels.read_volume` returns them.

Modules: :mod:`~node.convert.qc_figures` (the SEG read back, per-segment figures),
:mod:`~node.convert.qc_planes` (what each panel shows), :mod:`~node.convert.qc_window` (grey levels),
:mod:`~node.convert.qc_draw` (Pillow).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset

from node.convert.geometry import FloatArray, Grid
from node.convert.qc_draw import LegendEntry, Panel, PlacedPanel, compose, overlay, png_bytes
from node.convert.qc_figures import FramePoints, SegmentFigure, figures_json, frame_points, segment_figures
from node.convert.qc_planes import (
    IntArray,
    PlaneStack,
    View,
    orientation_letters,
    orthogonal_views,
    sample_indices,
)
from node.convert.qc_window import display_window
from node.convert.series import SourceSeries

__all__ = [
    "QcPicture",
    "SegmentFigure",
    "figures_json",
    "orientation_letters",
    "qc_figure",
    "qc_picture",
    "segment_figures",
]

#: Box (px) of each resliced panel, and of each native one.
ORTHOGONAL_BOX = 300
NATIVE_BOX = 220
#: Native planes shown: through the centroids of this many of the largest segments.
NATIVE_PLANES = 4
PICTURE_WIDTH = 3 * (ORTHOGONAL_BOX + 10) + 10
LEGEND_COLUMN = ORTHOGONAL_BOX


@dataclass(frozen=True)
class QcPicture:
    """A drawn QC picture, where each panel landed, and the figures it was drawn from."""

    image: Image.Image
    panels: list[PlacedPanel]
    figures: list[SegmentFigure]

    def png(self) -> bytes:
        return png_bytes(self.image)

    def panel(self, title_start: str) -> PlacedPanel:
        """The first panel whose title starts with ``title_start`` ("axial", "plane 3/12", ...)."""
        for placed in self.panels:
            if placed.title.startswith(title_start):
                return placed
        raise KeyError(f"no panel titled {title_start!r}; panels: {[p.title for p in self.panels]}")


def _segments_centre(figures: Sequence[SegmentFigure], grid: Grid) -> FloatArray:
    """Volume-weighted centre of all segments; the grid's centre when the SEG marks nothing."""
    placed = [(f.volume_ml, f.centroid_mm) for f in figures if f.centroid_mm is not None and f.volume_ml > 0]
    if not placed:
        return grid.point([(n - 1) / 2 for n in grid.shape])
    weights = np.array([w for w, _ in placed])
    points = np.array([c for _, c in placed])
    return np.asarray(weights @ points / weights.sum(), dtype=np.float64)


def _native_views(figures: Sequence[SegmentFigure], stack: PlaneStack) -> list[View]:
    """The planes as acquired through the centroids of the largest segments, one panel per distinct plane."""
    views: list[View] = []
    seen: set[int] = set()
    for figure in sorted(figures, key=lambda f: -f.volume_ml):
        if figure.centroid_mm is None or len(views) == NATIVE_PLANES:
            continue
        plane = stack.nearest(figure.centroid_mm)
        if plane in seen:
            continue
        seen.add(plane)
        views.append(stack.native_view(plane, NATIVE_BOX, f"plane {plane + 1}/{stack.shape[0]}: {figure.name}"))
    return views


def _segment_voxels(
    points: Sequence[FramePoints], stack: PlaneStack, needed: IntArray
) -> tuple[dict[int, IntArray], dict[int, int]]:
    """Per segment, the source pixels (sorted linear indices, only those some panel shows) the SEG's frames
    cover, each frame placed by its own geometry; and per segment how many voxels fall outside the source."""
    parts: dict[int, list[IntArray]] = {}
    outside: dict[int, int] = {}
    for part in points:
        index = stack.indices(part.points)
        outside[part.segment] = outside.get(part.segment, 0) + int(np.count_nonzero(index < 0))
        parts.setdefault(part.segment, []).append(index[_is_in(index, needed)])
    voxels = {number: np.unique(np.concatenate(arrays)) for number, arrays in parts.items()}
    return voxels, outside


def _is_in(sampled: IntArray, voxels: IntArray) -> npt.NDArray[np.bool_]:
    if len(voxels) == 0:
        return np.zeros(sampled.shape, dtype=np.bool_)
    at = np.clip(np.searchsorted(voxels, sampled), 0, len(voxels) - 1)
    return np.asarray((sampled >= 0) & (voxels[at] == sampled), dtype=np.bool_)


def _header(seg: Dataset, series: SourceSeries, window: str, centre: FloatArray, include_phi: bool) -> list[str]:
    source = series.datasets[0]
    frames = int(seg.get("NumberOfFrames", 1))
    lines = [
        f"DICOM SEG {seg.get('SOPInstanceUID', '?')}",
        f"{seg.get('SeriesDescription', '') or 'no series description'} · {seg.get('SegmentationType', '?')}"
        f" · {frames} frame(s) · drawn from the SEG's own frame positions",
        f"source {source.get('Modality', '?')} series {series.series_uid} · {series.plane_count} planes · {window}",
        "planes through the segments' centre ({:.1f}, {:.1f}, {:.1f}) mm LPS".format(*centre),
    ]
    if include_phi:
        # Free-text source attributes may identify the patient too: shown only with the patient's name.
        lines.append(
            f"patient {source.get('PatientName', '')} · ID {source.get('PatientID', '')}"
            f" · {source.get('SeriesDescription', '')}"
        )
    return lines


def _legend(figures: Sequence[SegmentFigure], outside: dict[int, int]) -> list[LegendEntry]:
    entries = []
    for figure in figures:
        amount = f"{figure.volume_ml:.2f} mL ({figure.voxels} voxels)" if figure.voxels else "empty"
        missing = outside.get(figure.number, 0)
        entries.append(
            LegendEntry(
                figure.color,
                f"{figure.number} {figure.name}: {amount}",
                f"{missing} outside the series" if missing else "",
            )
        )
    return entries


def qc_figure(
    seg: Dataset,
    series: SourceSeries,
    pixels: npt.NDArray[Any],
    *,
    include_phi: bool = False,
    figures: Sequence[SegmentFigure] | None = None,
) -> QcPicture:
    """Draw the QC picture of ``seg`` over its source ``series`` (``pixels``: (plane, row, col), rescaled).

    ``figures`` may be passed when already computed (:func:`segment_figures` of the same SEG over the same
    series). Volumes weigh each voxel by the slab of the source plane it lies on (``series.slab_at``), not by the
    SEG's nominal Slice Thickness. The SEG's frames are decoded once, for the figures and the panels both.
    """
    expected = (series.plane_count, *series.grid.shape[1:])
    if pixels.shape != expected:
        raise ValueError(f"source pixels have shape {pixels.shape}, the series' planes {expected}")
    stack = PlaneStack.of(series)
    points = list(frame_points(seg, series.slab_at))
    figures = list(segment_figures(seg, points=points) if figures is None else figures)
    centre = _segments_centre(figures, series.grid)
    views = orthogonal_views(series.grid, centre, ORTHOGONAL_BOX) + _native_views(figures, stack)
    sampled = [sample_indices(view, stack) for view in views]
    needed = np.unique(np.concatenate([s[s >= 0] for s in sampled]))
    voxels, outside = _segment_voxels(points, stack, needed)
    window = display_window(series, pixels)
    flat = pixels.reshape(-1)
    # Larger segments first, so a small one inside a large one stays visible on top of it.
    order = sorted((f for f in figures if f.number in voxels), key=lambda f: -f.voxels)
    panels = []
    for view, indices in zip(views, sampled, strict=True):
        grey = np.where(indices >= 0, window.grey(flat[np.maximum(indices, 0)]), 0).astype(np.uint8)
        layers = [(f.color, _is_in(indices, voxels[f.number])) for f in order]
        panels.append(Panel(view, overlay(grey, layers, indices < 0), view.title))
    orthogonal = [p for p in panels if not p.title.startswith("plane ")]
    native = [p for p in panels if p.title.startswith("plane ")]
    image, placed = compose(
        _header(seg, series, window.describe(), centre, include_phi),
        [(orthogonal, ORTHOGONAL_BOX), (native, NATIVE_BOX)],
        _legend(figures, outside),
        width=PICTURE_WIDTH,
        legend_column_px=LEGEND_COLUMN,
    )
    return QcPicture(image=image, panels=placed, figures=figures)


def qc_picture(seg: Dataset, series: SourceSeries, pixels: npt.NDArray[Any], *, include_phi: bool = False) -> bytes:
    """The QC picture of ``seg`` as PNG bytes (see :func:`qc_figure`); no patient name or ID unless
    ``include_phi``."""
    return qc_figure(seg, series, pixels, include_phi=include_phi).png()
