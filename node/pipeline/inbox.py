"""Inbox watching: which label maps and mask folders have finished arriving, and moving them out when done.

Segmentation tools drop a NIfTI label map (``*.nii``/``*.nii.gz``, optionally with a ``<stem>.json`` sidecar
beside it) or a folder of per-structure masks into the inbox. An item is taken once it has been unchanged (size and
mtime of every file it consists of, and its file list) for the settle period.

Filesystem events (watchdog) only wake the caller; the truth is a scan of the folder, so a dropped event, a
network share that sends none, or an item already present at start-up is still found by the next scan.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType

from watchdog.events import EVENT_TYPE_CLOSED_NO_WRITE, EVENT_TYPE_OPENED, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from node.convert.label_input import is_mask_file, is_nifti, nifti_stem
from node.errors import ConfigError

log = logging.getLogger(__name__)

#: Names a writer uses while a file is incomplete; such names are not looked at until renamed.
IN_PROGRESS_SUFFIXES = (".tmp", ".part")
SIDECAR_SUFFIX = ".json"
REASON_FILE = "reason.txt"

# Someone reading a file (the node itself, while it processes an item) is no reason to rescan.
_QUIET_EVENTS = frozenset({EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE})

# (name relative to the inbox, size, mtime_ns) of every file an item consists of, sorted: equal means unchanged.
_Snapshot = tuple[tuple[str, int, int], ...]


class ItemKind(str, Enum):
    """What an inbox item holds."""

    LABEL_MAP = "label_map"
    MASK_FOLDER = "mask_folder"


@dataclass(frozen=True)
class InboxItem:
    """A settled inbox item: a label map file or a folder of masks, with the sidecar that travels with it.

    ``signature`` identifies this exact content (path, and size/mtime of each file): the same unchanged item is
    yielded once; changed later, it is a new item with a new signature.
    """

    path: Path
    kind: ItemKind
    sidecar: Path | None
    signature: str


@dataclass(frozen=True)
class _Candidate:
    """One top-level entry as the latest scan saw it."""

    kind: ItemKind | None  # None: not an item (a lone sidecar, an unknown file), only reported once settled
    sidecar: Path | None
    snapshot: _Snapshot
    blocker: str | None  # why it cannot be taken even when settled


@dataclass
class _Observation:
    snapshot: _Snapshot
    since: float
    reported: bool = False


def _in_progress(name: str) -> bool:
    return name.startswith(".") or name.endswith(IN_PROGRESS_SUFFIXES)


def _stat(path: Path, relative: str) -> tuple[str, int, int]:
    status = path.stat()
    return relative, status.st_size, status.st_mtime_ns


def _sidecar(inbox: Path, stem: str, listing: dict[str, bool]) -> Path | None:
    name = stem + SIDECAR_SUFFIX
    return inbox / name if listing.get(name) is False else None


def _owner_of(sidecar_name: str, listing: dict[str, bool]) -> str | None:
    """The label map or folder a ``<stem>.json`` belongs to, if it is in the inbox."""
    stem = sidecar_name[: -len(SIDECAR_SUFFIX)]
    for name in (stem + ".nii.gz", stem + ".nii"):
        if listing.get(name) is False:
            return name
    return stem if listing.get(stem) is True else None


def _mask_folder(folder: Path, listing: dict[str, bool]) -> _Candidate:
    entries: list[tuple[str, int, int]] = []
    unfinished: list[str] = []
    masks = 0
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        relative_root = here.relative_to(folder.parent)
        unfinished += [str(relative_root / d) for d in dirs if d.endswith(IN_PROGRESS_SUFFIXES)]
        for name in files:
            # Hidden files (.DS_Store, rsync's temporaries) are in the snapshot, so one that grows delays the
            # folder, but they do not block it: the mask loader skips them too.
            entries.append(_stat(here / name, str(relative_root / name)))
            if name.endswith(IN_PROGRESS_SUFFIXES):
                unfinished.append(str(relative_root / name))
            elif here == folder and is_mask_file(here / name):
                masks += 1
    blocker = None
    if unfinished:
        blocker = f"holds {', '.join(sorted(unfinished)[:3])} still being written; waiting until renamed"
    elif masks == 0:
        blocker = "folder holds no NIfTI masks (.nii/.nii.gz); add masks or remove the folder"
    sidecar = _sidecar(folder.parent, folder.name, listing)
    if sidecar is not None:
        entries.append(_stat(sidecar, sidecar.name))
    return _Candidate(ItemKind.MASK_FOLDER, sidecar, tuple(sorted(entries)), blocker)


def _candidate(path: Path, is_dir: bool, listing: dict[str, bool]) -> _Candidate | None:
    """What ``path`` is; None for a sidecar whose NIfTI is present (it travels with it)."""
    if is_dir:
        return _mask_folder(path, listing)
    if is_nifti(path):
        sidecar = _sidecar(path.parent, nifti_stem(path), listing)
        entries = [_stat(path, path.name)] + ([_stat(sidecar, sidecar.name)] if sidecar else [])
        return _Candidate(ItemKind.LABEL_MAP, sidecar, tuple(sorted(entries)), None)
    snapshot = (_stat(path, path.name),)
    if path.name.endswith(SIDECAR_SUFFIX):
        if _owner_of(path.name, listing) is not None:
            return None
        return _Candidate(None, None, snapshot, "sidecar with no NIfTI file or folder of its stem; left in place")
    return _Candidate(None, None, snapshot, "not a NIfTI label map (.nii/.nii.gz) or a folder of masks; left in place")


def _signature(path: Path, snapshot: _Snapshot) -> str:
    digest = hashlib.sha256(os.fsencode(path))
    for name, size, mtime_ns in snapshot:
        digest.update(b"\0" + os.fsencode(name) + f"\0{size}\0{mtime_ns}".encode())
    return digest.hexdigest()


class _WakeHandler(FileSystemEventHandler):
    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _QUIET_EVENTS:
            self._wake.set()


class InboxWatcher:
    """Scan an inbox for settled label maps and mask folders; an observer thread wakes :meth:`wait` early.

    Parameters
    ----------
    inbox
        The folder segmentation tools write into.
    settle_seconds
        How long an item must stay unchanged before it is taken. :meth:`ready_items` must be called again after
        this long to see an item settle, so a service loop should ``wait`` at most about this long.
    poll
        Use watchdog's polling observer instead of inotify (network shares, containers without inotify). The
        polling observer is also used when inotify cannot be started.
    clock
        Monotonic seconds; tests pass a fake one.
    """

    def __init__(
        self, inbox: Path, *, settle_seconds: float, poll: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (math.isfinite(settle_seconds) and settle_seconds >= 0):
            raise ConfigError(f"inbox {inbox}: [inbox] settle_seconds must be a number >= 0, got {settle_seconds}")
        self.inbox = Path(inbox)
        self.settle_seconds = float(settle_seconds)
        self._poll = poll
        self._clock = clock
        self._wake = threading.Event()
        self._scan_lock = threading.Lock()
        self._life_lock = threading.Lock()
        self._observer: BaseObserver | None = None
        self._polling = False
        self._observations: dict[str, _Observation] = {}
        self._yielded: dict[str, str] = {}
        self._inbox_unreadable = False

    @property
    def polling(self) -> bool:
        """Whether the running observer polls (asked for, or inotify was unavailable)."""
        return self._polling

    def start(self) -> None:
        """Start the observer thread (idempotent); falls back to polling when inotify cannot be used."""
        with self._life_lock:
            if self._observer is not None:
                return
            if not self.inbox.is_dir():
                raise ConfigError(f"inbox {self.inbox}: no such folder; create it or fix [paths] inbox")
            handler = _WakeHandler(self._wake)
            if not self._poll:
                try:
                    self._observer = self._launch(Observer(), handler)
                    self._polling = False
                except OSError as exc:
                    # Typically the per-user inotify watch or instance limit; polling costs more but still works.
                    log.warning("inbox %s: inotify unavailable (%s); polling instead", self.inbox, exc)
            if self._observer is None:
                # Poll often enough that an event still shortens a settle period noticeably.
                interval = min(max(self.settle_seconds / 4, 0.2), 2.0)
                self._observer = self._launch(PollingObserver(timeout=interval), handler)
                self._polling = True
            log.info("inbox %s: watching (%s)", self.inbox, "polling" if self._polling else "inotify")

    def _launch(self, observer: BaseObserver, handler: FileSystemEventHandler) -> BaseObserver:
        # Recursive, so a mask written inside a folder item also wakes the scanner.
        observer.schedule(handler, str(self.inbox), recursive=True)
        observer.daemon = True
        observer.start()
        return observer

    def stop(self) -> None:
        """Stop and join the observer thread (idempotent); a blocked :meth:`wait` returns."""
        with self._life_lock:
            observer, self._observer = self._observer, None
            if observer is not None:
                observer.stop()
                observer.join(timeout=10)
            self._wake.set()

    def __enter__(self) -> InboxWatcher:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def wait(self, timeout: float) -> None:
        """Block until a filesystem event (or :meth:`stop`) or ``timeout`` seconds, whichever comes first."""
        self._wake.wait(timeout)
        # Cleared before the caller scans: an event during the scan sets it again and the next wait returns at once.
        self._wake.clear()

    def settling(self) -> bool:
        """Whether an entry was seen that has neither settled into an item nor been reported as unusable."""
        with self._scan_lock:
            return any(not seen.reported and name not in self._yielded for name, seen in self._observations.items())

    def ready_items(self) -> list[InboxItem]:
        """Scan the inbox now and return the items that have settled since the last call (each once)."""
        with self._scan_lock:
            now = self._clock()
            listing = self._list()
            if listing is None:
                return []
            ready = []
            for name, is_dir in sorted(listing.items()):
                path = self.inbox / name
                try:
                    candidate = _candidate(path, is_dir, listing)
                except FileNotFoundError:
                    # Vanished between listing and stat: whatever it becomes, it has to settle again.
                    self._observations.pop(name, None)
                    continue
                if candidate is None:
                    continue
                seen = self._observations.get(name)
                if seen is None or seen.snapshot != candidate.snapshot:
                    seen = self._observations[name] = _Observation(candidate.snapshot, now)
                if now - seen.since < self.settle_seconds:
                    continue
                if candidate.blocker is not None or candidate.kind is None:
                    if not seen.reported:
                        log.warning("inbox/%s: %s", name, candidate.blocker)
                        seen.reported = True
                    continue
                signature = _signature(path, candidate.snapshot)
                if self._yielded.get(name) == signature:
                    continue
                self._yielded[name] = signature
                ready.append(InboxItem(path, candidate.kind, candidate.sidecar, signature))
            for gone in set(self._observations) - set(listing):
                del self._observations[gone]
            for gone in set(self._yielded) - set(listing):
                del self._yielded[gone]
            return ready

    def _list(self) -> dict[str, bool] | None:
        """Top-level names that may be items (name -> is a folder); None if the inbox cannot be read."""
        try:
            with os.scandir(self.inbox) as entries:
                listing = {e.name: e.is_dir() for e in entries if not _in_progress(e.name)}
        except OSError as exc:
            if not self._inbox_unreadable:
                log.warning("inbox %s: cannot be read (%s); retrying on every scan", self.inbox, exc)
                self._inbox_unreadable = True
            return None
        if self._inbox_unreadable:
            log.info("inbox %s: readable again", self.inbox)
            self._inbox_unreadable = False
        return listing
