"""The image planes of a series' headers: one per single-frame instance, one per frame of a multi-frame one.

A plane carries its geometry and the attributes that tell stacks apart (echo, image type, temporal position,
diffusion, stack ID, ...), read the same way whether they sit at the top level of a classic image or in the
per-frame or shared functional groups of an Enhanced object (the standard allows either).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from node.convert.geometry import FloatArray
from node.errors import GeometryError

#: Attributes that tell stacks of one series apart, in the order they are tried when positions repeat.
TRAITS = (
    "ImageType",
    "EchoNumbers",
    "EffectiveEchoTime",
    "TemporalPositionIdentifier",
    "TemporalPositionIndex",
    "TriggerTime",
    "DiffusionBValue",
    "DiffusionGradientOrientation",
    "StackID",
    "AcquisitionNumber",
)

#: Vendors' private b-value and gradient attributes, for classic images that lack the standard ones.
_PRIVATE_B_VALUES = (Tag(0x0019, 0x100C), Tag(0x0043, 0x1039), Tag(0x2001, 0x1003))
_PRIVATE_GRADIENTS = (Tag(0x0019, 0x100E),)
#: Siemens' private "number of images in mosaic".
_MOSAIC_COUNT = Tag(0x0019, 0x100A)


@dataclass(frozen=True, eq=False)
class Plane:
    """One image plane of a series: where it is, and what tells its stack apart from others."""

    #: Index of the instance in the header list it was read from.
    instance: int
    #: 0-based frame of a multi-frame object; None for a single-frame image.
    frame: int | None
    orientation: FloatArray
    position: FloatArray
    #: DICOM PixelSpacing: [between rows, between columns].
    spacing: tuple[float, float]
    rows: int
    cols: int
    thickness: float | None
    #: Values of :data:`TRAITS` ("" where absent), in that order.
    traits: tuple[str, ...]


def _text(value: Any) -> str:
    """A header value as comparable text: multi-valued joined with backslashes, numbers normalised."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str):
        return value.strip()
    try:
        items = list(value)
    except TypeError:
        items = [value]
    parts = []
    for item in items:
        try:
            number = float(item)
            parts.append(f"{number:.6g}" if math.isfinite(number) else str(item))
        except (TypeError, ValueError):
            parts.append(str(item).strip())
    return "\\".join(parts)


def _floats(value: Any, count: int, what: str, where: str) -> FloatArray:
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{where}: {what} is not numeric ({value!r})") from exc
    if numbers.shape != (count,):
        raise GeometryError(f"{where}: {what} must have {count} values, has {numbers.size}")
    if not np.all(np.isfinite(numbers)):
        raise GeometryError(f"{where}: {what} holds a value that is not a finite number ({value!r})")
    return numbers


def _size(header: Dataset, keyword: str, where: str) -> int:
    value = header.get(keyword)
    try:
        size = int(value)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{where}: {keyword} is missing or not a number ({value!r})") from exc
    if not 0 < size < 65536:
        raise GeometryError(f"{where}: {keyword} = {size} is not a usable image size")
    return size


def integer_value(value: Any) -> int | None:
    """A header's single integer value (IS, US, ...), or None when absent, empty, multi-valued or not a number.

    >>> integer_value("12"), integer_value(["1", "2"]), integer_value("x")
    (12, None, None)
    """
    if not isinstance(value, int | float | str) or not str(value).strip():
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _count(value: Any, default: int = 0) -> int:
    """A count attribute as an int; ``default`` when it is not one usable integer."""
    number = integer_value(value)
    return default if number is None else number


def _thickness(value: Any) -> float | None:
    try:
        thickness = float(value)
    except (TypeError, ValueError):
        return None
    return thickness if math.isfinite(thickness) and thickness > 0 else None


def _item(container: Dataset, keyword: str) -> Dataset | None:
    """The first item of a sequence attribute, or None when absent or empty."""
    sequence = container.get(keyword)
    try:
        return sequence[0] if sequence else None
    except (TypeError, IndexError):
        return None


def _lookup(groups: list[Dataset], path: tuple[str, ...]) -> Any:
    """Follow ``path`` (sequence keywords, then an attribute) through the first group that has it."""
    for group in groups:
        node: Dataset | None = group
        for keyword in path[:-1]:
            node = _item(node, keyword) if node is not None else None
        if node is not None and path[-1] in node:
            return node[path[-1]].value
    return None


def _where(header: Dataset, frame: int | None) -> str:
    uid = str(header.get("SOPInstanceUID", "?"))
    return f"instance {uid}" if frame is None else f"instance {uid} frame {frame + 1}"


def is_mosaic(header: Dataset) -> bool:
    """Whether a classic image is a Siemens mosaic: many slices tiled into one frame."""
    image_type = _text(header.get("ImageType")).upper().split("\\")
    return "MOSAIC" in image_type or _MOSAIC_COUNT in header


def _classic_traits(header: Dataset) -> tuple[str, ...]:
    values = {keyword: _text(header.get(keyword)) for keyword in TRAITS}
    if not values["DiffusionBValue"]:
        values["DiffusionBValue"] = next((_text(header[t].value) for t in _PRIVATE_B_VALUES if t in header), "")
    if not values["DiffusionGradientOrientation"]:
        values["DiffusionGradientOrientation"] = next(
            (_text(header[t].value) for t in _PRIVATE_GRADIENTS if t in header), ""
        )
    return tuple(values[keyword] for keyword in TRAITS)


def _classic_plane(header: Dataset, instance: int) -> Plane:
    where = _where(header, None)
    for keyword in ("ImageOrientationPatient", "PixelSpacing"):
        if keyword not in header or header[keyword].value in (None, ""):
            raise GeometryError(f"{where} lacks {keyword}")
    spacing = _floats(header.PixelSpacing, 2, "PixelSpacing", where)
    return Plane(
        instance=instance,
        frame=None,
        orientation=_floats(header.ImageOrientationPatient, 6, "ImageOrientationPatient", where),
        position=_floats(header.ImagePositionPatient, 3, "ImagePositionPatient", where),
        spacing=(float(spacing[0]), float(spacing[1])),
        rows=_size(header, "Rows", where),
        cols=_size(header, "Columns", where),
        thickness=_thickness(header.get("SliceThickness")),
        traits=_classic_traits(header),
    )


#: Where each trait sits in the functional groups of an Enhanced object.
_FRAME_TRAITS: dict[str, tuple[str, ...]] = {
    "ImageType": ("MRImageFrameTypeSequence", "FrameType"),
    "EffectiveEchoTime": ("MREchoSequence", "EffectiveEchoTime"),
    "TemporalPositionIndex": ("FrameContentSequence", "TemporalPositionIndex"),
    "TriggerTime": ("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"),
    "DiffusionBValue": ("MRDiffusionSequence", "DiffusionBValue"),
    "DiffusionGradientOrientation": (
        "MRDiffusionSequence",
        "DiffusionGradientDirectionSequence",
        "DiffusionGradientOrientation",
    ),
    "StackID": ("FrameContentSequence", "StackID"),
}
_FRAME_TYPE_FALLBACK = ("CTImageFrameTypeSequence", "FrameType")


def _frame_planes(header: Dataset, instance: int) -> Iterator[Plane]:
    where = _where(header, None)
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
    shared = _item(header, "SharedFunctionalGroupsSequence")
    frames = _count(header.get("NumberOfFrames"))
    if frames < 1 or len(per_frame) != frames:
        raise GeometryError(
            f"{where}: NumberOfFrames ({header.get('NumberOfFrames')!r}) does not match its"
            f" {len(per_frame)} per-frame functional group item(s)"
        )
    rows, cols = _size(header, "Rows", where), _size(header, "Columns", where)
    for frame, item in enumerate(per_frame):
        groups = [item, shared] if shared is not None else [item]
        at = _where(header, frame)

        def value(path: tuple[str, ...], what: str, groups: list[Dataset] = groups, at: str = at) -> Any:
            found = _lookup(groups, path)
            if found is None or found == "":
                raise GeometryError(f"{at} has no {' > '.join(path)} ({what})")
            return found

        spacing = _floats(value(("PixelMeasuresSequence", "PixelSpacing"), "pixel spacing"), 2, "PixelSpacing", at)
        traits = {keyword: _text(_lookup(groups, path)) for keyword, path in _FRAME_TRAITS.items()}
        if not traits["ImageType"]:
            traits["ImageType"] = _text(_lookup(groups, _FRAME_TYPE_FALLBACK))
        yield Plane(
            instance=instance,
            frame=frame,
            orientation=_floats(
                value(("PlaneOrientationSequence", "ImageOrientationPatient"), "orientation"),
                6,
                "ImageOrientationPatient",
                at,
            ),
            position=_floats(
                value(("PlanePositionSequence", "ImagePositionPatient"), "position"), 3, "ImagePositionPatient", at
            ),
            spacing=(float(spacing[0]), float(spacing[1])),
            rows=rows,
            cols=cols,
            thickness=_thickness(_lookup(groups, ("PixelMeasuresSequence", "SliceThickness"))),
            traits=tuple(traits.get(keyword, "") for keyword in TRAITS),
        )


def is_multiframe(header: Dataset) -> bool:
    """Whether the instance keeps its planes in functional groups (Enhanced CT/MR and the like)."""
    return "PerFrameFunctionalGroupsSequence" in header


def has_planes(header: Dataset) -> bool:
    """Whether the instance is an image with a place in the patient (not a report, a DICOMDIR or a localiser-less
    secondary capture)."""
    return "ImagePositionPatient" in header or is_multiframe(header)


def planes_of(header: Dataset, instance: int) -> list[Plane]:
    """Every plane of one instance; GeometryError when its geometry cannot be read."""
    if is_multiframe(header):
        return list(_frame_planes(header, instance))
    if is_mosaic(header):
        count = header.get(_MOSAIC_COUNT)
        slices = f"{_text(count.value)} slices" if count is not None else "many slices"
        raise GeometryError(
            f"{_where(header, None)} is a Siemens mosaic ({slices} tiled in one"
            f" {header.get('Rows', '?')}x{header.get('Columns', '?')} image): segnode does not unpack mosaics;"
            " export the series from the scanner without mosaic, or segment a dcm2niix conversion elsewhere"
        )
    if _count(header.get("NumberOfFrames"), default=1) > 1:
        raise GeometryError(
            f"{_where(header, None)} has {header.NumberOfFrames} frames but no per-frame"
            " functional groups: segnode cannot place its frames in the patient"
        )
    return [_classic_plane(header, instance)]


def check_pixel_data_size(header: Dataset, path: Path) -> None:
    """Refuse an uncompressed instance whose Rows, Columns and frames ask for more pixel data than its file holds.

    Without this an absurd header (65535 rows) makes every later step allocate volumes of that size.
    """
    meta = getattr(header, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if syntax is None or not isinstance(syntax, UID) or syntax.is_compressed:
        return
    where = _where(header, None)
    rows, cols = _size(header, "Rows", where), _size(header, "Columns", where)
    bits = _count(header.get("BitsAllocated"), default=8)
    samples = _count(header.get("SamplesPerPixel"), default=1)
    frames = max(1, _count(header.get("NumberOfFrames"), default=1))
    needed = rows * cols * frames * samples * max(bits, 1) // 8
    try:
        size = path.stat().st_size
    except OSError:
        return
    if size < needed:
        raise GeometryError(
            f"{where}: {rows}x{cols} pixels x {frames} frame(s) need {needed} bytes of pixel data,"
            f" but the file holds {size}: its header does not describe its pixels"
        )
