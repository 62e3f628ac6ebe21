"""Finding and choosing the source series (node/convert/series.py): the refusals a user meets first."""

from __future__ import annotations

from pathlib import Path

import pytest
import synthetic as syn

from node.convert.series import choose_stack, find_series, find_stacks, load_series
from node.errors import InputError

GRID = syn.GridSpec.axial(rows=8, cols=10, slices=4, row_spacing=1.0, col_spacing=1.0, slice_step=2.0)


@pytest.fixture(scope="module")
def two_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, syn.SeriesInfo, syn.SeriesInfo]:
    folder = tmp_path_factory.mktemp("two")
    first = syn.write_series(GRID, folder / "a", seed=1)
    second = syn.write_series(GRID, folder / "b", seed=2)
    return folder, first, second


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    assert find_series(tmp_path) == {}
    with pytest.raises(InputError, match="no DICOM files found"):
        find_stacks(tmp_path)


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"not dicom")
    with pytest.raises(InputError, match="not a folder"):
        find_series(path)


def test_several_series_without_a_choice_name_them_all(two_series: tuple[Path, syn.SeriesInfo, syn.SeriesInfo]) -> None:
    folder, first, second = two_series
    with pytest.raises(InputError, match="choose one with --series") as caught:
        find_stacks(folder)
    assert first.series_uid in str(caught.value) and second.series_uid in str(caught.value)


def test_several_series_with_a_choice(two_series: tuple[Path, syn.SeriesInfo, syn.SeriesInfo]) -> None:
    folder, _, second = two_series
    series = load_series(folder, second.series_uid)
    assert series.series_uid == second.series_uid and series.plane_count == GRID.slices


def test_unknown_series_names_those_present(two_series: tuple[Path, syn.SeriesInfo, syn.SeriesInfo]) -> None:
    folder, first, second = two_series
    with pytest.raises(InputError, match=r"series 1\.2\.3 not found") as caught:
        find_stacks(folder, "1.2.3")
    assert first.series_uid in str(caught.value) and second.series_uid in str(caught.value)


def test_unknown_stack_is_refused_with_the_stacks_listed(
    two_series: tuple[Path, syn.SeriesInfo, syn.SeriesInfo],
) -> None:
    folder, first, _ = two_series
    stacks = find_stacks(folder, first.series_uid)
    assert choose_stack(stacks, 1, "here") is stacks[0]
    with pytest.raises(InputError, match=f"here: series {first.series_uid} holds 1 stacks"):
        choose_stack(stacks, 5, "here")
    with pytest.raises(InputError):
        load_series(folder, first.series_uid, stack=0)
