"""Retention: what is finished and older than ``[retention] days`` is removed, files and state rows.

Age is measured from the last activity the state knows (the last instance received or the series' last state
change; the job's last update), never from a file's age. Removed, once old enough:

* finished jobs (SENT, or FAILED: terminal either way, so their reason goes too) with their SEG in ``segs/``
  (unless another job still uses the same file) and their inbox item in ``processed/`` or ``failed/`` (the item's
  folder, found by the signature its ``reason.txt`` records);
* finished series (exported or failed; complete too when export is off) with their instance files and folder
  and their exports (``<uid>.nii.gz``, ``.json``, ``_stackN`` files).

Nothing that is still on its way is touched: not a receiving series, not a job that is pending, building or has a
send open, not a series such a job refers to (nor any series while a job waits to be matched). The state row is
removed first, in one transaction that re-checks all this, then the files; a file written after the cut-off (an
instance re-sent while the sweep ran) is never deleted. A crash between the two leaves a few files for the
operator, never a row whose files are gone.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from node.pipeline.filing import item_label, moved_item_folders
from node.pipeline.inbox import REASON_FILE
from node.pipeline.qc import qc_paths
from node.pipeline.stage import PipelineContext, Stage
from node.state.model import FINISHED_SERIES, JobRow, SeriesState

log = logging.getLogger(__name__)

#: Seconds between sweeps: retention counts in days, so a few minutes late is nothing.
SWEEP_SECONDS = 300.0
#: Rows handled per step (one state query), so a sweep over a large backlog never makes one step outlast
#: ``[node] stall_seconds`` and stops promptly when the node stops.
BATCH = 200
DAY_SECONDS = 86_400.0


@dataclass
class Sweep:
    """What one sweep removed."""

    series: int = 0
    instances: int = 0
    exports: int = 0
    jobs: int = 0
    segs: int = 0
    items: int = 0

    def describe(self, days: float) -> str:
        return (
            f"retention: removed {self.series} series ({self.instances} instance files, {self.exports} export files)"
            f" and {self.jobs} jobs ({self.segs} SEGs, {self.items} inbox items) finished more than {days:g} days ago"
        )


def _remove_file(path: Path, before: float) -> bool:
    """Delete ``path`` unless it is gone or was written at or after ``before`` (then it is new, not ours)."""
    try:
        if path.stat().st_mtime >= before:
            log.info("retention: %s was written after the cut-off; kept", path)
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _remove_item_folders(folders: dict[str, list[Path]], job: JobRow, before: float) -> int:
    """Remove the folders :func:`node.pipeline.filing.move_item` made for this job's item (``folders``: one root's,
    by :func:`~node.pipeline.filing.moved_item_folders`); a folder changed at or after ``before`` is kept.
    Returns how many went."""
    candidates = folders.get(item_label(job.inbox_path.name), [])
    signature = f"signature: {job.signature}\n"
    removed = 0
    for folder in list(candidates):
        try:
            text = (folder / REASON_FILE).read_text(encoding="utf-8", errors="replace")
            changed = folder.stat().st_mtime
        except OSError:
            continue
        if signature not in text:
            continue
        if changed >= before:
            log.info("retention: %s was written after the cut-off; kept", folder)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        candidates.remove(folder)
        removed += 1
    return removed


@dataclass
class _Running:
    """A sweep under way over several steps: its cut-off, what it removed so far and what it has looked at."""

    before: float
    sweep: Sweep = field(default_factory=Sweep)
    jobs_done: bool = False
    seen_jobs: set[int] = field(default_factory=set)
    seen_series: set[str] = field(default_factory=set)
    #: processed/ and failed/ by item label, scanned once per sweep (when a first job goes), not once per job.
    folders: list[dict[str, list[Path]]] | None = None


class Retention(Stage):
    """Removes finished series and jobs older than ``[retention] days`` (0: keeps everything); see the module.

    A sweep runs over several steps, one batch of :data:`BATCH` rows each (jobs first, then series), so that no
    step of a large backlog outlasts ``[node] stall_seconds``: a step returns how many rows its batch held, the
    node's loop calls again at once and beats in between. The sweep ends at the first empty batch of series; only
    then is its time taken, and the next one starts :data:`SWEEP_SECONDS` later.
    """

    name = "retention"

    def __init__(self, context: PipelineContext) -> None:
        super().__init__(context)
        self._last_sweep: float | None = None
        self._running: _Running | None = None

    def step(self) -> int:
        days = self.context.config.retention.days
        now = self.context.clock()
        if days <= 0:
            self._running = None
            return 0
        if self._stopping():
            return 0
        running = self._running
        if running is None:
            if self._last_sweep is not None and now - self._last_sweep < SWEEP_SECONDS:
                return 0
            running = self._running = _Running(before=now - days * DAY_SECONDS)
        # Jobs first: a series is kept while a job that is not yet removed refers to it.
        if not running.jobs_done:
            handled = self._jobs(running, now)
            if handled is not None:
                return handled
            running.jobs_done = True
        handled = self._series(running, now)
        if handled is not None:
            return handled
        self._running = None
        self._last_sweep = now
        sweep = running.sweep
        if sweep.series or sweep.jobs:
            log.info("%s", sweep.describe(days))
        else:
            log.debug("%s", sweep.describe(days))
        return 0

    def _stopping(self) -> bool:
        return self.context.stopping.is_set()

    def _jobs(self, running: _Running, now: float) -> int | None:
        """One batch of expired jobs removed; how many it held, None when there were none left."""
        paths, store, before, sweep = self.context.config.paths, self.state.jobs, running.before, running.sweep
        batch = [job for job in store.expired_jobs(before, now=now, limit=BATCH) if job.id not in running.seen_jobs]
        if not batch:
            return None
        for job in batch:
            if self._stopping():
                break
            running.seen_jobs.add(job.id)
            removed = store.remove_job(job.id, before=before, now=now)
            if removed is None:
                continue
            sweep.jobs += 1
            seg = removed.job.seg_path
            if seg is not None and not removed.seg_shared:
                sweep.segs += _remove_file(seg, before)
                # Also when the SEG file is gone already: its pictures are no one else's.
                for path in qc_paths(self.context.config, seg.stem):  # the SEG's file is <SOPInstanceUID>.dcm
                    _remove_file(path, before)
            if running.folders is None:
                running.folders = [moved_item_folders(paths.processed), moved_item_folders(paths.failed)]
            sweep.items += sum(_remove_item_folders(root, removed.job, before) for root in running.folders)
        return len(batch)

    def _series(self, running: _Running, now: float) -> int | None:
        """One batch of expired series removed; how many it held, None when there were none left."""
        config, index, before, sweep = self.context.config, self.state.series, running.before, running.sweep
        states: tuple[SeriesState, ...] = FINISHED_SERIES
        if not config.export.enabled:
            states += (SeriesState.COMPLETE,)  # without export, complete is as far as a series goes
        batch = [
            row
            for row in index.expired_series(before, states=states, now=now, limit=BATCH)
            if row.series_uid not in running.seen_series
        ]
        if not batch:
            return None
        for row in batch:
            uid = row.series_uid
            if self._stopping():
                break
            running.seen_series.add(uid)
            files = index.remove_series(uid, before=before, states=states, now=now)
            if files is None:
                continue
            sweep.series += 1
            sweep.instances += sum(_remove_file(path, before) for path in files)
            for folder in {path.parent for path in files}:
                # Not empty (an instance re-sent meanwhile is kept) or already gone: left as it is.
                with contextlib.suppress(OSError):
                    folder.rmdir()
            export = config.paths.export
            exports = [export / f"{uid}.nii.gz", export / f"{uid}.json"]
            exports += sorted(export.glob(f"{uid}_stack*.nii.gz")) + sorted(export.glob(f"{uid}_stack*.json"))
            sweep.exports += sum(_remove_file(path, before) for path in exports)
        return len(batch)
