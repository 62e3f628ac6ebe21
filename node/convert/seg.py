"""DICOM SEG from a source series and a label volume already aligned to it: highdicom build, deterministic UIDs.

Steps: the source headers highdicom must see (:func:`source_images`), one segment description per segment
(:func:`segment_description`), UIDs derived from the inputs (:func:`deterministic_uids`), then
:func:`build_seg`. Reading the result back to check it is :mod:`node.convert.verify`.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from pydicom.valuerep import DSfloat

import node
from node.convert.anatomy import SegmentSpec
from node.convert.planes import integer_value
from node.convert.series import SourceSeries
from node.convert.source_header import clean_source_header
from node.errors import InputError

log = logging.getLogger(__name__)

#: DICOM limits: SegmentLabel is LO (64 chars), SegmentDescription is ST (1024 chars).
_LO_MAX = 64
_ST_MAX = 1024


class SegType(str, Enum):
    """What kind of SEG to write (BINARY is the one most receivers display)."""

    BINARY = "binary"
    LABELMAP = "labelmap"
    FRACTIONAL = "fractional"

    @property
    def highdicom(self) -> hd.seg.SegmentationTypeValues:
        return hd.seg.SegmentationTypeValues[self.name]


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm a SEG names as its source (AlgorithmIdentificationSequence)."""

    name: str = "segnode"
    version: str = node.__version__
    #: CID 7162 algorithm family; segmentations from AI tools are the common case.
    family: Code = field(default_factory=lambda: codes.cid7162.ArtificialIntelligence)
    source: str | None = None

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        """The highdicom sequence for this algorithm."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name[:_LO_MAX], family=self.family, version=self.version[:_LO_MAX], source=self.source
        )


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


def _dicom_text(text: str, limit: int) -> str:
    # LO/ST forbid control characters and (LO) the backslash, which DICOM reads as a value separator.
    cleaned = "".join(" " if ord(ch) < 32 or ch == "\x7f" else ch for ch in text).replace("\\", "/")
    return cleaned.strip()[:limit]


def segment_description(spec: SegmentSpec, number: int, algorithm: AlgorithmInfo) -> hd.seg.SegmentDescription:
    """The highdicom segment description of ``spec`` as segment ``number`` (1-based) of an automatic SEG."""
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=_dicom_text(spec.name, _LO_MAX) or f"Segment {spec.label}",
        segmented_property_category=spec.category,
        segmented_property_type=spec.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm.identification(),
        anatomic_regions=[spec.region] if spec.region is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(*spec.color),
    )
    # highdicom has no parameter for modifiers; DICOM nests them in the item they modify.
    if spec.modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(spec.modifier)
        ]
    if spec.region is not None and spec.region_modifier is not None:
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
            hd.sr.CodedConcept.from_code(spec.region_modifier)
        ]
    if spec.description:
        description.SegmentDescription = _dicom_text(spec.description, _ST_MAX)
    return description


def label_digest(aligned: npt.NDArray[Any]) -> str:
    """Content hash of an aligned label array; part of the seed of the SEG's deterministic UIDs."""
    return hashlib.sha256(np.ascontiguousarray(aligned).data).hexdigest()


def deterministic_uids(
    series: SourceSeries, digest: str, segments: Sequence[SegmentSpec], options: SegOptions, input_name: str = ""
) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) derived from the inputs: a resend is recognisably the same object.

    The input's name is part of the seed: two tools' results for one series are two objects even when they agree.
    """
    seed = [
        series.series_uid,
        input_name,
        digest,
        options.seg_type.value,
        options.algorithm.name,
        options.algorithm.version,
        *(f"{s.label}={s.name}" for s in segments),
    ]
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
        "plane_positions": [
            hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, [float(v) for v in p]) for p in series.positions
        ],
        "plane_orientation": hd.PlaneOrientationSequence(
            hd.CoordinateSystemNames.PATIENT, [float(v) for v in series.orientation]
        ),
        "pixel_measures": hd.PixelMeasuresSequence(spacing, float(series.thickness or series.slabs()[0])),
    }


def build_seg(
    series: SourceSeries,
    aligned: npt.NDArray[Any],
    segments: Sequence[SegmentSpec],
    options: SegOptions,
    *,
    input_name: str = "",
) -> tuple[Dataset, list[str]]:
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
    descriptions = [
        segment_description(spec, number, options.algorithm) for number, spec in enumerate(segments, start=1)
    ]
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
            raise InputError(
                f"{series.describe()}: highdicom cannot build a SEG on it: {' '.join(str(exc).split())}"
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
