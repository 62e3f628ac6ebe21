"""One small hierarchy of errors; each says whether retrying the same work can help.

Messages are one line a person understands: what happened, to which input, what to do.
"""

from __future__ import annotations


class SegnodeError(Exception):
    """Base of every error segnode raises on purpose."""

    #: Whether the same work may succeed later without anyone changing the input.
    retryable: bool = False


class InputError(SegnodeError, ValueError):
    """The input (a file, a folder, a series) cannot be used as it is."""


class GeometryError(InputError):
    """The geometry of a series or NIfTI is inconsistent, or the two do not fit together."""


class LabelError(InputError):
    """A label map's values or its label table cannot be turned into segments."""


class VerificationError(SegnodeError):
    """A built SEG does not hold what its input holds; it must not leave the node."""


class ConfigError(SegnodeError, ValueError):
    """The configuration file is missing a key or holds a value that cannot work."""


class TransientError(SegnodeError):
    """A peer, the network or the disk failed in a way that may pass (PACS down, disk full)."""

    retryable = True


def error_line(exc: BaseException) -> str:
    """One line for a person: our own errors say it already; anything else gets its type named.

    >>> error_line(InputError("scan.nii.gz: not a NIfTI file"))
    'scan.nii.gz: not a NIfTI file'
    >>> error_line(KeyError("x"))
    "KeyError: 'x'"
    """
    text = " ".join(str(exc).split())
    if isinstance(exc, SegnodeError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class StateUnavailableError(TransientError):
    """The state database cannot be used right now (locked, busy, read-only, disk I/O error or disk full)."""
