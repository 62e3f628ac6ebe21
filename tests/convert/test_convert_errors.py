"""``segnode convert`` on bad input: non-zero exit, ONE line on stderr naming the input, and no output file.

These run the installed console script as a subprocess so that stderr is exactly what a user sees (logging
included), which an in-process call under pytest's log capture would hide.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import synthetic as syn
from synthetic import nib

GRID = syn.GridSpec.axial(rows=16, cols=20, slices=6, row_spacing=1.2, col_spacing=0.8, slice_step=3.0)


@dataclass(frozen=True)
class Case:
    """One bad invocation: the arguments, what stderr must name, and where the output would go."""

    args: list[str]
    names: list[str]
    out: Path


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> syn.SeriesInfo:
    return syn.write_series(GRID, tmp_path_factory.mktemp("source") / "dicom")


def labels_array(grid: syn.GridSpec = GRID) -> Any:
    phantom = syn.Phantom.fitting(grid)
    return syn.labels_on_nifti_grid((syn.export_grid_affine(grid), syn.export_grid_shape(grid)), phantom, snap=grid)


def nifti_case(
    tmp_path: Path, source: syn.SeriesInfo, name: str, data: Any, *, codes: tuple[int, int] = (1, 1), affine: Any = None
) -> Case:
    path = syn.save_nifti(
        np.asarray(data), syn.export_grid_affine(GRID) if affine is None else affine, tmp_path / name, codes=codes
    )
    out = tmp_path / "out" / "seg.dcm"
    return Case(["convert", "--dicom", str(source.folder), "--nifti", str(path), "--out", str(out)], [name], out)


def truncated_gzip(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    """Cut inside the header: not even the NIfTI header can be read."""
    case = nifti_case(tmp_path, source, "truncated.nii.gz", labels_array().astype(np.uint8))
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(path.read_bytes())
    return case


def truncated_gzip_data(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    """Cut inside the voxel data (an interrupted copy): the header reads, the data does not."""
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 5, syn.export_grid_shape(GRID), dtype=np.uint8)  # incompressible, so the data is long
    case = nifti_case(tmp_path, source, "interrupted.nii.gz", noisy)
    path = tmp_path / "interrupted.nii.gz"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 3 // 4])
    with gzip.open(path) as stream:
        header = nib.Nifti1Header.from_fileobj(stream)
    assert tuple(header.get_data_shape()) == syn.export_grid_shape(GRID)
    return case


def bad_labels_json(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    case = nifti_case(tmp_path, source, "labels.nii.gz", labels_array().astype(np.uint8))
    table = tmp_path / "names.json"
    table.write_text('{"1": "liver", "2": ')
    return Case([*case.args, "--labels", str(table)], ["names.json"], case.out)


def fractional(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    return nifti_case(tmp_path, source, "probabilities.nii.gz", labels_array().astype(np.float32) * 0.25)


def with_nan(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    data = labels_array().astype(np.float32)
    data[3, 4, 2] = np.nan
    return nifti_case(tmp_path, source, "nan.nii.gz", data)


def five_d(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    data = np.stack([labels_array().astype(np.uint8)] * 4, axis=-1).reshape((*syn.export_grid_shape(GRID), 2, 2))
    return nifti_case(tmp_path, source, "five_d.nii.gz", data)


def four_d_many_volumes(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    data = np.stack([labels_array().astype(np.uint8)] * 3, axis=-1)
    return nifti_case(tmp_path, source, "three_volumes.nii.gz", data)


def other_series_grid(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    far = GRID.replace(origin=syn.vec3(np.asarray(GRID.origin) + np.array([0.0, 0.0, 500.0])))
    return nifti_case(
        tmp_path, source, "elsewhere.nii.gz", labels_array(far).astype(np.uint8), affine=syn.export_grid_affine(far)
    )


def no_geometry(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    return nifti_case(tmp_path, source, "no_geometry.nii.gz", labels_array().astype(np.uint8), codes=(0, 0))


def all_zero(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    return nifti_case(tmp_path, source, "empty.nii.gz", np.zeros(syn.export_grid_shape(GRID), dtype=np.uint8))


def negative(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    return nifti_case(tmp_path, source, "negative.nii.gz", labels_array().astype(np.int16) * -1)


def no_dicom(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    folder = tmp_path / "not_dicom"
    folder.mkdir()
    (folder / "README.txt").write_text("no images here\n")
    (folder / "IM_0001").write_bytes(b"\0" * 300)
    case = nifti_case(tmp_path, source, "labels.nii.gz", labels_array().astype(np.uint8))
    case.args[2] = str(folder)
    return Case(case.args, ["not_dicom"], case.out)


def two_series(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    folder = tmp_path / "two_series"
    first = syn.write_series(GRID, folder / "a", seed=1)
    second = syn.write_series(GRID.replace(slices=4), folder / "b", seed=2)
    case = nifti_case(tmp_path, source, "labels.nii.gz", labels_array().astype(np.uint8))
    case.args[2] = str(folder)
    return Case(case.args, ["two_series", first.series_uid, second.series_uid], case.out)


def unknown_series(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    case = nifti_case(tmp_path, source, "labels.nii.gz", labels_array().astype(np.uint8))
    return Case([*case.args, "--series", "1.2.3.999"], ["1.2.3.999"], case.out)


def missing_nifti(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    out = tmp_path / "out" / "seg.dcm"
    return Case(
        ["convert", "--dicom", str(source.folder), "--nifti", str(tmp_path / "nowhere.nii.gz"), "--out", str(out)],
        ["nowhere.nii.gz"],
        out,
    )


def missing_dicom(tmp_path: Path, source: syn.SeriesInfo) -> Case:
    case = nifti_case(tmp_path, source, "labels.nii.gz", labels_array().astype(np.uint8))
    case.args[2] = str(tmp_path / "no_such_folder")
    return Case(case.args, ["no_such_folder"], case.out)


CASES: list[Callable[[Path, syn.SeriesInfo], Case]] = [
    truncated_gzip,
    truncated_gzip_data,
    bad_labels_json,
    fractional,
    with_nan,
    five_d,
    four_d_many_volumes,
    other_series_grid,
    no_geometry,
    all_zero,
    negative,
    no_dicom,
    two_series,
    unknown_series,
    missing_nifti,
    missing_dicom,
]


@pytest.mark.parametrize("make", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_fails_with_one_line(
    tmp_path: Path, source: syn.SeriesInfo, make: Callable[[Path, syn.SeriesInfo], Case]
) -> None:
    case = make(tmp_path, source)
    result = syn.run_segnode(case.args)
    lines = result.stderr.splitlines()
    assert result.returncode != 0, f"exit 0 for bad input; stdout: {result.stdout!r}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {result.stderr!r}"
    assert "Traceback" not in result.stderr
    for name in case.names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]!r}"
    assert not case.out.exists()
    leftovers = list(case.out.parent.iterdir()) if case.out.parent.exists() else []
    assert leftovers == [], f"partial output left behind: {leftovers}"
