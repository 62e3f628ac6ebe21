"""node/dicom/counters.py: counters and the association count shared by spawned receiver processes."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import time
from typing import Any

import pytest

from node.dicom import counters as counters_module
from node.dicom.counters import ROWS, ReceiverCounters


def _count_in_child(counters: ReceiverCounters, number: int, stores: int, limit: int, results: Any) -> None:
    mine = counters.for_receiver(number)
    for _ in range(stores):
        mine.stored(10)
    mine.refused(0xC000)
    mine.rejected("source")
    taken = sum(mine.try_open(limit) for _ in range(limit))
    results.put((number, taken))


def test_receivers_in_spawned_processes_count_into_the_parents_memory() -> None:
    counters = ReceiverCounters()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    limit = 5
    children = [
        context.Process(target=_count_in_child, args=(counters, number, 100, limit, results)) for number in (1, 2, 3)
    ]
    for child in children:
        child.start()
    taken = dict(results.get(timeout=60) for _ in children)
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    # Three processes each tried to take the whole limit: together they got exactly the limit.
    assert sum(taken.values()) == limit
    snapshot = counters.snapshot()
    assert snapshot.instances_received == 300 and snapshot.bytes_received == 3000
    assert snapshot.stores_refused["cannot_understand"] == 3 and snapshot.associations_rejected["source"] == 3
    assert snapshot.open_associations == limit == sum(counters.open_in(n) for n in (1, 2, 3))
    # The children are gone: what they held open is theirs to forget; counts stay.
    assert sum(counters.forget_open(n) for n in (1, 2, 3)) == limit
    assert counters.snapshot().open_associations == 0 and counters.snapshot().instances_received == 300


def test_a_restarted_receiver_counts_on_in_the_same_row() -> None:
    counters = ReceiverCounters(rows=3)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    for _ in range(2):
        child = context.Process(target=_count_in_child, args=(counters, 2, 7, 1, results))
        child.start()
        results.get(timeout=60)
        child.join(30)
        counters.forget_open(2)
    assert counters.snapshot().instances_received == 14


def _die_holding_the_admission_lock(counters: ReceiverCounters) -> None:
    # As a receiver killed inside try_open would: the lock is taken and never given back.
    counters.for_receiver(1)._admission.acquire()
    os._exit(1)


def test_forgetting_a_receiver_that_died_holding_the_admission_lock_releases_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(counters_module, "LOCK_SECONDS", 0.2)
    counters = ReceiverCounters(rows=3)
    child = multiprocessing.get_context("spawn").Process(target=_die_holding_the_admission_lock, args=(counters,))
    child.start()
    child.join(60)
    assert child.exitcode == 1
    caplog.set_level(logging.ERROR, logger="node.dicom.counters")
    assert counters.forget_open(1) == 0
    (line,) = [r.getMessage() for r in caplog.records if r.name == "node.dicom.counters"]
    assert line == "the association count stayed locked for 0.2 s after receiver 1 exited; releasing the lock it held"
    caplog.clear()
    # The lock is free again: admission takes it at once, and no longer counts without it.
    started = time.monotonic()
    assert counters.for_receiver(2).try_open(1)
    assert time.monotonic() - started < 0.1 and not caplog.records


def test_close_gives_back_a_slot_and_never_goes_below_zero() -> None:
    counters = ReceiverCounters(rows=2)
    receiver = counters.for_receiver(1)
    assert receiver.try_open(1) and not receiver.try_open(1)
    receiver.close()
    assert receiver.try_open(1)
    assert counters.forget_open(1) == 1
    receiver.close()  # the slot its association held was already forgotten
    assert counters.snapshot().open_associations == 0


def test_snapshot_names_every_kind_even_at_zero() -> None:
    snapshot = ReceiverCounters(rows=1).snapshot()
    assert snapshot.associations_rejected == {"calling_aet": 0, "called_aet": 0, "source": 0, "limit": 0, "disk": 0}
    assert snapshot.stores_refused == {"out_of_resources": 0, "cannot_understand": 0, "processing_failure": 0}
    assert (snapshot.instances_received, snapshot.associations_accepted, snapshot.open_associations) == (0, 0, 0)


def test_refusals_go_by_status() -> None:
    counters = ReceiverCounters(rows=1)
    for status in (0xA700, 0xA700, 0xC000, 0x0110, 0xA900):
        counters.refused(status)
    assert counters.snapshot().stores_refused == {
        "out_of_resources": 2,
        "cannot_understand": 1,
        "processing_failure": 2,
    }


def test_unknown_kinds_and_rows_are_errors() -> None:
    counters = ReceiverCounters(rows=2)
    with pytest.raises(ValueError):
        counters.rejected("because")
    with pytest.raises(ValueError):
        counters.for_receiver(2)
    with pytest.raises(ValueError):
        ReceiverCounters(rows=0)
    assert ReceiverCounters().rows == ROWS


def test_one_row_counters_are_for_one_process() -> None:
    with pytest.raises(TypeError, match="one process"):
        pickle.dumps(ReceiverCounters(rows=1))
