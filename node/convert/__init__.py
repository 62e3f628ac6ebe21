"""The conversion engine: a source series plus a label input becomes a verified DICOM SEG.

Files in, a verified SEG out: no network, no database, no configuration file. The steps, in flow order:

1. :mod:`~node.convert.series` reads the source series (with :mod:`~node.convert.planes` for the planes of
   each file and :mod:`~node.convert.stacks` to split them into stacks), on the grids of
   :mod:`~node.convert.geometry`;
2. :mod:`~node.convert.label_input` loads the label map or the folder of masks;
3. :mod:`~node.convert.label_tables` reads what tables, sidecars and the NIfTI header say about each label, and
   :mod:`~node.convert.anatomy` fills in codes and colours of known structures;
4. :func:`align` puts the labels on the series' planes (:mod:`~node.convert.geometry`);
5. :mod:`~node.convert.seg` builds the SEG with highdicom (source headers cleaned by
   :mod:`~node.convert.source_header`, UIDs derived from the inputs);
6. :mod:`~node.convert.verify` reads it back and checks it against the input.

Both `segnode convert` and the node's job worker call :func:`build_seg_from_input`; writing is atomic
(:func:`write_dataset_atomically`), so a failure never leaves a partial output file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from node.convert.alignment import (
    Alignment,
    SegmentStats,
    align_labels,
    align_planes,
    label_box,
    label_stats,
    plan_alignment,
)
from node.convert.anatomy import SegmentSpec, segment_specs
from node.convert.geometry import GRID_TOLERANCE_VOXELS, Grid
from node.convert.label_input import LabelVolume, load_label_input, nifti_stem, present_values
from node.convert.label_tables import LabelEntry, names_from_nifti_header, read_label_table
from node.convert.seg import SegOptions, build_seg
from node.convert.series import SourceSeries
from node.convert.verify import Tolerance, verify_seg
from node.durable import atomic_write
from node.errors import GeometryError, LabelError, VerificationError, error_line

__all__ = [
    "ConvertResult",
    "align",
    "build_seg_from_input",
    "error_line",
    "input_stats",
    "label_table",
    "sidecar_of",
    "tolerance_for",
    "write_dataset_atomically",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertResult:
    """A verified SEG and what it took to make it."""

    dataset: Dataset
    alignment: Alignment
    segments: list[SegmentSpec]
    #: One-line notices for the user (empty labels skipped, voxels outside the series, resampling).
    notices: list[str]
    #: The series the SEG was built on: the one given, or for a single plane the same plane as deep as the label
    #: grid's slice (:meth:`SourceSeries.with_depth_of`). What shows the SEG over its source (the QC picture) uses
    #: this one, whose slabs the SEG was verified with.
    series: SourceSeries


def sidecar_of(path: Path) -> Path | None:
    """The ``<stem>.json`` beside a label input, if there is one."""
    candidate = path.parent / f"{nifti_stem(path)}.json"
    return candidate if candidate.is_file() else None


def label_table(
    volume: LabelVolume, labels_file: Path | None, default_labels: Path | None = None
) -> dict[int, LabelEntry]:
    """Label names and codes per label, later sources winning: mask file names, names embedded in the NIfTI
    header (TotalSegmentator), the site's default table, the ``<stem>.json`` sidecar, an explicit ``--labels``."""
    table: dict[int, LabelEntry] = {label: LabelEntry(name=name) for label, name in volume.names.items()}
    if volume.header is not None and not volume.path.is_dir():
        table.update({label: LabelEntry(name=name) for label, name in names_from_nifti_header(volume.header).items()})
    for source in (default_labels, sidecar_of(volume.path), labels_file):
        if source is not None:
            table.update(read_label_table(source))
    return table


def tolerance_for(alignment: Alignment, volume: LabelVolume, series: SourceSeries) -> Tolerance:
    """The verification tolerance this alignment earns: exact grids must agree exactly."""
    label_spacing = float(volume.grid.spacing.max())
    if alignment.exact:
        # Centroids may differ only by the float32 slack the grids were allowed to have.
        return Tolerance(
            exact=True, centroid_mm=(alignment.offset_voxels + GRID_TOLERANCE_VOXELS) * label_spacing + 1e-6
        )
    planes = series.grid.spacing.copy()
    planes[0] = float(series.slabs().max())
    diagonal = max(float(np.linalg.norm(volume.grid.spacing)), float(np.linalg.norm(planes)))
    series_voxel = float(np.prod(planes))
    return Tolerance(
        exact=False,
        centroid_mm=diagonal,
        volume_fraction=0.25,
        volume_mm3=4 * max(volume.grid.voxel_volume, series_voxel),
    )


def input_stats(
    volume: LabelVolume, alignment: Alignment, series: SourceSeries, values: list[int]
) -> dict[int, SegmentStats]:
    """What the input holds within the series, measured on the input's own grid (independent of the alignment)."""
    if not alignment.exact:
        return label_stats(volume.array, volume.grid, values, within=series.grid)
    box = label_box(alignment, series.grid.shape, volume.array.shape)
    if box is None:
        return {}
    shift = np.eye(4)
    shift[:3, 3] = [b.start for b in box]
    cropped = volume.array[box]
    return label_stats(cropped, Grid(volume.grid.affine @ shift, cropped.shape), values)


def align(volume: LabelVolume, series: SourceSeries) -> tuple[np.ndarray[Any, Any], Alignment]:
    """The label array on the series' planes, and how it got there; GeometryError when they do not fit."""
    if series.regular:
        alignment = plan_alignment(series.grid, volume.grid)
        return align_labels(volume.array, series.grid.shape, alignment), alignment
    return align_planes(volume.array, volume.grid, series.plane_grids())


def build_seg_from_input(
    series: SourceSeries,
    label_path: Path,
    *,
    labels_file: Path | None = None,
    default_labels: Path | None = None,
    options: SegOptions | None = None,
) -> ConvertResult:
    """Load, align, build and verify. Raises :class:`SegnodeError` subclasses with one-line reasons."""
    options = options or SegOptions()
    volume = load_label_input(label_path)
    name = label_path.name
    notices: list[str] = list(series.notices)
    input_values = volume.values
    if not input_values:
        raise LabelError(f"{name}: label map is empty (all voxels are 0); nothing to segment")
    series = series.with_depth_of(volume.grid)
    try:
        aligned, alignment = align(volume, series)
    except GeometryError as exc:
        raise GeometryError(f"{name}: {exc}") from exc
    if not alignment.exact:
        notices.append(f"{name}: grid resampled onto the series ({alignment.describe()})")
    present = present_values(aligned)
    lost = sorted(set(input_values) - set(present))
    table = label_table(volume, labels_file, default_labels)
    if lost:
        names = ", ".join(table[v].name if v in table else str(v) for v in lost)
        notices.append(f"{name}: {len(lost)} label(s) fall outside the series and are skipped: {names}")
    if not present:
        raise GeometryError(f"{name}: no labelled voxel falls inside {series.describe()}")
    segments = segment_specs(present, table)
    expected = input_stats(volume, alignment, series, present)
    tolerance = tolerance_for(alignment, volume, series)
    input_voxel_mm3 = volume.grid.voxel_volume
    del volume  # the input array is not needed while highdicom builds (peak memory)
    dataset, repairs = build_seg(series, aligned, segments, options, input_name=name)
    notices.extend(repairs)
    del aligned
    try:
        verify_seg(dataset, expected, segments, tolerance, input_voxel_mm3=input_voxel_mm3, slab_of=series.slab_at)
    except VerificationError as exc:
        why = (
            (
                "; the series' planes are unevenly spaced and labels between them have no plane to go on (a"
                " structure that lies mostly in a gap cannot be shown)"
            )
            if alignment.per_plane
            else ""
        )
        raise VerificationError(f"{name} on {series.describe()}: {exc}{why}") from exc
    for notice in notices:
        log.info("%s", notice)
    return ConvertResult(dataset=dataset, alignment=alignment, segments=segments, notices=notices, series=series)


def write_dataset_atomically(dataset: Dataset, out: Path) -> None:
    """Write ``dataset`` to ``out`` durably: a failure leaves no partial file."""
    atomic_write(out, lambda handle: dataset.save_as(handle, enforce_file_format=True))
