"""Build: a job's inbox item is matched to its series and stack, made into a verified SEG and queued for delivery.

Errors say whether retrying can help (:attr:`node.errors.SegnodeError.retryable`). An input error moves the item
to ``failed/`` with its reason; a transient one (disk full, database busy, an I/O error) leaves it in the inbox
and the job is tried again later, so a good input never fails because the machine had a bad moment.

Every SEG built gets its QC picture (:mod:`node.pipeline.qc`), which never fails the SEG (a picture that cannot be
drawn is a warning). It is drawn here, in the build thread, so it does take time: after the SEG's sends are queued
it delays only the next build; with ``[qc] send`` it is drawn before ``mark_built``, so the SEG's sends wait for it
too (the image travels with them).
"""

from __future__ import annotations

import errno
import logging
import re
import time

from node.convert import build_seg_from_input, write_dataset_atomically
from node.convert.label_input import nifti_stem
from node.convert.series import choose_stack
from node.errors import SegnodeError, TransientError, error_line
from node.pipeline.export import exported_grid
from node.pipeline.filing import move_item
from node.pipeline.inbox import InboxItem, ItemKind
from node.pipeline.intake import Intake
from node.pipeline.match import Candidate, match_item
from node.pipeline.qc import write_qc
from node.pipeline.stage import PipelineContext, Stage
from node.pipeline.stored import stored_stacks
from node.state.model import JobRow, SeriesState

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


def inbox_item(job: JobRow) -> InboxItem | None:
    """The inbox item a job stands for, as the watcher would yield it; None when it is no longer in the inbox."""
    path = job.inbox_path
    if not path.exists():
        return None
    sidecar = path.parent / f"{path.name if path.is_dir() else nifti_stem(path)}.json"
    return InboxItem(path, ItemKind(job.item_kind), sidecar if sidecar.is_file() else None, job.signature)


class Build(Stage):
    """Claimed jobs -> BUILT (SEG written, one send per destination), FAILED, or RETRY_WAIT when it may pass.

    It takes the jobs the intake queued in the order they settled, then any job due again after a transient
    failure or left unfinished by a node that stopped (its claim released or run out).
    """

    name = "build"

    def __init__(self, context: PipelineContext, intake: Intake) -> None:
        super().__init__(context)
        self.intake = intake

    def step(self) -> int:
        store, now = self.state.jobs, self.context.clock()
        queued = list(self.intake.queue)
        self.intake.queue.clear()
        done = 0
        for job_id, item in queued:
            if self.context.stopping.is_set():
                self.intake.queue.append((job_id, item))
                continue
            job = store.claim_job(job_id, now=now)
            if job is not None:
                self._build(job, item)
                self.beat()  # a backlog of builds is progress, not a stall (health, watchdog)
                done += 1
        for job in store.claim_jobs(now=now):
            if self.context.stopping.is_set():
                break  # the claims are released when the node stops
            found = inbox_item(job)
            if found is None:
                # Its item left the inbox without the job finishing (a user took it away): nothing to build.
                store.mark_failed(job.id, f"{job.inbox_path.name}: no longer in the inbox")
                continue
            self._build(job, found)
            self.beat()
            done += 1
        return done

    def _build(self, job: JobRow, item: InboxItem) -> None:
        store, paths = self.state.jobs, self.context.config.paths
        started = time.monotonic()
        try:
            try:
                known, candidates = self._candidates()
                match = match_item(item.path, item.sidecar, known, candidates)
                store.mark_matched(job.id, match.series_uid, how=match.how)
                series = choose_stack(
                    stored_stacks(self.state.series, match.series_uid), match.stack, f"series {match.series_uid}"
                )
                config, options = self.context.settings()
                result = build_seg_from_input(series, item.path, default_labels=config.seg.labels, options=options)
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
                self._retry_later(job, item, error_line(exc))
            else:
                self._fail(job, item, error_line(exc))
            return
        except Exception as exc:  # one bad input must not stop the node; the reason is kept with the input
            log.exception("%s: unexpected error", item.path.name)
            self._fail(job, item, f"unexpected error: {error_line(exc)}")
            return
        built_seconds = time.monotonic() - started
        config = self.context.config
        if config.qc.send:
            # The QC image rides along with the SEG's sends, so it must be on disk before they are queued: the
            # sends (and the next build) wait for the drawing.
            write_qc(config, seg_path, result.series)
        destinations = [d.name for d in config.destinations]
        if not store.mark_built(job.id, seg_path, sop_uid, destinations):
            return  # another node took the job over meanwhile; it files the item
        self.context.events.seg_built(built_seconds)
        stack = f" {series.stack.describe()}" if series.stack.count > 1 else ""
        summary = (
            f"SEG {sop_uid} built for series {match.series_uid}{stack} (matched by {match.how}):"
            f" {len(result.segments)} segment(s), {result.alignment.describe()}"
        )
        notes = "\n".join(result.notices)
        move_item(item, paths.processed, summary + (f"\n{notes}" if notes else ""))
        log.info("%s: %s; queued for %s", item.path.name, summary, ", ".join(destinations) or "no destination")
        if not config.qc.send:
            write_qc(config, seg_path, result.series)  # after the sends are queued: only the next build waits

    def _retry_later(self, job: JobRow, item: InboxItem, reason: str) -> None:
        delay = min(RETRY_FIRST_SECONDS * 2**job.attempts, RETRY_MAX_SECONDS)
        log.warning("%s: %s; left in the inbox, trying again in %.0f s", item.path.name, reason, delay)
        self.state.jobs.mark_retry_later(job.id, reason, self.context.clock() + delay)

    def _fail(self, job: JobRow, item: InboxItem, reason: str) -> None:
        log.warning("%s: failed: %s", item.path.name, reason)
        if self.state.jobs.mark_failed(job.id, reason):
            move_item(item, self.context.config.paths.failed, reason)
            self.context.events.build_failed()

    def _candidates(self) -> tuple[set[str], list[Candidate]]:
        """Received series, and the exported stacks an item may match (read from their export sidecars)."""
        export = self.context.config.paths.export
        known = {row.series_uid for row in self.state.series.list_series()}
        candidates = []
        for row in self.state.series.list_series(SeriesState.EXPORTED):
            main = export / f"{row.series_uid}.json"
            for sidecar in (main, *sorted(export.glob(f"{row.series_uid}_stack*.json"))):
                number = re.fullmatch(r"_stack([0-9]+)", sidecar.stem[len(row.series_uid) :])
                grid = exported_grid(sidecar) if sidecar.is_file() else None
                if grid is not None and (sidecar == main or number):
                    stack = int(number.group(1)) if number else 1
                    candidates.append(Candidate(row.series_uid, grid, stack=stack))
        return known, candidates
