"""A DICOM series as a geometric stack: instances found, grouped by series, sorted along the normal.

Headers only: pixel data is never read here (a SEG needs the source's geometry and identity, not its pixels).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node.errors import GeometryError, InputError
from node.geometry import Grid, check_orientations, slice_order, stack_grid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSeries:
    """One series ready to be segmented over.

    ``datasets`` are headers without pixel data. For single-frame series they are sorted along the slice normal, so
    ``datasets[k]`` is slice ``k`` of ``grid``. An Enhanced (multi-frame) series has one dataset and ``frame_order[k]``
    names the frame (0-based, as stored) that is slice ``k``.
    """

    series_uid: str
    datasets: tuple[Dataset, ...]
    paths: tuple[Path, ...]
    grid: Grid
    frame_order: tuple[int, ...] | None = None

    @property
    def is_multiframe(self) -> bool:
        return self.frame_order is not None

    def describe(self) -> str:
        first = self.datasets[0]
        modality = getattr(first, "Modality", "?")
        what = getattr(first, "SeriesDescription", "") or "no description"
        return f"series {self.series_uid} ({modality}, {what}, {self.grid.describe()})"


def read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file without pixel data, or None when the file is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        log.debug("%s: not read as DICOM (%s)", path, exc)
        return None


def find_series(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """All DICOM files below ``folder`` (recursively, any names), grouped by SeriesInstanceUID."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    found: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        header = read_header(path)
        if header is None or "SeriesInstanceUID" not in header:
            continue
        found.setdefault(str(header.SeriesInstanceUID), []).append((path, header))
    return found


def load_series(folder: Path, series_uid: str | None = None) -> SourceSeries:
    """The one series in ``folder`` (or the one named), sorted and checked.

    Raises
    ------
    InputError
        No DICOM in the folder, several series and none chosen, or the chosen one absent.
    GeometryError
        The series is not one regular stack.
    """
    found = find_series(folder)
    if not found:
        raise InputError(f"{folder}: no DICOM files found (searched recursively)")
    if series_uid is None:
        imaging = {uid: items for uid, items in found.items() if any(_has_geometry(h) for _, h in items)}
        if len(imaging) > 1:
            listing = "; ".join(f"{uid} ({len(items)} files)" for uid, items in sorted(imaging.items()))
            raise InputError(f"{folder}: holds {len(imaging)} series, choose one with --series: {listing}")
        series_uid = next(iter(imaging or found))
    if series_uid not in found:
        raise InputError(f"{folder}: series {series_uid} not found (present: {', '.join(sorted(found))})")
    items = found[series_uid]
    try:
        return series_from_headers([h for _, h in items], [p for p, _ in items])
    except GeometryError as exc:
        raise GeometryError(f"{folder}: series {series_uid}: {exc}") from exc


def _has_geometry(header: Dataset) -> bool:
    return "ImagePositionPatient" in header or "PerFrameFunctionalGroupsSequence" in header


def series_from_headers(headers: Sequence[Dataset], paths: Sequence[Path]) -> SourceSeries:
    """Build a :class:`SourceSeries` from the headers of one series' instances (any order)."""
    pairs = [(h, p) for h, p in zip(headers, paths, strict=True) if _has_geometry(h)]
    if not pairs:
        raise GeometryError("no instance carries a position (ImagePositionPatient): not an image series")
    skipped = len(headers) - len(pairs)
    if skipped:
        log.info("ignoring %d instance(s) without image position in the series", skipped)
    multiframe = [(h, p) for h, p in pairs if int(getattr(h, "NumberOfFrames", 1) or 1) > 1
                  or "PerFrameFunctionalGroupsSequence" in h]
    if multiframe:
        if len(pairs) > 1:
            raise GeometryError(f"the series holds {len(pairs)} instances of which {len(multiframe)} are multi-frame;"
                                " segnode takes one Enhanced object or single-frame images, not a mixture")
        header, path = multiframe[0]
        return _from_multiframe(header, path)
    return _from_single_frames([h for h, _ in pairs], [p for _, p in pairs])


def _floats(value: Any, count: int, what: str) -> list[float]:
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{what} is not numeric: {value!r}") from exc
    if len(numbers) != count:
        raise GeometryError(f"{what} must have {count} values, has {len(numbers)}")
    return numbers


def _from_single_frames(headers: Sequence[Dataset], paths: Sequence[Path]) -> SourceSeries:
    for header in headers:
        for keyword in ("ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if keyword not in header:
                raise GeometryError(f"instance {getattr(header, 'SOPInstanceUID', '?')} lacks {keyword}")
    orientation = check_orientations([_floats(h.ImageOrientationPatient, 6, "ImageOrientationPatient")
                                      for h in headers])
    positions = np.array([_floats(h.ImagePositionPatient, 3, "ImagePositionPatient") for h in headers])
    shapes = {(int(h.Rows), int(h.Columns)) for h in headers}
    spacings = {tuple(round(v, 6) for v in _floats(h.PixelSpacing, 2, "PixelSpacing")) for h in headers}
    if len(shapes) > 1 or len(spacings) > 1:
        raise GeometryError(f"slices differ in matrix {sorted(shapes)} or pixel spacing {sorted(spacings)}:"
                            " the series mixes stacks")
    order = slice_order(orientation, positions)
    (rows, cols), = shapes
    grid = stack_grid(orientation, next(iter(spacings)), positions[order], rows=rows, cols=cols)
    sorted_headers = tuple(headers[i] for i in order)
    return SourceSeries(
        series_uid=str(headers[0].SeriesInstanceUID),
        datasets=sorted_headers,
        paths=tuple(paths[i] for i in order),
        grid=grid,
    )


def functional_attribute(header: Dataset, frame: int, group: str, attribute: str) -> Any:
    """An attribute of one frame from its per-frame functional group, else from the shared group."""
    per_frame = header.PerFrameFunctionalGroupsSequence[frame]
    for groups in (per_frame, *getattr(header, "SharedFunctionalGroupsSequence", [])):
        if group in groups and attribute in groups[group][0]:
            return groups[group][0][attribute].value
    raise GeometryError(f"frame {frame + 1} has no {group} > {attribute}")


def _from_multiframe(header: Dataset, path: Path) -> SourceSeries:
    if "PerFrameFunctionalGroupsSequence" not in header:
        raise GeometryError(f"{path.name}: multi-frame object without per-frame functional groups; segnode needs"
                            " Enhanced CT/MR (or another object with plane positions per frame)")
    frames = int(getattr(header, "NumberOfFrames", len(header.PerFrameFunctionalGroupsSequence)))
    def per_frame(group: str, attribute: str, count: int) -> list[list[float]]:
        return [_floats(functional_attribute(header, f, group, attribute), count, attribute) for f in range(frames)]

    orientation = check_orientations(per_frame("PlaneOrientationSequence", "ImageOrientationPatient", 6))
    positions = np.array(per_frame("PlanePositionSequence", "ImagePositionPatient", 3))
    spacings = {tuple(round(v, 6) for v in values) for values in per_frame("PixelMeasuresSequence", "PixelSpacing", 2)}
    if len(spacings) > 1:
        raise GeometryError(f"frames differ in pixel spacing {sorted(spacings)}")
    order = slice_order(orientation, positions)
    grid = stack_grid(orientation, next(iter(spacings)), positions[order], rows=int(header.Rows),
                      cols=int(header.Columns))
    return SourceSeries(
        series_uid=str(header.SeriesInstanceUID),
        datasets=(header,),
        paths=(path,),
        grid=grid,
        frame_order=tuple(int(i) for i in order),
    )


def to_storage_order(series: SourceSeries, volume: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Reorder a (slice, row, col) volume in sorted order into the order the source stores its frames."""
    if series.frame_order is None:
        return volume
    out = np.empty_like(volume)
    out[list(series.frame_order)] = volume
    return out

