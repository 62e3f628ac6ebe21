"""The last warnings and errors of this process, kept in memory for the status page.

A logging handler on the root logger keeps the newest WARNING+ records in a bounded ring, each already formatted
by :mod:`node.logs`' text formatter, so the page shows exactly what the log shows: patient data left out and
libraries' quoted header values redacted unless ``[logging] include_phi``. Bounded, because a node that warns
all day must not grow without end; in memory only, because the journal is the durable record.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

from node.logs import TextFormatter

#: Lines kept: a screenful, enough to see a pattern, small enough to render every 10 s.
KEPT_LINES = 50


@dataclass(frozen=True)
class WarningLine:
    """One kept record: when (POSIX seconds), its level name, and the line as the log printed it (no time)."""

    created: float
    level: str
    line: str


class _LineOnly(TextFormatter):
    """The log's text line without the leading time: the page shows the time in a column of its own."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return ""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).lstrip()


class WarningsBuffer(logging.Handler):
    """Keeps the last ``size`` WARNING+ records of every logger in this process, formatted PHI-safe."""

    def __init__(self, *, size: int = KEPT_LINES, include_phi: bool = False) -> None:
        super().__init__(logging.WARNING)
        self._lines: deque[WarningLine] = deque(maxlen=size)
        self._guard = threading.Lock()
        self.setFormatter(_LineOnly(include_phi=include_phi, journal=False))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = WarningLine(record.created, record.levelname, self.format(record))
        except Exception:  # logging's own contract: a handler never raises into the code that logged
            self.handleError(record)
            return
        with self._guard:
            self._lines.append(line)

    def lines(self) -> list[WarningLine]:
        """The kept lines, newest first."""
        with self._guard:
            return list(reversed(self._lines))

    def install(self) -> WarningsBuffer:
        """Attach to the root logger (every logger's records reach it); returns self."""
        logging.getLogger().addHandler(self)
        return self

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self)
