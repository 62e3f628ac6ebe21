"""On-disk layout of received instances: ``<root>/instances/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

Every write is durable before :meth:`InstanceStore.put` returns (:func:`node.durable.atomic_write`: temporary
sibling, fsync, rename, fsync of the folder), so a C-STORE success status sent after it can never be lost to a
crash. UIDs are validated (:func:`node.convert.uids.is_uid`) before they become path components: a peer cannot
write outside the store.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import IO

from node.convert.uids import UID_MAX_CHARS, is_uid
from node.durable import atomic_write, fsync_folder, remove_temp_files
from node.errors import InputError, TransientError

log = logging.getLogger(__name__)

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class StorageFullError(TransientError):
    """The disk (or the quota) holding the store is full; the sender should retry later."""


class InvalidUIDError(InputError):
    """A UID that cannot be used: empty, too long, or not digits and dots."""


def check_uid(uid: str, what: str) -> str:
    """``uid`` without padding when it is a usable DICOM UID; InvalidUIDError otherwise.

    Leading zeros in a component are tolerated (they break no path and some old modalities write them).

    >>> check_uid("1.2.840.10008.1.1 ", "SOP Class UID")
    '1.2.840.10008.1.1'
    >>> check_uid("../etc/passwd", "SOP Instance UID")
    Traceback (most recent call last):
    ...
    node.state.instances.InvalidUIDError: SOP Instance UID '../etc/passwd' is not a DICOM UID (digits and dots, ...
    """
    cleaned = uid.strip("\x00 ") if isinstance(uid, str) else ""
    if not is_uid(cleaned, strict=False):
        raise InvalidUIDError(
            f"{what} {uid!r} is not a DICOM UID (digits and dots, at most {UID_MAX_CHARS} "
            "characters); the sender must be fixed"
        )
    if not is_uid(cleaned):
        log.debug("%s %s has leading zeros in a component; accepted", what, cleaned)
    return cleaned


def is_disk_full(exc: OSError) -> bool:
    """Whether ``exc`` means the file system or the quota is full."""
    return exc.errno in _DISK_FULL


class InstanceStore:
    """Received DICOM instances, one file each, grouped by series.

    Parameters
    ----------
    root
        The node's data folder; instances live in ``root/instances``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.instances = self.root / "instances"

    def path_for(self, series_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance is (or would be) stored; InvalidUIDError for an unusable UID."""
        series = check_uid(series_uid, "Series Instance UID")
        sop = check_uid(sop_instance_uid, "SOP Instance UID")
        return self.instances / series / f"{sop}.dcm"

    def series_folder(self, series_uid: str) -> Path:
        return self.instances / check_uid(series_uid, "Series Instance UID")

    def put(self, series_uid: str, sop_instance_uid: str, *chunks: bytes | memoryview) -> Path:
        """Write one instance (``chunks`` in order) durably and return its path; a re-sent instance replaces the
        earlier copy.

        Raises
        ------
        InvalidUIDError
            A UID is not usable as a file name (nothing is written).
        StorageFullError
            The disk or quota is full; no temporary file is left behind.
        OSError
            Any other I/O failure; no temporary file is left behind.
        """
        target = self.path_for(series_uid, sop_instance_uid)
        folder = target.parent
        try:
            created = not folder.is_dir()
            folder.mkdir(parents=True, exist_ok=True)
            if created:
                # A new series folder is itself a directory entry: make it durable in instances/ too.
                fsync_folder(folder.parent)

            def write(handle: IO[bytes]) -> None:
                # Straight to the descriptor: the chunks (memoryviews of the received PDVs) are not copied into
                # the handle's buffer, which stays empty.
                for chunk in chunks:
                    self._write(handle.fileno(), chunk)

            atomic_write(target, write)
        except OSError as exc:
            if is_disk_full(exc):
                raise StorageFullError(
                    f"{self.root}: no space left for instance {sop_instance_uid} of series "
                    f"{series_uid} ({exc.strerror}); free disk space, the sender will retry"
                ) from exc
            raise
        return target

    @staticmethod
    def _write(fd: int, data: bytes | memoryview) -> None:
        """Write all of ``data`` to ``fd`` (a seam the tests use to simulate a full disk)."""
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def series_paths(self, series_uid: str) -> list[Path]:
        """The instance files stored for a series, sorted by name (empty when none)."""
        folder = self.series_folder(series_uid)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("*.dcm") if not p.name.startswith("."))

    def cleanup_temp(self) -> int:
        """Remove temporary files a crash left half-written (start-up recovery); returns how many."""
        removed = remove_temp_files(self.instances)
        if removed:
            log.info("removed %d half-written temporary file(s) below %s", removed, self.instances)
        return removed
