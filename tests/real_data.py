"""Real scanner series for tests: where the corpus is, unpacking, plane geometry, ground truth, SEG checks.

The corpus (``../shared/real-dicom`` beside the repository, or ``$SEGNODE_REAL_DICOM``) holds one ``<case>.tar.xz``
per case and ``cases.json``; it is never copied into the repository. Everything geometric here is computed from the
DICOM headers by this module alone (LPS mm, GEOMETRY.md), never by ``node/``, so the tests built on it check the
node against an independent reading of the same files:

- :func:`read_planes` lists every image plane (a single-frame instance or one frame of an Enhanced object) with
  its own position, orientation and spacing; :func:`split_stacks` groups planes into stacks.
- :func:`ground_truth` puts an ellipsoid (label 1) and a box (label 2) inside a stack's extent, in mm.
- :func:`write_label_map` samples the ground truth at the voxel centres of a converter's NIfTI and saves it with
  that NIfTI's header, as TotalSegmentator does.
- :func:`check_seg` reads a SEG twice (its frames and PlanePositionSequence with pydicom, and highdicom's
  ``segread``) and compares it in patient space with what the label map says at each source pixel centre.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import highdicom as hd
import nibabel
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

nib: Any = nibabel

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
#: A source plane's identity: (SOP Instance UID, 1-based frame number or None for a single-frame instance).
PlaneId = tuple[str, int | None]

ENV_VAR = "SEGNODE_REAL_DICOM"
REPO_ROOT = Path(__file__).resolve().parent.parent
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Positions of SEG frames and source planes agree to this (mm).
POSITION_TOLERANCE_MM = 1e-3
#: A NIfTI grid coincides with a plane's pixel centres when every centre is this close to a voxel index.
INDEX_TOLERANCE = 1e-3
ORIENTATION_TOLERANCE = 1e-4
TOOL_TIMEOUT_S = 180.0
#: Resampled inputs: per-label Dice against the ground truth at the source pixel centres.
MIN_DICE_RESAMPLED = 0.8
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


# -- the corpus -----------------------------------------------------------------------------------------------------


def corpus_folder() -> Path:
    """``$SEGNODE_REAL_DICOM`` if set, else ``<repo>/../shared/real-dicom``."""
    override = os.environ.get(ENV_VAR)
    return Path(override) if override else REPO_ROOT.parent / "shared" / "real-dicom"


def corpus_missing(folder: Path) -> str | None:
    """Why the corpus cannot be used (a skip reason naming the folder), or None when it can."""
    if not folder.is_dir():
        return f"real DICOM corpus folder {folder} is absent (set {ENV_VAR} to its location)"
    if not (folder / "cases.json").is_file():
        return f"real DICOM corpus folder {folder} has no cases.json"
    return None


@dataclass(frozen=True)
class Case:
    """One entry of cases.json."""

    id: str
    kind: str
    modality: str
    sop_class: str
    instances: int
    frames: int
    series_uids: tuple[str, ...]
    special: str
    archive: Path

    @property
    def single_plane(self) -> bool:
        return self.kind == "a single plane"

    @property
    def several_stacks(self) -> bool:
        return self.kind == "several stacks in one series"

    @property
    def mosaic(self) -> bool:
        return "mosaic" in self.id or "mosaic" in self.special.lower()

    @property
    def enhanced(self) -> bool:
        return self.sop_class.startswith("Enhanced")


def load_cases(folder: Path) -> list[Case]:
    entries = json.loads((folder / "cases.json").read_text(encoding="utf-8"))
    return [
        Case(
            id=str(e["id"]),
            kind=str(e["kind"]),
            modality=str(e["modality"]),
            sop_class=str(e["sop_class"]),
            instances=int(e["instances"]),
            frames=int(e["frames"]),
            series_uids=tuple(str(u) for u in e["series_uid"]),
            special=str(e.get("special", "")),
            archive=folder / f"{e['id']}.tar.xz",
        )
        for e in entries
    ]


def unpack(case: Case, into: Path) -> Path:
    """Extract ``case.archive`` below ``into``; returns the folder that holds the case's files."""
    target = into / case.id
    if not target.exists():
        partial = into / f".{case.id}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(case.archive, "r:xz") as archive:
            archive.extractall(partial, filter="data")
        partial.rename(target)
    # The archives hold one top folder named after the case; be lenient about that.
    children = [p for p in target.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return target


# -- planes and stacks ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plane:
    """One image plane of the source, as its own header states it (LPS mm)."""

    sop_uid: str
    frame: int | None
    path: Path
    position: tuple[float, float, float]
    col_dir: tuple[float, float, float]
    row_dir: tuple[float, float, float]
    row_spacing: float
    col_spacing: float
    rows: int
    cols: int
    #: Attributes that tell apart planes at one position (image type, echo, time, b-value, stack, ...).
    key: tuple[tuple[str, str], ...] = field(default=())
    image_type: str = ""

    @property
    def id(self) -> PlaneId:
        return (self.sop_uid, self.frame)

    @property
    def normal(self) -> FloatArray:
        return np.cross(np.asarray(self.col_dir), np.asarray(self.row_dir))

    def pixel_centres(self) -> FloatArray:
        """(rows, cols, 3) LPS centres: ``IPP + c·Δcol·col_dir + r·Δrow·row_dir``."""
        r = np.arange(self.rows, dtype=np.float64)[:, None, None]
        c = np.arange(self.cols, dtype=np.float64)[None, :, None]
        return np.asarray(
            np.asarray(self.position)
            + c * self.col_spacing * np.asarray(self.col_dir)
            + r * self.row_spacing * np.asarray(self.row_dir),
            dtype=np.float64,
        )

    def corners(self) -> FloatArray:
        """(4, 3) centres of the corner pixels."""
        r = np.array([0, 0, self.rows - 1, self.rows - 1], dtype=np.float64)[:, None]
        c = np.array([0, self.cols - 1, 0, self.cols - 1], dtype=np.float64)[:, None]
        return np.asarray(
            np.asarray(self.position)
            + c * self.col_spacing * np.asarray(self.col_dir)
            + r * self.row_spacing * np.asarray(self.row_dir),
            dtype=np.float64,
        )

    def describe(self) -> str:
        frame = f" frame {self.frame}" if self.frame is not None else ""
        return f"{self.path.name}{frame} at {[round(v, 3) for v in self.position]}"


def _floats(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


def _group_value(groups: Sequence[Dataset], group: str, attribute: str) -> Any:
    for item in groups:
        if group in item and len(item[group].value) and attribute in item[group][0]:
            return item[group][0][attribute].value
    return None


class _Frame(NamedTuple):
    """One frame of a multi-frame object: its per-frame item, the groups that apply to it (that item, then the
    shared one) and its geometry from them (None where neither holds it)."""

    frame_index: int
    per_frame: Dataset
    groups: list[Dataset]
    position: Any
    orientation: Any
    spacing: Any


def _frames(ds: Dataset) -> Iterator[_Frame]:
    shared = list(ds.get("SharedFunctionalGroupsSequence", []))
    for index, per_frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        groups = [per_frame, *shared]
        yield _Frame(
            index,
            per_frame,
            groups,
            position=_group_value(groups, "PlanePositionSequence", "ImagePositionPatient"),
            orientation=_group_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient"),
            spacing=_group_value(groups, "PixelMeasuresSequence", "PixelSpacing"),
        )


_SINGLE_FRAME_KEYS = (
    "ImageType",
    "EchoNumbers",
    "TemporalPositionIdentifier",
    "DiffusionBValue",
    "DiffusionGradientOrientation",
    "StackID",
    "AcquisitionNumber",
)


def _header_planes(path: Path, ds: Dataset) -> list[Plane]:
    image_type = "\\".join(str(v) for v in ds.get("ImageType", []))
    if "PerFrameFunctionalGroupsSequence" in ds:
        planes = []
        for index, _, groups, position, orientation, spacing in _frames(ds):
            if position is None or orientation is None or spacing is None:
                continue
            key = (
                ("object", str(ds.SOPInstanceUID)),
                (
                    "frame type",
                    str(
                        _group_value(groups, "MRImageFrameTypeSequence", "FrameType")
                        or _group_value(groups, "CTImageFrameTypeSequence", "FrameType")
                        or ""
                    ),
                ),
                ("echo time", str(_group_value(groups, "MREchoSequence", "EffectiveEchoTime") or "")),
                ("stack", str(_group_value(groups, "FrameContentSequence", "StackID") or "")),
                ("temporal", str(_group_value(groups, "FrameContentSequence", "TemporalPositionIndex") or "")),
            )
            orient = _floats(orientation)
            planes.append(
                Plane(
                    sop_uid=str(ds.SOPInstanceUID),
                    frame=index + 1,
                    path=path,
                    position=_vec(_floats(position)),
                    col_dir=_vec(orient[:3]),
                    row_dir=_vec(orient[3:]),
                    row_spacing=float(spacing[0]),
                    col_spacing=float(spacing[1]),
                    rows=int(ds.Rows),
                    cols=int(ds.Columns),
                    key=key,
                    image_type=image_type,
                )
            )
        return planes
    if not all(k in ds for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows")):
        return []
    orient = _floats(ds.ImageOrientationPatient)
    single_key: tuple[tuple[str, str], ...] = tuple((k, str(ds.get(k, ""))) for k in _SINGLE_FRAME_KEYS)
    position = _vec(_floats(ds.ImagePositionPatient))
    return [
        Plane(
            sop_uid=str(ds.SOPInstanceUID),
            frame=None,
            path=path,
            position=position,
            col_dir=_vec(orient[:3]),
            row_dir=_vec(orient[3:]),
            row_spacing=float(ds.PixelSpacing[0]),
            col_spacing=float(ds.PixelSpacing[1]),
            rows=int(ds.Rows),
            cols=int(ds.Columns),
            key=single_key,
            image_type=image_type,
        )
    ]


def _vec(values: Sequence[float]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


@dataclass(frozen=True)
class SourceFiles:
    """The DICOM files of a case folder: image files with their planes, and the rest."""

    planes: tuple[Plane, ...]
    image_files: tuple[Path, ...]
    other_files: tuple[Path, ...]
    series_uids: frozenset[str]


def read_planes(folder: Path) -> SourceFiles:
    """Every image plane below ``folder`` (recursively); files without plane geometry are listed apart."""
    planes: list[Plane] = []
    images: list[Path] = []
    others: list[Path] = []
    uids: set[str] = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError):
            others.append(path)
            continue
        found = _header_planes(path, ds) if "SOPInstanceUID" in ds else []
        if found:
            planes.extend(found)
            images.append(path)
            uids.add(str(ds.SeriesInstanceUID))
        else:
            others.append(path)
    return SourceFiles(tuple(planes), tuple(images), tuple(others), frozenset(uids))


def _geometry_key(plane: Plane) -> tuple[Any, ...]:
    return (
        tuple(round(v, 3) for v in (*plane.col_dir, *plane.row_dir)),
        plane.rows,
        plane.cols,
        round(plane.row_spacing, 4),
        round(plane.col_spacing, 4),
    )


def _has_repeats(planes: Sequence[Plane]) -> bool:
    seen = {tuple(round(v, 2) for v in p.position) for p in planes}
    return len(seen) < len(planes)


def _split_repeats(planes: list[Plane], attributes: Sequence[int]) -> list[list[Plane]]:
    if not _has_repeats(planes) or not attributes:
        return [planes]
    index, rest = attributes[0], attributes[1:]
    groups: dict[str, list[Plane]] = {}
    for plane in planes:
        groups.setdefault(plane.key[index][1] if index < len(plane.key) else "", []).append(plane)
    return [part for group in groups.values() for part in _split_repeats(group, rest)]


def split_stacks(planes: Sequence[Plane]) -> list[tuple[Plane, ...]]:
    """Stacks: planes of one orientation, matrix and spacing; where positions repeat, split further by the first
    attributes that differ (image type, echo, ...). Largest first; each sorted along its normal."""
    by_geometry: dict[tuple[Any, ...], list[Plane]] = {}
    for plane in planes:
        by_geometry.setdefault(_geometry_key(plane), []).append(plane)
    stacks: list[list[Plane]] = []
    for group in by_geometry.values():
        width = max(len(p.key) for p in group)
        stacks.extend(_split_repeats(group, list(range(width))))
    ordered = [tuple(sorted(s, key=lambda p: float(np.dot(p.normal, p.position)))) for s in stacks]
    return sorted(ordered, key=lambda s: -len(s))


def slice_steps(stack: Sequence[Plane]) -> FloatArray:
    """Distances (mm) between consecutive planes along the normal."""
    normal = stack[0].normal
    along = np.array([np.dot(normal, p.position) for p in stack])
    return np.diff(along)


# -- ground truth ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Oriented:
    """A solid around ``centre`` whose own axes are the rows of ``axes`` (LPS mm)."""

    centre: tuple[float, float, float]
    axes: tuple[tuple[float, float, float], ...]

    def local(self, points: FloatArray) -> FloatArray:
        """``points`` in the solid's own coordinates (mm along each of its axes from its centre)."""
        return np.asarray((points - np.asarray(self.centre)) @ np.asarray(self.axes).T, dtype=np.float64)


@dataclass(frozen=True)
class Ellipsoid(_Oriented):
    radii: tuple[float, float, float]

    def contains(self, points: FloatArray) -> npt.NDArray[np.bool_]:
        return np.asarray(((self.local(points) / np.asarray(self.radii)) ** 2).sum(axis=-1) <= 1.0)


@dataclass(frozen=True)
class Box(_Oriented):
    half: tuple[float, float, float]

    def contains(self, points: FloatArray) -> npt.NDArray[np.bool_]:
        return np.asarray((np.abs(self.local(points)) <= np.asarray(self.half)).all(axis=-1))


@dataclass(frozen=True)
class GroundTruth:
    """Shapes in LPS mm; label ``i + 1`` is inside ``shapes[i]`` (the shapes do not overlap)."""

    shapes: tuple[Ellipsoid | Box, ...]

    @property
    def labels(self) -> list[int]:
        return list(range(1, len(self.shapes) + 1))

    def labels_at(self, points_lps: FloatArray) -> IntArray:
        out = np.zeros(points_lps.shape[:-1], dtype=np.int64)
        for label, shape in enumerate(self.shapes, start=1):
            out[shape.contains(points_lps)] = label
        return out


def ground_truth(stack: Sequence[Plane], labels: int = 2) -> GroundTruth:
    """An ellipsoid around the centre of the stack's bounding box (radii ~1/4 of its extent along the column,
    row and normal directions) and, for ``labels=2``, a smaller box off to one side in the same planes.

    For a single plane (or very few planes) the normal radius is at least 3/4 of a slice step (10 mm for one plane),
    so the ellipsoid always cuts the central plane(s).
    """
    if labels not in (1, 2):
        raise ValueError(f"labels must be 1 or 2, not {labels}")
    first = stack[0]
    axes = np.stack([np.asarray(first.col_dir), np.asarray(first.row_dir), first.normal])
    corners = np.concatenate([p.corners() for p in stack])
    local = corners @ axes.T
    low, high = local.min(axis=0), local.max(axis=0)
    centre = axes.T @ ((low + high) / 2)
    extent = high - low
    steps = np.abs(slice_steps(stack)) if len(stack) > 1 else np.array([])
    normal_floor = 0.75 * float(np.median(steps)) if steps.size else 10.0
    normal_radius = max(extent[2] / 4, normal_floor)
    ellipsoid = Ellipsoid(
        centre=_vec(centre), axes=tuple(_vec(a) for a in axes), radii=(extent[0] / 4, extent[1] / 4, normal_radius)
    )
    shapes: list[Ellipsoid | Box] = [ellipsoid]
    if labels == 2:
        box_centre = centre + 0.32 * extent[0] * axes[0] - 0.3 * extent[1] * axes[1]
        shapes.append(
            Box(
                centre=_vec(box_centre),
                axes=tuple(_vec(a) for a in axes),
                half=(0.08 * extent[0], 0.08 * extent[1], 0.6 * normal_radius),
            )
        )
    return GroundTruth(tuple(shapes))


def truth_on_planes(truth: GroundTruth, stack: Sequence[Plane]) -> IntArray:
    """(planes, rows, cols) ground-truth labels at the source pixel centres."""
    return np.stack([truth.labels_at(p.pixel_centres()) for p in stack])


# -- NIfTI label maps -----------------------------------------------------------------------------------------------


def _nifti_geometry(image: Any) -> tuple[FloatArray, tuple[int, int, int]]:
    shape = tuple(int(n) for n in image.shape[:3])
    return np.asarray(image.affine, dtype=np.float64), (shape[0], shape[1], shape[2])


def labels_on_grid(truth: GroundTruth, affine_ras: FloatArray, shape: Sequence[int]) -> IntArray:
    """The ground truth at every voxel centre of a NIfTI grid, one index plane at a time (bounded memory)."""
    out = np.zeros(tuple(shape[:3]), dtype=np.int64)
    lps = LPS_RAS @ affine_ras
    i, j = np.meshgrid(np.arange(shape[0], dtype=np.float64), np.arange(shape[1], dtype=np.float64), indexing="ij")
    in_plane = i[..., None] * lps[:3, 0] + j[..., None] * lps[:3, 1] + lps[:3, 3]
    for k in range(shape[2]):
        out[:, :, k] = truth.labels_at(in_plane + k * lps[:3, 2])
    return out


def write_label_map(reference: Path, truth: GroundTruth, out: Path) -> Path:
    """The ground truth on ``reference``'s grid, saved with its header as TotalSegmentator does
    (``Nifti1Image(labels, ref.affine, ref.header)``: same affine, same sform/qform codes), uint8."""
    image = nib.load(reference)
    affine, shape = _nifti_geometry(image)
    labels = labels_on_grid(truth, affine, shape).astype(np.uint8)
    header = image.header.copy()
    result = nib.Nifti1Image(labels, affine, header)
    result.header.set_data_dtype(np.uint8)
    result.header.set_slope_inter(1.0, 0.0)
    result.set_sform(image.header.get_sform(), code=int(image.header["sform_code"]))
    result.set_qform(image.header.get_qform(), code=int(image.header["qform_code"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(result, out)
    return out


@dataclass(frozen=True)
class LabelMap:
    """A label map as read back: data (3D) and the affine nibabel chose (sform, else qform)."""

    path: Path
    data: npt.NDArray[Any]
    affine_ras: FloatArray

    @classmethod
    def load(cls, path: Path) -> LabelMap:
        image = nib.load(path)
        data = np.asarray(image.dataobj)
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.dtype.kind not in "iu":
            data = np.rint(data).astype(np.int64)
        return cls(path, data, np.asarray(image.affine, dtype=np.float64))

    def labels_present(self) -> list[int]:
        """The non-zero label values the map holds."""
        counts = np.bincount(self.data.ravel().astype(np.intp, copy=False))
        return [int(v) for v in np.flatnonzero(counts) if v != 0]

    def index_of(self, points_lps: FloatArray) -> FloatArray:
        inverse = np.linalg.inv(LPS_RAS @ self.affine_ras)
        return np.asarray(points_lps @ inverse[:3, :3].T + inverse[:3, 3], dtype=np.float64)

    def offset_from_grid(self, plane: Plane) -> float:
        """Largest distance (in voxel indices) of the plane's corner pixel centres from a voxel centre."""
        index = self.index_of(plane.corners())
        return float(np.abs(index - np.round(index)).max())

    def fits_exactly(self, stack: Sequence[Plane]) -> bool:
        """Whether every pixel centre of the stack is a voxel centre of this grid (inside the array)."""
        for plane in stack:
            index = self.index_of(plane.corners())
            rounded = np.round(index)
            if np.abs(index - rounded).max() > INDEX_TOLERANCE:
                return False
            if (rounded < 0).any() or (rounded >= np.asarray(self.data.shape[:3])).any():
                return False
        return True

    def covers(self, plane: Plane) -> npt.NDArray[np.bool_]:
        """(rows, cols): which pixel centres of the plane fall inside the array (nearest voxel)."""
        index = np.round(self.index_of(plane.pixel_centres()))
        return np.asarray(((index >= 0) & (index < np.asarray(self.data.shape[:3]))).all(axis=-1))

    def sample(self, plane: Plane) -> IntArray:
        """Nearest-voxel labels at the plane's pixel centres (0 outside the array)."""
        index = np.round(self.index_of(plane.pixel_centres())).astype(np.int64)
        shape = np.asarray(self.data.shape[:3])
        inside = ((index >= 0) & (index < shape)).all(axis=-1)
        out = np.zeros(index.shape[:-1], dtype=np.int64)
        picked = index[inside]
        out[inside] = self.data[picked[:, 0], picked[:, 1], picked[:, 2]].astype(np.int64)
        return out

    def voxel_diagonal(self) -> float:
        return float(np.linalg.norm(np.linalg.norm(self.affine_ras[:3, :3], axis=0)))


# -- converters -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversion:
    """What one converter made of a case: NIfTI files, or why it refused."""

    tool: str
    files: tuple[Path, ...]
    refusal: str | None = None


def run_dcm2niix(folder: Path, out: Path) -> Conversion:
    """dcm2niix ``-z y -f %s_%d``: every NIfTI written (plain ones and ``_Eq_``/``_Tilt_`` resampled ones)."""
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["dcm2niix", "-z", "y", "-f", "%s_%d", "-o", str(out), str(folder)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    files = tuple(sorted(out.glob("*.nii.gz")))
    if not files:
        return Conversion("dcm2niix", (), f"exit {result.returncode}: {result.stdout[-500:]} {result.stderr[-500:]}")
    return Conversion("dcm2niix", files)


def is_resampled_dcm2niix(path: Path) -> bool:
    return "_Eq_" in path.name or "_Tilt_" in path.name


def run_dicom2nifti(folder: Path, out: Path) -> Conversion:
    """dicom2nifti with its defaults (reorient to LAS); its refusal text when it refuses the series."""
    out.parent.mkdir(parents=True, exist_ok=True)
    code = "import sys, dicom2nifti; dicom2nifti.dicom_series_to_nifti(sys.argv[1], sys.argv[2], reorient_nifti=True)"
    result = subprocess.run(
        [sys.executable, "-c", code, str(folder), str(out)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0 or not out.exists():
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        return Conversion("dicom2nifti", (), lines[-1] if lines else f"exit {result.returncode}")
    return Conversion("dicom2nifti", (out,))


def dcmqi_tool() -> str | None:
    """segimage2itkimage from PATH, or beside the running Python (PyPI ``dcmqi`` in the venv)."""
    found = shutil.which("segimage2itkimage")
    if found:
        return found
    beside = Path(sys.executable).parent / "segimage2itkimage"
    return str(beside) if beside.exists() else None


def run_segimage2itkimage(seg: Path, out: Path) -> dict[int, Path]:
    """dcmqi's reader: one NIfTI per segment (``--outputType nifti``); ``{segment number: file}``."""
    tool = dcmqi_tool()
    if tool is None:
        raise FileNotFoundError("segimage2itkimage (dcmqi) is not installed")
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [tool, "--inputDICOM", str(seg), "--outputDirectory", str(out), "--outputType", "nifti", "--prefix", "seg"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"segimage2itkimage failed ({result.returncode}): {result.stdout[-1500:]} {result.stderr[-1500:]}"
        )
    files: dict[int, Path] = {}
    for path in sorted(out.iterdir()):
        if path.name.endswith((".nii", ".nii.gz")):
            stem = path.name.removesuffix(".gz").removesuffix(".nii")
            number = stem.rsplit("-", 1)[-1]
            if number.isdigit():
                files[int(number)] = path
    if not files:
        raise AssertionError(f"segimage2itkimage wrote no NIfTI into {out}: {sorted(p.name for p in out.iterdir())}")
    return files


# -- reading a SEG back ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegFrame:
    number: int
    segment: int
    source: PlaneId
    position: FloatArray
    orientation: FloatArray
    spacing: FloatArray
    mask: npt.NDArray[np.bool_]


def read_seg_frames(path: Path) -> tuple[Dataset, list[SegFrame]]:
    """Every frame of a BINARY/FRACTIONAL SEG with the position, source and segment its own header states."""
    ds = pydicom.dcmread(path)
    if "PerFrameFunctionalGroupsSequence" not in ds:
        raise AssertionError(f"{path.name}: no PerFrameFunctionalGroupsSequence: frame positions unknown")
    pixels = np.asarray(ds.pixel_array)
    if int(ds.NumberOfFrames) == 1 and pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    threshold = int(ds.MaximumFractionalValue) / 2 if ds.SegmentationType == "FRACTIONAL" else 0
    frames = []
    for index, per_frame, groups, position, orientation, spacing in _frames(ds):
        segment = _group_value(groups, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if position is None or orientation is None or spacing is None or segment is None:
            raise AssertionError(f"{path.name}: frame {index + 1} lacks position, orientation, spacing or segment")
        try:
            source = per_frame.DerivationImageSequence[0].SourceImageSequence[0]
        except (AttributeError, IndexError) as exc:
            raise AssertionError(f"{path.name}: frame {index + 1} has no Derivation/Source Image Sequence") from exc
        number = source.get("ReferencedFrameNumber")
        frames.append(
            SegFrame(
                number=index + 1,
                segment=int(segment),
                source=(str(source.ReferencedSOPInstanceUID), None if number is None else int(number)),
                position=np.asarray(_floats(position)),
                orientation=np.asarray(_floats(orientation)),
                spacing=np.asarray(_floats(spacing)),
                mask=pixels[index] > threshold,
            )
        )
    return ds, frames


@dataclass
class SegReport:
    """What :func:`check_seg` found; ``problems`` is empty when the SEG is right."""

    exact: bool
    frames: int
    planes_with_frames: int
    problems: list[str] = field(default_factory=list)
    dice: dict[int, float] = field(default_factory=dict)
    voxels: dict[int, tuple[int, int]] = field(default_factory=dict)

    def summary(self) -> str:
        how = "exact" if self.exact else f"resampled (Dice {self.dice})"
        return f"{self.frames} frames on {self.planes_with_frames} planes, {how}, voxels (SEG, expected) {self.voxels}"


def _normalise_plane_id(plane_id: PlaneId, multiframe: bool) -> PlaneId:
    return (plane_id[0], plane_id[1] if multiframe else None)


def seg_labels_on_planes(
    frames: Sequence[SegFrame], stack: Sequence[Plane], *, segment_to_label: dict[int, int], problems: list[str]
) -> IntArray:
    """(planes, rows, cols) labels the SEG puts on the stack, placed by each frame's own source reference and
    checked against its own PlanePositionSequence (mm)."""
    by_id = {p.id: i for i, p in enumerate(stack)}
    multiframe = stack[0].frame is not None
    first = stack[0]
    got = np.zeros((len(stack), first.rows, first.cols), dtype=np.int64)
    for frame in frames:
        source = _normalise_plane_id(frame.source, multiframe)
        if source not in by_id:
            problems.append(f"SEG frame {frame.number} references {frame.source}, not a plane of the stack")
            continue
        plane = stack[by_id[source]]
        distance = float(np.linalg.norm(frame.position - np.asarray(plane.position)))
        if distance > POSITION_TOLERANCE_MM:
            problems.append(
                f"SEG frame {frame.number} at {frame.position.tolist()} is {distance:.4g} mm from its"
                f" source plane {plane.describe()}"
            )
        if np.abs(frame.orientation - np.asarray((*plane.col_dir, *plane.row_dir))).max() > ORIENTATION_TOLERANCE:
            problems.append(
                f"SEG frame {frame.number} orientation {frame.orientation.tolist()} differs from its source's"
            )
        if np.abs(frame.spacing - np.asarray((plane.row_spacing, plane.col_spacing))).max() > 1e-4:
            problems.append(
                f"SEG frame {frame.number} pixel spacing {frame.spacing.tolist()} differs from its"
                f" source's {[plane.row_spacing, plane.col_spacing]}"
            )
        if frame.mask.shape != (plane.rows, plane.cols):
            problems.append(f"SEG frame {frame.number} is {frame.mask.shape}, source {plane.rows}x{plane.cols}")
            continue
        if frame.segment not in segment_to_label:
            problems.append(f"SEG frame {frame.number} names unknown segment {frame.segment}")
            continue
        label = segment_to_label[frame.segment]
        k = by_id[source]
        clash = frame.mask & (got[k] != 0) & (got[k] != label)
        if clash.any():
            problems.append(f"SEG frame {frame.number} overlaps another segment in {int(clash.sum())} pixels")
        got[k][frame.mask] = label
    return got


def _highdicom_labels(
    seg_path: Path, stack: Sequence[Plane], segment_to_label: dict[int, int], problems: list[str]
) -> IntArray | None:
    """The same (planes, rows, cols) labels as highdicom's reader gives them (a second, independent reader)."""
    seg: Any = hd.seg.segread(seg_path)
    first = stack[0]
    numbers = sorted(segment_to_label)
    try:
        if first.frame is None:
            referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
            uids = [p.sop_uid for p in stack if p.sop_uid in referenced]
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=uids, segment_numbers=numbers, assert_missing_frames_are_empty=True
            )
            rows = [i for i, p in enumerate(stack) if p.sop_uid in referenced]
        else:
            pixels = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=first.sop_uid,
                source_frame_numbers=[int(p.frame or 0) for p in stack],
                segment_numbers=numbers,
                assert_missing_frames_are_empty=True,
            )
            rows = list(range(len(stack)))
    except (ValueError, KeyError, AttributeError, RuntimeError) as exc:
        problems.append(f"highdicom could not read the SEG by source: {type(exc).__name__}: {exc}")
        return None
    out = np.zeros((len(stack), first.rows, first.cols), dtype=np.int64)
    pixels = np.asarray(pixels)
    for j, number in enumerate(numbers):
        for row, k in enumerate(rows):
            out[k][pixels[row, :, :, j] != 0] = segment_to_label[number]
    return out


def describe_mismatch(got: IntArray, expected: IntArray) -> str:
    wrong = np.argwhere(got != expected)
    per_label = {int(v): (int((got == v).sum()), int((expected == v).sum())) for v in np.unique(expected) if v}
    first = [tuple(int(x) for x in w) for w in wrong[:4]]
    return (
        f"{len(wrong)} of {got.size} pixels differ, first at (plane, row, col) {first};"
        f" voxels per label (SEG, expected) {per_label}"
    )


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def centroid_mm(mask: npt.NDArray[np.bool_], stack: Sequence[Plane]) -> FloatArray:
    """Centroid (LPS mm) of a (planes, rows, cols) mask, from each plane's own pixel centres."""
    total = np.zeros(3)
    count = 0
    for k, plane in enumerate(stack):
        if mask[k].any():
            total += plane.pixel_centres()[mask[k]].sum(axis=0)
            count += int(mask[k].sum())
    return total / max(count, 1)


def source_voxel_diagonal(stack: Sequence[Plane]) -> float:
    steps = np.abs(slice_steps(stack)) if len(stack) > 1 else np.array([0.0])
    first = stack[0]
    return float(math.sqrt(first.row_spacing**2 + first.col_spacing**2 + float(steps.max()) ** 2))


def check_seg(
    seg_path: Path, stack: Sequence[Plane], label_map: LabelMap, truth: GroundTruth, *, exact: bool | None = None
) -> SegReport:
    """Compare a SEG with what it must hold over ``stack``, in patient space.

    Exact grids (every pixel centre of the stack is a voxel centre of the label map): the SEG must hold, at every
    source pixel, the label of that voxel. Otherwise (resampled input): per label Dice >= 0.8 against the ground
    truth at the source pixel centres and centroids within one voxel diagonal. Every frame must lie on the source
    plane it references (1e-3 mm); highdicom's reader must agree with ours pixel for pixel.
    """
    ds, frames = read_seg_frames(seg_path)
    problems: list[str] = []
    if exact is None:
        exact = label_map.fits_exactly(stack)
    segments = sorted(int(item.SegmentNumber) for item in ds.SegmentSequence if int(item.SegmentNumber) != 0)
    present = label_map.labels_present()
    if len(segments) != len(present):
        problems.append(f"SEG has segments {segments}, the label map labels {present}")
    segment_to_label = dict(zip(segments, present, strict=False))
    got = seg_labels_on_planes(frames, stack, segment_to_label=segment_to_label, problems=problems)
    second = _highdicom_labels(seg_path, stack, segment_to_label, problems)
    if second is not None and not np.array_equal(second, got):
        problems.append(f"highdicom reads the SEG differently: {describe_mismatch(second, got)}")
    referenced = {_normalise_plane_id(f.source, stack[0].frame is not None) for f in frames}
    report = SegReport(exact=exact, frames=len(frames), planes_with_frames=len(referenced), problems=problems)
    # Resampled: the ground truth where the label map's field of view reaches (a tool cannot label what it was
    # not given).
    expected = np.stack(
        [label_map.sample(p) if exact else truth.labels_at(p.pixel_centres()) * label_map.covers(p) for p in stack]
    )
    for label in present:
        report.voxels[label] = (int((got == label).sum()), int((expected == label).sum()))
    if exact:
        if not np.array_equal(got, expected):
            problems.append(f"SEG differs from the label map at the source pixels: {describe_mismatch(got, expected)}")
    else:
        limit = max(label_map.voxel_diagonal(), source_voxel_diagonal(stack))
        for label in present:
            a, b = got == label, expected == label
            report.dice[label] = round(dice(a, b), 4)
            if report.dice[label] < MIN_DICE_RESAMPLED:
                problems.append(
                    f"label {label}: Dice {report.dice[label]} < {MIN_DICE_RESAMPLED} against the ground"
                    " truth at the source pixel centres"
                )
            if a.any() and b.any():
                shift = float(np.linalg.norm(centroid_mm(a, stack) - centroid_mm(b, stack)))
                if shift > limit:
                    problems.append(
                        f"label {label}: centroid {shift:.3g} mm from the ground truth's (limit {limit:.3g} mm)"
                    )
            elif b.any():
                problems.append(f"label {label}: absent from the SEG")
    return report


def check_seg_identity(seg_path: Path, stack: Sequence[Plane], series_uid: str) -> list[str]:
    """The SEG names the source series and frame of reference; problems as readable lines."""
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    source = pydicom.dcmread(stack[0].path, stop_before_pixels=True)
    problems = []
    if ds.SOPClassUID != SEGMENTATION_STORAGE:
        problems.append(f"SOP class {ds.SOPClassUID} is not Segmentation Storage")
    if ds.StudyInstanceUID != source.StudyInstanceUID:
        problems.append("SEG is not in the source study")
    if ds.get("FrameOfReferenceUID") != source.get("FrameOfReferenceUID"):
        problems.append("SEG frame of reference differs from the source's")
    named = [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])]
    if named != [series_uid]:
        problems.append(f"ReferencedSeriesSequence names {named}, not [{series_uid}]")
    return problems


def check_against_itk_masks(
    files: dict[int, Path], truth: GroundTruth, segment_to_label: dict[int, int], *, max_mismatch_fraction: float = 2e-3
) -> list[str]:
    """dcmqi's per-segment NIfTI masks against the ground truth at their own voxel centres (mm)."""
    problems = []
    for number, path in sorted(files.items()):
        image = nib.load(path)
        data = np.asarray(image.dataobj)
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        affine, shape = _nifti_geometry(image)
        expected = labels_on_grid(truth, affine, shape) == segment_to_label.get(number, -1)
        got = data != 0
        wrong = int((got != expected).sum())
        allowed = max(2, int(max_mismatch_fraction * max(int(expected.sum()), 1)))
        if not expected.any():
            problems.append(f"segment {number}: the ground truth is empty on dcmqi's grid ({shape})")
        elif wrong > allowed:
            problems.append(
                f"segment {number}: {wrong} voxels of dcmqi's mask differ from the ground truth"
                f" (mask {int(got.sum())}, truth {int(expected.sum())}, allowed {allowed})"
            )
    return problems


# -- one-line refusals ----------------------------------------------------------------------------------------------


def refusal_problems(code: int, stderr: str, names: Iterable[str]) -> list[str]:
    """Problems with a refusal: it must exit non-zero with exactly one stderr line naming an input, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    problems = []
    if code == 0:
        problems.append("exit code 0 for a refusal")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines, not 1: {stderr[-800:]!r}")
    text = stderr.lower()
    if "traceback" in text or "internal error" in text:
        problems.append(f"traceback or internal error: {stderr[-800:]!r}")
    if lines and not any(name and name in lines[0] for name in names):
        problems.append(f"the line names none of the inputs {sorted(set(names))}: {lines[0]!r}")
    return problems
