"""The ``folder`` destination kind: each SEG is copied into a folder as ``<SOPInstanceUID>.dcm``.

A copy is atomic (temporary name, fsync, rename, folder fsync), so whatever watches the folder never sees half a
file. A full disk or a missing mount is RETRY (an operator can fix it); an unreadable source is FAILED.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from node import destinations
from node.destinations.results import Outcome, SendResult, log_batch
from node.durable import atomic_write


@dataclass(frozen=True)
class FolderDestination:
    """A ``[[destinations]]`` block with ``kind = "folder"`` (the default when it has a ``folder`` key)."""

    kind: ClassVar[str] = "folder"
    title: ClassVar[str] = "folder"

    name: str
    folder: Path

    def describe(self) -> str:
        return f"{self.name} (folder {self.folder})"


class FolderWriter:
    """A folder as a destination; the folder is created on the first send if it does not exist yet."""

    def __init__(self, config: FolderDestination) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def folder(self) -> Path:
        return self.config.folder

    def describe(self) -> str:
        return self.config.describe()

    def send(self, paths: Sequence[Path]) -> list[SendResult]:
        """Copy each file into the folder; one result per path, in order. Never raises for I/O trouble."""
        results = [self._copy(Path(path)) for path in paths]
        log_batch(self.describe(), results)
        return results

    def check(self) -> str | None:
        """None if the folder is writable, or does not exist yet and can be created; else why not."""
        existing = self.folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"{self.describe()}: {existing} is not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            what = (
                "the folder is not writable"
                if existing == self.folder
                else (f"cannot create it, {existing} is not writable")
            )
            return f"{self.describe()}: {what}"
        return None

    def _copy(self, path: Path) -> SendResult:
        from pydicom.errors import InvalidDicomError  # pydicom loads with the first send, not with the config
        from pydicom.filereader import read_file_meta_info

        try:
            meta = read_file_meta_info(path)
            instance_uid = str(meta.get("MediaStorageSOPInstanceUID", "")).strip()
        except (InvalidDicomError, OSError):
            instance_uid = ""
        target = self.folder / (f"{instance_uid}.dcm" if instance_uid else path.name)
        try:
            source = path.open("rb")
        except OSError as exc:
            return SendResult(path, Outcome.FAILED, None, f"{path}: cannot read the file ({exc.strerror or exc})")
        try:
            with source:
                atomic_write(target, lambda handle: shutil.copyfileobj(source, handle, 1 << 20))
        except OSError as exc:
            return SendResult(
                path, Outcome.RETRY, None, f"{self.describe()}: cannot write {target.name} ({exc.strerror or exc})"
            )
        return SendResult(path, Outcome.SENT, None, f"copied to {target}")


def create_folder_writer(
    config: FolderDestination, *, calling_ae: str, timeout: float, tls: object = None
) -> destinations.Destination:
    """The factory of the ``folder`` kind (a folder needs no AE title, timeout or ``[tls]``)."""
    return FolderWriter(config)


destinations.register(FolderDestination.kind, create_folder_writer, FolderDestination)
