"""The one logging setup of every segnode process: one line per record on stderr (journald adds its own time)."""

from __future__ import annotations

import logging.config
from typing import Any


def logging_config(level: str | int, *, process: str = "") -> dict[str, Any]:
    """A dictConfig for the root logger at ``level``; ``process`` (e.g. ``receiver-2``) tags a helper's lines."""
    tag = f"[{process}] " if process else ""
    chatter = "DEBUG" if level in ("DEBUG", logging.DEBUG) else "ERROR"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "line"}},
        "root": {"level": level, "handlers": ["stderr"]},
        # pynetdicom and highdicom log every PDU or module copy at INFO; their warnings are what an operator needs.
        # Python warnings (pydicom on an odd header value, highdicom on a name that is not PN-shaped) are library
        # chatter about input segnode already handles: debug detail, never extra lines on a user's terminal.
        # pydicom logs the same complaints as it warns them, so it is quieted the same way.
        "loggers": {
            "pynetdicom": {"level": "WARNING"},
            "highdicom": {"level": "WARNING"},
            "py.warnings": {"level": chatter},
            "pydicom": {"level": chatter},
        },
    }


def configure(level: str | int, *, process: str = "") -> None:
    logging.captureWarnings(True)
    logging.config.dictConfig(logging_config(level, process=process))
