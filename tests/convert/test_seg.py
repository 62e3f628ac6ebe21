"""Self-verification of built SEGs (node/convert/verify.py): it must catch a SEG that disagrees with its input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import synthetic as syn
from pydicom.dataset import Dataset

from node.convert import build_seg_from_input, input_stats, tolerance_for
from node.convert.alignment import plan_alignment
from node.convert.anatomy import segment_specs
from node.convert.label_input import load_label_input
from node.convert.seg import SegOptions, SegType
from node.convert.series import load_series
from node.convert.verify import seg_stats, verify_seg
from node.errors import VerificationError


def built(tmp_path: Path, cols: int, seg_type: SegType) -> tuple[Dataset, Path, Path]:
    grid = syn.GridSpec.axial(rows=20, cols=cols, slices=6)
    info = syn.write_series(grid, tmp_path / "dicom")
    nifti = tmp_path / "labels.nii.gz"
    syn.label_nifti_on_grid(
        (syn.export_grid_affine(grid), syn.export_grid_shape(grid)), syn.Phantom.fitting(grid), nifti, snap=grid
    )
    series = load_series(info.folder)
    result = build_seg_from_input(series, nifti, options=SegOptions(seg_type=seg_type))
    return result.dataset, info.folder, nifti


def verify_again(seg: Dataset, dicom: Path, nifti: Path) -> None:
    series = load_series(dicom)
    volume = load_label_input(nifti)
    alignment = plan_alignment(series.grid, volume.grid)
    verify_seg(
        seg,
        input_stats(volume, alignment, series, volume.values),
        segment_specs(volume.values),
        tolerance_for(alignment, volume, series),
        input_voxel_mm3=volume.grid.voxel_volume,
        slab_of=series.slab_at,
    )


# 32 columns: BINARY frames are read from packed bytes; 30 columns: frames straddle bytes and are unpacked.
CASES = [(32, SegType.BINARY), (30, SegType.BINARY), (30, SegType.LABELMAP), (30, SegType.FRACTIONAL)]


@pytest.mark.parametrize(("cols", "seg_type"), CASES, ids=lambda c: str(getattr(c, "value", c)))
def test_a_correct_seg_passes_and_its_stats_are_in_patient_space(tmp_path: Path, cols: int, seg_type: SegType) -> None:
    seg, dicom, nifti = built(tmp_path, cols, seg_type)
    verify_again(seg, dicom, nifti)
    grid = syn.GridSpec.axial(rows=20, cols=cols, slices=6)
    truth = syn.Phantom.fitting(grid).truth(grid)
    stats = seg_stats(seg, load_series(dicom).slab_at)
    voxel_mm3 = grid.row_spacing * grid.col_spacing * abs(grid.slice_step)
    for number, label in enumerate(sorted(v for v in np.unique(truth) if v), start=1):
        mask = truth == label
        assert stats[number].stats.count == int(mask.sum())
        assert stats[number].volume_mm3 == pytest.approx(int(mask.sum()) * voxel_mm3)
        np.testing.assert_allclose(stats[number].stats.centroid, syn.centroid_lps(mask, grid), atol=1e-6)


@pytest.mark.parametrize(("cols", "seg_type"), CASES, ids=lambda c: str(getattr(c, "value", c)))
def test_a_frame_moved_by_one_slice_is_caught(tmp_path: Path, cols: int, seg_type: SegType) -> None:
    seg, dicom, nifti = built(tmp_path, cols, seg_type)
    position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    position.ImagePositionPatient = [float(v) for v in position.ImagePositionPatient[:2]] + [
        float(position.ImagePositionPatient[2]) + 2.0
    ]
    with pytest.raises(VerificationError, match=r"centroid [0-9.e-]+ mm away"):
        verify_again(seg, dicom, nifti)


def test_flipped_pixels_are_caught(tmp_path: Path) -> None:
    seg, dicom, nifti = built(tmp_path, 32, SegType.BINARY)
    data = bytearray(seg.PixelData)
    data[0] ^= 0xFF
    seg.PixelData = bytes(data)
    with pytest.raises(VerificationError, match="failed self-verification"):
        verify_again(seg, dicom, nifti)
