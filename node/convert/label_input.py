"""Label inputs as segmentation tools write them: a NIfTI label map, or a folder of per-structure masks.

Everything a user can get wrong about the file itself (unreadable, not integers, NaN, too many dimensions, no
geometry) is refused here with one line naming the file.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from node.convert.geometry import GRID_TOLERANCE_VOXELS, Grid, nifti_affine, nifti_grid
from node.errors import GeometryError, InputError, LabelError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_NO_MASKS = "folder holds no NIfTI masks (.nii/.nii.gz)"
#: What nibabel raises on a truncated, corrupt or foreign file.
_READ_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError)


@dataclass(frozen=True)
class LabelVolume:
    """An integer label map on its own grid (NIfTI index order), with any label names the input carried."""

    path: Path
    array: npt.NDArray[np.unsignedinteger[Any]]
    grid: Grid
    #: Names found in the input itself: mask file stems, or names embedded in the NIfTI header.
    names: dict[int, str] = field(default_factory=dict)
    header: Any = None

    @property
    def values(self) -> list[int]:
        """Label values present, ascending, without background."""
        return present_values(self.array)


def present_values(labels: npt.NDArray[np.unsignedinteger[Any]], chunk: int = 1 << 22) -> list[int]:
    """Non-zero values in an unsigned label array, ascending.

    Chunked bincount in memory order: no copy of the array and no int64 temporary of its size (np.unique or a
    plain bincount of a 512×512×300 volume costs seconds and hundreds of MB).

    >>> present_values(np.array([[0, 3], [3, 1]], dtype=np.uint8))
    [1, 3]
    """
    flat = labels.ravel(order="K")
    if not flat.flags.contiguous:
        flat = np.ascontiguousarray(flat)
    seen = np.zeros(int(np.iinfo(labels.dtype).max) + 1, dtype=bool)
    for start in range(0, flat.size, chunk):
        seen |= np.bincount(flat[start : start + chunk], minlength=seen.size).astype(bool)
    return [int(v) for v in np.flatnonzero(seen) if v != 0]


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    """File name without .nii/.nii.gz: ``liver.nii.gz`` → ``liver``."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def is_mask_file(path: Path) -> bool:
    """Whether a file in a mask folder is a mask: a NIfTI file that is not hidden (``.DS_Store``, rsync temporaries)."""
    return is_nifti(path) and not path.name.startswith(".")


def mask_files(folder: Path) -> list[Path]:
    """The masks of a mask folder, in file-name order (the order their labels are numbered in)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_mask_file(p))


def nifti_header_grid(path: Path) -> Grid:
    """Grid of a NIfTI file, or of the first mask of a folder, from the header alone (no voxel data is read).

    Raises
    ------
    InputError
        The folder holds no masks, or the file cannot be read as NIfTI.
    GeometryError
        The header's affine is unusable.
    """
    target = path
    if path.is_dir():
        masks = mask_files(path)
        if not masks:
            raise InputError(f"{path.name}: {_NO_MASKS}")
        target = masks[0]
    return _grid_of(_open_nifti(target), target)


def load_label_input(path: Path) -> LabelVolume:
    """Load a label map file or a folder of binary masks as one :class:`LabelVolume`."""
    if path.is_dir():
        return _load_mask_folder(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if not is_nifti(path):
        raise InputError(f"{path.name}: not a NIfTI file (.nii or .nii.gz) or a folder of masks")
    image, data = _read_nifti(path)
    labels = _as_labels(data, path)
    return LabelVolume(path=path, array=labels, grid=_grid_of(image, path), header=image.header)


def _open_nifti(path: Path) -> Any:
    """The image of a NIfTI-1/2 file, its header read (nibabel also opens Analyze, MGH... which are refused)."""
    try:
        image: Any = nib.load(path)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{path.name}: is {type(image).__name__}, not NIfTI-1/2")
    return image


def _read_nifti(path: Path) -> tuple[Any, npt.NDArray[Any]]:
    image = _open_nifti(path)
    try:
        data = np.asanyarray(image.dataobj)
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    return image, data


def _unreadable(path: Path, exc: BaseException) -> InputError:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return InputError(f"{path.name}: cannot be read as NIfTI ({text}); the file is corrupt or incomplete")


def _grid_of(image: Any, path: Path) -> Grid:
    try:
        affine, _ = nifti_affine(image.header)
        return nifti_grid(affine, image.shape[:3])
    except GeometryError as exc:
        raise GeometryError(f"{path.name}: {exc}") from exc


def _as_labels(data: npt.NDArray[Any], path: Path) -> npt.NDArray[np.unsignedinteger[Any]]:
    """Validate shape and values; return the smallest unsigned integer array that holds them."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    elif data.ndim == 5 and data.shape[3:] == (1, 1):
        data = data[..., 0, 0]
    if data.ndim != 3:
        raise LabelError(f"{path.name}: label map must be 3D (or 4D with one volume), has shape {data.shape}")
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise LabelError(f"{path.name}: label map holds NaN or infinite values; labels must be whole numbers")
        if not np.array_equal(data, np.round(data)):
            raise LabelError(
                f"{path.name}: label map holds fractional values (e.g. {_first_fraction(data)});"
                " labels must be whole numbers, not probabilities"
            )
    elif data.dtype.kind not in "iu":
        raise LabelError(f"{path.name}: label map has data type {data.dtype}, expected integers")
    if data.size == 0:
        raise LabelError(f"{path.name}: label map is empty")
    low, high = data.min(), data.max()
    if low < 0:
        raise LabelError(f"{path.name}: label map holds negative values (down to {low})")
    if high > np.iinfo(np.uint16).max:
        raise LabelError(f"{path.name}: label value {high} is too large (at most 65535 segments)")
    target = np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16
    return data.astype(target, copy=data.dtype != target)


def _first_fraction(data: npt.NDArray[Any]) -> float:
    flat = data.ravel()
    where = np.flatnonzero(flat != np.round(flat))
    return float(flat[where[0]])


def _load_mask_folder(folder: Path) -> LabelVolume:
    """One label per non-empty mask file, in file-name order; masks must share one grid and must not overlap."""
    files = mask_files(folder)
    if not files:
        raise InputError(f"{folder.name}: {_NO_MASKS}")
    combined: npt.NDArray[np.unsignedinteger[Any]] | None = None
    grid: Grid | None = None
    header: Any = None
    names: dict[int, str] = {}
    empty: list[str] = []
    for path in files:
        image, data = _read_nifti(path)
        mask = _as_labels(data, path)
        if mask.max() > 1:
            raise LabelError(f"{folder.name}/{path.name}: a mask must hold only 0 and 1, has values up to {mask.max()}")
        this_grid = _grid_of(image, path)
        if grid is None:
            grid, header = this_grid, image.header
            dtype = np.uint8 if len(files) < 256 else np.uint16
            combined = np.zeros(this_grid.shape, dtype=dtype)
        elif this_grid.shape != grid.shape or not _same_grid(this_grid, grid):
            raise GeometryError(
                f"{folder.name}/{path.name}: grid differs from {files[0].name}"
                f" ({this_grid.describe()} vs {grid.describe()}); masks must share one grid"
            )
        assert combined is not None
        where = mask.astype(bool)
        if not where.any():
            empty.append(nifti_stem(path))
            continue
        clash = combined[where]
        if clash.any():
            other = names[int(clash[clash > 0][0])]
            raise LabelError(
                f"{folder.name}/{path.name}: overlaps mask {other} in {int(np.count_nonzero(clash))}"
                " voxels; segnode writes non-overlapping segments"
            )
        label = len(names) + 1
        combined[where] = label
        names[label] = nifti_stem(path)
    if empty:
        log.info("%s: %d empty mask(s) skipped: %s", folder.name, len(empty), ", ".join(empty))
    assert combined is not None and grid is not None
    return LabelVolume(path=folder, array=combined, grid=grid, names=names, header=header)


def _same_grid(a: Grid, b: Grid) -> bool:
    spacing = np.minimum(a.spacing, b.spacing)
    tolerance = GRID_TOLERANCE_VOXELS * float(spacing.min()) * max(a.shape)
    return bool(np.abs(a.affine - b.affine).max() <= tolerance)
