"""Tests of node/store.py: durable layout, no path traversal, full disk is transient and leaves nothing behind."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from node.errors import InputError, TransientError
from node.state.instances import InstanceStore, InvalidUIDError, StorageFullError, check_uid

SERIES = "1.2.826.0.1.3680043.8.498.1"
SOP = "1.2.826.0.1.3680043.8.498.1.1"


def files_below(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_put_writes_the_documented_layout(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    path = store.put(SERIES, SOP, b"DICM-bytes")
    assert path == tmp_path / "instances" / SERIES / f"{SOP}.dcm"
    assert path.read_bytes() == b"DICM-bytes"
    assert files_below(tmp_path) == [f"instances/{SERIES}/{SOP}.dcm"]
    assert store.series_paths(SERIES) == [path]


def test_resent_instance_replaces_the_earlier_copy(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    store.put(SERIES, SOP, b"first")
    path = store.put(SERIES, SOP, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert len(files_below(tmp_path)) == 1


def test_write_is_fsynced_before_rename_and_folder_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    InstanceStore(tmp_path).put(SERIES, SOP, b"x")
    assert "replace" in events
    at = events.index("replace")
    assert "fsync-file" in events[:at]
    assert events[at + 1 :] == ["fsync-folder"]


@pytest.mark.parametrize(
    "bad",
    ["../etc", "1.2/../../3", "..", "", " ", "1.2.a", "1..2", ".1.2", "1.2.", "1/2", "1" * 65, "1.2\x00/x", "1.2.3\n"],
)
def test_uids_that_are_not_uids_never_become_paths(tmp_path: Path, bad: str) -> None:
    store = InstanceStore(tmp_path / "data")
    with pytest.raises(InvalidUIDError) as caught:
        store.put(bad, SOP, b"x")
    assert isinstance(caught.value, InputError) and "\n" not in str(caught.value)
    with pytest.raises(InvalidUIDError):
        store.put(SERIES, bad, b"x")
    assert files_below(tmp_path) == []


def test_uid_padding_is_removed_and_leading_zeros_tolerated() -> None:
    assert check_uid("1.2.3\x00", "UID") == "1.2.3"
    assert check_uid("1.02.3", "UID") == "1.02.3"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_is_transient_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    store = InstanceStore(tmp_path)
    earlier = store.put(SERIES, SOP, b"earlier copy")

    def full(fd: int, data: bytes) -> None:
        os.write(fd, data[:3])  # part of it made it to disk before the disk filled up
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(InstanceStore, "_write", staticmethod(full))
    with pytest.raises(StorageFullError) as caught:
        store.put(SERIES, SOP, b"the new copy")
    assert isinstance(caught.value, TransientError) and caught.value.retryable
    assert SOP in str(caught.value) and "\n" not in str(caught.value)
    assert earlier.read_bytes() == b"earlier copy"
    assert files_below(tmp_path) == [f"instances/{SERIES}/{SOP}.dcm"]


def test_other_io_errors_are_not_mistaken_for_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int, data: bytes) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(InstanceStore, "_write", staticmethod(broken))
    with pytest.raises(OSError) as caught:
        InstanceStore(tmp_path).put(SERIES, SOP, b"x")
    assert not isinstance(caught.value, StorageFullError) and caught.value.errno == errno.EIO
    assert files_below(tmp_path) == []


def test_cleanup_removes_only_half_written_temp_files(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    kept = store.put(SERIES, SOP, b"complete")
    (kept.parent / f".{SOP}.dcm.abc123.tmp").write_bytes(b"half")
    (kept.parent / ".other.dcm.x.tmp").write_bytes(b"half")
    assert store.cleanup_temp() == 2
    assert files_below(tmp_path) == [f"instances/{SERIES}/{SOP}.dcm"]
    assert store.cleanup_temp() == 0


def test_cleanup_and_listing_of_a_fresh_store(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "not-yet")
    assert store.cleanup_temp() == 0
    assert store.series_paths(SERIES) == []
