"""Delivery: every built SEG goes to every destination; what may pass is retried with exponential backoff.

A destination that refuses a SEG for good does not stop delivery to the others (the job's state follows from
its sends, see :mod:`node.state.sqlite_jobs`).

With ``[qc] send = true`` the SEG's QC picture, a Secondary Capture image (:mod:`node.pipeline.qc`), rides along
to every DICOM destination: right after its SEG, on the same association, as part of the same send. The send's
outcome is the SEG's: once the SEG is acknowledged the send is done, whatever became of the image. An image that
did not go (refused, or a transient failure such as the association lost after the SEG) is one warning naming the
destination and the reason, and is not retried: retrying it would mean sending the SEG again, and a send whose
SEG arrived must never end up FAILED because its picture did not. A SEG without an image file (QC off or failed
when it was built) goes alone. Folder destinations get the SEG only: the picture is in ``data/qc`` already.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from node.config import Config
from node.destinations import Outcome, SendResult, backoff_delay, create
from node.destinations.dimse import DicomDestination
from node.errors import SegnodeError, error_line
from node.pipeline.qc import qc_image_path
from node.pipeline.stage import Stage
from node.state.model import SendRow

log = logging.getLogger(__name__)

#: The kind of destination QC images go to: DICOM peers, the PACS a person looks at.
DICOM_KIND = DicomDestination.kind


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
            self.beat()  # one slow destination after another is progress, not a stall
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
        images = self._images(config, name, rows)
        paths: list[Path] = []
        for row, image in zip(rows, images, strict=True):
            # The SEG first: an association lost at the image has delivered the SEG already.
            paths += [row.seg_path] if image is None else [row.seg_path, image]
        sent = iter(destination.send(paths))
        settings = config.send
        for row, image in zip(rows, images, strict=True):
            result = next(sent)
            if image is not None:
                result = self._with_image(name, row, result, next(sent))
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

    @staticmethod
    def _images(config: Config, name: str, rows: list[SendRow]) -> list[Path | None]:
        """Per send, the QC image that goes along with its SEG to destination ``name`` (None: the SEG alone).

        ``config`` is the batch's own: a reload meanwhile must not change which destinations this batch has.
        """
        if not config.qc.send or config.destination(name).kind != DICOM_KIND:
            return [None] * len(rows)
        images = [qc_image_path(config, row.seg_sop_uid) for row in rows]
        return [image if image.is_file() else None for image in images]

    def _with_image(self, name: str, row: SendRow, seg: SendResult, image: SendResult) -> SendResult:
        """The send's result: its SEG's; a QC image that did not go with an acknowledged SEG is a warning."""
        if seg.outcome is Outcome.SENT and image.outcome is not Outcome.SENT:
            log.warning(
                "SEG %s went to %s, its QC image did not (%s); the send counts as done, the image is not retried",
                row.seg_sop_uid,
                name,
                image.reason,
            )
        return seg

    def _since_last_instance(self, row: SendRow) -> float | None:
        """Seconds from the last instance of the SEG's series to now (end-to-end latency); None when unknown."""
        try:
            series = self.state.series.get(row.series_uid) if row.series_uid else None
        except SegnodeError:
            return None  # a busy database must not stop delivery for a metric
        return None if series is None else max(0.0, self.context.clock() - series.last_received_at)
