"""Synthetic DICOM series, phantoms and NIfTI label maps: the one shared builder module of the tests.

Geometry follows GEOMETRY.md. DICOM patient coordinates are LPS; ``ImageOrientationPatient`` is
``[col_dir, row_dir]`` (direction of increasing column index, then of increasing row index);
``PixelSpacing`` is ``[Δrow, Δcol]``; the centre of pixel (r, c) of slice k is
``IPP_k + c·Δcol·col_dir + r·Δrow·row_dir`` with ``IPP_k = origin + k·step·normal`` and
``normal = col_dir × row_dir``.

Everything here is synthetic: fake names, generated UIDs, phantom pixels. Nothing reads the node's code, so
the tests built on these helpers check the node against an independent statement of the geometry.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import nibabel
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

log = logging.getLogger(__name__)

# nibabel's annotations are partial (its calls are "untyped" under --strict): use it as a dynamic module.
nib: Any = nibabel

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Vec3 = tuple[float, float, float]
Modality = Literal["CT", "MR"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"

#: Where every preset grid is centred (LPS mm): off the origin so a dropped translation shows.
PRESET_CENTRE_LPS: Vec3 = (12.5, -30.25, 41.0)
#: RAS <-> LPS for points and (left-multiplied) 4x4 affines.
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Exact grids must agree to this (mm): float32 NIfTI headers carry ~1e-5 relative error.
POSITION_TOLERANCE_MM = 1e-3
TOOL_TIMEOUT_S = 120.0

# Type 2 attributes of the patient/study modules that some exporters leave out entirely.
TYPE2_OPTIONAL = (
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


#: TotalSegmentator v2 ``total`` task, label values 1..117 in order (totalsegmentator/map_to_binary.py).
TOTALSEG_TOTAL: tuple[str, ...] = (
    "spleen",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "liver",
    "stomach",
    "pancreas",
    "adrenal_gland_right",
    "adrenal_gland_left",
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
    "esophagus",
    "trachea",
    "thyroid_gland",
    "small_bowel",
    "duodenum",
    "colon",
    "urinary_bladder",
    "prostate",
    "kidney_cyst_left",
    "kidney_cyst_right",
    "sacrum",
    "vertebrae_S1",
    "vertebrae_L5",
    "vertebrae_L4",
    "vertebrae_L3",
    "vertebrae_L2",
    "vertebrae_L1",
    "vertebrae_T12",
    "vertebrae_T11",
    "vertebrae_T10",
    "vertebrae_T9",
    "vertebrae_T8",
    "vertebrae_T7",
    "vertebrae_T6",
    "vertebrae_T5",
    "vertebrae_T4",
    "vertebrae_T3",
    "vertebrae_T2",
    "vertebrae_T1",
    "vertebrae_C7",
    "vertebrae_C6",
    "vertebrae_C5",
    "vertebrae_C4",
    "vertebrae_C3",
    "vertebrae_C2",
    "vertebrae_C1",
    "heart",
    "aorta",
    "pulmonary_vein",
    "brachiocephalic_trunk",
    "subclavian_artery_right",
    "subclavian_artery_left",
    "common_carotid_artery_right",
    "common_carotid_artery_left",
    "brachiocephalic_vein_left",
    "brachiocephalic_vein_right",
    "atrial_appendage_left",
    "superior_vena_cava",
    "inferior_vena_cava",
    "portal_vein_and_splenic_vein",
    "iliac_artery_left",
    "iliac_artery_right",
    "iliac_vena_left",
    "iliac_vena_right",
    "humerus_left",
    "humerus_right",
    "scapula_left",
    "scapula_right",
    "clavicula_left",
    "clavicula_right",
    "femur_left",
    "femur_right",
    "hip_left",
    "hip_right",
    "spinal_cord",
    "gluteus_maximus_left",
    "gluteus_maximus_right",
    "gluteus_medius_left",
    "gluteus_medius_right",
    "gluteus_minimus_left",
    "gluteus_minimus_right",
    "autochthon_left",
    "autochthon_right",
    "iliopsoas_left",
    "iliopsoas_right",
    "brain",
    "skull",
    "rib_left_1",
    "rib_left_2",
    "rib_left_3",
    "rib_left_4",
    "rib_left_5",
    "rib_left_6",
    "rib_left_7",
    "rib_left_8",
    "rib_left_9",
    "rib_left_10",
    "rib_left_11",
    "rib_left_12",
    "rib_right_1",
    "rib_right_2",
    "rib_right_3",
    "rib_right_4",
    "rib_right_5",
    "rib_right_6",
    "rib_right_7",
    "rib_right_8",
    "rib_right_9",
    "rib_right_10",
    "rib_right_11",
    "rib_right_12",
    "sternum",
    "costal_cartilages",
)


def _unit(vector: Sequence[float]) -> FloatArray:
    array = np.asarray(vector, dtype=np.float64)
    return array / np.linalg.norm(array)


def _rotation(axis: Sequence[float], degrees: float) -> FloatArray:
    """Right-handed rotation matrix about ``axis`` (Rodrigues)."""
    k = _unit(axis)
    angle = math.radians(degrees)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.asarray(np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * (cross @ cross), dtype=np.float64)


def vec3(array: npt.ArrayLike) -> Vec3:
    """Three floats from any 3-vector (a hashable field value for the frozen dataclasses)."""
    a = np.asarray(array, dtype=np.float64).ravel()
    return (float(a[0]), float(a[1]), float(a[2]))


class _InPlaneAxes:
    """ImageOrientationPatient and PixelSpacing of a grid or plane, from its direction vectors and spacings."""

    row_spacing: float
    col_spacing: float
    col_dir: Vec3
    row_dir: Vec3

    @property
    def image_orientation(self) -> list[float]:
        """ImageOrientationPatient: column direction first, then row direction."""
        return [*self.col_dir, *self.row_dir]

    @property
    def pixel_spacing(self) -> list[float]:
        """PixelSpacing: [Δrow, Δcol], the reverse of the IOP vectors' order."""
        return [self.row_spacing, self.col_spacing]


@dataclass(frozen=True)
class GridSpec(_InPlaneAxes):
    """A regular stack of DICOM slices in LPS.

    ``slice_step`` may be negative: then slice 0 is the one furthest along the normal (e.g. superior first).
    """

    rows: int
    cols: int
    slices: int
    row_spacing: float
    col_spacing: float
    slice_step: float
    col_dir: Vec3
    row_dir: Vec3
    origin: Vec3

    def __post_init__(self) -> None:
        if min(self.rows, self.cols, self.slices) < 1:
            raise ValueError(f"grid needs at least one row, column and slice, got {self.shape}")
        if self.row_spacing <= 0 or self.col_spacing <= 0 or self.slice_step == 0:
            raise ValueError("spacings must be positive and the slice step non-zero")
        col, row = np.asarray(self.col_dir), np.asarray(self.row_dir)
        if abs(np.linalg.norm(col) - 1) > 1e-9 or abs(np.linalg.norm(row) - 1) > 1e-9 or abs(col @ row) > 1e-9:
            raise ValueError("col_dir and row_dir must be orthonormal")

    # -- presets -----------------------------------------------------------------------------------------------

    @classmethod
    def _centred(
        cls,
        col_dir: Sequence[float],
        row_dir: Sequence[float],
        *,
        rows: int,
        cols: int,
        slices: int,
        row_spacing: float,
        col_spacing: float,
        slice_step: float,
        centre: Sequence[float] | None,
    ) -> GridSpec:
        col, row = _unit(col_dir), _unit(row_dir)
        normal = np.cross(col, row)
        middle = np.asarray(PRESET_CENTRE_LPS if centre is None else centre, dtype=np.float64)
        origin = (
            middle
            - (cols - 1) / 2 * col_spacing * col
            - (rows - 1) / 2 * row_spacing * row
            - (slices - 1) / 2 * slice_step * normal
        )
        return cls(
            rows=rows,
            cols=cols,
            slices=slices,
            row_spacing=row_spacing,
            col_spacing=col_spacing,
            slice_step=slice_step,
            col_dir=vec3(col),
            row_dir=vec3(row),
            origin=vec3(origin),
        )

    @classmethod
    def axial(
        cls,
        *,
        rows: int = 40,
        cols: int = 40,
        slices: int = 12,
        row_spacing: float = 1.0,
        col_spacing: float = 1.0,
        slice_step: float = 2.0,
        centre: Sequence[float] | None = None,
    ) -> GridSpec:
        """Rows run posterior, columns to the patient's left, slices inferior → superior (negative step: reverse)."""
        return cls._centred(
            (1, 0, 0),
            (0, 1, 0),
            rows=rows,
            cols=cols,
            slices=slices,
            row_spacing=row_spacing,
            col_spacing=col_spacing,
            slice_step=slice_step,
            centre=centre,
        )

    @classmethod
    def sagittal(
        cls,
        *,
        rows: int = 40,
        cols: int = 40,
        slices: int = 12,
        row_spacing: float = 1.0,
        col_spacing: float = 1.0,
        slice_step: float = 2.0,
        centre: Sequence[float] | None = None,
    ) -> GridSpec:
        """Columns run posterior, rows inferior; the normal points to the patient's right."""
        return cls._centred(
            (0, 1, 0),
            (0, 0, -1),
            rows=rows,
            cols=cols,
            slices=slices,
            row_spacing=row_spacing,
            col_spacing=col_spacing,
            slice_step=slice_step,
            centre=centre,
        )

    @classmethod
    def coronal(
        cls,
        *,
        rows: int = 40,
        cols: int = 40,
        slices: int = 12,
        row_spacing: float = 1.0,
        col_spacing: float = 1.0,
        slice_step: float = 2.0,
        centre: Sequence[float] | None = None,
    ) -> GridSpec:
        """Columns run to the patient's left, rows inferior; the normal points posterior."""
        return cls._centred(
            (1, 0, 0),
            (0, 0, -1),
            rows=rows,
            cols=cols,
            slices=slices,
            row_spacing=row_spacing,
            col_spacing=col_spacing,
            slice_step=slice_step,
            centre=centre,
        )

    @classmethod
    def oblique(
        cls,
        *,
        rows: int = 40,
        cols: int = 40,
        slices: int = 12,
        row_spacing: float = 1.0,
        col_spacing: float = 1.0,
        slice_step: float = 2.0,
        centre: Sequence[float] | None = None,
        tilt_degrees: float = 23.0,
        spin_degrees: float = 37.0,
    ) -> GridSpec:
        """An axial stack tilted about the L-R axis and then spun about the S-I axis: no axis is a permutation."""
        rotation = _rotation((0, 0, 1), spin_degrees) @ _rotation((1, 0, 0), tilt_degrees)
        return cls._centred(
            rotation @ np.array([1.0, 0, 0]),
            rotation @ np.array([0, 1.0, 0]),
            rows=rows,
            cols=cols,
            slices=slices,
            row_spacing=row_spacing,
            col_spacing=col_spacing,
            slice_step=slice_step,
            centre=centre,
        )

    def replace(self, **changes: Any) -> GridSpec:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # -- geometry ----------------------------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, cols): the order of :meth:`centres_lps` and of SEG frames."""
        return (self.slices, self.rows, self.cols)

    @property
    def normal(self) -> FloatArray:
        return np.cross(np.asarray(self.col_dir), np.asarray(self.row_dir))

    def position(self, k: int | float) -> FloatArray:
        """ImagePositionPatient of slice ``k`` (centre of its first pixel)."""
        return np.asarray(self.origin) + k * self.slice_step * self.normal

    def positions(self) -> FloatArray:
        """(slices, 3) ImagePositionPatient of every slice, in slice-index order."""
        return np.stack([self.position(k) for k in range(self.slices)])

    def affine_lps(self) -> FloatArray:
        """4x4 mapping index (slice, row, col, 1) → LPS mm."""
        affine = np.eye(4)
        affine[:3, 0] = self.slice_step * self.normal
        affine[:3, 1] = self.row_spacing * np.asarray(self.row_dir)
        affine[:3, 2] = self.col_spacing * np.asarray(self.col_dir)
        affine[:3, 3] = self.origin
        return affine

    def centres_lps(self) -> FloatArray:
        """(slices, rows, cols, 3) pixel centres in LPS mm."""
        index = np.stack(
            np.meshgrid(np.arange(self.slices), np.arange(self.rows), np.arange(self.cols), indexing="ij"), axis=-1
        ).astype(np.float64)
        affine = self.affine_lps()
        return index @ affine[:3, :3].T + affine[:3, 3]

    def centre_lps(self) -> FloatArray:
        """The geometric centre of the stack (mean of all pixel centres)."""
        index = np.array([(self.slices - 1) / 2, (self.rows - 1) / 2, (self.cols - 1) / 2, 1.0])
        return np.asarray((self.affine_lps() @ index)[:3], dtype=np.float64)

    def inscribed_radius(self) -> float:
        """Radius of the largest ball around :meth:`centre_lps` inside the box of pixel centres."""
        return 0.5 * min(
            (self.slices - 1) * abs(self.slice_step),
            (self.rows - 1) * self.row_spacing,
            (self.cols - 1) * self.col_spacing,
        )

    def snap(self, points_lps: npt.ArrayLike) -> FloatArray:
        """Each point moved to the nearest pixel centre of this grid (the grid continued outside its extent)."""
        points = np.asarray(points_lps, dtype=np.float64)
        affine = self.affine_lps()
        index = np.rint((points - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T)
        return index @ affine[:3, :3].T + affine[:3, 3]

    def voxel_volume(self) -> float:
        return self.row_spacing * self.col_spacing * abs(self.slice_step)

    def plane(self, k: int) -> PlaneSpec:
        """Slice ``k`` as a plane, ``|slice_step|`` thick."""
        return PlaneSpec(
            rows=self.rows,
            cols=self.cols,
            row_spacing=self.row_spacing,
            col_spacing=self.col_spacing,
            col_dir=self.col_dir,
            row_dir=self.row_dir,
            position=vec3(self.position(k)),
            thickness=abs(self.slice_step),
        )

    def planes(self) -> tuple[PlaneSpec, ...]:
        """The slices as planes, in slice-index order, each ``|slice_step|`` thick."""
        return tuple(self.plane(k) for k in range(self.slices))


@dataclass(frozen=True)
class PlaneSpec(_InPlaneAxes):
    """One DICOM image plane in LPS: the centre of its first pixel and how its rows and columns run.

    Planes of one stack need not form a :class:`GridSpec`: they may be unevenly spaced, sheared (gantry tilt) or
    carry orientations that differ in the last digits, as scanners write them. So the direction vectors need only
    be unit and orthogonal within 1e-3 (they are written to the header as given).
    """

    rows: int
    cols: int
    row_spacing: float
    col_spacing: float
    col_dir: Vec3
    row_dir: Vec3
    position: Vec3
    #: SliceThickness to write (None: left out).
    thickness: float | None = None

    def __post_init__(self) -> None:
        if min(self.rows, self.cols) < 1 or self.row_spacing <= 0 or self.col_spacing <= 0:
            raise ValueError(f"plane needs rows, columns and positive spacings, got {self}")
        col, row = np.asarray(self.col_dir), np.asarray(self.row_dir)
        if abs(np.linalg.norm(col) - 1) > 1e-3 or abs(np.linalg.norm(row) - 1) > 1e-3 or abs(col @ row) > 1e-3:
            raise ValueError("col_dir and row_dir must be (nearly) orthonormal")

    def replace(self, **changes: Any) -> PlaneSpec:
        return dataclasses.replace(self, **changes)

    @property
    def normal(self) -> FloatArray:
        """Unit normal ``col_dir × row_dir``."""
        normal = np.cross(np.asarray(self.col_dir), np.asarray(self.row_dir))
        return np.asarray(normal / np.linalg.norm(normal), dtype=np.float64)

    def centres_lps(self) -> FloatArray:
        """(rows, cols, 3) pixel centres ``position + c·Δcol·col_dir + r·Δrow·row_dir`` in LPS mm."""
        r, c = np.meshgrid(
            np.arange(self.rows, dtype=np.float64), np.arange(self.cols, dtype=np.float64), indexing="ij"
        )
        return np.asarray(
            np.asarray(self.position)
            + c[..., None] * self.col_spacing * np.asarray(self.col_dir)
            + r[..., None] * self.row_spacing * np.asarray(self.row_dir),
            dtype=np.float64,
        )


# -- phantom ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """An LPS-axis-aligned box or ellipsoid painted with ``label``."""

    label: int
    name: str
    kind: Literal["box", "ellipsoid"]
    centre: Vec3
    half_size: Vec3

    def contains(self, points: FloatArray) -> npt.NDArray[np.bool_]:
        scaled = (points - np.asarray(self.centre)) / np.asarray(self.half_size)
        if self.kind == "box":
            return np.asarray(np.all(np.abs(scaled) <= 1.0, axis=-1), dtype=np.bool_)
        return np.asarray(np.sum(scaled * scaled, axis=-1) <= 1.0, dtype=np.bool_)


# Offsets and half sizes in units of the fitting radius; every shape stays inside the unit ball, none is
# symmetric about the centre along any axis, and "aorta" is painted over part of "liver".
_STANDARD_SHAPES: tuple[tuple[str, Literal["box", "ellipsoid"], Vec3, Vec3], ...] = (
    ("liver", "ellipsoid", (0.30, -0.22, 0.12), (0.50, 0.34, 0.42)),
    ("spleen", "box", (-0.42, 0.28, -0.18), (0.25, 0.30, 0.25)),
    ("kidney_left", "ellipsoid", (0.12, 0.45, -0.38), (0.25, 0.22, 0.30)),
    ("aorta", "box", (0.40, -0.10, 0.40), (0.15, 0.14, 0.35)),
)


@dataclass(frozen=True)
class Phantom:
    """Labelled shapes in LPS mm; later shapes are painted over earlier ones."""

    shapes: tuple[Shape, ...]

    @classmethod
    def fitting(cls, grid: GridSpec, *, values: Sequence[int] = (1, 2, 3, 4), scale: float = 1.0) -> Phantom:
        """The standard four-organ phantom scaled into ``grid``'s inscribed ball (any orientation fits)."""
        if len(values) != len(_STANDARD_SHAPES):
            raise ValueError(f"need {len(_STANDARD_SHAPES)} label values, got {len(values)}")
        radius = grid.inscribed_radius() * scale
        centre = grid.centre_lps()
        shapes = tuple(
            Shape(
                label=int(value),
                name=name,
                kind=kind,
                centre=vec3(centre + radius * np.asarray(offset)),
                half_size=vec3(radius * np.asarray(half)),
            )
            for value, (name, kind, offset, half) in zip(values, _STANDARD_SHAPES, strict=True)
        )
        return cls(shapes)

    def translated(self, offset_mm: Sequence[float]) -> Phantom:
        return Phantom(
            tuple(
                dataclasses.replace(s, centre=vec3(np.asarray(s.centre) + np.asarray(offset_mm))) for s in self.shapes
            )
        )

    @property
    def values(self) -> list[int]:
        return sorted({s.label for s in self.shapes})

    @property
    def names(self) -> dict[int, str]:
        """Label value → name."""
        return {s.label: s.name for s in self.shapes}

    def labels_at(self, points_lps: npt.ArrayLike, snap: GridSpec | None = None) -> IntArray:
        """Label of each point (shape ``points.shape[:-1]``); with ``snap``, of the nearest pixel centre of that grid.

        Snapping makes the truth piecewise constant on the source grid's cells, so a point computed in float32
        from a NIfTI header gets the same label as the float64 pixel centre it stands for.
        """
        points = np.asarray(points_lps, dtype=np.float64)
        if snap is not None:
            points = snap.snap(points)
        labels = np.zeros(points.shape[:-1], dtype=np.int64)
        for shape in self.shapes:
            labels[shape.contains(points)] = shape.label
        return labels

    def truth(self, grid: GridSpec) -> IntArray:
        """(slices, rows, cols) labels at ``grid``'s own pixel centres: the exact answer for a SEG on ``grid``."""
        return self.labels_at(grid.centres_lps(), snap=grid)


# -- DICOM series -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesInfo:
    """What :func:`write_series` wrote."""

    grid: GridSpec
    folder: Path
    #: Files, in geometric (slice-index) order; one file for an Enhanced object.
    paths: tuple[Path, ...]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    #: SOP Instance UIDs in geometric order (one for an Enhanced object).
    sop_uids: tuple[str, ...]
    sop_class_uid: str
    #: For an Enhanced object, the 1-based frame number that holds slice k; None for single-frame series.
    frame_numbers: tuple[int, ...] | None = None

    def source_of_slice(self, k: int) -> tuple[str, int | None]:
        """(SOP Instance UID, frame number or None) that a SEG frame on slice ``k`` must reference."""
        if self.frame_numbers is None:
            return self.sop_uids[k], None
        return self.sop_uids[0], self.frame_numbers[k]


def _order(count: int, how: str, rng: np.random.Generator) -> list[int]:
    if how == "ascending":
        return list(range(count))
    if how == "reversed":
        return list(range(count))[::-1]
    if how == "shuffled":
        order = [int(i) for i in rng.permutation(count)]
        if count > 2 and order in (list(range(count)), list(range(count))[::-1]):
            order[0], order[1] = order[1], order[0]
        return order
    raise ValueError(f"instance_numbers must be ascending, reversed or shuffled, not {how!r}")


def phantom_image(grid: GridSpec, phantom: Phantom) -> npt.NDArray[np.uint16]:
    """(slices, rows, cols) stored CT values (HU + 1024): a body, brighter organs and a gentle gradient."""
    centres = grid.centres_lps()
    offset = (centres - grid.centre_lps()) / max(grid.inscribed_radius(), 1.0)
    body = np.sum(offset**2, axis=-1) <= 2.0
    hu = np.where(body, 40.0, -1000.0) + 60.0 * phantom.labels_at(centres) + 5.0 * offset[..., 0]
    return np.asarray(np.clip(np.rint(hu + 1024.0), 0, 4095), dtype=np.uint16)


def _common_dataset(*, sop_class_uid: str, modality: str, uids: Mapping[str, str], omit_type2: bool) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = "SYN-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = uids["study"]
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "SYN1"
    ds.AccessionNumber = "ACC0001"
    ds.StudyDescription = "Synthetic phantom study"
    ds.Modality = modality
    ds.SeriesInstanceUID = uids["series"]
    ds.SeriesNumber = 7
    ds.SeriesDescription = "Synthetic phantom"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = uids["frame_of_reference"]
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "segnode-tests"
    ds.ContentDate = "20240102"
    ds.ContentTime = "101600"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if omit_type2:
        for keyword in TYPE2_OPTIONAL:
            delattr(ds, keyword)
    return ds


def _file_meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "SEGNODE_TESTS"
    return meta


def _ds(value: float) -> str:
    """A DS value that round-trips a float64 to well under 1e-6 mm (16 characters at most)."""
    for digits in range(16, 6, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot format {value} as DS")


def _set(ds: Dataset, attributes: Mapping[str, Any]) -> None:
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, list(value) if isinstance(value, tuple) else value)


def _item(**attributes: Any) -> Dataset:
    item = Dataset()
    _set(item, attributes)
    return item


def _seq(*items: Dataset) -> DicomSequence:
    return DicomSequence(list(items))


def _classic_image(
    plane: PlaneSpec,
    pixels: npt.NDArray[np.uint16],
    base: Dataset,
    *,
    sop_uid: str,
    instance_number: int,
    modality: Modality,
    attributes: Mapping[str, Any] | None = None,
    slice_location: float | None = None,
) -> Dataset:
    """One single-frame CT/MR image of ``plane``; ``attributes`` go over the default header (None deletes one).

    SliceLocation is ``slice_location``, by default the position along the plane's normal."""
    ds = copy.deepcopy(base)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if modality == "CT" else "OTHER"]
    ds.BodyPartExamined = "ABDOMEN"
    ds.AcquisitionNumber = 1
    ds.ImagePositionPatient = [_ds(v) for v in plane.position]
    ds.ImageOrientationPatient = [_ds(v) for v in plane.image_orientation]
    ds.PixelSpacing = [_ds(v) for v in plane.pixel_spacing]
    if plane.thickness is not None:
        ds.SliceThickness = _ds(plane.thickness)
    if slice_location is None:
        slice_location = float(np.asarray(plane.position) @ plane.normal)
    ds.SliceLocation = _ds(slice_location)
    ds.Rows = plane.rows
    ds.Columns = plane.cols
    if modality == "CT":
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.KVP = "120"
    else:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "500"
        ds.EchoTime = "15"
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = "1.5"
        ds.ImagingFrequency = "63.9"
        ds.ImagedNucleus = "1H"
    _set(ds, attributes or {})
    ds.PixelData = pixels.tobytes()
    ds.file_meta = _file_meta(ds)
    return ds


# -- Enhanced CT/MR objects (here and in :mod:`synthetic_layouts`) ------------------------------------------------


def _plane_groups(plane: PlaneSpec) -> dict[str, DicomSequence]:
    """PixelMeasuresSequence and PlaneOrientationSequence of ``plane`` (shared or per-frame functional groups)."""
    measures = _item(PixelSpacing=[_ds(v) for v in plane.pixel_spacing])
    if plane.thickness is not None:
        measures.SliceThickness = _ds(plane.thickness)
    return {
        "PixelMeasuresSequence": _seq(measures),
        "PlaneOrientationSequence": _seq(_item(ImageOrientationPatient=[_ds(v) for v in plane.image_orientation])),
    }


def _image_type(modality: Modality) -> list[str]:
    """Enhanced ImageType/FrameType: CT as DERIVED (so the acquisition macros are not required), MR as ORIGINAL."""
    return ["DERIVED" if modality == "CT" else "ORIGINAL", "PRIMARY", "VOLUME", "NONE"]


def _frame_type(modality: Modality) -> Dataset:
    frame_type = _item(
        FrameType=_image_type(modality),
        PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME",
        VolumeBasedCalculationTechnique="NONE",
    )
    if modality == "MR":
        frame_type.ComplexImageComponent = "MAGNITUDE"
        frame_type.AcquisitionContrast = "T1"
    return frame_type


def _enhanced_header(ds: Dataset, modality: Modality, frames: int, plane: PlaneSpec) -> None:
    """The Enhanced CT/MR image module attributes that do not vary per frame.

    Enhanced CT objects pass dciodvfy; Enhanced MR ones carry what readers of geometry and stacks look at, not
    every MR macro the IOD requires (coils, averages, FOV geometry...)."""
    ds.InstanceNumber = 1
    ds.ImageType = _image_type(modality)
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = "20240102101500"
    ds.AcquisitionDuration = 1.0
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.ContentQualification = "RESEARCH"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.ManufacturerModelName = "Synthetic"
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "1"
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.Rows = plane.rows
    ds.Columns = plane.cols
    ds.NumberOfFrames = frames
    if modality == "MR":
        ds.ComplexImageComponent = "MAGNITUDE"
        ds.AcquisitionContrast = "T1"
        ds.ResonantNucleus = "1H"
        ds.KSpaceFiltering = "NONE"
        ds.MagneticFieldStrength = 1.5
        ds.ApplicableSafetyStandardAgency = "IEC"
        ds.ImagingFrequency = 63.9
        ds.PulseSequenceName = "SYN_SE"
        ds.MRAcquisitionType = "2D"
        ds.EchoPulseSequence = "SPIN"
        ds.MultipleSpinEcho = "NO"
        ds.MultiPlanarExcitation = "NO"
        ds.PhaseContrast = "NO"
        ds.TimeOfFlightContrast = "NO"
        ds.SteadyStatePulseSequence = "NONE"
        ds.EchoPlanarPulseSequence = "NO"
        ds.SaturationRecovery = "NO"
        ds.SpectrallySelectedSuppression = "NONE"
        ds.OversamplingPhase = "NONE"
        ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
        ds.RectilinearPhaseEncodeReordering = "LINEAR"
        ds.SegmentedKSpaceTraversal = "SINGLE"
        ds.CoverageOfKSpace = "FULL"
        ds.NumberOfKSpaceTrajectories = 1


def _shared_groups(modality: Modality) -> Dataset:
    """The shared functional groups item without the plane groups (:func:`_plane_groups`)."""
    shared = Dataset()
    region = _item(CodeValue="818981001", CodingSchemeDesignator="SCT", CodeMeaning="Abdomen")
    shared.FrameAnatomySequence = _seq(_item(AnatomicRegionSequence=_seq(region), FrameLaterality="U"))
    shared.FrameVOILUTSequence = _seq(_item(WindowCenter="40", WindowWidth="400"))
    if modality == "CT":
        shared.PixelValueTransformationSequence = _seq(
            _item(RescaleIntercept="-1024", RescaleSlope="1", RescaleType="HU")
        )
        shared.CTImageFrameTypeSequence = _seq(_frame_type("CT"))
        shared.IrradiationEventIdentificationSequence = _seq(_item(IrradiationEventUID=generate_uid()))
        shared.CTAcquisitionTypeSequence = _seq(
            _item(AcquisitionType="SEQUENCED", ConstantVolumeFlag="NO", FluoroscopyFlag="NO")
        )
    else:
        shared.MRImageFrameTypeSequence = _seq(_frame_type("MR"))
        shared.MRTimingAndRelatedParametersSequence = _seq(
            _item(
                RepetitionTime=500.0,
                FlipAngle=90.0,
                EchoTrainLength=1,
                GradientOutputType="NONE",
                RFEchoTrainLength=1,
                GradientEchoTrainLength=0,
            )
        )
    return shared


def _dimensions(ds: Dataset, *, temporal: bool, echoes: bool) -> None:
    """Dimensions StackID, InStackPositionNumber (then TemporalPositionIndex, EffectiveEchoTime when asked)."""
    uid = generate_uid()
    ds.DimensionOrganizationSequence = _seq(_item(DimensionOrganizationUID=uid))
    ds.DimensionOrganizationType = "3D" if not (temporal or echoes) else "3D_TEMPORAL"
    pointers = [("StackID", "FrameContentSequence"), ("InStackPositionNumber", "FrameContentSequence")]
    if temporal:
        pointers.append(("TemporalPositionIndex", "FrameContentSequence"))
    if echoes:
        pointers.append(("EffectiveEchoTime", "MREchoSequence"))
    ds.DimensionIndexSequence = _seq(
        *(
            _item(DimensionOrganizationUID=uid, DimensionIndexPointer=Tag(index), FunctionalGroupPointer=Tag(group))
            for index, group in pointers
        )
    )


def _enhanced_object(
    base: Dataset,
    *,
    sop_uid: str,
    modality: Modality,
    frames: int,
    first: PlaneSpec,
    temporal: bool = False,
    echoes: bool = False,
    shared_geometry: bool = True,
) -> Dataset:
    """A copy of ``base`` as an Enhanced CT/MR object of ``frames`` frames like ``first``: header, dimensions and
    shared functional groups (with ``first``'s plane groups if ``shared_geometry``); the caller adds the rest."""
    ds = copy.deepcopy(base)
    ds.SOPInstanceUID = sop_uid
    _enhanced_header(ds, modality, frames, first)
    _dimensions(ds, temporal=temporal, echoes=echoes)
    shared = _shared_groups(modality)
    if shared_geometry:
        for keyword, value in _plane_groups(first).items():
            setattr(shared, keyword, value)
    ds.SharedFunctionalGroupsSequence = _seq(shared)
    return ds


def _frame_group(
    plane: PlaneSpec,
    *,
    stack_id: str,
    in_stack_position: int,
    index: Sequence[int],
    temporal_position: int | None = None,
) -> Dataset:
    """A per-frame functional groups item: FrameContentSequence (``index``: DimensionIndexValues) and
    PlanePositionSequence of ``plane``."""
    content = _item(
        FrameAcquisitionDateTime="20240102101500",
        FrameReferenceDateTime="20240102101500",
        FrameAcquisitionDuration=1.0,
        StackID=stack_id,
        InStackPositionNumber=in_stack_position,
        TemporalPositionIndex=temporal_position,
        DimensionIndexValues=list(index),
    )
    return _item(
        FrameContentSequence=_seq(content),
        PlanePositionSequence=_seq(_item(ImagePositionPatient=[_ds(v) for v in plane.position])),
    )


def _enhanced_ct(
    grid: GridSpec, image: npt.NDArray[np.uint16], base: Dataset, *, storage_order: Sequence[int], sop_uid: str
) -> Dataset:
    """One Enhanced CT Image with frames stored in ``storage_order`` (a list of slice indices)."""
    ds = _enhanced_object(base, sop_uid=sop_uid, modality="CT", frames=grid.slices, first=grid.plane(0))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(
        [_frame_group(grid.plane(k), stack_id="1", in_stack_position=k + 1, index=[1, k + 1]) for k in storage_order]
    )
    ds.PixelData = np.ascontiguousarray(image[list(storage_order)]).tobytes()
    ds.file_meta = _file_meta(ds)
    return ds


def write_series(
    grid: GridSpec,
    folder: Path,
    *,
    enhanced: bool = False,
    instance_numbers: Literal["ascending", "reversed", "shuffled"] = "ascending",
    shuffle_file_names: bool = False,
    subfolders: int = 0,
    modality: Modality = "CT",
    omit_type2: bool = False,
    uids: Mapping[str, str] | None = None,
    seed: int = 0,
    phantom: Phantom | None = None,
) -> SeriesInfo:
    """Write ``grid`` as a DICOM series into ``folder`` (created if missing).

    Parameters
    ----------
    enhanced
        One Enhanced CT Image object instead of single-frame files; ``instance_numbers`` then says in which
        order the frames are stored.
    instance_numbers
        How InstanceNumber (single-frame) or frame storage order (Enhanced) relates to the geometric order.
    shuffle_file_names
        Random hex file names instead of ``IM_0007`` (named by InstanceNumber).
    subfolders
        Spread the files over this many nested subfolders.
    omit_type2
        Leave out the Type 2 patient/study attributes some exporters drop (:data:`TYPE2_OPTIONAL`).
    uids
        ``study``, ``series`` and/or ``frame_of_reference`` UIDs to use; the rest are generated.
    phantom
        What the pixels show (default :meth:`Phantom.fitting`); only pixel values depend on it.
    """
    if enhanced and modality != "CT":
        raise ValueError("enhanced series are written as Enhanced CT only")
    rng = np.random.default_rng(seed)
    given = dict(uids or {})
    all_uids = {key: given.get(key) or generate_uid() for key in ("study", "series", "frame_of_reference")}
    phantom = phantom or Phantom.fitting(grid)
    image = phantom_image(grid, phantom)
    sop_class = ENHANCED_CT_IMAGE_STORAGE if enhanced else (CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE)
    base = _common_dataset(sop_class_uid=sop_class, modality=modality, uids=all_uids, omit_type2=omit_type2)
    folder.mkdir(parents=True, exist_ok=True)
    subfolder_paths = [folder]
    for i in range(subfolders):
        subfolder_paths.append(subfolder_paths[-1] / f"sub{i}")

    def target(name: str) -> Path:
        where = subfolder_paths[int(rng.integers(len(subfolder_paths)))] if subfolders else folder
        where.mkdir(parents=True, exist_ok=True)
        return where / (f"{rng.integers(1 << 62):016x}" if shuffle_file_names else name)

    order = _order(grid.slices, instance_numbers, rng)
    if enhanced:
        sop_uid = generate_uid()
        ds = _enhanced_ct(grid, image, base, storage_order=order, sop_uid=sop_uid)
        path = target("IM_0001")
        ds.save_as(path, enforce_file_format=True)
        frame_of_slice = {k: i + 1 for i, k in enumerate(order)}
        return SeriesInfo(
            grid=grid,
            folder=folder,
            paths=(path,),
            study_uid=all_uids["study"],
            series_uid=all_uids["series"],
            frame_of_reference_uid=all_uids["frame_of_reference"],
            sop_uids=(sop_uid,),
            sop_class_uid=sop_class,
            frame_numbers=tuple(frame_of_slice[k] for k in range(grid.slices)),
        )
    # order[i] is the slice that gets InstanceNumber i + 1.
    instance_of_slice = {k: i + 1 for i, k in enumerate(order)}
    paths: list[Path] = []
    sop_uids: list[str] = []
    for k in range(grid.slices):
        sop_uid = generate_uid()
        number = instance_of_slice[k]
        ds = _classic_image(
            grid.plane(k),
            image[k],
            base,
            instance_number=number,
            sop_uid=sop_uid,
            modality=modality,
            slice_location=float(grid.position(k) @ grid.normal),
        )
        path = target(f"IM_{number:04d}")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sop_uids.append(sop_uid)
    return SeriesInfo(
        grid=grid,
        folder=folder,
        paths=tuple(paths),
        study_uid=all_uids["study"],
        series_uid=all_uids["series"],
        frame_of_reference_uid=all_uids["frame_of_reference"],
        sop_uids=tuple(sop_uids),
        sop_class_uid=sop_class,
    )


# -- NIfTI --------------------------------------------------------------------------------------------------------


def export_grid_affine(grid: GridSpec) -> FloatArray:
    """RAS affine of the plain "DICOM pixels in RAS" NIfTI: array index (col, row, slice)."""
    lps = np.eye(4)
    lps[:3, 0] = grid.col_spacing * np.asarray(grid.col_dir)
    lps[:3, 1] = grid.row_spacing * np.asarray(grid.row_dir)
    lps[:3, 2] = grid.slice_step * grid.normal
    lps[:3, 3] = grid.origin
    return LPS_RAS @ lps


def export_grid_shape(grid: GridSpec) -> tuple[int, int, int]:
    return (grid.cols, grid.rows, grid.slices)


def voxel_centres_ras(affine_ras: npt.ArrayLike, shape: Sequence[int]) -> FloatArray:
    """(*shape[:3], 3) voxel centres in RAS mm."""
    affine = np.asarray(affine_ras, dtype=np.float64)
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape[:3]), indexing="ij"), axis=-1).astype(np.float64)
    return index @ affine[:3, :3].T + affine[:3, 3]


NiftiReference = Any  # a nibabel spatial image, or (affine_ras, shape)


def _reference_geometry(reference: NiftiReference) -> tuple[FloatArray, tuple[int, int, int], Any]:
    if isinstance(reference, tuple):
        affine, shape = reference
        return np.asarray(affine, dtype=np.float64), (int(shape[0]), int(shape[1]), int(shape[2])), None
    shape = reference.shape
    return np.asarray(reference.affine, dtype=np.float64), (int(shape[0]), int(shape[1]), int(shape[2])), reference


def labels_on_nifti_grid(reference: NiftiReference, phantom: Phantom, *, snap: GridSpec | None = None) -> IntArray:
    """The phantom sampled at each voxel centre of a NIfTI grid (RAS affine → LPS points)."""
    affine, shape, _ = _reference_geometry(reference)
    return phantom.labels_at(voxel_centres_ras(LPS_RAS @ affine, shape), snap=snap)


def _codes_of(image: Any) -> tuple[int, int]:
    header = image.header
    return int(header["sform_code"]), int(header["qform_code"])


def save_nifti(
    data: npt.NDArray[Any],
    affine_ras: npt.ArrayLike,
    path: Path,
    *,
    codes: tuple[int, int] = (1, 1),
    header_from: Any = None,
) -> Path:
    """Save ``data`` with ``affine_ras`` as sform and qform (codes (sform, qform)), like a segmentation tool does."""
    affine = np.asarray(affine_ras, dtype=np.float64)
    header = header_from.header.copy() if header_from is not None else nib.Nifti1Header()
    image = nib.Nifti1Image(data, affine, header=header)
    image.header.set_data_dtype(data.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    image.set_sform(affine, code=codes[0])
    image.set_qform(affine, code=codes[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def label_nifti_on_grid(
    reference: NiftiReference,
    phantom: Phantom,
    path: Path,
    *,
    dtype: npt.DTypeLike = np.uint8,
    snap: GridSpec | None = None,
    header_from: Any = None,
    trailing_singleton: bool = False,
) -> Path:
    """Write the phantom as a label map on ``reference``'s grid (same affine, same sform/qform codes).

    TotalSegmentator and nnU-Net write their output with the input's header; this does the same. With
    ``header_from``, its header and codes are used instead (e.g. to write codes 0/0).
    """
    affine, _, image = _reference_geometry(reference)
    labels = labels_on_nifti_grid(reference, phantom, snap=snap).astype(dtype)
    if trailing_singleton:
        labels = labels[..., np.newaxis]
    source = header_from if header_from is not None else image
    codes = _codes_of(source) if source is not None else (1, 1)
    return save_nifti(labels, affine, path, codes=codes, header_from=source)


def masks_folder(
    reference: NiftiReference,
    phantom: Phantom,
    folder: Path,
    *,
    snap: GridSpec | None = None,
    dtype: npt.DTypeLike = np.uint8,
    empty: Sequence[str] = (),
) -> list[Path]:
    """One binary mask per phantom label, ``<name>.nii.gz`` (TotalSegmentator's layout), plus empty masks."""
    affine, _, image = _reference_geometry(reference)
    labels = labels_on_nifti_grid(reference, phantom, snap=snap)
    codes = _codes_of(image) if image is not None else (1, 1)
    paths = []
    for value, name in sorted(phantom.names.items()):
        paths.append(
            save_nifti(
                (labels == value).astype(dtype), affine, folder / f"{name}.nii.gz", codes=codes, header_from=image
            )
        )
    for name in empty:
        paths.append(
            save_nifti(
                np.zeros(labels.shape, dtype=dtype), affine, folder / f"{name}.nii.gz", codes=codes, header_from=image
            )
        )
    return paths


def reoriented(image: Any, ornt: npt.ArrayLike | str | Sequence[str]) -> Any:
    """``image`` resampled-free onto another axis order/direction (nibabel orientations).

    ``ornt`` is an orientation array, or axis codes such as ``"LAS"`` / ``("S", "R", "A")`` naming where each
    output axis points to.
    """
    if isinstance(ornt, str) or (isinstance(ornt, Sequence) and all(isinstance(c, str) for c in ornt)):
        target = nib.orientations.axcodes2ornt(tuple(ornt))
    else:
        target = np.asarray(ornt, dtype=np.float64)
    current = nib.orientations.io_orientation(image.affine)
    return image.as_reoriented(nib.orientations.ornt_transform(current, target))


def lower_resolution(
    affine_ras: npt.ArrayLike, shape: Sequence[int], *, factor: float = 2.0, shift: float = 0.5
) -> tuple[FloatArray, tuple[int, int, int]]:
    """A coarser grid over the same region: voxels ``factor`` times larger along each axis.

    ``shift`` moves the origin by that fraction of the *original* voxel along each axis; 0.5 with factor 2 puts
    each coarse centre between two fine ones, like a 2x2x2 average, so no fine centre is equidistant from two
    coarse ones.
    """
    affine = np.asarray(affine_ras, dtype=np.float64)
    coarse = affine.copy()
    coarse[:3, :3] = affine[:3, :3] * factor
    coarse[:3, 3] = affine[:3, 3] + affine[:3, :3] @ np.full(3, shift)
    new_shape = tuple(math.ceil(n / factor) for n in shape[:3])
    return coarse, (new_shape[0], new_shape[1], new_shape[2])


def write_labels_json(path: Path, names: Mapping[int, str]) -> Path:
    """A label table ``{"1": "liver", ...}`` as a ``--labels`` file."""
    path.write_text(json.dumps({str(k): v for k, v in sorted(names.items())}, indent=2))
    return path


# -- converters users really use ----------------------------------------------------------------------------------


def have_tool(name: str) -> bool:
    """Whether an external program is on PATH (tests that need it skip only when it is missing)."""
    return shutil.which(name) is not None


def run_dcm2niix(dicom_dir: Path, out_dir: Path, *, timeout: float = TOOL_TIMEOUT_S) -> list[Path]:
    """Convert with dcm2niix (``-z y -f %s_%d``); the NIfTI files written, sorted by name."""
    exe = shutil.which("dcm2niix")
    if exe is None:
        raise FileNotFoundError("dcm2niix is not installed")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [exe, "-z", "y", "-f", "%s_%d", "-o", str(out_dir), str(dicom_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    paths = sorted(out_dir.glob("*.nii.gz"))
    if result.returncode != 0 or not paths:
        raise RuntimeError(f"dcm2niix failed ({result.returncode}): {result.stdout[-2000:]} {result.stderr[-2000:]}")
    return paths


def run_dicom2nifti(dicom_dir: Path, out_path: Path, *, timeout: float = TOOL_TIMEOUT_S) -> Path:
    """Convert with dicom2nifti (``dicom_series_to_nifti(..., reorient_nifti=True)``) in a bounded subprocess."""
    code = "import sys, dicom2nifti; dicom2nifti.dicom_series_to_nifti(sys.argv[1], sys.argv[2], reorient_nifti=True)"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", code, str(dicom_dir), str(out_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"dicom2nifti failed ({result.returncode}): {result.stderr[-2000:]}")
    return out_path


def run_dciodvfy(path: Path, *, timeout: float = TOOL_TIMEOUT_S) -> list[str]:
    """The "Error" lines dciodvfy (dicom3tools) prints for ``path`` (warnings are left out)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        raise FileNotFoundError("dciodvfy is not installed")
    # dciodvfy echoes attribute values as they are: a value in another character set is not UTF-8.
    result = subprocess.run(
        [exe, str(path)], capture_output=True, text=True, errors="replace", timeout=timeout, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    # Errors inside an element are printed after its tag: "(0x0028,0x0010) ... - Error - ...".
    errors = [line for line in lines if line.startswith("Error") or " - Error - " in line]
    if result.returncode != 0 and not errors:
        errors.append(f"Error - dciodvfy exited with status {result.returncode}")
    return errors


class CliResult(NamedTuple):
    """What one ``segnode`` invocation returned and printed."""

    code: int
    stdout: str
    stderr: str


class ConvertRunner(Protocol):
    """``segnode convert`` with these arguments (the ``segnode_convert`` fixture)."""

    def __call__(self, *args: str) -> CliResult: ...


def run_segnode(args: Sequence[str], *, timeout: float = TOOL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run the installed ``segnode`` console script (or ``python -m node``) as a bounded subprocess."""
    script = Path(sys.executable).parent / "segnode"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "node"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, check=False, env=env)


# -- reading a SEG back -------------------------------------------------------------------------------------------


def _functional(ds: Dataset, frame: int, group: str, attribute: str) -> Any:
    """A frame's attribute from its per-frame group, else from the shared group; None when absent."""
    candidates = [ds.PerFrameFunctionalGroupsSequence[frame]]
    candidates += list(getattr(ds, "SharedFunctionalGroupsSequence", []))
    for groups in candidates:
        if group in groups and len(groups[group].value) and attribute in groups[group][0]:
            return groups[group][0][attribute].value
    return None


def segment_names(seg: Dataset | Path) -> dict[int, str]:
    """Segment number → SegmentLabel, without a LABELMAP's background segment 0."""
    ds = seg if isinstance(seg, Dataset) else pydicom.dcmread(seg, stop_before_pixels=True)
    return {
        int(item.SegmentNumber): str(item.SegmentLabel) for item in ds.SegmentSequence if int(item.SegmentNumber) != 0
    }


def _segment_label_map(ds: Dataset, mapping: Mapping[int, int] | Mapping[str, int] | None) -> dict[int, int]:
    # A LABELMAP may describe its background as segment 0; it stays 0.
    segments = [item for item in ds.SegmentSequence if int(item.SegmentNumber) != 0]
    numbers = [int(item.SegmentNumber) for item in segments]
    if mapping is None:
        return {n: n for n in numbers}
    keys = list(mapping)
    if all(isinstance(k, int) for k in keys):
        return {int(k): int(v) for k, v in mapping.items()}
    result = {}
    for item in segments:
        name = str(getattr(item, "SegmentLabel", ""))
        description = str(getattr(item, "SegmentDescription", ""))
        found = [v for k, v in mapping.items() if k in (name, description)]
        if len(found) != 1:
            raise AssertionError(
                f"segment {item.SegmentNumber} ({name!r}/{description!r}) matches "
                f"{len(found)} names of {sorted(map(str, keys))}"
            )
        result[int(item.SegmentNumber)] = int(found[0])
    return result


def _slice_of_position(grid: GridSpec, position: FloatArray, frame: int) -> int:
    along = float((position - np.asarray(grid.origin)) @ grid.normal) / grid.slice_step
    k = round(along)
    if not 0 <= k < grid.slices or np.linalg.norm(grid.position(k) - position) > POSITION_TOLERANCE_MM:
        raise AssertionError(
            f"SEG frame {frame + 1} at {position.tolist()} is not on a slice of the source grid"
            f" (nearest slice {k}, distance "
            f"{float(np.linalg.norm(grid.position(min(max(k, 0), grid.slices - 1)) - position)):.4g}"
            " mm)"
        )
    return k


def _seg_frame_geometry(seg: Dataset, rows: int, cols: int) -> Iterator[tuple[int, Any, Any, Any]]:
    """(frame, orientation, pixel spacing, position) of every SEG frame, after checking its matrix is
    ``rows`` x ``cols``; AssertionError naming the frame where one of the three is missing."""
    if "PerFrameFunctionalGroupsSequence" not in seg:
        raise AssertionError("SEG has no PerFrameFunctionalGroupsSequence (TILED_FULL?): positions unknown")
    if (int(seg.Rows), int(seg.Columns)) != (rows, cols):
        raise AssertionError(f"SEG matrix {seg.Rows}x{seg.Columns} differs from source {rows}x{cols}")
    for frame in range(int(seg.NumberOfFrames)):
        orientation = _functional(seg, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _functional(seg, frame, "PixelMeasuresSequence", "PixelSpacing")
        position = _functional(seg, frame, "PlanePositionSequence", "ImagePositionPatient")
        if orientation is None or spacing is None or position is None:
            raise AssertionError(f"SEG frame {frame + 1} lacks orientation, pixel spacing or position")
        yield frame, orientation, spacing, position


def _check_in_plane(frame: int, orientation: Any, spacing: Any, expected: _InPlaneAxes, whose: str) -> None:
    """A SEG frame's orientation and pixel spacing equal ``expected``'s within 1e-4 (``whose``: for the message)."""
    if np.abs(np.asarray(orientation, dtype=np.float64) - expected.image_orientation).max() > 1e-4:
        raise AssertionError(
            f"SEG frame {frame + 1} orientation {list(orientation)} differs from {whose} {expected.image_orientation}"
        )
    if np.abs(np.asarray(spacing, dtype=np.float64) - expected.pixel_spacing).max() > 1e-4:
        raise AssertionError(
            f"SEG frame {frame + 1} pixel spacing {list(spacing)} differs from {whose} {expected.pixel_spacing}"
        )


def seg_frames_on_source(seg: Dataset, grid: GridSpec) -> list[int]:
    """For each SEG frame, the source slice index it lies on (from the SEG's own positions and orientation)."""
    slices = []
    for frame, orientation, spacing, position in _seg_frame_geometry(seg, grid.rows, grid.cols):
        _check_in_plane(frame, orientation, spacing, grid, "source")
        slices.append(_slice_of_position(grid, np.asarray(position, dtype=np.float64), frame))
    return slices


def _frame_segment(seg: Dataset, frame: int) -> int:
    number = _functional(seg, frame, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
    if number is None:
        raise AssertionError(f"SEG frame {frame + 1} names no segment")
    return int(number)


def seg_frames_on_planes(seg: Dataset, planes: Sequence[PlaneSpec]) -> list[int]:
    """For each SEG frame, the index of the plane it lies on (position within :data:`POSITION_TOLERANCE_MM`,
    orientation within 1e-4, equal pixel spacing and matrix); AssertionError naming the frame otherwise."""
    positions = np.array([p.position for p in planes], dtype=np.float64)
    found = []
    for frame, orientation, spacing, position in _seg_frame_geometry(seg, planes[0].rows, planes[0].cols):
        distance = np.linalg.norm(positions - np.asarray(position, dtype=np.float64), axis=1)
        k = int(np.argmin(distance))
        if distance[k] > POSITION_TOLERANCE_MM:
            raise AssertionError(
                f"SEG frame {frame + 1} at {list(position)} is on no source plane (nearest plane"
                f" {k} at {positions[k].tolist()}, {distance[k]:.4g} mm away)"
            )
        _check_in_plane(frame, orientation, spacing, planes[k], "its plane's")
        found.append(k)
    return found


def _seg_labels(
    seg_path: Path, place: Any, shape: tuple[int, int, int], mapping: Mapping[int, int] | Mapping[str, int] | None
) -> IntArray:
    """Label values a SEG puts on ``shape`` (slices, rows, cols); ``place(ds)`` gives each frame's slice."""
    ds = pydicom.dcmread(seg_path)
    if ds.SOPClassUID not in (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE):
        raise AssertionError(f"{seg_path.name}: SOP class {ds.SOPClassUID} is not a Segmentation")
    to_label = _segment_label_map(ds, mapping)
    slices = place(ds)
    pixels = ds.pixel_array
    if int(ds.NumberOfFrames) == 1:
        pixels = pixels[np.newaxis]
    result = np.zeros(shape, dtype=np.int64)
    labelmap = ds.SOPClassUID == LABEL_MAP_SEGMENTATION_STORAGE or ds.SegmentationType == "LABELMAP"
    for frame, k in enumerate(slices):
        if labelmap:
            values = pixels[frame].astype(np.int64)
            unknown = set(np.unique(values).tolist()) - set(to_label) - {0}
            if unknown:
                raise AssertionError(f"LABELMAP frame {frame + 1} holds unknown segment numbers {sorted(unknown)}")
            plane = np.zeros(values.shape, dtype=np.int64)
            for number, label in to_label.items():
                plane[values == number] = label
            where = values != 0
        else:
            if ds.SegmentationType == "FRACTIONAL":
                where = pixels[frame] > int(ds.MaximumFractionalValue) / 2
            else:
                where = pixels[frame] != 0
            plane = np.full(where.shape, to_label[_frame_segment(ds, frame)], dtype=np.int64)
        clash = where & (result[k] != 0) & (result[k] != plane)
        if clash.any():
            raise AssertionError(
                f"SEG frame {frame + 1} overlaps another segment on slice {k} in {int(clash.sum())} pixels"
            )
        result[k][where] = plane[where]
    return result


def seg_labels_on_source(
    seg_path: Path, grid: GridSpec, mapping: Mapping[int, int] | Mapping[str, int] | None = None
) -> IntArray:
    """(slices, rows, cols) label values that a SEG puts on the source grid, from the SEG alone.

    Frames are placed by their own PlanePositionSequence; orientation and pixel spacing must equal the
    source's. BINARY, FRACTIONAL (thresholded at half the maximum) and LABELMAP SEGs are read.
    ``mapping`` turns segment numbers (int keys) or SegmentLabel/SegmentDescription (str keys) into label
    values; by default the segment number is the label. Overlapping segments fail loudly.
    """
    return _seg_labels(seg_path, lambda ds: seg_frames_on_source(ds, grid), grid.shape, mapping)


def seg_labels_on_planes(
    seg_path: Path, planes: Sequence[PlaneSpec], mapping: Mapping[int, int] | Mapping[str, int] | None = None
) -> IntArray:
    """(planes, rows, cols) label values a SEG puts on source planes that need not form a grid (uneven spacing,
    tilt, jitter); as :func:`seg_labels_on_source`, each frame placed by its own position."""
    shape = (len(planes), planes[0].rows, planes[0].cols)
    return _seg_labels(seg_path, lambda ds: seg_frames_on_planes(ds, planes), shape, mapping)


def seg_frame_sources(seg_path: Path) -> list[tuple[str, int | None]]:
    """Per SEG frame: the (SOP Instance UID, frame number or None) its Derivation Image Sequence names."""
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    sources: list[tuple[str, int | None]] = []
    for frame, groups in enumerate(ds.PerFrameFunctionalGroupsSequence):
        try:
            item = groups.DerivationImageSequence[0].SourceImageSequence[0]
        except (AttributeError, IndexError) as exc:
            raise AssertionError(f"SEG frame {frame + 1} has no Derivation/Source Image Sequence") from exc
        number = item.get("ReferencedFrameNumber")
        sources.append((str(item.ReferencedSOPInstanceUID), None if number is None else int(number)))
    return sources


# -- comparing ----------------------------------------------------------------------------------------------------


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def centroid_lps(mask: npt.NDArray[np.bool_], grid: GridSpec) -> FloatArray:
    """Centroid (LPS mm) of a (slices, rows, cols) mask on ``grid``."""
    index = np.argwhere(mask).astype(np.float64)
    if index.size == 0:
        raise AssertionError("empty mask has no centroid")
    affine = grid.affine_lps()
    return np.asarray(index.mean(axis=0) @ affine[:3, :3].T + affine[:3, 3], dtype=np.float64)


def describe_mismatch(actual: IntArray, expected: IntArray) -> str:
    """A short account of where two label volumes differ, for assertion messages."""
    if actual.shape != expected.shape:
        return f"shapes differ: {actual.shape} vs {expected.shape}"
    wrong = np.argwhere(actual != expected)
    if wrong.size == 0:
        return "identical"
    first = [tuple(int(v) for v in w) for w in wrong[:5]]
    per_label = {int(v): (int((actual == v).sum()), int((expected == v).sum())) for v in np.unique(expected)}
    return (
        f"{len(wrong)} of {actual.size} pixels differ, first at (slice, row, col) {first};"
        f" voxels per label (got, expected): {per_label}"
    )
