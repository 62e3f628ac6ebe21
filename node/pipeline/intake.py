"""Intake: settled inbox items become jobs, handed to the build stage in the order they settled.

The watcher (:mod:`node.pipeline.inbox`) yields each settled version of an item once per run; at start-up it
yields everything still in the inbox, so an item whose job did not finish before a stop is taken up again.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from node.pipeline.filing import move_item
from node.pipeline.inbox import InboxItem, InboxWatcher
from node.pipeline.stage import PipelineContext, Stage
from node.state.model import JobState

log = logging.getLogger(__name__)


class Intake(Stage):
    """Settled inbox items -> PENDING jobs on :attr:`queue` (a failed job dropped in again is re-opened)."""

    name = "intake"

    def __init__(self, context: PipelineContext, watcher: InboxWatcher) -> None:
        super().__init__(context)
        self.watcher = watcher
        #: (job id, item) for the build stage, oldest first.
        self.queue: deque[tuple[int, InboxItem]] = deque()

    def step(self) -> int:
        items = self.watcher.ready_items()
        store = self.state.jobs
        for item in items:
            job_id = store.create(item.path, item.kind.value, signature=item.signature)
            job = store.get(job_id)
            if job.state is JobState.FAILED:
                # The same input dropped again (by a user, or by `segnode retry`): try it again.
                store.retry(job_id)
                job = store.get(job_id)
            if job.state in (JobState.PENDING, JobState.MATCHED, JobState.RETRY_WAIT) and job.seg_path is None:
                self.queue.append((job_id, item))
            else:
                # Built before a crash that came before the move: finish the move, do not build twice.
                move_item(
                    item, self.context.config.paths.processed, f"SEG {job.seg_sop_uid} built earlier (job {job_id})"
                )
        return len(items)

    def busy(self) -> bool:
        return self.watcher.settling()

    def idle(self, stopping: threading.Event, seconds: float) -> None:
        # File events wake the watcher early; the timeout bounds how late a settled item is seen.
        self.watcher.wait(min(seconds, max(self.context.config.inbox.settle_seconds, 0.05)))
