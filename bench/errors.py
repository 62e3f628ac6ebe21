"""What makes a benchmark fail: a tool under test that is missing, does not start, exits non-zero or loses data."""

from __future__ import annotations

import shutil


class BenchError(RuntimeError):
    """A tool under test failed (did not start, exited non-zero, lost instances); the bench exits non-zero."""


def require_tools(*names: str) -> None:
    """BenchError naming the first missing executable."""
    for name in names:
        if shutil.which(name) is None:
            raise BenchError(f"{name} is not on PATH; install it (Debian: apt-get install dcmtk) and run again")
