"""Delivery: every built SEG goes to every destination; what may pass is retried with exponential backoff.

A destination that refuses a SEG for good does not stop delivery to the others (the job's state follows from
its sends, see :mod:`node.state.sqlite_jobs`).
"""

from __future__ import annotations

import logging
from collections import defaultdict

from node.destinations import Outcome, backoff_delay, create
from node.errors import SegnodeError, error_line
from node.pipeline.stage import Stage
from node.state.model import SendRow

log = logging.getLogger(__name__)


class Deliver(Stage):
    """Due sends -> one association (or copy) per destination and batch; each send ok, retry later or failed."""

    name = "deliver"

    def step(self) -> int:
        due = self.state.jobs.claim_sends(now=self.context.clock())
        by_destination: dict[str, list[SendRow]] = defaultdict(list)
        for row in due:
            by_destination[row.destination].append(row)
        for name, rows in by_destination.items():
            if self.context.stopping.is_set():
                break
            self._send_batch(name, rows)
        return len(due)

    def _send_batch(self, name: str, rows: list[SendRow]) -> None:
        config, store = self.context.config, self.state.jobs
        try:
            destination = create(
                config.destination(name), calling_ae=config.node.ae_title, timeout=config.send.timeout, tls=config.tls
            )
        except SegnodeError as exc:
            for row in rows:
                if store.mark_send_failed(row.id, error_line(exc)):
                    self.context.events.send_failed(name)
            return
        results = destination.send([row.seg_path for row in rows])
        settings = config.send
        for row, result in zip(rows, results, strict=True):
            if result.outcome is Outcome.SENT:
                if store.mark_send_ok(row.id):
                    self.context.events.seg_sent(name, self._since_last_instance(row))
            elif result.outcome is Outcome.RETRY and row.attempts + 1 < settings.max_attempts:
                delay = backoff_delay(row.attempts + 1, settings.backoff_initial, settings.backoff_max)
                if store.mark_send_retry(row.id, result.reason, self.context.clock() + delay):
                    self.context.events.send_retry(name)
            else:
                gave_up = f" (gave up after {row.attempts + 1} attempts)" if result.outcome is Outcome.RETRY else ""
                if store.mark_send_failed(row.id, result.reason + gave_up):
                    self.context.events.send_failed(name)

    def _since_last_instance(self, row: SendRow) -> float | None:
        """Seconds from the last instance of the SEG's series to now (end-to-end latency); None when unknown."""
        try:
            series = self.state.series.get(row.series_uid) if row.series_uid else None
        except SegnodeError:
            return None  # a busy database must not stop delivery for a metric
        return None if series is None else max(0.0, self.context.clock() - series.last_received_at)
