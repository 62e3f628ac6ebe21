"""What each open association has stored, so that its end can say which series it finished.

A release hints completion only for series that no other open association is still sending; :class:`Sessions`
keeps that bookkeeping for :class:`~node.dicom.scp.StorageSCP`, thread-safe across its association threads.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

__all__ = ["AssociationEnd", "Sessions"]


@dataclass(frozen=True)
class AssociationEnd:
    """What an association that stored instances did, reported when it is released or aborted.

    ``finished_series`` are the series of ``series_uids`` that no other open association has stored instances
    of: the ones a release can hint as complete.
    """

    calling_ae: str
    peer: str
    series_uids: frozenset[str]
    finished_series: frozenset[str]
    instances: int
    aborted: bool


@dataclass
class _Session:
    calling_ae: str
    peer: str
    series_uids: set[str] = field(default_factory=set)
    instances: int = 0


class Sessions:
    """The series and instance count of every open association that stored something, by association key.

    >>> sessions = Sessions()
    >>> sessions.stored(1, "PACS", "10.0.0.1:104", "1.2.3"); sessions.stored(2, "CT", "10.0.0.2:104", "1.2.3")
    >>> sessions.end(1, aborted=False).finished_series
    frozenset()
    >>> sessions.end(2, aborted=False).finished_series
    frozenset({'1.2.3'})
    >>> sessions.end(2, aborted=True) is None  # each association ends once
    True
    """

    def __init__(self) -> None:
        self._open: dict[int, _Session] = {}
        self._lock = threading.Lock()

    def stored(self, key: int, calling_ae: str, peer: str, series_uid: str) -> None:
        """Association ``key`` stored an instance of ``series_uid``."""
        with self._lock:
            session = self._open.get(key)
            if session is None:
                session = self._open[key] = _Session(calling_ae, peer)
            session.series_uids.add(series_uid)
            session.instances += 1

    def end(self, key: int, *, aborted: bool) -> AssociationEnd | None:
        """Association ``key`` ended; what it did, or None if it stored nothing (or was already reported)."""
        with self._lock:
            session = self._open.pop(key, None)
            if session is None:
                return None
            still_sending = set().union(*(s.series_uids for s in self._open.values()))
        log.info(
            "association from %s at %s %s: %d instance(s) of %d series",
            session.calling_ae,
            session.peer,
            "aborted" if aborted else "released",
            session.instances,
            len(session.series_uids),
        )
        return AssociationEnd(
            calling_ae=session.calling_ae,
            peer=session.peer,
            series_uids=frozenset(session.series_uids),
            finished_series=frozenset(session.series_uids - still_sending),
            instances=session.instances,
            aborted=aborted,
        )
