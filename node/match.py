"""Which received series an inbox item belongs to: by file name, by sidecar, or by geometry.

Geometry matching compares the NIfTI's grid (header only, no voxel data) with the grid of every exported series:
a series fits when the grids coincide exactly (an axis permutation with flips, as dcm2niix and dicom2nifti write)
and cover the same voxels. Exactly one fit is a match; none or several is a refusal that names the candidates.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib

from node.errors import GeometryError, InputError
from node.geometry import Grid, nifti_affine, nifti_grid, plan_alignment
from node.labelmap import is_nifti, nifti_stem
from node.labels import read_sidecar_series_uid

log = logging.getLogger(__name__)


class MatchError(InputError):
    """The item fits no received series, or more than one."""


@dataclass(frozen=True)
class Candidate:
    """A received series an item may belong to, with the grid of its export."""

    series_uid: str
    grid: Grid


@dataclass(frozen=True)
class Match:
    series_uid: str
    #: "name", "sidecar" or "geometry": how the series was found, for the log and the reason file.
    how: str


def header_grid(path: Path) -> Grid:
    """Grid of a NIfTI file, or of the first mask of a folder, from the header alone."""
    target = path
    if path.is_dir():
        masks = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))
        if not masks:
            raise InputError(f"{path.name}: folder holds no NIfTI masks")
        target = masks[0]
    try:
        image: Any = nib.load(target)
        affine, _ = nifti_affine(image.header)
        return nifti_grid(affine, image.shape[:3])
    except GeometryError as exc:
        raise GeometryError(f"{target.name}: {exc}") from exc
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise InputError(f"{target.name}: cannot be read as NIfTI ({exc})") from exc


def fits(series: Grid, label: Grid) -> bool:
    """Whether a label grid is the series grid up to axis order and direction (float32 slack allowed)."""
    if sorted(series.shape) != sorted(label.shape):
        return False
    try:
        alignment = plan_alignment(series, label)
    except GeometryError:
        return False
    return alignment.exact and alignment.outside_voxels == 0


def match_item(path: Path, sidecar: Path | None, known_series: Collection[str],
               candidates: Sequence[Candidate]) -> Match:
    """Find the series of an inbox item; raise :class:`MatchError` with the candidates named when unsure."""
    stem = nifti_stem(path) if not path.is_dir() else path.name
    if stem in known_series:
        return Match(stem, "name")
    if sidecar is not None:
        named = read_sidecar_series_uid(sidecar)
        if named is not None:
            if named not in known_series:
                raise MatchError(f"{sidecar.name}: names series {named}, which this node has not received")
            return Match(named, "sidecar")
    grid = header_grid(path)
    fitting = [c.series_uid for c in candidates if fits(c.grid, grid)]
    if len(fitting) == 1:
        return Match(fitting[0], "geometry")
    if not fitting:
        listed = ", ".join(c.series_uid for c in candidates[:5]) or "none exported yet"
        raise MatchError(f"{path.name}: no received series has this grid ({grid.describe()}); name the file"
                         f" <SeriesInstanceUID>.nii.gz or add a sidecar; candidates: {listed}")
    raise MatchError(f"{path.name}: grid fits {len(fitting)} series ({', '.join(fitting)}); ambiguous, name the"
                     " file <SeriesInstanceUID>.nii.gz or add a sidecar naming the series")
