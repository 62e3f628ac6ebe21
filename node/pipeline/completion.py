"""Series completion: a series is complete once no instance has arrived for the quiet period.

A late instance re-opens the series (the receiver bumps its revision), so completion and export run again.
"""

from __future__ import annotations

import logging

from node.pipeline.stage import Stage
from node.state.model import SeriesState

log = logging.getLogger(__name__)


class Completion(Stage):
    """RECEIVING -> COMPLETE for every series quiet for ``[series] quiet_seconds`` (or hinted and quiet since)."""

    name = "completion"

    def step(self) -> int:
        series = self.state.series
        due = series.claim_due(self.context.config.series.quiet_seconds, now=self.context.clock())
        done = 0
        for row in due:
            if self.context.stopping.is_set():
                series.release(row.series_uid)
                continue
            if series.mark(row.series_uid, SeriesState.COMPLETE, if_revision=row.revision):
                self.context.events.series_completed()
                done += 1
        return done
