"""Durable file writes: a crash leaves either the old file or the new one, never half of one.

Temporary files are hidden (leading dot) and end in ``.tmp``, so watchers ignore them and start-up recovery can
remove the ones a crash left behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


def fsync_path(path: Path) -> None:
    """fsync a file's data, or a folder's entries (a rename lives in the folder's own metadata)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make renames in ``folder`` durable."""
    fsync_path(folder)


def atomic_write(path: Path, write: Callable[[IO[bytes]], object], *, sync_folder: bool = True) -> None:
    """Write ``path`` through ``write(handle)`` into a temporary sibling, fsync, rename over ``path``.

    >>> import tempfile as t; folder = Path(t.mkdtemp())
    >>> atomic_write(folder / "a.txt", lambda h: h.write(b"hello"))
    >>> (folder / "a.txt").read_bytes(), sorted(p.name for p in folder.iterdir())
    (b'hello', ['a.txt'])
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_folder(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_json(path: Path, content: Any) -> None:
    atomic_write(path, lambda handle: handle.write((json.dumps(content, indent=2) + "\n").encode("utf-8")))


def remove_temp_files(folder: Path) -> int:
    """Remove temporary files a crash left below ``folder`` (start-up recovery); returns how many."""
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.rglob(f".*{TEMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed
