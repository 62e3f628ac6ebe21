"""DICOM series as geometric stacks: instances found, grouped by series, split into stacks, sorted along the normal.

Headers only: pixel data is never read here (a SEG needs the source's geometry and identity, not its pixels).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from node.convert.geometry import (
    FloatArray,
    Grid,
    UnevenSpacingError,
    check_orientations,
    even_stack_grid,
    normal_of,
    slice_order,
    stack_grid,
)
from node.convert.planes import Plane, check_pixel_data_size, has_planes, planes_of
from node.convert.stacks import StackInfo, split_stacks
from node.errors import GeometryError, InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SourceSeries:
    """One stack of a series, ready to be segmented over.

    ``datasets`` are headers without pixel data. For single-frame images they are sorted along the slice normal,
    so ``datasets[k]`` is plane ``k``. A stack of an Enhanced (multi-frame) object has that one dataset, and
    ``frame_order[k]`` names the frame (0-based, as stored) that is plane ``k``.

    ``grid`` is the planes' own grid when they are evenly spaced (``regular``). When they are not, ``grid`` is an
    evenly resampled grid over the same extent (what the export writes) and each plane is placed by its own
    position in ``positions``.
    """

    series_uid: str
    datasets: tuple[Dataset, ...]
    paths: tuple[Path, ...]
    grid: Grid
    #: Plane positions (LPS mm, shape (planes, 3)), sorted along the normal.
    positions: FloatArray
    #: The stack's one ImageOrientationPatient (planes whose values differ in the last digits share it).
    orientation: FloatArray
    #: DICOM PixelSpacing of the planes, as the source states it: [between rows, between columns].
    pixel_spacing: tuple[float, float]
    frame_order: tuple[int, ...] | None = None
    regular: bool = True
    #: The plane's SliceThickness (mm), if the source gives one.
    thickness: float | None = None
    stack: StackInfo = field(default_factory=StackInfo)
    #: One-line notices about how the series was read (instances left out, stacks split off).
    notices: tuple[str, ...] = ()

    @property
    def is_multiframe(self) -> bool:
        return self.frame_order is not None

    @property
    def plane_count(self) -> int:
        return len(self.positions)

    @property
    def stem(self) -> str:
        """The name of this stack's export (and of a label map matched to it by name)."""
        return f"{self.series_uid}{self.stack.suffix}"

    def plane_grids(self) -> list[Grid]:
        """One single-plane grid per plane, each as deep as the slab it stands for (half-way to its neighbours)."""
        normal = normal_of(self.orientation)
        # Along the stack's own slice axis (sheared under gantry tilt), so each plane lines up with ``grid``.
        step = self.grid.affine[:3, 0] / abs(float(self.grid.affine[:3, 0] @ normal))
        grids = []
        for position, slab in zip(self.positions, self.slabs(), strict=True):
            affine = self.grid.affine.copy()
            affine[:3, 0] = step * slab
            affine[:3, 3] = position
            grids.append(Grid(affine, (1, *self.grid.shape[1:])))
        return grids

    def slabs(self) -> FloatArray:
        """Thickness (mm) along the normal that each plane stands for."""
        if self.regular:
            return np.full(self.plane_count, abs(float(self.grid.affine[:3, 0] @ normal_of(self.orientation))))
        return plane_slabs(self.positions @ normal_of(self.orientation), self.thickness)

    def slab_at(self, position: FloatArray) -> float:
        """Thickness of the plane nearest to ``position`` (for weighing what a SEG frame there holds)."""
        normal = normal_of(self.orientation)
        nearest = int(np.argmin(np.abs(self.positions @ normal - np.asarray(position) @ normal)))
        return float(self.slabs()[nearest])

    def even_slice_planes(self) -> npt.NDArray[np.intp]:
        """For each slice of ``grid``, the plane nearest to it (the identity for a regular stack)."""
        normal = normal_of(self.orientation)
        slices = np.array([self.grid.point((k, 0, 0)) for k in range(self.grid.shape[0])]) @ normal
        planes = self.positions @ normal
        return np.asarray(np.argmin(np.abs(slices[:, None] - planes[None, :]), axis=1), dtype=np.intp)

    def with_depth_of(self, label: Grid) -> SourceSeries:
        """A single plane covers what a label grid's slice covers, when one of its axes is along the normal.

        A plane has no step of its own; taking the label's makes a label map on a converter's grid (dcm2niix uses
        the slice thickness, our export 1 mm) line up exactly instead of being resampled.
        """
        if self.plane_count != 1:
            return self
        normal = normal_of(self.orientation)
        axes = label.affine[:3, :3]
        lengths = np.linalg.norm(axes, axis=0)
        cosines = np.abs(normal @ axes) / lengths
        best = int(np.argmax(cosines))
        if cosines[best] < 1 - 1e-6:
            return self
        affine = self.grid.affine.copy()
        affine[:3, 0] = normal * lengths[best]
        return replace(self, grid=Grid(affine, self.grid.shape))

    def describe(self) -> str:
        first = self.datasets[0]
        modality = getattr(first, "Modality", "?")
        what = getattr(first, "SeriesDescription", "") or "no description"
        stack = f", {self.stack.describe()}" if self.stack.count > 1 else ""
        planes = "" if self.regular else f", {self.plane_count} unevenly spaced planes"
        return f"series {self.series_uid} ({modality}, {what}{stack}, {self.grid.describe()}{planes})"


def plane_slabs(distances: FloatArray, thickness: float | None) -> FloatArray:
    """Thickness (mm) each plane stands for: half-way to each neighbour; a lone plane its own thickness.

    >>> plane_slabs(np.array([0.0, 2.0, 6.0]), None).tolist()
    [2.0, 3.0, 4.0]
    """
    if len(distances) == 1:
        return np.array([thickness if thickness else 1.0])
    gaps = np.diff(distances)
    before = np.concatenate([gaps[:1], gaps])
    after = np.concatenate([gaps, gaps[-1:]])
    return np.asarray((before + after) / 2, dtype=np.float64)


def read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file without pixel data, or None when the file is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    # pydicom's parser raises whatever a truncated or corrupt file makes it hit (struct.error, IndexError, ...):
    # for any of them the answer is the same, the file is not usable DICOM, and the caller says which file it was.
    except Exception as exc:
        log.debug("%s: not read as DICOM (%s: %s)", path, type(exc).__name__, exc)
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


def _imaging(found: dict[str, list[tuple[Path, Dataset]]]) -> dict[str, list[tuple[Path, Dataset]]]:
    return {uid: items for uid, items in found.items() if any(has_planes(h) for _, h in items)}


def find_stacks(folder: Path, series_uid: str | None = None) -> list[SourceSeries]:
    """Every stack of the one series in ``folder`` (or of the one named), main stack first.

    Raises
    ------
    InputError
        No DICOM in the folder, several series and none chosen, or the chosen one absent.
    GeometryError
        The series holds no usable stack.
    """
    found = find_series(folder)
    if not found:
        raise InputError(f"{folder}: no DICOM files found (searched recursively)")
    if series_uid is None:
        imaging = _imaging(found)
        if len(imaging) > 1:
            listing = "; ".join(f"{uid} ({len(items)} files)" for uid, items in sorted(imaging.items()))
            raise InputError(f"{folder}: holds {len(imaging)} series, choose one with --series: {listing}")
        series_uid = next(iter(imaging or found))
    if series_uid not in found:
        raise InputError(f"{folder}: series {series_uid} not found (present: {', '.join(sorted(found))})")
    items = found[series_uid]
    try:
        return stacks_from_headers([h for _, h in items], [p for p, _ in items])
    except GeometryError as exc:
        raise GeometryError(f"{folder}: series {series_uid}: {exc}") from exc


def load_series(folder: Path, series_uid: str | None = None, stack: int | None = None) -> SourceSeries:
    """One stack of the series in ``folder``: the one numbered ``stack``, or the only one.

    Raises
    ------
    InputError
        As :func:`find_stacks`; also when the series has several stacks and none was chosen, listing them.
    """
    stacks = find_stacks(folder, series_uid)
    return choose_stack(stacks, stack, str(folder))


def choose_stack(stacks: Sequence[SourceSeries], index: int | None, where: str) -> SourceSeries:
    """Stack ``index`` (1-based), or the only one; InputError listing the stacks otherwise."""
    if index is None and len(stacks) == 1:
        return stacks[0]
    for candidate in stacks:
        if candidate.stack.index == index:
            return candidate
    asked = "choose one with --stack" if index is None else f"there is no stack {index}"
    raise InputError(
        f"{where}: series {stacks[0].series_uid} holds {len(stacks)} stacks, {asked}: " + list_stacks(stacks)
    )


def list_stacks(stacks: Sequence[SourceSeries]) -> str:
    """One-line listing of stacks for refusals: number, planes, what tells each apart."""
    return "; ".join(
        f"stack {s.stack.index}: {s.plane_count} planes"
        + (f" ({', '.join(f'{k} {v}' for k, v in s.stack.key.items())})" if s.stack.key else "")
        for s in stacks
    )


def stacks_from_headers(headers: Sequence[Dataset], paths: Sequence[Path]) -> list[SourceSeries]:
    """Every stack of one series from its instances' headers (any order), main stack first."""
    pairs = [(h, p) for h, p in zip(headers, paths, strict=True) if has_planes(h)]
    if not pairs:
        raise GeometryError("no instance carries a position (ImagePositionPatient): not an image series")
    image_classes = {str(h.get("SOPClassUID", "")) for h, _ in pairs}
    for header in headers:
        if not has_planes(header) and str(header.get("SOPClassUID", "")) in image_classes:
            raise GeometryError(
                f"instance {header.get('SOPInstanceUID', '?')} has no ImagePositionPatient, unlike"
                f" the series' other images of its class: it cannot be placed in the patient"
            )
    notices: list[str] = []
    if skipped := len(headers) - len(pairs):
        notices.append(f"{skipped} instance(s) without an image position (not images) left out")
    for header, path in pairs:
        check_pixel_data_size(header, path)
    planes = [plane for i, (header, _) in enumerate(pairs) for plane in planes_of(header, i)]
    uids = [str(h.get("SOPInstanceUID", "")) for h, _ in pairs]
    stacks, left_out = split_stacks(planes, uids)
    notices.extend(left_out)
    if len(stacks) > 1:
        notices.append(f"the series holds {len(stacks)} stacks: " + "; ".join(info.describe() for info, _ in stacks))
    return [_source(info, group, pairs, tuple(notices)) for info, group in stacks]


def _source(
    info: StackInfo, planes: list[Plane], pairs: Sequence[tuple[Dataset, Path]], notices: tuple[str, ...]
) -> SourceSeries:
    unsorted = np.array([p.position for p in planes])
    order = slice_order(check_orientations([p.orientation for p in planes]), unsorted)
    planes = [planes[i] for i in order]
    positions = unsorted[order]
    first = planes[0]
    orientation = first.orientation
    thickness = first.thickness
    regular = True
    try:
        grid = stack_grid(orientation, first.spacing, positions, rows=first.rows, cols=first.cols, thickness=thickness)
    except UnevenSpacingError as exc:
        grid = even_stack_grid(orientation, first.spacing, positions, rows=first.rows, cols=first.cols)
        regular = False
        notices = (
            *notices,
            f"{exc}: each plane takes its labels in patient space; the export is resampled"
            f" to {grid.shape[0]} even slices",
        )
    header, path = pairs[first.instance]
    multiframe = first.frame is not None
    return SourceSeries(
        series_uid=str(header.SeriesInstanceUID),
        datasets=(header,) if multiframe else tuple(pairs[p.instance][0] for p in planes),
        paths=(path,) if multiframe else tuple(pairs[p.instance][1] for p in planes),
        grid=grid,
        positions=positions,
        orientation=orientation,
        pixel_spacing=first.spacing,
        frame_order=tuple(int(p.frame) for p in planes if p.frame is not None) if multiframe else None,
        regular=regular,
        thickness=thickness,
        stack=info,
        notices=notices,
    )


def functional_attribute(header: Dataset, frame: int, group: str, attribute: str) -> Any:
    """An attribute of one frame from its per-frame functional group, else from the shared group."""
    per_frame = header.PerFrameFunctionalGroupsSequence[frame]
    for groups in (per_frame, *getattr(header, "SharedFunctionalGroupsSequence", [])):
        if group in groups and groups[group].value and attribute in groups[group][0]:
            return groups[group][0][attribute].value
    raise GeometryError(f"frame {frame + 1} has no {group} > {attribute}")
