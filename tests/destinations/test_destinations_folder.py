"""node/destinations/folder.py (the ``folder`` kind): atomic copies by SOP Instance UID, and its reachability check."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest
import synthetic as syn

from node.destinations import Destination, Outcome, create
from node.destinations.folder import FolderDestination, FolderWriter


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    return syn.write_series(syn.GridSpec.axial(rows=6, cols=5, slices=2), tmp_path_factory.mktemp("ct")).paths


def writer(folder: Path) -> Destination:
    return create(FolderDestination("archive", folder), calling_ae="SEGNODE", timeout=5.0)


def test_a_folder_block_makes_a_folder_writer() -> None:
    destination = writer(Path("/srv/out"))
    assert isinstance(destination, FolderWriter)
    assert (destination.name, destination.describe()) == ("archive", "archive (folder /srv/out)")


def test_copies_by_sop_instance_uid(ct: tuple[Path, ...], tmp_path: Path) -> None:
    folder = tmp_path / "out"
    results = writer(folder).send(list(ct))
    assert [(r.path, r.outcome) for r in results] == [(p, Outcome.SENT) for p in ct]
    for path in ct:
        target = folder / f"{pydicom.dcmread(path).SOPInstanceUID}.dcm"
        assert target.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_failure_leaves_no_partial_file(ct: tuple[Path, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / f"{pydicom.dcmread(ct[0]).SOPInstanceUID}.dcm"
    target.write_bytes(b"previous complete copy")

    def half_then_disk_full(source: Any, handle: Any, length: int = 0) -> None:
        handle.write(source.read(100))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", half_then_disk_full)
    results = writer(folder).send([ct[0]])
    assert [r.outcome for r in results] == [Outcome.RETRY]
    assert "No space left on device" in results[0].reason
    assert target.read_bytes() == b"previous complete copy"
    assert [p.name for p in folder.iterdir()] == [target.name]


def test_missing_source_fails(tmp_path: Path) -> None:
    results = writer(tmp_path / "out").send([tmp_path / "gone.dcm"])
    assert [r.outcome for r in results] == [Outcome.FAILED]
    assert "gone.dcm" in results[0].reason


def test_check_accepts_a_writable_folder_or_one_it_can_create(tmp_path: Path) -> None:
    assert writer(tmp_path).check() is None
    assert writer(tmp_path / "not" / "yet").check() is None


def test_check_names_what_is_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    reason = writer(tmp_path / "file" / "out").check()
    assert reason == f"archive (folder {tmp_path / 'file' / 'out'}): {tmp_path / 'file'} is not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_reports_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert writer(folder).check() == f"archive (folder {folder}): the folder is not writable"
        assert writer(folder / "sub").check() == (
            f"archive (folder {folder / 'sub'}): cannot create it, {folder} is not writable"
        )
    finally:
        folder.chmod(0o755)
