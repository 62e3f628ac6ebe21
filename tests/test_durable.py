"""Tests of node/durable.py: a failed write leaves the old file and no temporary behind."""

from __future__ import annotations

from pathlib import Path
from typing import IO

import pytest

from node.durable import atomic_write, atomic_write_json, remove_temp_files


def test_failed_write_keeps_previous_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "seg.dcm"
    target.write_bytes(b"old")

    def half_then_fail(handle: IO[bytes]) -> None:
        handle.write(b"new but incompl")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]


def test_json_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"b": [1, 2]})
    assert target.read_text() == '{\n  "b": [\n    1,\n    2\n  ]\n}\n'


def test_recovery_removes_only_our_temp_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".a.dcm.abc123.tmp").write_bytes(b"half")
    (tmp_path / "keep.tmp").write_bytes(b"user file, not hidden")
    (tmp_path / "b.dcm").write_bytes(b"whole")
    assert remove_temp_files(tmp_path) == 1
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == ["b.dcm", "keep.tmp"]
