"""NIfTI + JSON sidecar of each completed series, for segmentation tools.

The NIfTI array is laid out (column, row, slice) with a RAS affine built from the same grid the SEG uses, so a
label map written on this grid maps back onto the DICOM pixels exactly (a pure axis permutation, no resampling).
"""

from __future__ import annotations

import gzip
import json
import logging
import shlex
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from node.convert.geometry import LPS_FROM_RAS, Grid, normal_of
from node.convert.pixels import read_volume
from node.convert.planes import integer_value
from node.convert.series import SourceSeries
from node.durable import atomic_write, atomic_write_json
from node.errors import InputError, SegnodeError, error_line
from node.pipeline.stage import PipelineContext, Stage
from node.pipeline.stored import stored_stacks
from node.state.model import SeriesRow, SeriesState

log = logging.getLogger(__name__)

#: ``read_volume`` lives in :mod:`node.convert.pixels` (the QC pictures read the same values); importable here too.
__all__ = ["Export", "ExportedSeries", "export_affine", "export_series", "exported_grid", "read_volume"]


@dataclass(frozen=True)
class ExportedSeries:
    """Where a series was exported, and the grid of the NIfTI written (LPS, NIfTI index order)."""

    nifti: Path
    sidecar: Path
    grid: Grid


def _compact(volume: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """int16 when the values are whole and fit (CT in HU), else float32: what segmentation tools expect."""
    if volume.dtype.kind in "iu" or np.array_equal(volume, np.round(volume)):
        low, high = volume.min(), volume.max()
        if np.iinfo(np.int16).min <= low and high <= np.iinfo(np.int16).max:
            return volume.astype(np.int16)
    return volume.astype(np.float32)


def export_affine(grid: Grid) -> npt.NDArray[np.float64]:
    """RAS affine of the export array (col, row, slice) for a source grid indexed (slice, row, col).

    >>> grid = Grid(np.array([[0, 0, 1.3, -10], [0, 0.9, 0, 20], [2.5, 0, 0, 30], [0, 0, 0, 1.0]]), (4, 5, 6))
    >>> (export_affine(grid)[:3] + 0.0).tolist()
    [[-1.3, 0.0, 0.0, 10.0], [0.0, -0.9, 0.0, -20.0], [0.0, 0.0, 2.5, 30.0]]
    """
    to_col_row_slice = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    return np.asarray(LPS_FROM_RAS @ grid.affine @ to_col_row_slice, dtype=np.float64)


def export_series(series: SourceSeries, folder: Path, *, version: int = 1) -> ExportedSeries:
    """Write ``<uid>.nii.gz`` and ``<uid>.json`` into ``folder`` atomically (sidecar last, so it marks completion)."""
    folder.mkdir(parents=True, exist_ok=True)
    volume = read_volume(series)
    if not series.regular:
        # Nearest plane per even slice: a label map of this volume maps back exactly-or-nearest onto the planes.
        volume = volume[series.even_slice_planes()]
    data = np.transpose(_compact(volume), (2, 1, 0))
    affine = export_affine(series.grid)
    image = nib.Nifti1Image(data, affine)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    uid = series.series_uid
    nifti = folder / f"{series.stem}.nii.gz"
    sidecar = folder / f"{series.stem}.json"
    # Level 1: a CT volume compresses nearly as well and several times faster than gzip's default.
    atomic_write(
        nifti, lambda handle: handle.write(gzip.compress(image.to_bytes(), compresslevel=1)), sync_folder=False
    )
    first = series.datasets[0]
    description: dict[str, Any] = {
        "SeriesInstanceUID": uid,
        "StudyInstanceUID": str(getattr(first, "StudyInstanceUID", "")),
        "FrameOfReferenceUID": str(getattr(first, "FrameOfReferenceUID", "")),
        "Modality": str(getattr(first, "Modality", "")),
        "SeriesDescription": str(getattr(first, "SeriesDescription", "")),
        "SeriesNumber": integer_value(first.get("SeriesNumber")),
        "shape": list(data.shape),
        "spacing_mm": [round(float(s), 6) for s in np.linalg.norm(affine[:3, :3], axis=0)],
        "affine_ras": np.asarray(affine).round(6).tolist(),
        "instances": series.plane_count,
        "stack": {
            "index": series.stack.index,
            "count": series.stack.count,
            "key": series.stack.key,
            "planes": series.plane_count,
            "sop_instance_uids": _instance_uids(series),
        },
        "export_version": version,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "nifti": nifti.name,
    }
    if not series.regular:
        gaps = np.diff(series.positions @ normal_of(series.orientation))
        description["resampled"] = {
            "reason": "uneven slice spacing",
            "plane_gaps_mm": [round(float(gaps.min()), 4), round(float(gaps.max()), 4)],
            "slice_step_mm": round(float(np.linalg.norm(series.grid.affine[:3, 0])), 6),
            "method": "nearest plane per slice; a label map on this grid maps back onto the real planes",
        }
    atomic_write_json(sidecar, description)
    # Whose series it is helps an operator find it in the PACS; [logging] include_phi decides if it is printed.
    patient = {key: str(first.get(key, "")) for key in ("PatientName", "PatientID", "PatientBirthDate")}
    log.info("exported series %s: %s (%s)", uid, nifti.name, series.describe(), extra={"phi": patient})
    return ExportedSeries(nifti=nifti, sidecar=sidecar, grid=Grid(LPS_FROM_RAS @ affine, data.shape))


def _instance_uids(series: SourceSeries) -> list[str]:
    return sorted({str(ds.get("SOPInstanceUID", "")) for ds in series.datasets})


def exported_grid(sidecar: Path) -> Grid | None:
    """The export grid recorded in a sidecar (for matching by geometry), or None if unreadable."""
    try:
        content = json.loads(sidecar.read_text(encoding="utf-8"))
        return Grid(LPS_FROM_RAS @ np.asarray(content["affine_ras"], dtype=np.float64), tuple(content["shape"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable export sidecar (%s)", sidecar, exc)
        return None


class Export(Stage):
    """COMPLETE -> EXPORTED: one NIfTI per stack, then the export command hook (if configured) for each.

    A stack that cannot be exported is logged and skipped; a series none of whose stacks can be exported fails
    with the reasons. With ``[export] enabled = false`` complete series stay complete.
    """

    name = "export"

    def __init__(self, context: PipelineContext) -> None:
        super().__init__(context)
        self._commands = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-command")
        self._running: list[Future[None]] = []

    def step(self) -> int:
        if not self.context.config.export.enabled:
            return 0
        rows = self.state.series.claim_in_state(SeriesState.COMPLETE, now=self.context.clock())
        for row in rows:
            if self.context.stopping.is_set():
                self.state.series.release(row.series_uid)
                continue
            self._export(row)
        return len(rows)

    def busy(self) -> bool:
        self._running = [f for f in self._running if not f.done()]
        return bool(self._running)

    def _export(self, row: SeriesRow) -> None:
        uid, paths = row.series_uid, self.context.config.paths
        exported: list[ExportedSeries] = []
        try:
            stacks = stored_stacks(self.state.series, uid)
            for notice in stacks[0].notices:
                log.info("series %s: %s", uid, notice)
            problems = []
            for stack in stacks:
                try:
                    exported.append(export_series(stack, paths.export, version=row.revision))
                except SegnodeError as exc:
                    problems.append(f"{stack.stack.describe()}: {error_line(exc)}")
            if not exported:
                raise InputError("; ".join(problems))
            for problem in problems:
                log.warning("series %s: not exported: %s", uid, problem)
        except SegnodeError as exc:
            reason = f"series {uid}: {error_line(exc)}"
            log.warning("%s", reason)
            if self.state.series.mark(uid, SeriesState.FAILED, reason=reason, if_revision=row.revision):
                self.context.events.series_failed()
            return
        except Exception as exc:  # one bad series must not stop the stage; the reason is kept with the series
            log.exception("series %s: unexpected error", uid)
            if self.state.series.mark(
                uid,
                SeriesState.FAILED,
                reason=f"series {uid}: unexpected error: {error_line(exc)}",
                if_revision=row.revision,
            ):
                self.context.events.series_failed()
            return
        marked = self.state.series.mark(
            uid, SeriesState.EXPORTED, export_version=row.revision, if_revision=row.revision
        )
        if marked and self.context.config.export.command:
            for export in exported:
                self._running.append(self._commands.submit(self._run_command, export, uid))

    def _run_command(self, export: ExportedSeries, series_uid: str) -> None:
        config = self.context.config
        values = {
            "nifti": str(export.nifti),
            "sidecar": str(export.sidecar),
            "series_uid": series_uid,
            "inbox": str(config.paths.inbox),
        }
        # Placeholders are filled after splitting, so paths with spaces stay one argument and nothing reaches a shell.
        argv = [part.format(**values) for part in shlex.split(config.export.command)]
        timeout = config.export.command_timeout
        log.info("series %s: running %s", series_uid, argv[0])
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            log.error("series %s: export command timed out after %g s", series_uid, timeout)
            return
        except OSError as exc:
            log.error("series %s: export command could not start: %s", series_uid, exc)
            return
        for stream, text in (("stdout", done.stdout), ("stderr", done.stderr)):
            for line in text.splitlines()[-50:]:
                log.info("series %s: command %s: %s", series_uid, stream, line)
        if done.returncode:
            log.error("series %s: export command exited with %d", series_uid, done.returncode)

    def close(self) -> None:
        self._commands.shutdown(wait=False, cancel_futures=True)
