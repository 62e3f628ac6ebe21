"""Free space on the data disk, checked cheaply enough to ask before every C-STORE.

:class:`DiskGuard` keeps ``[disk] reserve_mb`` free and the disk at most ``max_usage_percent`` used, so that what
the node has already accepted can still be exported, segmented and sent when senders would fill the disk. It
calls ``statvfs`` at most once per ``interval`` and answers from that in between; crossing into "full" is logged
once, and so is space coming back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.errors import TransientError

if TYPE_CHECKING:
    from node.config.sections import Config

log = logging.getLogger(__name__)

__all__ = ["DiskFullError", "DiskGuard", "DiskSpace"]

MIB = 1 << 20
#: Seconds between two ``statvfs`` calls.
CHECK_INTERVAL = 1.0


class DiskFullError(TransientError):
    """Past the [disk] limits: nothing is wrong with the work, there is no room for it now."""


@dataclass(frozen=True)
class DiskSpace:
    """One reading of the disk: whether there is room, and if not, a one-line reason."""

    room: bool
    free_bytes: int
    total_bytes: int
    reason: str = ""

    @property
    def used_percent(self) -> float:
        """As ``df`` counts it: used over used plus what unprivileged users may still write."""
        if self.total_bytes <= 0:
            return 0.0
        return 100.0 * (self.total_bytes - self.free_bytes) / self.total_bytes


def _existing(folder: Path) -> Path:
    # The data folder may not exist yet (first start); the disk it will be on is the same.
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate
    return folder


class DiskGuard:
    """Whether the disk holding ``folder`` has room for more instances.

    Parameters
    ----------
    folder
        A folder on the disk to watch (the data folder).
    reserve_mb
        MiB that must stay free for unprivileged users (``f_bavail``).
    max_usage_percent
        Largest share of the disk in use, as ``df`` reports it; 100: no limit but the reserve.
    statvfs, clock, interval
        Seams for tests: the ``os.statvfs`` to call, the monotonic clock and the seconds between two calls.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> disk = SimpleNamespace(f_frsize=4096, f_blocks=1000, f_bfree=300, f_bavail=250)
    >>> guard = DiskGuard(Path("/data"), reserve_mb=2, max_usage_percent=90.0, statvfs=lambda _: disk)
    >>> guard.check().room, guard.check().free_bytes
    (False, 1024000)
    >>> guard.check().reason
    '/data: 1.0 MiB free, below the [disk] reserve of 2 MiB'
    """

    def __init__(
        self,
        folder: Path,
        reserve_mb: int,
        max_usage_percent: float,
        *,
        statvfs: Callable[[Path], Any] = os.statvfs,
        clock: Callable[[], float] = time.monotonic,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self.folder = Path(folder)
        self.reserve_bytes = reserve_mb * MIB
        self.max_usage_percent = max_usage_percent
        self._statvfs = statvfs
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._space: DiskSpace | None = None

    @classmethod
    def from_config(cls, config: Config) -> DiskGuard:
        """The guard of ``[disk]`` for ``[paths] data``."""
        return cls(config.paths.data, config.disk.reserve_mb, config.disk.max_usage_percent)

    def _read(self) -> DiskSpace:
        try:
            stat = self._statvfs(_existing(self.folder))
        except OSError as exc:
            # Cannot tell: let writes go on, they fail with ENOSPC (A700) themselves if the disk is full.
            return DiskSpace(True, 0, 0, f"{self.folder}: cannot read the free space ({exc.strerror or exc})")
        free = int(stat.f_bavail) * int(stat.f_frsize)
        used = (int(stat.f_blocks) - int(stat.f_bfree)) * int(stat.f_frsize)
        total = used + free
        if free < self.reserve_bytes:
            reason = f"{free / MIB:.1f} MiB free, below the [disk] reserve of {self.reserve_bytes // MIB} MiB"
            return DiskSpace(False, free, total, f"{self.folder}: {reason}")
        space = DiskSpace(True, free, total)
        if space.used_percent > self.max_usage_percent:
            reason = (
                f"{space.used_percent:.1f}% used, above the [disk] max_usage_percent of {self.max_usage_percent:g}%"
            )
            return DiskSpace(False, free, total, f"{self.folder}: {reason}")
        return space

    def check(self) -> DiskSpace:
        """The disk as last read, reading it again when the last reading is older than ``interval``."""
        now = self._clock()
        space = self._space
        if space is not None and self._checked_at is not None and now - self._checked_at < self._interval:
            return space
        with self._lock:
            if self._space is not None and self._checked_at is not None and now - self._checked_at < self._interval:
                return self._space  # another thread read it while this one waited
            space = self._read()
            before = self._space
            self._space, self._checked_at = space, now
        if not space.room and (before is None or before.room):
            log.warning("disk full, refusing new instances: %s", space.reason)
        elif space.room and before is not None and not before.room:
            log.warning("disk space is back (%.1f MiB free): accepting instances again", space.free_bytes / MIB)
        return space

    def require_room(self) -> None:
        """Raise :class:`DiskFullError` with the reason when there is no room."""
        space = self.check()
        if not space.room:
            raise DiskFullError(f"disk full: {space.reason}")
