"""Label inputs (node/convert/label_input.py): label maps and mask folders, and each refusal naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import synthetic as syn

from node.convert.label_input import is_mask_file, load_label_input, mask_files, nifti_header_grid, nifti_stem
from node.errors import GeometryError, InputError, LabelError

GRID = syn.GridSpec.axial(rows=6, cols=7, slices=5, row_spacing=1.0, col_spacing=1.0, slice_step=2.0)
AFFINE = syn.export_grid_affine(GRID)
SHAPE = syn.export_grid_shape(GRID)


def label_map(tmp_path: Path, data: np.ndarray, name: str = "seg.nii.gz") -> Path:
    return syn.save_nifti(data, AFFINE, tmp_path / name)


def blob(value: int = 1, dtype: type = np.uint8) -> np.ndarray:
    data: np.ndarray = np.zeros(SHAPE, dtype=dtype)
    data[1:3, 2:4, 1:3] = value
    return data


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_integer_valued_label_maps_of_any_dtype_load_as_unsigned(tmp_path: Path, dtype: type) -> None:
    volume = load_label_input(label_map(tmp_path, blob(7, dtype)))
    assert volume.array.dtype == np.uint8 and volume.values == [7]
    assert volume.grid.shape == SHAPE


def test_large_values_need_uint16(tmp_path: Path) -> None:
    assert load_label_input(label_map(tmp_path, blob(300, np.int32))).array.dtype == np.uint16


def test_4d_with_one_volume_is_3d(tmp_path: Path) -> None:
    volume = load_label_input(label_map(tmp_path, blob()[..., None]))
    assert volume.array.shape == SHAPE


def test_4d_with_several_volumes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match=r"seg\.nii\.gz: label map must be 3D"):
        load_label_input(label_map(tmp_path, np.stack([blob(), blob()], axis=-1)))


@pytest.mark.parametrize(("value", "why"), [(0.5, "fractional values"), (np.nan, "NaN or infinite")])
def test_non_integer_floats_are_refused(tmp_path: Path, value: float, why: str) -> None:
    data = blob(1, np.float32)
    data[0, 0, 0] = value
    with pytest.raises(LabelError, match=why):
        load_label_input(label_map(tmp_path, data))


def test_negative_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match="negative values"):
        load_label_input(label_map(tmp_path, blob(-2, np.int16)))


def test_an_all_background_map_loads_with_no_values(tmp_path: Path) -> None:
    # build_seg_from_input refuses it with its own message; loading itself is fine.
    assert load_label_input(label_map(tmp_path, np.zeros(SHAPE, np.uint8))).values == []


@pytest.mark.parametrize("content", [b"", b"not a nifti at all" * 10, b"\x1f\x8b\x08\x00truncated gzip"])
def test_corrupt_files_are_one_input_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"^broken\.nii\.gz: cannot be read as NIfTI"):
        load_label_input(path)
    with pytest.raises(InputError, match=r"^broken\.nii\.gz: cannot be read as NIfTI"):
        nifti_header_grid(path)


def test_truncated_gzip_is_refused(tmp_path: Path) -> None:
    good = label_map(tmp_path, blob())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match=r"^cut\.nii\.gz: cannot be read as NIfTI"):
        load_label_input(cut)


def test_missing_and_foreign_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder"):
        load_label_input(tmp_path / "absent.nii.gz")
    other = tmp_path / "labels.png"
    other.write_bytes(b"png")
    with pytest.raises(InputError, match="not a NIfTI file"):
        load_label_input(other)


def test_no_geometry_is_a_geometry_error(tmp_path: Path) -> None:
    path = syn.save_nifti(blob(), AFFINE, tmp_path / "plain.nii.gz", codes=(0, 0))
    with pytest.raises(GeometryError, match=r"^plain\.nii\.gz: "):
        load_label_input(path)


def test_names_and_stems() -> None:
    assert nifti_stem(Path("liver.nii.gz")) == "liver" and nifti_stem(Path("a.b.nii")) == "a.b"
    assert is_mask_file(Path("liver.nii.gz")) and not is_mask_file(Path(".liver.nii.gz"))
    assert not is_mask_file(Path("liver.nii.gz.part")) and not is_mask_file(Path("notes.txt"))


# -- mask folders ----------------------------------------------------------------------------------------------


def masks(tmp_path: Path, *, empty: tuple[str, ...] = ()) -> Path:
    folder = tmp_path / "masks"
    syn.masks_folder((AFFINE, SHAPE), syn.Phantom.fitting(GRID), folder, snap=GRID, empty=empty)
    return folder


def test_a_mask_folder_is_one_label_per_non_empty_mask_in_name_order(tmp_path: Path) -> None:
    folder = masks(tmp_path, empty=("zz_empty",))
    (folder / ".DS_Store").write_bytes(b"junk")
    (folder / "notes.txt").write_text("ignored")
    files = mask_files(folder)
    assert [p.name for p in files] == sorted(p.name for p in folder.glob("*.nii.gz"))
    volume = load_label_input(folder)
    names = list(volume.names.values())
    non_empty = [nifti_stem(p) for p in files if np.asanyarray(syn.nib.load(p).dataobj).any()]
    assert names == non_empty and "zz_empty" not in names and len(names) >= 2
    assert volume.values == list(range(1, len(names) + 1))
    assert np.allclose(nifti_header_grid(folder).affine, volume.grid.affine)


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / ".hidden.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="nothing: folder holds no NIfTI masks"):
        load_label_input(folder)
    with pytest.raises(InputError, match="nothing: folder holds no NIfTI masks"):
        nifti_header_grid(folder)


def test_masks_must_be_binary(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    syn.save_nifti(blob(2), AFFINE, folder / "liver.nii.gz")
    with pytest.raises(LabelError, match=r"m/liver\.nii\.gz: a mask must hold only 0 and 1"):
        load_label_input(folder)


def test_masks_must_not_overlap(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    syn.save_nifti(blob(), AFFINE, folder / "a.nii.gz")
    syn.save_nifti(blob(), AFFINE, folder / "b.nii.gz")
    with pytest.raises(LabelError, match=r"m/b\.nii\.gz: overlaps mask a"):
        load_label_input(folder)


def test_masks_must_share_one_grid(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    syn.save_nifti(blob(), AFFINE, folder / "a.nii.gz")
    shifted = np.array(AFFINE, dtype=float)
    shifted[:3, 3] += 10.0
    syn.save_nifti(blob(), shifted, folder / "b.nii.gz")
    with pytest.raises(GeometryError, match=r"m/b\.nii\.gz: grid differs from a\.nii\.gz"):
        load_label_input(folder)
