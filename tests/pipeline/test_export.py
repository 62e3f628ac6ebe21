"""node/export.py: the NIfTI a segmentation tool gets, checked in patient space, and pixel data it cannot decode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import synthetic as syn
from pydicom.encaps import encapsulate
from pydicom.uid import UID
from synthetic import nib

from node.convert.series import load_series
from node.errors import InputError
from node.pipeline.export import export_series


def test_export_voxels_sit_on_the_dicom_pixels_in_mm(tmp_path: Path) -> None:
    grid = syn.GridSpec.oblique(rows=12, cols=10, slices=6, row_spacing=1.1, col_spacing=0.8, slice_step=2.0)
    info = syn.write_series(grid, tmp_path / "dicom", instance_numbers="shuffled", shuffle_file_names=True)
    exported = export_series(load_series(info.folder), tmp_path / "export")
    image = nib.load(exported.nifti)
    data = np.asarray(image.dataobj)
    assert data.shape == (grid.cols, grid.rows, grid.slices)
    # Every voxel centre (RAS) is the matching DICOM pixel centre (LPS) with x and y negated.
    centres_ras = syn.voxel_centres_ras(image.affine, data.shape)
    expected_lps = np.transpose(grid.centres_lps(), (2, 1, 0, 3))
    np.testing.assert_allclose(centres_ras * [-1, -1, 1], expected_lps, atol=1e-4)
    # And the value there is that pixel's value after the rescale (HU).
    for k, path in enumerate(info.paths):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
        np.testing.assert_array_equal(data[:, :, k].T, hu)
    sidecar = json.loads(exported.sidecar.read_text())
    assert sidecar["SeriesInstanceUID"] == info.series_uid and sidecar["shape"] == list(data.shape)


def test_pixel_data_without_a_decoder_is_a_one_line_input_error(tmp_path: Path) -> None:
    grid = syn.GridSpec.axial(rows=8, cols=8, slices=3)
    info = syn.write_series(grid, tmp_path / "dicom")
    # MPEG2 video: no pydicom plugin decodes it, so pydicom raises its "no decoder" error.
    ds = pydicom.dcmread(info.paths[1])
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    ds.save_as(info.paths[1], enforce_file_format=True)
    with pytest.raises(InputError) as caught:
        export_series(load_series(info.folder), tmp_path / "export")
    message = str(caught.value)
    assert "pixel data cannot be decoded" in message and info.series_uid in message and "\n" not in message
    assert not list((tmp_path / "export").glob("*"))
