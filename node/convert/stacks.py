"""Splitting a series' planes into stacks: sets of parallel planes, each at its own position, that form one volume.

A series may hold several volumes: echoes, magnitude and phase, dynamics, diffusion directions, the three planes
of a localiser, one Enhanced object per echo. Planes are first grouped by what no volume can mix (the multi-frame
object they belong to, orientation, matrix, pixel spacing). A group in which positions repeat is split further by
the first attribute of :data:`node.convert.planes.TRAITS` that differs within it, and so on until no position repeats.
An attribute is used only when positions repeat, so a series with 21 AcquisitionNumbers but one volume stays one
stack. Stack 1 is the largest one: the main stack, exported under the series' own name.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from node.convert.geometry import ORIENTATION_TOLERANCE, FloatArray, normal_of
from node.convert.planes import TRAITS, Plane
from node.errors import GeometryError

log = logging.getLogger(__name__)

#: Two planes closer than this along the normal (mm) are at the same position.
SAME_POSITION_MM = 1e-3


@dataclass(frozen=True)
class StackInfo:
    """Which stack of its series a source is, and what tells it apart from the others."""

    index: int = 1
    count: int = 1
    #: Attribute -> value for what distinguishes this stack (empty for a series that is one stack).
    key: dict[str, str] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        """What the stack adds to the series UID in export names: nothing for the main stack."""
        return "" if self.index == 1 else f"_stack{self.index}"

    def describe(self) -> str:
        told = ", ".join(f"{k} {v}" for k, v in self.key.items()) or "the whole series"
        return f"stack {self.index} of {self.count} ({told})"


def orientation_name(orientation: npt.ArrayLike) -> str:
    """axial, coronal or sagittal when the normal is within ~18° of an axis, else oblique.

    >>> orientation_name([0, 1, 0, 0, 0, -1])
    'sagittal'
    """
    normal = np.abs(normal_of(orientation))
    axis = int(np.argmax(normal))
    return ("sagittal", "coronal", "axial")[axis] if normal[axis] > 0.95 else "oblique"


def _natural(value: str) -> tuple[tuple[int, float | str], ...]:
    """Sort key that orders numbers by value: echo 2 before echo 10."""
    parts: list[tuple[int, float | str]] = []
    for part in re.split(r"([-+]?\d+(?:\.\d+)?)", value):
        if not part:
            continue
        try:
            parts.append((0, float(part)))
        except ValueError:
            parts.append((1, part))
    return tuple(parts)


def _repeats(planes: Sequence[Plane]) -> bool:
    distances = np.sort([p.position @ normal_of(planes[0].orientation) for p in planes])
    return bool(np.any(np.diff(distances) < SAME_POSITION_MM))


def _refine(planes: list[Plane], start: int) -> list[tuple[dict[str, str], list[Plane]]] | None:
    """Split until no position repeats; None when nothing in the headers tells the repeated planes apart."""
    if not _repeats(planes):
        return [({}, planes)]
    for t in range(start, len(TRAITS)):
        values = sorted({p.traits[t] for p in planes}, key=_natural)
        if len(values) < 2:
            continue
        result: list[tuple[dict[str, str], list[Plane]]] = []
        for value in values:
            refined = _refine([p for p in planes if p.traits[t] == value], t + 1)
            if refined is None:
                return None
            result.extend(({TRAITS[t]: value or "(none)", **key}, sub) for key, sub in refined)
        return result
    return None


class _GroupKey(NamedTuple):
    obj: str
    orientation: int
    matrix: tuple[int, int]
    spacing: tuple[float, float]


def _groups(planes: Sequence[Plane], object_uids: Sequence[str]) -> list[tuple[dict[str, str], list[Plane]]]:
    """Planes grouped by multi-frame object, orientation, matrix and spacing (the things no volume mixes)."""
    orientations: list[FloatArray] = []
    grouped: dict[_GroupKey, list[Plane]] = {}
    for plane in planes:
        cluster = next(
            (
                i
                for i, reference in enumerate(orientations)
                if np.abs(plane.orientation - reference).max() <= ORIENTATION_TOLERANCE
            ),
            None,
        )
        if cluster is None:
            orientations.append(plane.orientation)
            cluster = len(orientations) - 1
        obj = object_uids[plane.instance] if plane.frame is not None else ""
        spacing = (round(plane.spacing[0], 5), round(plane.spacing[1], 5))
        grouped.setdefault(_GroupKey(obj, cluster, (plane.rows, plane.cols), spacing), []).append(plane)

    def differs(field: str) -> bool:
        return len({getattr(k, field) for k in grouped}) > 1

    result = []
    for group_key, group in grouped.items():
        key: dict[str, str] = {}
        if differs("obj"):
            key["object"] = group_key.obj or "single-frame images"
        if differs("orientation"):
            key["orientation"] = orientation_name(orientations[group_key.orientation])
        if differs("matrix"):
            key["matrix"] = "x".join(str(n) for n in group_key.matrix)
        if differs("spacing"):
            key["pixel spacing"] = "x".join(f"{v:g}" for v in group_key.spacing)
        result.append((key, group))
    return result


def _name_constant_traits(found: list[tuple[dict[str, str], list[Plane]]]) -> None:
    """Add to each stack's key the traits that are constant within every stack but differ between them (the
    echo time of one Enhanced object per echo, say), so a listing says what a stack is, not only where."""
    if len(found) < 2:
        return
    for t, trait in enumerate(TRAITS):
        values = [{p.traits[t] for p in group} for _, group in found]
        if all(len(v) == 1 for v in values) and len(set.union(*values)) > 1:
            for (key, _), value in zip(found, values, strict=True):
                key.setdefault(trait, next(iter(value)) or "(none)")


def split_stacks(
    planes: Sequence[Plane], object_uids: Sequence[str]
) -> tuple[list[tuple[StackInfo, list[Plane]]], list[str]]:
    """The series' stacks (largest first, each with its planes) and one notice per group that had to be left out.

    ``object_uids[i]`` is the SOP Instance UID of instance ``i``, to tell multi-frame objects apart.

    Raises
    ------
    GeometryError
        When no stack remains: positions repeat and nothing in the headers tells the planes apart.
    """
    found: list[tuple[dict[str, str], list[Plane]]] = []
    notices: list[str] = []
    for key, group in _groups(planes, object_uids):
        refined = _refine(group, 0)
        if refined is None:
            where = f" ({', '.join(f'{k} {v}' for k, v in key.items())})" if key else ""
            notices.append(
                f"{len(group)} planes{where} repeat positions and nothing in their headers (echo, image"
                " type, temporal position, diffusion, stack ID) tells them apart; left out"
            )
            continue
        found.extend(({**key, **sub_key}, sub) for sub_key, sub in refined)
    if not found:
        raise GeometryError(
            notices[0].replace(
                "; left out", ": the series holds several volumes that cannot be split; send each as its own series"
            )
        )
    _name_constant_traits(found)
    found.sort(
        key=lambda item: (
            -len(item[1]),
            [_natural(v) for v in item[0].values()],
            min(object_uids[p.instance] for p in item[1]),
        )
    )
    stacks = [(StackInfo(index=i, count=len(found), key=key), group) for i, (key, group) in enumerate(found, start=1)]
    for notice in notices:
        log.info("%s", notice)
    return stacks, notices
