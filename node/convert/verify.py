"""Read-back verification of a built SEG: it must hold what its input holds.

Verification reads the built SEG back the way a viewer would: its own frame positions, orientation, spacing and
pixel bits, independent of the alignment code that produced the array (:func:`seg_stats`). A SEG that disagrees
with its input in patient space beyond its :class:`Tolerance` raises :class:`VerificationError`
(:func:`verify_seg`) and never leaves the node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from node.convert.alignment import SegmentStats
from node.convert.anatomy import SegmentSpec
from node.convert.geometry import FloatArray
from node.convert.series import functional_attribute
from node.errors import VerificationError

log = logging.getLogger(__name__)


def stored_frames(seg: Dataset) -> Iterator[npt.NDArray[Any]]:
    """Each frame's pixels as stored, without decoding the whole object at once."""
    rows, cols, count = int(seg.Rows), int(seg.Columns), int(getattr(seg, "NumberOfFrames", 1))
    pixels = rows * cols
    if seg.file_meta.TransferSyntaxUID.is_compressed:
        yield from np.asarray(seg.pixel_array).reshape(count, rows, cols)
        return
    data = seg.PixelData
    if int(seg.BitsAllocated) == 1:
        # BINARY frames are packed back to back, bit 0 first, and need not start on a byte boundary.
        for f in range(count):
            start = f * pixels
            first, skip = divmod(start, 8)
            chunk = np.frombuffer(data, np.uint8, count=(skip + pixels + 7) // 8, offset=first)
            yield np.unpackbits(chunk, bitorder="little")[skip : skip + pixels].reshape(rows, cols)
        return
    dtype = np.uint8 if int(seg.BitsAllocated) == 8 else np.uint16
    yield from np.frombuffer(data, dtype, count=count * pixels).reshape(count, rows, cols)


#: Set bits per byte value, and the sum of their positions (bit 0 first, as DICOM packs BINARY pixels).
_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)
_BIT_POSITIONS = np.array([sum(b for b in range(8) if v >> b & 1) for v in range(256)], dtype=np.uint16)


def _packed_frame_sums(seg: Dataset) -> npt.NDArray[np.float64] | None:
    """Per frame (count, row-index sum, column-index sum) of set pixels, read from the packed bytes of a BINARY
    SEG without unpacking them; None when frames do not start on byte boundaries (then frames are unpacked)."""
    rows, cols, count = int(seg.Rows), int(seg.Columns), int(getattr(seg, "NumberOfFrames", 1))
    if int(seg.BitsAllocated) != 1 or cols % 8 or seg.file_meta.TransferSyntaxUID.is_compressed:
        return None
    packed = np.frombuffer(seg.PixelData, np.uint8, count=count * rows * cols // 8).reshape(count, rows, cols // 8)
    row_index = np.arange(rows, dtype=np.float64)
    byte_start = 8.0 * np.arange(cols // 8)
    sums = np.zeros((count, 3))
    for start in range(0, count, 256):
        block = packed[start : start + 256]
        bits = _POPCOUNT[block]
        sums[start : start + 256, 0] = bits.sum(axis=(1, 2), dtype=np.int64)
        sums[start : start + 256, 1] = bits.sum(axis=2, dtype=np.int64) @ row_index
        sums[start : start + 256, 2] = bits.sum(axis=1, dtype=np.int64) @ byte_start + _BIT_POSITIONS[block].sum(
            axis=(1, 2), dtype=np.int64
        )
    return sums


def frame_segment_number(seg: Dataset, frame: int) -> int:
    """The segment a frame belongs to; with one segment it sits in the shared functional groups, not per frame."""
    return int(functional_attribute(seg, frame, "SegmentIdentificationSequence", "ReferencedSegmentNumber"))


#: The SOP class whose frames hold segment numbers as pixel values rather than one segment per frame.
LABELMAP_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"


def frame_masks(seg: Dataset, frame: int, pixels: npt.NDArray[Any]) -> list[tuple[int, npt.NDArray[np.bool_]]]:
    """(segment number, mask) of each segment one frame's stored ``pixels`` hold, by the SEG's type: a LABELMAP's
    non-zero values, a FRACTIONAL frame's pixels at half the maximum or more, a BINARY frame's set bits."""
    if seg.SOPClassUID == LABELMAP_STORAGE:
        return [(int(v), pixels == v) for v in np.unique(pixels) if v != 0]
    if seg.get("SegmentationType") == "FRACTIONAL":
        threshold = (int(getattr(seg, "MaximumFractionalValue", 1)) + 1) // 2
        return [(frame_segment_number(seg, frame), pixels >= threshold)]
    return [(frame_segment_number(seg, frame), pixels != 0)]


def _frame_sums(seg: Dataset) -> list[tuple[int, int, int, float, float]]:
    """(frame, segment number, count, row-index sum, column-index sum) for each frame and segment it holds."""
    if (packed := _packed_frame_sums(seg)) is not None:
        return [(f, frame_segment_number(seg, f), int(n), r, c) for f, (n, r, c) in enumerate(packed)]
    row_index = np.arange(int(seg.Rows), dtype=np.float64)
    col_index = np.arange(int(seg.Columns), dtype=np.float64)
    return [
        (
            f,
            number,
            int(np.count_nonzero(mask)),
            float(mask.sum(axis=1) @ row_index),
            float(mask.sum(axis=0) @ col_index),
        )
        for f, frame in enumerate(stored_frames(seg))
        for number, mask in frame_masks(seg, f, frame)
    ]


@dataclass(frozen=True)
class SegSegment:
    """What the SEG holds of one segment, read back from its own frames: voxels, centroid and volume."""

    stats: SegmentStats
    volume_mm3: float


class SegmentSums:
    """Per-segment running totals over a SEG's frames: voxel count, volume (mm³) and volume-weighted sum of the
    voxel centres (LPS mm), from which :meth:`segments` gives each segment's centroid."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.volumes: dict[int, float] = {}
        self.sums: dict[int, FloatArray] = {}

    def add(self, number: int, count: int, voxel_mm3: float, centres_sum: FloatArray) -> None:
        """``count`` voxels of segment ``number``, each ``voxel_mm3`` in volume, their centres summing to
        ``centres_sum``."""
        if count == 0:
            return
        self.counts[number] = self.counts.get(number, 0) + count
        self.volumes[number] = self.volumes.get(number, 0.0) + count * voxel_mm3
        self.sums[number] = self.sums.get(number, np.zeros(3)) + voxel_mm3 * centres_sum

    def segments(self) -> dict[int, SegSegment]:
        return {
            number: SegSegment(SegmentStats(count, self.sums[number] / self.volumes[number]), self.volumes[number])
            for number, count in self.counts.items()
        }


def seg_stats(seg: Dataset, slab_of: Callable[[FloatArray], float]) -> dict[int, SegSegment]:
    """Voxel count, centroid (LPS mm) and volume per segment number, from the SEG's own frames and positions.

    ``slab_of(position)`` is the thickness (mm) of the source plane at a frame position: constant for a regular
    stack, varying for unevenly spaced planes, which then weigh by the slab each one stands for.
    """
    orientation = np.array(
        [float(v) for v in functional_attribute(seg, 0, "PlaneOrientationSequence", "ImageOrientationPatient")]
    )
    delta_row, delta_col = (float(v) for v in functional_attribute(seg, 0, "PixelMeasuresSequence", "PixelSpacing"))
    col_step, row_step = orientation[:3] * delta_col, orientation[3:] * delta_row
    totals = SegmentSums()
    for frame, number, n, row_sum, col_sum in _frame_sums(seg):
        if n == 0:
            continue
        position = np.array(
            [float(v) for v in functional_attribute(seg, frame, "PlanePositionSequence", "ImagePositionPatient")]
        )
        centres = n * position + row_sum * row_step + col_sum * col_step
        totals.add(number, n, delta_row * delta_col * slab_of(position), centres)
    return totals.segments()


@dataclass(frozen=True)
class Tolerance:
    """How closely the SEG must reproduce its input: ``exact`` demands equal voxel counts."""

    exact: bool
    centroid_mm: float
    volume_fraction: float = 0.0
    volume_mm3: float = 0.0

    def describe(self) -> str:
        if self.exact:
            return f"exact: equal voxel counts, centroids within {self.centroid_mm:.2g} mm"
        return (
            f"resampled: centroids within {self.centroid_mm:.2g} mm, volumes within"
            f" {self.volume_fraction:.0%} + {self.volume_mm3:.3g} mm³"
        )


def verify_seg(
    seg: Dataset,
    expected: Mapping[int, SegmentStats],
    segments: Sequence[SegmentSpec],
    tolerance: Tolerance,
    *,
    input_voxel_mm3: float,
    slab_of: Callable[[FloatArray], float],
) -> None:
    """Raise :class:`VerificationError` unless every segment of ``seg`` matches the input's count and centroid.

    ``slab_of`` as for :func:`seg_stats`.
    """
    found = seg_stats(seg, slab_of)
    problems = []
    for number, spec in enumerate(segments, start=1):
        want = expected.get(spec.label)
        got = found.get(number)
        if want is None or want.count == 0:
            problems.append(f"segment {number} '{spec.name}' has no voxels in the input")
            continue
        if got is None:
            problems.append(f"segment {number} '{spec.name}' is empty in the SEG but has {want.count} input voxels")
            continue
        distance = float(np.linalg.norm(got.stats.centroid - want.centroid))
        want_mm3, got_mm3 = want.count * input_voxel_mm3, got.volume_mm3
        if tolerance.exact:
            count_ok = got.stats.count == want.count
        else:
            count_ok = abs(got_mm3 - want_mm3) <= tolerance.volume_fraction * want_mm3 + tolerance.volume_mm3
        if not count_ok or distance > tolerance.centroid_mm:
            problems.append(
                f"segment {number} '{spec.name}': {got.stats.count} voxels ({got_mm3:.1f} mm³) vs input"
                f" {want.count} ({want_mm3:.1f} mm³), centroid {distance:.3g} mm away"
            )
    extra = sorted(set(found) - set(range(1, len(segments) + 1)))
    if extra:
        problems.append(f"SEG holds undeclared segment numbers {extra}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VerificationError(f"SEG failed self-verification ({tolerance.describe()}): {problems[0]}{more}")
    log.debug("SEG verified: %d segments (%s)", len(segments), tolerance.describe())
