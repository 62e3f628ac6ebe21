"""What a send gives back, for every kind of destination: one :class:`SendResult` per file, and when to retry.

Nothing that sends raises for trouble at the destination: each file's result says whether it arrived
(``SENT``), whether trying again later can help (``RETRY``) or not (``FAILED``), and one line saying why.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

log = logging.getLogger(__name__)


class Outcome(str, Enum):
    """What became of one file."""

    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class SendResult:
    """One file's outcome and ``reason``, one line for a person.

    ``status`` is the protocol's own status when the destination answered (a C-STORE response status; 0x0122,
    SOP class not supported, when a DICOM peer rejected the presentation context so no request could be made);
    None when there was no answer or the kind has no status (a folder).
    """

    path: Path
    outcome: Outcome
    status: int | None
    reason: str


def backoff_delay(attempt: int, initial: float, maximum: float, *, jitter: float = 0.1) -> float:
    """Seconds to wait before attempt ``attempt + 1``: ``initial · 2^(attempt-1)``, capped at ``maximum``.

    Up to ``jitter`` (a fraction) is taken off at random so that many jobs failing together do not retry in
    lock-step; the result never exceeds ``maximum``.

    >>> [backoff_delay(n, 10, 60, jitter=0) for n in (1, 2, 3, 4, 50)]
    [10.0, 20.0, 40.0, 60.0, 60.0]
    """
    if attempt < 1:
        raise ValueError(f"backoff attempt must be 1 or more, got {attempt}")
    if initial <= 0 or maximum < initial:
        raise ValueError(f"backoff needs 0 < initial <= maximum, got initial={initial}, maximum={maximum}")
    # Past 2^62 the cap has long applied; clamping the exponent keeps the float finite.
    delay = min(float(maximum), initial * 2.0 ** min(attempt - 1, 62))
    return delay * (1.0 - jitter * random.random())


def log_batch(where: str, results: Sequence[SendResult]) -> None:
    """One log line per batch: the counts, and the first problem if there was one."""
    counts = {outcome: sum(r.outcome is outcome for r in results) for outcome in Outcome}
    first_problem = next((r.reason for r in results if r.outcome is not Outcome.SENT), "")
    level = logging.INFO if not first_problem else logging.WARNING
    log.log(
        level,
        "send to %s: %d sent, %d retry, %d failed%s",
        where,
        counts[Outcome.SENT],
        counts[Outcome.RETRY],
        counts[Outcome.FAILED],
        f" (first problem: {first_problem})" if first_problem else "",
    )
