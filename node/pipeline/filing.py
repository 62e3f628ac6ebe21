"""Filing inbox items away: into ``processed/`` or ``failed/`` with a reason file, never deleted, and back.

Each item moves into a folder of its own named by time and item (``20260101T120000Z_liver.nii.gz/``), with its
sidecar and ``reason.txt``; the move is a rename where possible, else a durable copy followed by the removal of
the original, so a crash in between leaves the input in one place or both, never in none.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

from node.convert.label_input import nifti_stem
from node.durable import atomic_write_bytes, fsync_folder, fsync_path
from node.errors import InputError
from node.pipeline.inbox import REASON_FILE, InboxItem

log = logging.getLogger(__name__)

#: The name of a folder :func:`move_item` makes: ``<UTC stamp>[-n]_<item label>``.
_MOVED_FOLDER = re.compile(r"[0-9]{8}T[0-9]{6}Z(?:-[0-9]+)?_(?P<label>.+)", re.DOTALL)


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _unique_folder(dest_root: Path, name: str) -> Path:
    """Create and return a new folder ``<UTC stamp>[-n]_<name>`` below ``dest_root``; never reuses one."""
    stamp = _utc_stamp()
    label = item_label(name)
    attempt = 1
    while True:
        folder = dest_root / (f"{stamp}_{label}" if attempt == 1 else f"{stamp}-{attempt}_{label}")
        try:
            folder.mkdir()  # exclusive: two movers racing get different folders
            return folder
        except FileExistsError:
            attempt += 1


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in files:
                fsync_path(Path(root) / name)
            fsync_folder(Path(root))
    else:
        fsync_path(path)


def _move(source: Path, target: Path) -> None:
    if os.path.lexists(target):
        raise FileExistsError(f"{target}: already exists; not overwritten")
    try:
        os.rename(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    # Across filesystems: copy, make the copy durable, and only then remove the original, so a crash in between
    # leaves two copies, never none.
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target)
    _fsync_tree(target)
    fsync_folder(target.parent)
    if source.is_dir():
        shutil.rmtree(source)
    else:
        source.unlink()


def _reason_text(item: InboxItem, reason: str) -> str:
    lines = reason.strip().splitlines() or ["(no reason given)"]
    details = [
        f"item: {item.path.name}",
        f"kind: {item.kind.value}",
        f"sidecar: {item.sidecar.name if item.sidecar is not None else 'none'}",
        f"from: {item.path.parent}",
        f"moved: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"signature: {item.signature}",
    ]
    return "\n".join([*lines, "", *details]) + "\n"


def move_item(item: InboxItem, dest_root: Path, reason: str | None) -> Path:
    """Move ``item`` and its sidecar into a new folder ``dest_root/<UTC timestamp>_<name>/``.

    Nothing is overwritten or deleted: the folder is new (a counter follows the timestamp if needed). With a
    ``reason`` (first line a readable summary, more lines for details) a ``reason.txt`` is written beside the item.
    Works across filesystems; everything is fsynced before returning.

    Returns
    -------
    Path
        The new location of the item itself.
    """
    if not os.path.lexists(item.path):
        raise InputError(f"{item.path}: vanished from the inbox before it could be moved to {dest_root}")
    source_folder = item.path.parent
    dest_root.mkdir(parents=True, exist_ok=True)
    folder = _unique_folder(dest_root, item.path.name)
    if reason is not None:
        atomic_write_bytes(folder / REASON_FILE, _reason_text(item, reason).encode("utf-8"))
    target = folder / item.path.name
    # The item first: a crash before the sidecar follows leaves a lone sidecar (ignored), never an item that
    # would be processed again without its sidecar.
    _move(item.path, target)
    if item.sidecar is not None:
        try:
            _move(item.sidecar, folder / item.sidecar.name)
        except FileNotFoundError:
            log.warning("%s: sidecar %s vanished; moved the item without it", item.path.name, item.sidecar.name)
    fsync_folder(folder)
    fsync_folder(dest_root)
    fsync_folder(source_folder)
    log.info("%s: moved to %s", item.path.name, folder)
    return target


def find_moved_item(root: Path, name: str) -> Path | None:
    """The most recently moved copy of an item called ``name`` below ``root`` (as :func:`move_item` lays it out)."""
    folders = sorted((p for p in root.glob(f"*_{name}") if (p / name).exists()), key=lambda p: p.name)
    return folders[-1] / name if folders else None


def item_label(name: str) -> str:
    """What follows the stamp in the name of the folder an item called ``name`` is moved into: the name, cut so
    that stamp and name still fit in NAME_MAX."""
    return name[:200]


def moved_item_folders(root: Path) -> dict[str, list[Path]]:
    """Every folder :func:`move_item` made directly below ``root``, by item label (:func:`item_label`), from one
    scan of ``root``; empty when ``root`` does not exist."""
    found: dict[str, list[Path]] = {}
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return found
    for entry in entries:
        match = _MOVED_FOLDER.fullmatch(entry.name)
        if match is not None and entry.is_dir(follow_symlinks=False):
            found.setdefault(match["label"], []).append(Path(entry.path))
    return found


def restore_item(moved: Path, inbox: Path) -> Path:
    """Put a moved item (and its sidecar) back into the inbox, under its own name; never overwrites."""
    target = inbox / moved.name
    if os.path.lexists(target):
        raise InputError(f"{target}: an item of that name is already in the inbox; move it away first")
    sidecar = moved.parent / f"{nifti_stem(moved)}.json"
    if sidecar.exists() and not os.path.lexists(inbox / sidecar.name):
        _move(sidecar, inbox / sidecar.name)
    _move(moved, target)
    return target
