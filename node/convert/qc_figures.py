"""A SEG read back as written: its segments' descriptions and, per frame, the patient-space points it marks.

Everything here comes from the SEG dataset alone (Segment Sequence, each frame's functional groups and pixel
bits), never from the array that built it: a SEG that was mirrored or shifted on its way out shows up here
mirrored or shifted. :func:`segment_figures` sums the points up per segment (voxels, mL, centroid, bounding box);
the QC picture (:mod:`node.convert.qc`) places the same points on the source grid.

A voxel's volume is its pixel area times the slab of the source plane it lies on (``slab_of``, as
:func:`node.convert.verify.seg_stats` weighs it). The SEG's own Slice Thickness is the nominal thickness, which
differs from the step between planes in an overlapping or gapped reconstruction, and it states Spacing Between
Slices only for evenly spaced planes; so what the SEG states is used only when no source series is at hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from node.convert.anatomy import palette_color
from node.convert.geometry import FloatArray
from node.convert.series import functional_attribute

# verify.py's frame reader decodes one frame at a time (BINARY frames straddle bytes); the QC reads the same bits,
# by the same rules per SEG type, and sums them up the same way.
from node.convert.verify import SegmentSums, frame_masks, stored_frames
from node.errors import GeometryError

RGB = tuple[int, int, int]
Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class CodeFigure:
    """A coded concept as the SEG states it."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class SegmentInfo:
    """One item of the SEG's Segment Sequence: what the segment is called and how it is to be displayed."""

    number: int
    name: str
    code: CodeFigure | None
    category: CodeFigure | None
    color: RGB


@dataclass(frozen=True)
class FramePoints:
    """The voxels one frame marks for one segment: centres in LPS mm and the volume each stands for (mm³)."""

    segment: int
    points: FloatArray
    voxel_mm3: float


@dataclass(frozen=True)
class SegmentFigure:
    """Per-segment figures of a SEG as written: counts, volume and place in the patient (LPS mm)."""

    number: int
    name: str
    code: CodeFigure | None
    category: CodeFigure | None
    color: RGB
    voxels: int
    volume_ml: float
    #: None for a segment without any voxel (described but empty).
    centroid_mm: Vec3 | None
    bbox_min_mm: Vec3 | None
    bbox_max_mm: Vec3 | None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict; mm to 0.01, mL to 0.001 (more digits than the pixels carry would be noise)."""

        def rounded(point: Vec3 | None) -> list[float] | None:
            return None if point is None else [round(v, 2) for v in point]

        def code(value: CodeFigure | None) -> dict[str, str] | None:
            return None if value is None else {"scheme": value.scheme, "value": value.value, "meaning": value.meaning}

        return {
            "number": self.number,
            "name": self.name,
            "code": code(self.code),
            "category": code(self.category),
            "color_rgb": list(self.color),
            "voxels": self.voxels,
            "volume_ml": round(self.volume_ml, 3),
            "centroid_mm_lps": rounded(self.centroid_mm),
            "bbox_mm_lps": {"min": rounded(self.bbox_min_mm), "max": rounded(self.bbox_max_mm)},
        }


def cielab_to_rgb(value: Sequence[int]) -> RGB:
    """RecommendedDisplayCIELabValue (DICOM-scaled, 0-65535) as 8-bit sRGB, through highdicom's colour code.

    >>> cielab_to_rgb(hd.color.CIELabColor.from_rgb(255, 0, 0).value)
    (255, 0, 0)
    """
    rgb = hd.color.CIELabColor.from_dicom_value(tuple(int(v) for v in value)).to_rgb()
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _code(item: Dataset, keyword: str) -> CodeFigure | None:
    sequence = item.get(keyword)
    if not sequence:
        return None
    code = sequence[0]
    return CodeFigure(
        scheme=str(code.get("CodingSchemeDesignator", "")),
        value=str(code.get("CodeValue", "") or code.get("LongCodeValue", "") or code.get("URNCodeValue", "")),
        meaning=str(code.get("CodeMeaning", "")),
    )


def segment_infos(seg: Dataset) -> list[SegmentInfo]:
    """The SEG's segments in number order (a LABELMAP's background segment 0 left out)."""
    infos = []
    for item in seg.get("SegmentSequence") or []:
        number = int(item.SegmentNumber)
        if number == 0:
            continue
        lab = item.get("RecommendedDisplayCIELabValue")
        infos.append(
            SegmentInfo(
                number=number,
                name=str(item.get("SegmentLabel", "") or f"Segment {number}"),
                code=_code(item, "SegmentedPropertyTypeCodeSequence"),
                category=_code(item, "SegmentedPropertyCategoryCodeSequence"),
                # A SEG may leave the colour out (Type 3); a fixed palette keeps segments apart anyway.
                color=cielab_to_rgb(lab) if lab is not None and len(lab) == 3 else palette_color(number),
            )
        )
    return sorted(infos, key=lambda info: info.number)


def _floats(seg: Dataset, frame: int, group: str, attribute: str) -> FloatArray:
    return np.array([float(v) for v in functional_attribute(seg, frame, group, attribute)], dtype=np.float64)


def _slice_spacing(seg: Dataset, frame: int) -> float:
    """The frame's extent along its normal as the SEG states it: SpacingBetweenSlices, else SliceThickness.

    Only a fallback without the source series: the node's SEGs state the nominal Slice Thickness, and Spacing
    Between Slices only for evenly spaced planes, so this is wrong for an unevenly spaced stack (or a single
    plane) whose thickness and step differ, as in an overlapping reconstruction.
    """
    for attribute in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(functional_attribute(seg, frame, "PixelMeasuresSequence", attribute))
        except (GeometryError, TypeError, ValueError):
            continue
        if value > 0:
            return value
    raise GeometryError(f"SEG frame {frame + 1} states neither SpacingBetweenSlices nor SliceThickness")


def frame_points(seg: Dataset, slab_of: Callable[[FloatArray], float] | None = None) -> Iterator[FramePoints]:
    """Per frame and segment, the LPS centres of the pixels it marks, placed by the frame's own geometry.

    A pixel (row r, column c) of a frame sits at ``IPP + c·Δcol·iop[0:3] + r·Δrow·iop[3:6]`` (GEOMETRY.md). Its
    volume is Δrow·Δcol times ``slab_of(IPP)``, the slab of the source plane there (``SourceSeries.slab_at``);
    without ``slab_of``, the spacing the SEG itself states (:func:`_slice_spacing`).
    """
    if "PerFrameFunctionalGroupsSequence" not in seg:
        raise GeometryError("SEG has no per-frame functional groups: its frames cannot be placed in the patient")
    for frame, pixels in enumerate(stored_frames(seg)):
        if not pixels.any():
            continue
        position = _floats(seg, frame, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _floats(seg, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
        delta_row, delta_col = _floats(seg, frame, "PixelMeasuresSequence", "PixelSpacing")
        slab = slab_of(position) if slab_of is not None else _slice_spacing(seg, frame)
        voxel_mm3 = float(delta_row * delta_col * slab)
        col_step, row_step = orientation[:3] * delta_col, orientation[3:] * delta_row
        for number, mask in frame_masks(seg, frame, pixels):
            rows, cols = np.nonzero(mask)
            if rows.size == 0:
                continue
            points = position + cols[:, None] * col_step + rows[:, None] * row_step
            yield FramePoints(number, np.asarray(points, dtype=np.float64), voxel_mm3)


def _vec(values: FloatArray) -> Vec3:
    return float(values[0]), float(values[1]), float(values[2])


def segment_figures(
    seg: Dataset,
    slab_of: Callable[[FloatArray], float] | None = None,
    *,
    points: Iterable[FramePoints] | None = None,
) -> list[SegmentFigure]:
    """Name, code, voxel count, volume (mL), centroid and bounding box (LPS mm) of every segment of ``seg``.

    Volume is voxel count × voxel volume, the voxel volume being the frame's pixel spacing × the source plane's
    slab (``slab_of``, see :func:`frame_points`). The centroid weighs each voxel by its volume, as
    :func:`node.convert.verify.seg_stats` does; the bounding box spans the voxel centres. Described segments
    without voxels have count 0 and no place. ``points`` may be passed when already read (:func:`frame_points`
    of the same SEG), so its frames are decoded once.
    """
    totals = SegmentSums()
    lows: dict[int, FloatArray] = {}
    highs: dict[int, FloatArray] = {}
    for part in frame_points(seg, slab_of) if points is None else points:
        number = part.segment
        totals.add(number, len(part.points), part.voxel_mm3, part.points.sum(axis=0))
        low, high = part.points.min(axis=0), part.points.max(axis=0)
        lows[number] = np.minimum(lows[number], low) if number in lows else low
        highs[number] = np.maximum(highs[number], high) if number in highs else high
    found = totals.segments()
    figures = []
    for info in segment_infos(seg):
        number = info.number
        segment = found.get(number)
        figures.append(
            SegmentFigure(
                number=number,
                name=info.name,
                code=info.code,
                category=info.category,
                color=info.color,
                voxels=segment.stats.count if segment else 0,
                volume_ml=segment.volume_mm3 / 1000.0 if segment else 0.0,
                centroid_mm=_vec(segment.stats.centroid) if segment else None,
                bbox_min_mm=_vec(lows[number]) if segment else None,
                bbox_max_mm=_vec(highs[number]) if segment else None,
            )
        )
    return figures


def figures_json(seg: Dataset, figures: Sequence[SegmentFigure] | None = None) -> str:
    """The SEG's identity (no patient attributes) and its per-segment figures as a JSON document."""
    figures = segment_figures(seg) if figures is None else figures
    referenced = [str(item.get("SeriesInstanceUID", "")) for item in seg.get("ReferencedSeriesSequence") or []]
    document = {
        "sop_instance_uid": str(seg.get("SOPInstanceUID", "")),
        "series_instance_uid": str(seg.get("SeriesInstanceUID", "")),
        "series_description": str(seg.get("SeriesDescription", "")),
        "segmentation_type": str(seg.get("SegmentationType", "")),
        "source_series_instance_uids": referenced,
        "coordinates": "DICOM patient (LPS), mm",
        "segments": [figure.as_json() for figure in figures],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
