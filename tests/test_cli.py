"""The `segnode` command line (node/cli.py): one line on failure, and the small commands' output."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import synthetic as syn
from dcmtk import free_port

import node
from node.cli import main
from node.config import load_config

GRID = syn.GridSpec.axial(rows=8, cols=10, slices=4, row_spacing=1.0, col_spacing=1.0, slice_step=2.0)


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "segnode.toml"
    path.write_text(
        '[node]\nae_title = "TESTNODE"\nbind = "127.0.0.1"\nport = 11112\n'
        '[paths]\ndata = "data"\ninbox = "inbox"\nexport = "export"\n'
        "[series]\nquiet_seconds = 5\n"
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\n'
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> syn.CliResult:
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return syn.CliResult(code=code, stdout=out, stderr=err)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    return lines[0]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "--version")
    assert result.code == 0 and result.stdout.strip() == f"segnode {node.__version__}"


def test_convert_of_a_missing_folder_is_one_line(tmp_path: Path, segnode_convert: syn.ConvertRunner) -> None:
    out = tmp_path / "seg.dcm"
    result = segnode_convert(
        "--dicom", str(tmp_path / "absent"), "--nifti", str(tmp_path / "x.nii.gz"), "--out", str(out)
    )
    assert result.code == 2 and not out.exists()
    assert one_line(result.stderr).startswith("segnode convert: ") and "absent" in result.stderr


def test_convert_of_an_empty_label_map_is_one_line(tmp_path: Path, segnode_convert: syn.ConvertRunner) -> None:
    series = syn.write_series(GRID, tmp_path / "dicom")
    nifti = syn.save_nifti(
        np.zeros(syn.export_grid_shape(GRID), np.uint8), syn.export_grid_affine(GRID), tmp_path / "empty.nii.gz"
    )
    out = tmp_path / "seg.dcm"
    result = segnode_convert("--dicom", str(series.folder), "--nifti", str(nifti), "--out", str(out))
    assert result.code == 2 and not out.exists()
    assert one_line(result.stderr) == (
        "segnode convert: empty.nii.gz: label map is empty (all voxels are 0); nothing to segment"
    )


def test_convert_succeeds_with_one_summary_line(tmp_path: Path, segnode_convert: syn.ConvertRunner) -> None:
    series = syn.write_series(GRID, tmp_path / "dicom")
    reference = (syn.export_grid_affine(GRID), syn.export_grid_shape(GRID))
    nifti = syn.label_nifti_on_grid(reference, syn.Phantom.fitting(GRID), tmp_path / "seg.nii.gz", snap=GRID)
    out = tmp_path / "seg.dcm"
    result = segnode_convert("--dicom", str(series.folder), "--nifti", str(nifti), "--out", str(out))
    assert result.code == 0, result.stderr
    assert out.is_file() and result.stdout.startswith(f"{out}: ")


def test_check_config_prints_what_it_understood(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    result = run(capsys, "check-config", "--config", str(config))
    assert result.code == 0, result.stderr
    line = result.stdout.splitlines()[0]
    assert line.startswith(f"# {config}: ok; TESTNODE on 127.0.0.1:11112")
    assert str(tmp_path / "data") in line and "pacs" in line


def test_check_config_prints_the_effective_configuration_as_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    result = run(capsys, "check-config", "--config", str(config))
    assert result.code == 0, result.stderr
    document = tomllib.loads(result.stdout)  # the ok line is a comment: stdout is a config file as it is
    assert document["series"]["quiet_seconds"] == 5 and document["logging"] == {"format": "text", "include_phi": False}
    effective = tmp_path / "elsewhere" / "effective.toml"
    effective.parent.mkdir()
    effective.write_text(result.stdout)
    assert replace(load_config(effective), source=None) == replace(load_config(config), source=None)


def test_check_config_of_a_bad_value_names_the_key_the_value_and_what_is_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[logging]\nformat = "xml"\n')
    result = run(capsys, "check-config", "--config", str(config))
    assert result.code == 2 and result.stdout == ""
    line = one_line(result.stderr)
    assert "logging" in line and "format" in line and "'xml'" in line and "json" in line, line


def test_check_config_of_a_bad_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[node]\nport = 0\n")
    result = run(capsys, "check-config", "--config", str(config))
    assert result.code == 2 and result.stdout == ""
    assert "port" in one_line(result.stderr)


@pytest.mark.parametrize("command", ["status", "jobs"])
def test_status_and_jobs_on_a_fresh_node_are_one_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    config = write_config(tmp_path)
    result = run(capsys, command, "--config", str(config))
    assert result.code == 2 and result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith(f"segnode {command}: ") and "no state database yet" in line


def test_echo_checks_each_destination_through_its_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    with config.open("a") as handle:
        handle.write(f'[[destinations]]\nname = "copies"\nfolder = "{tmp_path / "out"}"\n')
    closed = free_port()  # nothing listens there: the DICOM peer is unreachable
    config.write_text(config.read_text().replace("port = 104", f"port = {closed}"))
    result = run(capsys, "echo", "--config", str(config))
    lines = result.stdout.strip().splitlines()
    assert result.code == 1 and len(lines) == 2
    assert lines[0].startswith("pacs") and "ok" not in lines[0].rsplit(":", 1)[1]
    assert lines[1].startswith("copies") and lines[1].endswith(": ok")
    only_folder = run(capsys, "echo", "copies", "--config", str(config))
    assert only_folder.code == 0 and only_folder.stdout.strip().endswith(": ok")
