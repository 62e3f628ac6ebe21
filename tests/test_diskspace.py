"""node/diskspace.py: the [disk] guard, with statvfs and the clock injected (our own seams)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from node.config import Config, DiskConfig, PathsConfig
from node.diskspace import MIB, DiskFullError, DiskGuard
from node.errors import TransientError

BLOCK = 4096


class FakeDisk:
    """statvfs answers for a disk of ``total_mib``, of which ``free_mib`` are free; counts the calls."""

    def __init__(self, total_mib: int, free_mib: int) -> None:
        self.total_mib, self.free_mib = total_mib, free_mib
        self.calls: list[Path] = []

    def __call__(self, path: Path) -> SimpleNamespace:
        self.calls.append(path)
        blocks, free = self.total_mib * MIB // BLOCK, self.free_mib * MIB // BLOCK
        return SimpleNamespace(f_frsize=BLOCK, f_blocks=blocks, f_bfree=free, f_bavail=free)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(disk: FakeDisk, clock: Clock, *, reserve_mb: int = 100, max_usage_percent: float = 90.0) -> DiskGuard:
    return DiskGuard(Path("/data"), reserve_mb, max_usage_percent, statvfs=disk, clock=clock, interval=1.0)


def test_room_free_bytes_and_the_reason_when_full() -> None:
    disk, clock = FakeDisk(10_000, 5_000), Clock()
    watched = guard(disk, clock)
    space = watched.check()
    assert space.room and space.free_bytes == 5_000 * MIB and space.reason == ""
    assert space.used_percent == pytest.approx(50.0)
    disk.free_mib = 50
    clock.now += 1.5
    space = watched.check()
    assert not space.room and space.free_bytes == 50 * MIB
    assert space.reason == "/data: 50.0 MiB free, below the [disk] reserve of 100 MiB"


def test_usage_above_the_percentage_is_full_even_with_the_reserve_free() -> None:
    disk, clock = FakeDisk(10_000, 900), Clock()
    space = guard(disk, clock, reserve_mb=100, max_usage_percent=90.0).check()
    assert not space.room and "91.0% used, above the [disk] max_usage_percent of 90%" in space.reason
    assert guard(disk, clock, reserve_mb=100, max_usage_percent=100.0).check().room


def test_statvfs_is_called_at_most_once_per_interval() -> None:
    disk, clock = FakeDisk(10_000, 5_000), Clock()
    watched = guard(disk, clock)
    for _ in range(100):
        assert watched.check().room
        clock.now += 0.001
    assert len(disk.calls) == 1
    disk.free_mib = 10  # the disk fills: seen at the next reading, not before
    assert watched.check().room
    clock.now += 1.0
    assert not watched.check().room
    assert len(disk.calls) == 2


def test_crossing_into_full_and_back_is_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    disk, clock = FakeDisk(10_000, 5_000), Clock()
    watched = guard(disk, clock)
    caplog.set_level(logging.INFO, logger="node.diskspace")
    for free in (5_000, 50, 40, 30, 5_000, 4_000, 20):
        disk.free_mib = free
        watched.check()
        clock.now += 2.0
    messages = [r.getMessage() for r in caplog.records if r.name == "node.diskspace"]
    assert [m.split(":")[0] for m in messages] == [
        "disk full, refusing new instances",
        "disk space is back (5000.0 MiB free)",
        "disk full, refusing new instances",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "node.diskspace")


def test_require_room_raises_a_transient_error() -> None:
    disk, clock = FakeDisk(10_000, 10), Clock()
    with pytest.raises(DiskFullError, match=r"disk full: /data: 10\.0 MiB free") as caught:
        guard(disk, clock).require_room()
    assert isinstance(caught.value, TransientError) and caught.value.retryable
    disk.free_mib = 5_000
    clock.now += 5
    guard(disk, clock).require_room()


def test_an_unreadable_disk_does_not_stop_intake() -> None:
    def broken(path: Path) -> SimpleNamespace:
        raise PermissionError(13, "Permission denied")

    space = DiskGuard(Path("/data"), 100, 90.0, statvfs=broken).check()
    assert space.room and "cannot read the free space (Permission denied)" in space.reason


def test_a_data_folder_not_made_yet_is_measured_on_its_disk(tmp_path: Path) -> None:
    disk = FakeDisk(10_000, 5_000)
    DiskGuard(tmp_path / "not" / "yet", 1, 99.0, statvfs=disk).check()
    assert disk.calls == [tmp_path]


def test_from_config_and_the_real_disk(tmp_path: Path) -> None:
    stat = os.statvfs(tmp_path)
    free_mib = stat.f_bavail * stat.f_frsize // MIB
    config = Config(
        paths=PathsConfig(data=tmp_path), disk=DiskConfig(reserve_mb=free_mib + 1024, max_usage_percent=100.0)
    )
    watched = DiskGuard.from_config(config)
    assert watched.reserve_bytes == (free_mib + 1024) * MIB
    assert not watched.check().room
    roomy = Config(paths=PathsConfig(data=tmp_path), disk=DiskConfig(reserve_mb=0, max_usage_percent=100.0))
    assert DiskGuard.from_config(roomy).check().room
