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

from node.convert.alignment import plan_alignment
from node.convert.geometry import Grid
from node.convert.label_input import nifti_header_grid, nifti_stem
from node.convert.label_tables import read_sidecar_series_uid
from node.convert.series import SourceSeries, list_stacks
from node.errors import GeometryError, InputError

log = logging.getLogger(__name__)


class MatchError(InputError):
    """The item fits no received series, or more than one."""


@dataclass(frozen=True)
class Candidate:
    """A stack of a received series an item may belong to, with the grid of its export."""

    series_uid: str
    grid: Grid
    stack: int = 1
    #: The export's name without .nii.gz: the series UID, plus ``_stack<N>`` for stacks after the first.
    stem: str = ""

    def __post_init__(self) -> None:
        if not self.stem:
            object.__setattr__(
                self, "stem", self.series_uid if self.stack == 1 else f"{self.series_uid}_stack{self.stack}"
            )


@dataclass(frozen=True)
class Match:
    series_uid: str
    #: "name", "sidecar" or "geometry": how the series was found, for the log and the reason file.
    how: str
    #: Which stack of the series (1: the main one).
    stack: int = 1


def fits(series: Grid, label: Grid) -> bool:
    """Whether a label grid is the series grid up to axis order and direction (float32 slack allowed)."""
    if sorted(series.shape) != sorted(label.shape):
        return False
    try:
        alignment = plan_alignment(series, label)
    except GeometryError:
        return False
    return alignment.exact and alignment.outside_voxels == 0


def match_item(
    path: Path, sidecar: Path | None, known_series: Collection[str], candidates: Sequence[Candidate]
) -> Match:
    """Find the series (and stack) of an inbox item; raise :class:`MatchError` with the candidates named when
    unsure."""
    stem = nifti_stem(path) if not path.is_dir() else path.name
    for candidate in candidates:
        if candidate.stem == stem:
            return Match(candidate.series_uid, "name", candidate.stack)
    if stem in known_series:
        return Match(stem, "name")
    if sidecar is not None:
        named = read_sidecar_series_uid(sidecar)
        if named is not None:
            if named not in known_series:
                raise MatchError(f"{sidecar.name}: names series {named}, which this node has not received")
            stacks = [c for c in candidates if c.series_uid == named]
            if len(stacks) > 1:
                return Match(named, "sidecar", _fitting_stack(path, stacks))
            return Match(named, "sidecar")
    grid = nifti_header_grid(path)
    fitting = [c for c in candidates if fits(c.grid, grid)]
    if len(fitting) == 1:
        return Match(fitting[0].series_uid, "geometry", fitting[0].stack)
    if not fitting:
        listed = ", ".join(c.stem for c in candidates[:5]) or "none exported yet"
        raise MatchError(
            f"{path.name}: no received series has this grid ({grid.describe()}); name the file"
            f" <SeriesInstanceUID>.nii.gz or add a sidecar; candidates: {listed}"
        )
    raise MatchError(
        f"{path.name}: grid fits {len(fitting)} exports ({', '.join(c.stem for c in fitting)});"
        " ambiguous, name the file after the export it belongs to (<stem>.nii.gz)"
    )


def _fitting_stack(path: Path, stacks: Sequence[Candidate]) -> int:
    """The one stack of a series a sidecar named that the item's grid fits; the main stack when none does."""
    grid = nifti_header_grid(path)
    fitting = [c for c in stacks if fits(c.grid, grid)]
    if len(fitting) > 1:
        raise MatchError(
            f"{path.name}: grid fits {len(fitting)} stacks of series {stacks[0].series_uid}"
            f" ({', '.join(c.stem for c in fitting)}); name the file after the stack's export"
        )
    return fitting[0].stack if fitting else 1


def pick_stack(stacks: Sequence[SourceSeries], label: Path) -> SourceSeries:
    """For `segnode convert` without --stack: the only stack, or the one stack the label input's grid fits."""
    if len(stacks) == 1:
        return stacks[0]
    grid = nifti_header_grid(label)
    fitting = [s for s in stacks if fits(s.grid, grid)]
    if len(fitting) == 1:
        return fitting[0]
    how = "no stack's grid fits it" if not fitting else f"{len(fitting)} stacks' grids fit it"
    raise MatchError(
        f"{label.name}: series {stacks[0].series_uid} holds {len(stacks)} stacks and {how}; choose"
        f" one with --stack: {list_stacks(stacks)}"
    )
