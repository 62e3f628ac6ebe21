"""Build: a job's inbox item is matched to its series and stack, made into a verified SEG and queued for delivery.

Errors say whether retrying can help (:attr:`node.errors.SegnodeError.retryable`). An input error moves the item
to ``failed/`` with its reason; a transient one (disk full, database busy, an I/O error) leaves it in the inbox
and the job is tried again later, so a good input never fails because the machine had a bad moment.
"""

from __future__ import annotations

import errno
import logging
import re
from collections import deque

from node.convert import build_seg_from_input, write_dataset_atomically
from node.convert.series import choose_stack
from node.errors import SegnodeError, TransientError, error_line
from node.pipeline.export import exported_grid
from node.pipeline.filing import move_item
from node.pipeline.inbox import InboxItem
from node.pipeline.intake import Intake
from node.pipeline.match import Candidate, match_item
from node.pipeline.stage import PipelineContext, Stage
from node.pipeline.stored import stored_stacks
from node.state import jobs
from node.state import sqlite as db

log = logging.getLogger(__name__)

#: First wait before a job that failed transiently is tried again; it doubles up to :data:`RETRY_MAX_SECONDS`.
RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0

#: OS errors that come and go with the machine, not with the input.
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ENOMEM})


def as_transient(exc: OSError) -> TransientError | None:
    """The transient error an OSError stands for (a full disk, an I/O error), or None when it is not one."""
    if exc.errno in _TRANSIENT_ERRNOS:
        return TransientError(f"{exc.strerror or exc} ({exc.filename or 'no file'}); will retry")
    return None


class Build(Stage):
    """Jobs from :class:`~node.pipeline.intake.Intake` -> BUILT (SEG written, one send per destination)."""

    name = "build"

    def __init__(self, context: PipelineContext, intake: Intake) -> None:
        super().__init__(context)
        self.intake = intake
        #: (not before, attempts, job id, item) of jobs that failed transiently.
        self.waiting: deque[tuple[float, int, int, InboxItem]] = deque()

    def step(self) -> int:
        now = self.context.clock()
        due = [(0, job_id, item) for job_id, item in self.intake.queue]
        self.intake.queue.clear()
        later: deque[tuple[float, int, int, InboxItem]] = deque()
        for entry in self.waiting:
            if entry[0] <= now:
                due.append((entry[1], entry[2], entry[3]))
            else:
                later.append(entry)
        self.waiting = later
        for attempts, job_id, item in due:
            if self.context.stopping.is_set():
                self.waiting.append((now, attempts, job_id, item))
                continue
            self._build(job_id, item, attempts)
        return len(due)

    def busy(self) -> bool:
        return bool(self.waiting)

    def _build(self, job_id: int, item: InboxItem, attempts: int) -> None:
        paths = self.context.config.paths
        try:
            try:
                known, candidates = self._candidates()
                match = match_item(item.path, item.sidecar, known, candidates)
                jobs.mark_matched(self.conn, job_id, match.series_uid)
                series = choose_stack(stored_stacks(self.conn, match.series_uid), match.stack,
                                      f"series {match.series_uid}")
                result = build_seg_from_input(series, item.path, default_labels=self.context.config.seg.labels,
                                              options=self.context.options)
                sop_uid = str(result.dataset.SOPInstanceUID)
                seg_path = self.context.segs / f"{sop_uid}.dcm"
                write_dataset_atomically(result.dataset, seg_path)
            except OSError as exc:
                transient = as_transient(exc)
                if transient is None:
                    raise
                raise transient from exc
        except SegnodeError as exc:
            if exc.retryable:
                self._retry_later(job_id, item, attempts, error_line(exc))
            else:
                self._fail(job_id, item, error_line(exc))
            return
        except Exception as exc:  # one bad input must not stop the node; the reason is kept with the input
            log.exception("%s: unexpected error", item.path.name)
            self._fail(job_id, item, f"unexpected error: {error_line(exc)}")
            return
        destinations = [d.name for d in self.context.config.destinations]
        jobs.mark_built(self.conn, job_id, seg_path, sop_uid, destinations)
        stack = f" {series.stack.describe()}" if series.stack.count > 1 else ""
        summary = (f"SEG {sop_uid} built for series {match.series_uid}{stack} (matched by {match.how}):"
                   f" {len(result.segments)} segment(s), {result.alignment.describe()}")
        notes = "\n".join(result.notices)
        move_item(item, paths.processed, summary + (f"\n{notes}" if notes else ""))
        log.info("%s: %s; queued for %s", item.path.name, summary, ", ".join(destinations) or "no destination")

    def _retry_later(self, job_id: int, item: InboxItem, attempts: int, reason: str) -> None:
        delay = min(RETRY_FIRST_SECONDS * 2 ** attempts, RETRY_MAX_SECONDS)
        log.warning("%s: %s; left in the inbox, trying again in %.0f s", item.path.name, reason, delay)
        self.waiting.append((self.context.clock() + delay, attempts + 1, job_id, item))

    def _fail(self, job_id: int, item: InboxItem, reason: str) -> None:
        log.warning("%s: failed: %s", item.path.name, reason)
        jobs.mark_failed(self.conn, job_id, reason)
        move_item(item, self.context.config.paths.failed, reason)

    def _candidates(self) -> tuple[set[str], list[Candidate]]:
        """Received series, and the exported stacks an item may match (read from their export sidecars)."""
        export = self.context.config.paths.export
        known = {row.series_uid for row in db.all_series(self.conn)}
        candidates = []
        for row in db.all_series(self.conn, db.SeriesState.EXPORTED):
            main = export / f"{row.series_uid}.json"
            for sidecar in (main, *sorted(export.glob(f"{row.series_uid}_stack*.json"))):
                number = re.fullmatch(r"_stack([0-9]+)", sidecar.stem[len(row.series_uid):])
                grid = exported_grid(sidecar) if sidecar.is_file() else None
                if grid is not None and (sidecar == main or number):
                    stack = int(number.group(1)) if number else 1
                    candidates.append(Candidate(row.series_uid, grid, stack=stack))
        return known, candidates

