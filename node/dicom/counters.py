"""The receivers' shared counters: what /metrics reports, and the node-wide count of open associations.

One block of shared memory, made by the parent before the receiver processes start, holds a row of counters per
receiver (row 0 for the in-process receiver, row ``n`` for receiver process ``n``). A process only ever adds to its
own row, under a thread lock of its own, so a C-STORE pays two additions and no cross-process lock; a reader
sums the rows without locking (aligned 64-bit words are read whole). Rows outlive their process: a receiver that
is started again goes on counting in the same row.

The open-association column is the node's admission count: :meth:`ReceiverCounters.try_open` takes a slot only
when the sum over every row is below the limit, under one cross-process lock, so receivers sharing a socket
cannot overshoot it together. A receiver that dies cannot give its slots back; :meth:`ReceiverCounters.forget_open`
clears its row before it is started again.

The object pickles into a spawned process (pass it as a ``Process`` argument, as multiprocessing allows for
shared memory and locks only while spawning). ``rows=1`` makes counters for the in-process receiver alone: its
admission lock is a thread lock, so no multiprocessing semaphore (nor the helper process that tracks one) exists,
and it does not pickle.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from node.dicom.access import RejectionKind
from node.dicom.status import STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES

log = logging.getLogger(__name__)

__all__ = ["REFUSAL_KINDS", "ROWS", "ReceiverCounters", "ReceiverSnapshot"]

#: One row for the in-process receiver and one per receiver process ([node] receive_processes is at most 64).
ROWS = 65
#: Keys of :attr:`ReceiverSnapshot.stores_refused`.
REFUSAL_KINDS = ("out_of_resources", "cannot_understand", "processing_failure")
#: How long :meth:`ReceiverCounters.try_open` waits for the admission lock before it counts without it.
LOCK_SECONDS = 2.0

_REJECTIONS = tuple(kind.value for kind in RejectionKind)
_INSTANCES, _BYTES, _ACCEPTED, _OPEN = 0, 1, 2, 3
_REJECTED = 4  # then one column per rejection kind, then one per refusal kind
_REFUSED = _REJECTED + len(_REJECTIONS)
_COLUMNS = _REFUSED + len(REFUSAL_KINDS)


@dataclass(frozen=True)
class ReceiverSnapshot:
    """The counters summed over every receiver, at one moment (cumulative since the node started)."""

    instances_received: int
    bytes_received: int
    associations_accepted: int
    #: By :class:`~node.dicom.access.RejectionKind` value: calling_aet, called_aet, source, limit, disk.
    associations_rejected: dict[str, int]
    #: C-STOREs answered with a failure status, by :data:`REFUSAL_KINDS`.
    stores_refused: dict[str, int]
    open_associations: int


def _refusal_column(status: int) -> int:
    if status == STATUS_OUT_OF_RESOURCES:
        return _REFUSED
    if status == STATUS_CANNOT_UNDERSTAND:
        return _REFUSED + 1
    return _REFUSED + 2


class ReceiverCounters:
    """Counters shared by the receivers of one node; see the module docstring.

    Parameters
    ----------
    rows
        Receivers that can count (row numbers ``0`` to ``rows - 1``); 1: the in-process receiver only.

    Examples
    --------
    >>> counters = ReceiverCounters(rows=3)
    >>> first, second = counters.for_receiver(1), counters.for_receiver(2)
    >>> first.try_open(2), second.try_open(2), second.try_open(2)
    (True, True, False)
    >>> first.stored(1000); second.refused(0xA700); second.rejected("limit")
    >>> snapshot = counters.snapshot()
    >>> snapshot.instances_received, snapshot.bytes_received, snapshot.open_associations
    (1, 1000, 2)
    >>> snapshot.associations_rejected["limit"], snapshot.stores_refused["out_of_resources"]
    (1, 1)
    >>> counters.forget_open(2), counters.snapshot().open_associations
    (1, 1)
    """

    def __init__(self, rows: int = ROWS) -> None:
        if rows < 1:
            raise ValueError(f"ReceiverCounters needs at least one row, got {rows}")
        context = multiprocessing.get_context("spawn")
        self.rows = rows
        self.row = 0
        self._values: Any = context.RawArray("q", rows * _COLUMNS)
        self._admission: Any = context.Lock() if rows > 1 else threading.Lock()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        if self.rows == 1:
            raise TypeError("ReceiverCounters(rows=1) count in one process; make them with more rows to share them")
        state = self.__dict__.copy()
        del state["_lock"]  # a thread lock belongs to one process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def for_receiver(self, number: int) -> ReceiverCounters:
        """The same counters, counting in receiver ``number``'s row."""
        if not 0 <= number < self.rows:
            raise ValueError(f"receiver {number} has no row in counters of {self.rows} rows")
        view = ReceiverCounters.__new__(ReceiverCounters)
        view.__dict__.update(self.__dict__)
        view.row = number
        return view

    def _add(self, column: int, amount: int = 1) -> None:
        with self._lock:
            self._values[self.row * _COLUMNS + column] += amount

    def stored(self, size: int) -> None:
        """An instance of ``size`` bytes was stored and acknowledged."""
        index = self.row * _COLUMNS
        with self._lock:
            self._values[index + _INSTANCES] += 1
            self._values[index + _BYTES] += size

    def refused(self, status: int) -> None:
        """A C-STORE was answered with the failure ``status`` (anything but A700 or C000 is a processing failure;
        the caller counts successes with :meth:`stored`, never here)."""
        self._add(_refusal_column(status))

    def accepted(self) -> None:
        """An association was accepted."""
        self._add(_ACCEPTED)

    def rejected(self, kind: str) -> None:
        """An association was rejected, for one of the :class:`~node.dicom.access.RejectionKind` values."""
        self._add(_REJECTED + _REJECTIONS.index(RejectionKind(kind).value))

    def _open_total(self) -> int:
        return sum(self._values[row * _COLUMNS + _OPEN] for row in range(self.rows))

    @contextmanager
    def _admitting(self) -> Iterator[None]:
        locked = self._admission.acquire(timeout=LOCK_SECONDS)
        if not locked:
            # Only a receiver killed inside the few instructions this lock guards can hold it for long: go on
            # receiving with a count that may be off by one rather than stop receiving altogether.
            log.error("the association count is locked (by a receiver that died?); counting without the lock")
        try:
            yield
        finally:
            if locked:
                self._admission.release()

    def try_open(self, limit: int) -> bool:
        """Take an association slot if fewer than ``limit`` are open over every receiver; give it back with
        :meth:`close`."""
        with self._admitting():
            if self._open_total() >= limit:
                return False
            self._values[self.row * _COLUMNS + _OPEN] += 1
            return True

    def close(self) -> None:
        """Give back a slot :meth:`try_open` took."""
        with self._admitting():
            index = self.row * _COLUMNS + _OPEN
            if self._values[index] > 0:  # forget_open may have cleared the row meanwhile
                self._values[index] -= 1

    def open_in(self, number: int) -> int:
        """Associations receiver ``number`` holds open."""
        return int(self._values[number * _COLUMNS + _OPEN])

    def forget_open(self, number: int) -> int:
        """Clear receiver ``number``'s open associations (it died with them); returns how many there were.

        Run by the parent once the receiver is gone: if the admission lock cannot be had within
        :data:`LOCK_SECONDS`, the dead receiver took it with it, and it is released here (a multiprocessing lock
        has no owner, so any process may), or every later :meth:`try_open` would wait that long.
        """
        if not self._admission.acquire(timeout=LOCK_SECONDS):
            log.error(
                "the association count stayed locked for %g s after receiver %d exited; releasing the lock it held",
                LOCK_SECONDS,
                number,
            )
            with suppress(ValueError):  # released meanwhile after all: someone was only slow
                self._admission.release()
            if not self._admission.acquire(timeout=LOCK_SECONDS):
                log.error("the association count is still locked; clearing receiver %d's row without it", number)
                return self._clear_open(number)
        try:
            return self._clear_open(number)
        finally:
            self._admission.release()

    def _clear_open(self, number: int) -> int:
        index = number * _COLUMNS + _OPEN
        count = int(self._values[index])
        self._values[index] = 0
        return count

    def snapshot(self) -> ReceiverSnapshot:
        """Every counter, summed over the receivers."""
        totals = [0] * _COLUMNS
        values = self._values[:]  # one copy out of the shared memory
        for row in range(self.rows):
            base = row * _COLUMNS
            for column in range(_COLUMNS):
                totals[column] += values[base + column]
        return ReceiverSnapshot(
            instances_received=totals[_INSTANCES],
            bytes_received=totals[_BYTES],
            associations_accepted=totals[_ACCEPTED],
            associations_rejected={kind: totals[_REJECTED + i] for i, kind in enumerate(_REJECTIONS)},
            stores_refused={kind: totals[_REFUSED + i] for i, kind in enumerate(REFUSAL_KINDS)},
            open_associations=totals[_OPEN],
        )
