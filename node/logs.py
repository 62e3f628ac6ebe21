"""The one logging setup of every segnode process: one line per record on stderr.

Lines are text (``time LEVEL [process] logger: message key=value``) or, with ``[logging] format = "json"``, one
JSON object each. When stderr is the journal (systemd sets ``$JOURNAL_STREAM`` to its device and inode) the
time is left out, since journald stamps every entry, and each line starts with its syslog priority (``<3>``
for an error, sd-daemon(3)) so that ``journalctl -p`` still filters by level.

Patient data stays out of the log unless ``[logging] include_phi = true``. Code that wants to name the patient
passes it apart from the message, ``log.info("series %s complete", uid, extra={"phi": {"PatientID": pid}})``,
and the formatters print it only when allowed. Text segnode writes itself never quotes patient attributes
(:mod:`node.convert.source_header`), but libraries' warnings and exceptions may quote any header value
(pydicom: ``Invalid value for VR DA: '19800231'``): their quoted values are redacted unless PHI is allowed.
Other ``extra`` keys (``extra={"series_uid": uid}``) become fields of a JSON line and ``key=value`` in text.
"""

from __future__ import annotations

import json
import logging.config
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.config.sections import LoggingConfig

#: The ``extra`` key whose mapping holds patient data (names, IDs, birth dates) for a record.
PHI = "phi"
#: Loggers of libraries that quote header values in their messages.
FOREIGN_LOGGERS = ("pydicom", "py.warnings", "highdicom", "pynetdicom")
REDACTED = "'<redacted>'"

#: sd-daemon(3) priorities (SD_CRIT ... SD_DEBUG) by logging level.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_QUOTED = re.compile(r"""'[^'\n]*'|"[^"\n]*\"""")
#: The attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level.

    >>> priority(logging.ERROR), priority(logging.INFO), priority(logging.DEBUG)
    (3, 6, 7)
    """
    return next((value for level, value in _PRIORITIES if levelno >= level), 7)


def stream_is_journal(stream: IO[str] | None = None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``stream`` (default stderr) is connected to journald, per ``$JOURNAL_STREAM`` (``device:inode``)."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):  # closed, or replaced by something without a descriptor
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


def redact(text: str) -> str:
    """``text`` with every quoted value replaced.

    >>> redact("Invalid value for VR DA: '19800231'")
    "Invalid value for VR DA: '<redacted>'"
    """
    return _QUOTED.sub(REDACTED, text)


#: What segnode writes before a library's own message (``unexpected error: ValueError: ...``), whose text may
#: quote a header value.
UNEXPECTED = "unexpected error"


def redact_unexpected(text: str) -> str:
    """``text`` with the quoted values after "unexpected error" redacted: that part is a library's message.

    >>> redact_unexpected("a.nii.gz: unexpected error: ValueError: Invalid value for VR PN: 'Doe^Jane'")
    "a.nii.gz: unexpected error: ValueError: Invalid value for VR PN: '<redacted>'"
    """
    head, marker, tail = text.partition(UNEXPECTED)
    return head + marker + redact(tail) if marker else text


def _foreign(value: object) -> bool:
    """A library's warning or exception, whose text may quote header values (segnode's own errors do not)."""
    return isinstance(value, BaseException) and not type(value).__module__.startswith("node.")


class LineFormatter(logging.Formatter):
    """The base of both shapes: the message with patient data and foreign quotes removed unless allowed."""

    def __init__(self, *, process: str = "", include_phi: bool = False, journal: bool | None = None) -> None:
        super().__init__()
        self.process = process
        self.include_phi = include_phi
        self.journal = stream_is_journal() if journal is None else journal

    def message(self, record: logging.LogRecord) -> str:
        if self.include_phi:
            return record.getMessage()
        if record.name.split(".")[0] in FOREIGN_LOGGERS:
            return redact(record.getMessage())
        args: Any = record.args
        if isinstance(args, tuple) and any(_foreign(arg) for arg in args):
            args = tuple(redact(str(arg)) if _foreign(arg) else arg for arg in args)
        # A library's message turned into text by error_line() is no longer an exception the line above sees.
        return redact_unexpected(str(record.msg) % args if args else str(record.msg))

    def exception(self, record: logging.LogRecord) -> str:
        if not record.exc_info:
            return ""
        text = self.formatException(record.exc_info)
        if self.include_phi:
            return text
        # Only an exception's own lines ("pkg.Error: message") carry its message; traceback lines are source code.
        return "\n".join(
            redact(line) if line[:1].strip() and not line.startswith(("node.", "Traceback")) else line
            for line in text.splitlines()
        )

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """What ``extra`` added, without the patient data unless it is allowed."""
        found = {key: value for key, value in vars(record).items() if key not in _STANDARD and key != PHI}
        phi = getattr(record, PHI, None)
        if self.include_phi and isinstance(phi, Mapping):
            found.update(phi)
        return found

    def prefix(self, record: logging.LogRecord) -> str:
        return f"<{priority(record.levelno)}>" if self.journal else ""


class TextFormatter(LineFormatter):
    """``2024-05-01 12:00:00,123 INFO [receiver-1] node.dicom.scp: message key=value``, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [] if self.journal else [self.formatTime(record)]
        parts.append(record.levelname)
        if self.process:
            parts.append(f"[{self.process}]")
        parts.append(f"{record.name}: {self.message(record)}")
        parts.extend(f"{key}={value}" for key, value in self.fields(record).items())
        text = " ".join(parts)
        exception = self.exception(record)
        if exception:
            text = f"{text}\n{exception}"
        # One event, one line: journald would make each line an entry of its own, without the priority.
        return self.prefix(record) + " | ".join(text.splitlines())


class JsonFormatter(LineFormatter):
    """One JSON object per line: time, level, logger, process, pid, message, the ``extra`` fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": self.process or "main",
            "pid": record.process,
            "message": self.message(record),
        }
        for key, value in self.fields(record).items():
            document.setdefault(key, value)
        exception = self.exception(record)
        if exception:
            document["exception"] = exception
        return self.prefix(record) + json.dumps(document, ensure_ascii=False, default=str)


def logging_config(
    level: str | int,
    *,
    process: str = "",
    settings: LoggingConfig | None = None,
    journal: bool | None = None,
) -> dict[str, Any]:
    """A dictConfig for the root logger at ``level``; ``process`` (e.g. ``receiver-2``) tags a helper's lines;
    ``settings`` is ``[logging]`` (default: text, no patient data); ``journal`` overrides the detection."""
    chatter = "DEBUG" if level in ("DEBUG", logging.DEBUG) else "ERROR"
    shape = JsonFormatter if settings is not None and settings.format == "json" else TextFormatter
    formatter = {
        "()": f"{__name__}.{shape.__name__}",
        "process": process,
        "include_phi": settings is not None and settings.include_phi,
        "journal": journal,
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": formatter},
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


def configure(level: str | int, *, process: str = "", settings: LoggingConfig | None = None) -> None:
    """Set up logging for this process (once, by its entry point); see :func:`logging_config`."""
    logging.captureWarnings(True)
    logging.config.dictConfig(logging_config(level, process=process, settings=settings))
