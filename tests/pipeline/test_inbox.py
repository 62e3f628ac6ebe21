"""Tests of node/pipeline/inbox.py and filing.py: settle detection with a fake clock, real observers, moves."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import node.pipeline.filing as filing
import node.pipeline.inbox as watch
from node.errors import ConfigError, InputError
from node.pipeline.filing import move_item
from node.pipeline.inbox import REASON_FILE, InboxItem, InboxWatcher, ItemKind

SETTLE = 10.0
# Generous bound for real observers: only reached when an event never arrives, which is the failure.
EVENT_TIMEOUT = 20.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def watcher(inbox: Path, clock: FakeClock) -> Iterator[InboxWatcher]:
    w = InboxWatcher(inbox, settle_seconds=SETTLE, clock=clock)
    yield w
    w.stop()


def write(path: Path, data: bytes = b"\x1f\x8b fake nifti") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def append(path: Path, data: bytes = b"more") -> None:
    with path.open("ab") as handle:
        handle.write(data)


def settle(w: InboxWatcher, clock: FakeClock) -> list[InboxItem]:
    """First sight, then a scan once the settle period has passed."""
    first = w.ready_items()
    clock.advance(SETTLE)
    return first + w.ready_items()


# --- settle logic -------------------------------------------------------------------------------------------------


def test_growing_file_is_ready_only_after_unchanged_for_settle_period(
    watcher: InboxWatcher, inbox: Path, clock: FakeClock
) -> None:
    label_map = write(inbox / "ct.nii.gz")
    assert watcher.ready_items() == []
    clock.advance(SETTLE - 1)
    append(label_map)
    clock.advance(2)  # past the first sighting's settle period, but the file grew
    assert watcher.ready_items() == []
    clock.advance(SETTLE - 0.5)
    assert watcher.ready_items() == []
    clock.advance(0.5)
    [item] = watcher.ready_items()
    assert item.path == label_map
    assert item.kind is ItemKind.LABEL_MAP
    assert item.sidecar is None


def test_unchanged_item_is_yielded_once_and_again_when_changed(
    watcher: InboxWatcher, inbox: Path, clock: FakeClock
) -> None:
    label_map = write(inbox / "ct.nii")
    [first] = settle(watcher, clock)
    clock.advance(10 * SETTLE)
    assert watcher.ready_items() == []
    append(label_map)
    [second] = settle(watcher, clock)
    assert second.path == first.path
    assert second.signature != first.signature


def test_zero_settle_takes_an_item_on_first_sight(inbox: Path, clock: FakeClock) -> None:
    write(inbox / "ct.nii.gz")
    w = InboxWatcher(inbox, settle_seconds=0, clock=clock)
    assert [i.path.name for i in w.ready_items()] == ["ct.nii.gz"]
    assert w.ready_items() == []


@pytest.mark.parametrize("temp_name", [".ct.nii.gz", "ct.nii.gz.tmp", "ct.nii.gz.part", ".masks"])
def test_temp_and_hidden_names_are_ignored_until_renamed(
    watcher: InboxWatcher, inbox: Path, clock: FakeClock, temp_name: str
) -> None:
    temp = inbox / temp_name
    if temp_name == ".masks":
        write(temp / "liver.nii.gz")
    else:
        write(temp)
    assert settle(watcher, clock) == []
    clock.advance(10 * SETTLE)
    assert watcher.ready_items() == []
    final = temp.rename(inbox / temp_name.lstrip(".").removesuffix(".tmp").removesuffix(".part"))
    assert watcher.ready_items() == []  # a renamed item settles afresh
    clock.advance(SETTLE)
    assert [i.path for i in watcher.ready_items()] == [final]


def test_sidecar_travels_with_its_nifti_and_is_not_an_item(
    watcher: InboxWatcher, inbox: Path, clock: FakeClock
) -> None:
    compressed = write(inbox / "a.nii.gz")
    compressed_sidecar = write(inbox / "a.json", b'{"SeriesInstanceUID": "1.2.3"}')
    plain = write(inbox / "b.nii")
    items = {i.path.name: i for i in settle(watcher, clock)}
    assert set(items) == {"a.nii.gz", "b.nii"}
    assert items["a.nii.gz"].sidecar == compressed_sidecar
    assert items["a.nii.gz"].path == compressed
    assert items["b.nii"].sidecar is None
    assert items["b.nii"].path == plain


def test_a_late_sidecar_restarts_the_settle_period(watcher: InboxWatcher, inbox: Path, clock: FakeClock) -> None:
    write(inbox / "a.nii.gz")
    assert watcher.ready_items() == []
    clock.advance(SETTLE - 1)
    sidecar = write(inbox / "a.json", b"{}")
    clock.advance(2)
    assert watcher.ready_items() == []
    clock.advance(SETTLE)
    [item] = watcher.ready_items()
    assert item.sidecar == sidecar


def test_lone_sidecar_and_unknown_files_are_left_alone_and_reported_once(
    watcher: InboxWatcher, inbox: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    lone = write(inbox / "orphan.json", b"{}")
    notes = write(inbox / "notes.txt", b"hello")
    with caplog.at_level(logging.WARNING, logger="node.pipeline.inbox"):
        assert settle(watcher, clock) == []
        clock.advance(SETTLE)
        assert watcher.ready_items() == []
    assert lone.exists() and notes.exists()
    reported = [r.getMessage() for r in caplog.records]
    assert len(reported) == 2
    assert any("orphan.json" in m for m in reported) and any("notes.txt" in m for m in reported)


def test_mask_folder_is_one_item_and_waits_for_every_file(watcher: InboxWatcher, inbox: Path, clock: FakeClock) -> None:
    folder = inbox / "segmentations"
    write(folder / "liver.nii.gz")
    assert watcher.ready_items() == []
    clock.advance(SETTLE - 1)
    write(folder / "spleen.nii.gz")  # a new file in the list restarts the settle period
    clock.advance(2)
    assert watcher.ready_items() == []
    clock.advance(SETTLE - 1)
    append(folder / "liver.nii.gz")  # so does a file that grows
    clock.advance(2)
    assert watcher.ready_items() == []
    clock.advance(SETTLE)
    [item] = watcher.ready_items()
    assert item.path == folder
    assert item.kind is ItemKind.MASK_FOLDER
    assert item.sidecar is None


def test_mask_folder_waits_for_temp_named_files_inside(watcher: InboxWatcher, inbox: Path, clock: FakeClock) -> None:
    folder = inbox / "segmentations"
    write(folder / "liver.nii.gz")
    part = write(folder / "kidney.nii.gz.part")
    assert settle(watcher, clock) == []
    clock.advance(10 * SETTLE)
    assert watcher.ready_items() == []
    part.rename(folder / "kidney.nii.gz")
    [item] = settle(watcher, clock)
    assert item.path == folder


def test_folder_without_nifti_is_not_an_item(watcher: InboxWatcher, inbox: Path, clock: FakeClock) -> None:
    folder = inbox / "empty_run"
    write(folder / "log.txt", b"done")
    assert settle(watcher, clock) == []
    write(folder / "liver.nii.gz")
    [item] = settle(watcher, clock)
    assert item.path == folder


def test_hidden_files_in_a_mask_folder_neither_count_as_masks_nor_block(
    watcher: InboxWatcher, inbox: Path, clock: FakeClock
) -> None:
    folder = inbox / "segmentations"
    write(folder / "._liver.nii.gz", b"AppleDouble")
    write(folder / ".DS_Store", b"finder")
    assert settle(watcher, clock) == []
    write(folder / "liver.nii.gz")
    [item] = settle(watcher, clock)
    assert item.path == folder


def test_an_item_taken_away_and_brought_back_unchanged_is_new(
    watcher: InboxWatcher, inbox: Path, tmp_path: Path, clock: FakeClock
) -> None:
    label_map = write(inbox / "ct.nii.gz")
    [first] = settle(watcher, clock)
    aside = label_map.rename(tmp_path / "aside.nii.gz")
    assert watcher.ready_items() == []
    aside.rename(label_map)  # same path, size and mtime: the same signature, but a new arrival
    [again] = settle(watcher, clock)
    assert again == first


def test_mask_folder_carries_a_sidecar_beside_it(watcher: InboxWatcher, inbox: Path, clock: FakeClock) -> None:
    write(inbox / "case1" / "liver.nii.gz")
    sidecar = write(inbox / "case1.json", b"{}")
    [item] = settle(watcher, clock)
    assert (item.path.name, item.sidecar) == ("case1", sidecar)


def test_files_vanishing_between_listing_and_stat_are_skipped(
    watcher: InboxWatcher, inbox: Path, clock: FakeClock
) -> None:
    (inbox / "gone.nii.gz").symlink_to(inbox / "nowhere.nii.gz")  # listed, but stat finds nothing
    (inbox / "masks").mkdir()
    (inbox / "masks" / "gone.nii.gz").symlink_to(inbox / "nowhere.nii.gz")
    kept = write(inbox / "kept.nii.gz")
    assert [i.path for i in settle(watcher, clock)] == [kept]


def test_unreadable_inbox_yields_nothing_until_it_is_back(tmp_path: Path, clock: FakeClock) -> None:
    inbox = tmp_path / "later"
    w = InboxWatcher(inbox, settle_seconds=SETTLE, clock=clock)
    assert w.ready_items() == []
    write(inbox / "ct.nii.gz")
    assert [i.path.name for i in settle(w, clock)] == ["ct.nii.gz"]


def test_invalid_settle_time_and_missing_inbox_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        InboxWatcher(tmp_path, settle_seconds=-1)
    with pytest.raises(ConfigError):
        InboxWatcher(tmp_path, settle_seconds=float("nan"))
    with pytest.raises(ConfigError, match="no such folder"):
        InboxWatcher(tmp_path / "missing", settle_seconds=1).start()


# --- observers (real threads, bounded waits) ------------------------------------------------------------------------


def wait_returns_early(w: InboxWatcher, change: Path) -> bool:
    """Make a change, then whether ``wait`` returned before its (generous) timeout."""
    write(change)
    started = time.monotonic()
    w.wait(EVENT_TIMEOUT)
    return time.monotonic() - started < EVENT_TIMEOUT


def test_items_present_before_start_are_found_and_events_wake_wait(
    watcher: InboxWatcher, inbox: Path, clock: FakeClock
) -> None:
    before = write(inbox / "early.nii.gz")
    watcher.start()
    assert not watcher.polling
    assert wait_returns_early(watcher, inbox / "late.nii.gz")
    items = settle(watcher, clock)
    assert sorted(i.path for i in items) == [before, inbox / "late.nii.gz"]


def test_event_inside_a_mask_folder_wakes_wait(watcher: InboxWatcher, inbox: Path) -> None:
    (inbox / "segmentations").mkdir()
    watcher.start()
    watcher.wait(0)  # forget the mkdir, should its event arrive late
    assert wait_returns_early(watcher, inbox / "segmentations" / "liver.nii.gz")


def test_polling_observer_wakes_wait(inbox: Path, clock: FakeClock) -> None:
    with InboxWatcher(inbox, settle_seconds=0.5, poll=True, clock=clock) as w:
        assert w.polling
        assert wait_returns_early(w, inbox / "ct.nii.gz")
        w.ready_items()
        clock.advance(1)
        assert [i.path.name for i in w.ready_items()] == ["ct.nii.gz"]


class _NoInotify:
    """Stands in for the inotify observer on a machine whose inotify limits are used up."""

    def __init__(self, **_: Any) -> None:
        pass

    def schedule(self, *_: Any, **__: Any) -> None:
        return None

    def start(self) -> None:
        raise OSError(errno.EMFILE, "inotify instance limit reached")


def test_inotify_failure_falls_back_to_polling(
    inbox: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(watch, "Observer", _NoInotify)
    with caplog.at_level(logging.WARNING, logger="node.pipeline.inbox"), InboxWatcher(inbox, settle_seconds=0.5) as w:
        assert w.polling
        assert wait_returns_early(w, inbox / "ct.nii.gz")
    assert any("polling instead" in r.getMessage() for r in caplog.records)


def test_stop_releases_a_blocked_wait(inbox: Path) -> None:
    w = InboxWatcher(inbox, settle_seconds=1)
    w.start()
    w.stop()
    w.stop()  # idempotent
    started = time.monotonic()
    w.wait(EVENT_TIMEOUT)
    assert time.monotonic() - started < EVENT_TIMEOUT


# --- move_item -------------------------------------------------------------------------------------------------


def settled_item(inbox: Path, name: str, *, sidecar: bool = False) -> InboxItem:
    clock = FakeClock()
    w = InboxWatcher(inbox, settle_seconds=0, clock=clock)
    if name.endswith((".nii", ".nii.gz")):
        write(inbox / name, f"label map {name}".encode())
        stem = name.removesuffix(".gz").removesuffix(".nii")
    else:
        write(inbox / name / "liver.nii.gz", b"liver")
        write(inbox / name / "spleen.nii.gz", b"spleen")
        stem = name
    if sidecar:
        write(inbox / f"{stem}.json", b'{"labels": {}}')
    [item] = [i for i in w.ready_items() if i.path.name == name]
    return item


def test_move_item_keeps_everything_and_writes_reason(inbox: Path, tmp_path: Path) -> None:
    item = settled_item(inbox, "ct.nii.gz", sidecar=True)
    failed = tmp_path / "data" / "failed"
    moved = move_item(item, failed, "grid fits 2 series; ambiguous\ncandidates: 1.2.3, 1.2.4")
    assert moved.name == "ct.nii.gz"
    assert moved.read_bytes() == b"label map ct.nii.gz"
    assert (moved.parent / "ct.json").read_bytes() == b'{"labels": {}}'
    assert list(inbox.iterdir()) == []
    assert moved.parent.parent == failed
    assert moved.parent.name.endswith("_ct.nii.gz")
    reason = (moved.parent / REASON_FILE).read_text().splitlines()
    assert reason[0] == "grid fits 2 series; ambiguous"
    assert "candidates: 1.2.3, 1.2.4" in reason
    assert "kind: label_map" in reason
    assert sorted(p.name for p in moved.parent.iterdir()) == ["ct.json", "ct.nii.gz", REASON_FILE]


def test_move_item_without_reason_writes_no_reason_file(inbox: Path, tmp_path: Path) -> None:
    item = settled_item(inbox, "segmentations")
    moved = move_item(item, tmp_path / "processed", None)
    assert moved.is_dir()
    assert sorted(p.name for p in moved.iterdir()) == ["liver.nii.gz", "spleen.nii.gz"]
    assert (moved / "spleen.nii.gz").read_bytes() == b"spleen"
    assert sorted(p.name for p in moved.parent.iterdir()) == ["segmentations"]
    assert not (inbox / "segmentations").exists()


def test_move_item_never_overwrites_an_existing_destination(
    inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filing, "_utc_stamp", lambda: "20240101T000000Z")
    processed = tmp_path / "processed"
    earlier = write(processed / "20240101T000000Z_ct.nii.gz" / "ct.nii.gz", b"earlier")
    write(processed / "20240101T000000Z-2_ct.nii.gz" / "reason.txt", b"earlier reason")
    item = settled_item(inbox, "ct.nii.gz")
    moved = move_item(item, processed, "done")
    assert moved == processed / "20240101T000000Z-3_ct.nii.gz" / "ct.nii.gz"
    assert moved.read_bytes() == b"label map ct.nii.gz"
    assert earlier.read_bytes() == b"earlier"
    assert (processed / "20240101T000000Z-2_ct.nii.gz" / "reason.txt").read_bytes() == b"earlier reason"


@pytest.mark.parametrize("name", ["ct.nii.gz", "segmentations"])
def test_move_item_across_filesystems_copies_then_removes(
    inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    item = settled_item(inbox, name, sidecar=True)

    def cross_device(source: Any, target: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link", str(source))

    monkeypatch.setattr(os, "rename", cross_device)
    moved = move_item(item, tmp_path / "processed", "done")
    assert moved.exists()
    assert list(inbox.iterdir()) == []
    files = sorted(str(p.relative_to(moved.parent)) for p in moved.parent.rglob("*") if p.is_file())
    expected_item = (
        ["ct.nii.gz"] if name == "ct.nii.gz" else ["segmentations/liver.nii.gz", "segmentations/spleen.nii.gz"]
    )
    sidecar = "ct.json" if name == "ct.nii.gz" else "segmentations.json"
    assert files == sorted([*expected_item, sidecar, REASON_FILE])


def test_move_item_of_a_vanished_item_is_an_input_error(inbox: Path, tmp_path: Path) -> None:
    item = settled_item(inbox, "ct.nii.gz")
    item.path.unlink()
    with pytest.raises(InputError, match="vanished"):
        move_item(item, tmp_path / "failed", "reason")
