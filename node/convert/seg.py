"""DICOM SEG from a source series and a label volume already aligned to it, and the SEG's self-verification.

Verification reads the built SEG back the way a viewer would: its own frame positions, orientation, spacing and
pixel bits, independent of the alignment code that produced the array. A SEG that disagrees with its input in
patient space never leaves this module.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from pydicom.valuerep import DSfloat

import node
from node.convert.geometry import FloatArray, SegmentStats
from node.convert.labels import AlgorithmInfo, SegmentSpec, segment_description
from node.convert.planes import integer_value
from node.convert.series import SourceSeries, functional_attribute
from node.convert.source_header import clean_source_header
from node.errors import InputError, VerificationError

log = logging.getLogger(__name__)


class SegType(str, Enum):
    """What kind of SEG to write (BINARY is the one most receivers display)."""

    BINARY = "binary"
    LABELMAP = "labelmap"
    FRACTIONAL = "fractional"

    @property
    def highdicom(self) -> hd.seg.SegmentationTypeValues:
        return hd.seg.SegmentationTypeValues[self.name]


@dataclass(frozen=True)
class SegOptions:
    """Choices about the SEG object that do not come from the inputs."""

    seg_type: SegType = SegType.BINARY
    algorithm: AlgorithmInfo = field(default_factory=AlgorithmInfo)
    series_description: str = "segnode SEG"
    #: None: the source's SeriesNumber + 1000, so the SEG sorts after its source in viewers.
    series_number: int | None = None
    content_creator: str = "segnode^"

    def __post_init__(self) -> None:
        object.__setattr__(self, "seg_type", SegType(self.seg_type))


def _pixel_measures(series: SourceSeries) -> Dataset:
    """The stack's Pixel Measures as the SEG states them: spacing from the planes, thickness only if the source
    gives one usable value (else the slab each plane stands for); never the source's item as it is, whose
    values highdicom would copy and index unchecked."""
    measures = Dataset()
    measures.PixelSpacing = [DSfloat(v, auto_format=True) for v in series.pixel_spacing]
    measures.SliceThickness = DSfloat(float(series.thickness or series.slabs()[0]), auto_format=True)
    return measures


def label_digest(aligned: npt.NDArray[Any]) -> str:
    """Content hash of an aligned label array; part of the seed of the SEG's deterministic UIDs."""
    return hashlib.sha256(np.ascontiguousarray(aligned).data).hexdigest()


def deterministic_uids(series: SourceSeries, digest: str, segments: Sequence[SegmentSpec],
                       options: SegOptions, input_name: str = "") -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) derived from the inputs: a resend is recognisably the same object.

    The input's name is part of the seed: two tools' results for one series are two objects even when they agree.
    """
    seed = [series.series_uid, input_name, digest, options.seg_type.value, options.algorithm.name,
            options.algorithm.version, *(f"{s.label}={s.name}" for s in segments)]
    return generate_uid(entropy_srcs=[*seed, "series"]), generate_uid(entropy_srcs=[*seed, "instance"])


def _shared_geometry(header: Dataset, series: SourceSeries) -> Dataset:
    """An Enhanced header whose shared functional groups hold the stack's pixel measures and orientation.

    The standard lets a scanner put them per frame instead (many do); highdicom reads them from the shared
    groups only, and a group may not be in both. Frame positions stay the source's own.
    ``header`` is a private copy (:func:`clean_source_header`), changed in place.
    """
    for item in header.PerFrameFunctionalGroupsSequence:
        for group in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
            if group in item:
                del item[group]
    if not header.get("SharedFunctionalGroupsSequence"):
        header.SharedFunctionalGroupsSequence = DicomSequence([Dataset()])
    shared = header.SharedFunctionalGroupsSequence[0]
    orientation = Dataset()
    orientation.ImageOrientationPatient = [float(v) for v in series.orientation]
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([_pixel_measures(series)])
    return header


def source_images(series: SourceSeries) -> tuple[list[Dataset], list[str]]:
    """The source headers as highdicom must see them, and one notice per kind of repair made to them.

    Their patient and study attributes are made valid for a SEG (:func:`clean_source_header`); the stack has one
    orientation, and an Enhanced object's geometry is in its shared groups.

    Planes of one acquisition whose orientation differs in the last digits were accepted as one stack; highdicom
    demands equal values, so every copy carries the stack's orientation (the SEG's frames stay on the source
    pixels: the positions are the source's own).
    """
    headers: list[Dataset] = []
    notices: dict[str, None] = {}
    for original in series.datasets:
        header, repairs = clean_source_header(original, series.series_uid)
        headers.append(header)
        notices.update(dict.fromkeys(repairs))
    if series.is_multiframe:
        return [_shared_geometry(headers[0], series)], list(notices)
    orientation = series.datasets[0].ImageOrientationPatient
    measures = _pixel_measures(series)
    for header in headers:
        header.ImageOrientationPatient = orientation
        # highdicom builds the SEG's Pixel Measures from these three of the first image, unchecked.
        header.PixelSpacing = measures.PixelSpacing
        header.SliceThickness = measures.SliceThickness
        if "SpacingBetweenSlices" in header:
            del header.SpacingBetweenSlices
    return headers, list(notices)


def _plane_geometry(series: SourceSeries) -> dict[str, Any]:
    """Explicit plane positions for a stack of an Enhanced object: the SEG covers only that stack's frames."""
    if not series.is_multiframe:
        return {}
    spacing = list(series.pixel_spacing)
    return {
        "plane_positions": [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, [float(v) for v in p])
                            for p in series.positions],
        "plane_orientation": hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT,
                                                         [float(v) for v in series.orientation]),
        "pixel_measures": hd.PixelMeasuresSequence(spacing, float(series.thickness or series.slabs()[0])),
    }


def build_seg(series: SourceSeries, aligned: npt.NDArray[Any], segments: Sequence[SegmentSpec],
              options: SegOptions, *, input_name: str = "") -> tuple[Dataset, list[str]]:
    """Build the SEG, and say what was repaired in the source headers it copies.

    ``aligned`` is (plane, row, col) over ``series``' planes, holding the label values of ``segments``.

    Segments are numbered 1..K in the order given; label values are remapped to those numbers.
    """
    expected_shape = (series.plane_count, *series.grid.shape[1:])
    if aligned.shape != expected_shape:
        raise ValueError(f"aligned array {aligned.shape} does not match the series' planes {expected_shape}")
    if not segments:
        raise ValueError("no segments to write")
    lut = np.zeros(int(max(s.label for s in segments)) + 1, dtype=np.uint8 if len(segments) < 256 else np.uint16)
    for number, spec in enumerate(segments, start=1):
        lut[spec.label] = number
    if int(aligned.max()) >= len(lut):
        raise ValueError("aligned array holds label values that no segment describes")
    numbered = lut[aligned]
    series_uid, sop_uid = deterministic_uids(series, label_digest(aligned), segments, options, input_name)
    source_number = integer_value(series.datasets[0].get("SeriesNumber"))
    series_number = options.series_number or (source_number + 1000 if source_number is not None else 1000)
    descriptions = [segment_description(spec, number, options.algorithm)
                    for number, spec in enumerate(segments, start=1)]
    extra: dict[str, Any] = _plane_geometry(series)
    if options.seg_type is SegType.FRACTIONAL:
        extra["fractional_type"] = hd.seg.SegmentationFractionalTypeValues.PROBABILITY
    sources, notices = source_images(series)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            seg = hd.seg.Segmentation(
                source_images=sources,
                pixel_array=numbered,
                segmentation_type=options.seg_type.highdicom,
                segment_descriptions=descriptions,
                series_instance_uid=series_uid,
                series_number=min(series_number, 2**31 - 1),
                sop_instance_uid=sop_uid,
                instance_number=1,
                manufacturer="segnode",
                manufacturer_model_name="segnode",
                software_versions=node.__version__,
                device_serial_number="0",
                series_description=options.series_description[:64],
                content_label="SEGMENTATION",
                content_creator_name=options.content_creator,
                **extra,
            )
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            # highdicom validates the source headers it copies; what it refuses is a property of the input.
            raise InputError(f"{series.describe()}: highdicom cannot build a SEG on it: {' '.join(str(exc).split())}"
                             ) from exc
    for warning in caught:
        # Library warnings (e.g. a PatientName that is not PN-shaped) go to the log, never to the user's terminal.
        log.debug("highdicom: %s", warning.message)
    if series.is_multiframe:
        _reference_stack_frames(seg, series)
    return seg, notices


def _reference_stack_frames(seg: Dataset, series: SourceSeries) -> None:
    """Keep, of each frame's source references, those to frames of the stack it was built on.

    highdicom finds a SEG frame's sources by position, so in an Enhanced object that holds several volumes at
    the same positions (temporal positions, echoes) it also names the other volumes' frames there.
    """
    frames = {f + 1 for f in series.frame_order or ()}
    for item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence") or []:
            sources = derivation.get("SourceImageSequence") or []
            kept = [s for s in sources if int(s.get("ReferencedFrameNumber") or 0) in frames]
            if kept and len(kept) < len(sources):
                derivation.SourceImageSequence = DicomSequence(kept)


# --- verification ------------------------------------------------------------------------------------------------


def _frames(seg: Dataset) -> Iterator[npt.NDArray[Any]]:
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
            yield np.unpackbits(chunk, bitorder="little")[skip:skip + pixels].reshape(rows, cols)
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
        block = packed[start:start + 256]
        bits = _POPCOUNT[block]
        sums[start:start + 256, 0] = bits.sum(axis=(1, 2), dtype=np.int64)
        sums[start:start + 256, 1] = bits.sum(axis=2, dtype=np.int64) @ row_index
        sums[start:start + 256, 2] = (bits.sum(axis=1, dtype=np.int64) @ byte_start
                                      + _BIT_POSITIONS[block].sum(axis=(1, 2), dtype=np.int64))
    return sums


def _segment_number(seg: Dataset, frame: int) -> int:
    """The segment a frame belongs to; with one segment it sits in the shared functional groups, not per frame."""
    return int(functional_attribute(seg, frame, "SegmentIdentificationSequence", "ReferencedSegmentNumber"))


def _frame_sums(seg: Dataset) -> list[tuple[int, int, int, float, float]]:
    """(frame, segment number, count, row-index sum, column-index sum) for each frame and segment it holds."""
    if (packed := _packed_frame_sums(seg)) is not None:
        return [(f, _segment_number(seg, f), int(n), r, c) for f, (n, r, c) in enumerate(packed)]
    labelmap = seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    threshold = (int(getattr(seg, "MaximumFractionalValue", 1)) + 1) // 2 if seg.SegmentationType == "FRACTIONAL" else 1
    row_index = np.arange(int(seg.Rows), dtype=np.float64)
    col_index = np.arange(int(seg.Columns), dtype=np.float64)
    result = []
    for f, frame in enumerate(_frames(seg)):
        if labelmap:
            parts = [(int(v), frame == v) for v in np.unique(frame) if v != 0]
        else:
            parts = [(_segment_number(seg, f), frame >= threshold)]
        for number, mask in parts:
            result.append((f, number, int(np.count_nonzero(mask)), float(mask.sum(axis=1) @ row_index),
                           float(mask.sum(axis=0) @ col_index)))
    return result


@dataclass(frozen=True)
class SegSegment:
    """What the SEG holds of one segment, read back from its own frames: voxels, centroid and volume."""

    stats: SegmentStats
    volume_mm3: float


def seg_stats(seg: Dataset, slab_of: Callable[[FloatArray], float]) -> dict[int, SegSegment]:
    """Voxel count, centroid (LPS mm) and volume per segment number, from the SEG's own frames and positions.

    ``slab_of(position)`` is the thickness (mm) of the source plane at a frame position: constant for a regular
    stack, varying for unevenly spaced planes, which then weigh by the slab each one stands for.
    """
    orientation = np.array([float(v) for v in functional_attribute(seg, 0, "PlaneOrientationSequence",
                                                                    "ImageOrientationPatient")])
    delta_row, delta_col = (float(v) for v in functional_attribute(seg, 0, "PixelMeasuresSequence", "PixelSpacing"))
    col_step, row_step = orientation[:3] * delta_col, orientation[3:] * delta_row
    counts: dict[int, int] = {}
    volumes: dict[int, float] = {}
    sums: dict[int, FloatArray] = {}
    for frame, number, n, row_sum, col_sum in _frame_sums(seg):
        if n == 0:
            continue
        position = np.array([float(v) for v in functional_attribute(seg, frame, "PlanePositionSequence",
                                                                     "ImagePositionPatient")])
        weight = delta_row * delta_col * slab_of(position)
        counts[number] = counts.get(number, 0) + n
        volumes[number] = volumes.get(number, 0.0) + n * weight
        sums[number] = sums.get(number, np.zeros(3)) + weight * (n * position + row_sum * row_step
                                                                 + col_sum * col_step)
    return {number: SegSegment(SegmentStats(counts[number], sums[number] / volumes[number]), volumes[number])
            for number in counts}


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
        return (f"resampled: centroids within {self.centroid_mm:.2g} mm, volumes within"
                f" {self.volume_fraction:.0%} + {self.volume_mm3:.3g} mm³")


def verify_seg(seg: Dataset, expected: Mapping[int, SegmentStats], segments: Sequence[SegmentSpec],
               tolerance: Tolerance, *, input_voxel_mm3: float, slab_of: Callable[[FloatArray], float]) -> None:
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
            problems.append(f"segment {number} '{spec.name}': {got.stats.count} voxels ({got_mm3:.1f} mm³) vs input"
                            f" {want.count} ({want_mm3:.1f} mm³), centroid {distance:.3g} mm away")
    extra = sorted(set(found) - set(range(1, len(segments) + 1)))
    if extra:
        problems.append(f"SEG holds undeclared segment numbers {extra}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise VerificationError(f"SEG failed self-verification ({tolerance.describe()}): {problems[0]}{more}")
    log.debug("SEG verified: %d segments (%s)", len(segments), tolerance.describe())
