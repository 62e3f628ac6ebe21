"""Matching an inbox item to a received series (node/pipeline/match.py): by name, by sidecar, by geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import synthetic as syn

from node.convert.geometry import Grid, nifti_grid
from node.pipeline.match import Candidate, MatchError, fits, match_item

AXIAL = syn.GridSpec.axial(rows=6, cols=7, slices=5, row_spacing=1.0, col_spacing=1.0, slice_step=2.0)
OTHER = syn.GridSpec.axial(rows=9, cols=7, slices=4, row_spacing=1.5, col_spacing=1.0, slice_step=3.0)
SERIES_A, SERIES_B, SERIES_C = "1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3"


def grid_of(spec: syn.GridSpec) -> Grid:
    return nifti_grid(syn.export_grid_affine(spec), syn.export_grid_shape(spec))


def item(folder: Path, name: str, spec: syn.GridSpec = AXIAL) -> Path:
    shape = syn.export_grid_shape(spec)
    return syn.save_nifti(np.ones(shape, np.uint8), syn.export_grid_affine(spec), folder / name)


def sidecar(folder: Path, stem: str, content: dict[str, object]) -> Path:
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(content))
    return path


CANDIDATES = [Candidate(SERIES_A, grid_of(AXIAL)), Candidate(SERIES_B, grid_of(OTHER))]
KNOWN = {SERIES_A, SERIES_B}


def test_by_uid_name(tmp_path: Path) -> None:
    match = match_item(item(tmp_path, f"{SERIES_B}.nii.gz"), None, KNOWN, CANDIDATES)
    assert (match.series_uid, match.how, match.stack) == (SERIES_B, "name", 1)


def test_by_stem_of_a_later_stack(tmp_path: Path) -> None:
    stacks = [*CANDIDATES, Candidate(SERIES_A, grid_of(OTHER), stack=2)]
    match = match_item(item(tmp_path, f"{SERIES_A}_stack2.nii.gz", OTHER), None, KNOWN, stacks)
    assert (match.series_uid, match.how, match.stack) == (SERIES_A, "name", 2)


def test_a_received_series_without_export_still_matches_by_name(tmp_path: Path) -> None:
    match = match_item(item(tmp_path, f"{SERIES_C}.nii"), None, {*KNOWN, SERIES_C}, CANDIDATES)
    assert (match.series_uid, match.how) == (SERIES_C, "name")


def test_by_sidecar(tmp_path: Path) -> None:
    path = item(tmp_path, "liver_seg.nii.gz", OTHER)  # the grid would say B; the sidecar says A and wins
    match = match_item(path, sidecar(tmp_path, "liver_seg", {"series_instance_uid": SERIES_A}), KNOWN, CANDIDATES)
    assert (match.series_uid, match.how) == (SERIES_A, "sidecar")


def test_a_sidecar_naming_a_series_never_received_is_refused(tmp_path: Path) -> None:
    path = item(tmp_path, "liver_seg.nii.gz")
    side = sidecar(tmp_path, "liver_seg", {"SeriesInstanceUID": SERIES_C})
    with pytest.raises(MatchError, match=f"liver_seg.json: names series {SERIES_C}, which this node has not received"):
        match_item(path, side, KNOWN, CANDIDATES)


def test_a_sidecar_without_a_uid_falls_back_to_geometry(tmp_path: Path) -> None:
    path = item(tmp_path, "seg.nii.gz", OTHER)
    match = match_item(path, sidecar(tmp_path, "seg", {"labels": {"1": "liver"}}), KNOWN, CANDIDATES)
    assert (match.series_uid, match.how) == (SERIES_B, "geometry")


def test_by_geometry_when_exactly_one_series_fits(tmp_path: Path) -> None:
    match = match_item(item(tmp_path, "ct_seg.nii.gz"), None, KNOWN, CANDIDATES)
    assert (match.series_uid, match.how) == (SERIES_A, "geometry")


def test_by_geometry_for_a_reoriented_nifti(tmp_path: Path) -> None:
    image = syn.nib.load(item(tmp_path, "plain.nii.gz"))
    flipped = syn.reoriented(image, "LPS")
    syn.nib.save(flipped, tmp_path / "flipped.nii.gz")
    assert fits(grid_of(AXIAL), nifti_grid(flipped.affine, flipped.shape))
    assert match_item(tmp_path / "flipped.nii.gz", None, KNOWN, CANDIDATES).series_uid == SERIES_A


def test_an_ambiguous_geometry_match_names_all_candidates(tmp_path: Path) -> None:
    twins = [*CANDIDATES, Candidate(SERIES_C, grid_of(AXIAL))]
    with pytest.raises(MatchError, match="ambiguous") as caught:
        match_item(item(tmp_path, "ct_seg.nii.gz"), None, {*KNOWN, SERIES_C}, twins)
    message = str(caught.value)
    assert message.startswith("ct_seg.nii.gz: grid fits 2 exports")
    assert SERIES_A in message and SERIES_C in message and SERIES_B not in message


def test_no_fitting_series_is_refused_with_the_candidates(tmp_path: Path) -> None:
    odd = syn.GridSpec.axial(rows=5, cols=5, slices=3, row_spacing=2.0, col_spacing=2.0, slice_step=4.0)
    with pytest.raises(MatchError, match="no received series has this grid") as caught:
        match_item(item(tmp_path, "odd.nii.gz", odd), None, KNOWN, CANDIDATES)
    assert SERIES_A in str(caught.value) and SERIES_B in str(caught.value)


def test_a_mask_folder_matches_by_its_first_mask(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    item(folder, "liver.nii.gz", OTHER)
    assert match_item(folder, None, KNOWN, CANDIDATES).series_uid == SERIES_B
