"""Synthetic DICOM layouts that real scanners write, with their geometric truth: the second builder module.

:mod:`synthetic` writes one regular stack per series. Here a series may hold several volumes (echoes, magnitude and
phase, dynamics, diffusion directions, the three planes of a localiser, an Enhanced object beside classic images),
planes that are not one regular grid (a missing slice, variable spacing, gantry tilt, orientation jitter), a single
plane, or a Siemens mosaic; Enhanced CT and MR objects keep their pixel measures and orientation in the shared or in
the per-frame functional groups.

A layout is described by :class:`StackSpec` (one volume: its planes and what tells it apart) and written by
:func:`write_layout`; the :class:`LayoutInfo` it returns knows, for every stack, which SOP instance and frame holds
each plane and where every source pixel centre is (LPS mm), so tests check the node against this independent
statement and never against the node's own code. Like :mod:`synthetic`, nothing here imports ``node``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from synthetic import (
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    ENHANCED_MR_IMAGE_STORAGE,
    LPS_RAS,
    MR_IMAGE_STORAGE,
    FloatArray,
    GridSpec,
    IntArray,
    Phantom,
    PlaneSpec,
    SeriesInfo,
    _classic_image,
    _common_dataset,
    _ds,
    _enhanced_object,
    _file_meta,
    _frame_group,
    _item,
    _order,
    _plane_groups,
    _rotation,
    _seq,
    vec3,
)
from synthetic import Modality as Modality  # re-exported: callers write lay.Modality

FrameOrder = Literal["ascending", "reversed", "shuffled"]

#: Siemens' private creator of the CSA header block and its "number of images in mosaic" element.
SIEMENS_CSA_CREATOR = "SIEMENS CSA HEADER"
MOSAIC_COUNT_TAG = Tag(0x0019, 0x100A)

MAGNITUDE = ("ORIGINAL", "PRIMARY", "M", "ND")
PHASE = ("ORIGINAL", "PRIMARY", "P", "ND")


@dataclass(frozen=True)
class StackSpec:
    """One volume of a layout: its planes in geometric order and the header values that tell it apart.

    ``attributes`` go on every classic image of the stack (``{"EchoNumbers": 2}``; None deletes an attribute of
    the default header); ``per_plane`` (one mapping per plane) goes over them. The Enhanced writer ignores both and
    uses ``stack_id``, ``temporal_position`` (FrameContentSequence > TemporalPositionIndex) and ``echo_time``
    (MREchoSequence > EffectiveEchoTime) instead.
    """

    name: str
    planes: tuple[PlaneSpec, ...]
    attributes: Mapping[str, Any] = field(default_factory=dict)
    per_plane: tuple[Mapping[str, Any], ...] = ()
    #: The regular grid whose slices (in slice-index order) the planes are; None when they form none.
    grid: GridSpec | None = None
    stack_id: str = "1"
    temporal_position: int | None = None
    echo_time: float | None = None

    def __post_init__(self) -> None:
        if not self.planes:
            raise ValueError(f"stack {self.name!r} has no planes")
        if self.per_plane and len(self.per_plane) != len(self.planes):
            raise ValueError(f"stack {self.name!r}: per_plane needs one mapping per plane")
        if self.grid is not None and self.grid.slices != len(self.planes):
            raise ValueError(f"stack {self.name!r}: grid has {self.grid.slices} slices for {len(self.planes)} planes")

    @classmethod
    def of_grid(cls, name: str, grid: GridSpec, **fields: Any) -> StackSpec:
        """A regular stack: the slices of ``grid``."""
        return cls(name=name, planes=grid.planes(), grid=grid, **fields)

    def attributes_of(self, k: int) -> dict[str, Any]:
        """The classic header attributes of plane ``k``."""
        return {**self.attributes, **(self.per_plane[k] if self.per_plane else {})}


@dataclass(frozen=True)
class EnhancedSpec:
    """One Enhanced CT/MR object holding the frames of ``stacks`` (several stacks: repeated positions).

    ``geometry`` says where PixelMeasures and PlaneOrientation sit: in the shared functional groups (needs one
    orientation and spacing for all frames) or in every per-frame item. PlanePosition is always per frame.
    """

    stacks: tuple[StackSpec, ...]
    geometry: Literal["shared", "per_frame"] = "shared"
    frame_order: FrameOrder = "shuffled"


@dataclass(frozen=True)
class StackTruth:
    """What was written for one stack: where each of its planes went."""

    spec: StackSpec
    #: Per plane of ``spec.planes``: (SOP Instance UID, 1-based frame number or None for a single-frame image).
    sources: tuple[tuple[str, int | None], ...]
    #: Per plane: the file holding it.
    paths: tuple[Path, ...]
    sop_class_uid: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def planes(self) -> tuple[PlaneSpec, ...]:
        return self.spec.planes

    @property
    def grid(self) -> GridSpec | None:
        return self.spec.grid

    def positions(self) -> FloatArray:
        """(planes, 3) ImagePositionPatient, in ``spec.planes`` order."""
        return np.array([p.position for p in self.planes], dtype=np.float64)

    def distances(self) -> FloatArray:
        """Each plane's position along the first plane's normal (mm), in ``spec.planes`` order."""
        return np.asarray(self.positions() @ self.planes[0].normal, dtype=np.float64)

    def sorted_sources(self) -> list[tuple[str, int | None]]:
        """Sources ordered along the normal, ascending (the order a stack is sorted in)."""
        return [self.sources[i] for i in np.argsort(self.distances(), kind="stable")]

    def centres_lps(self) -> FloatArray:
        """(planes, rows, cols, 3) source pixel centres in LPS mm."""
        return np.stack([p.centres_lps() for p in self.planes])

    def truth(self, phantom: Phantom) -> IntArray:
        """(planes, rows, cols) phantom labels at the source pixel centres (snapped to the grid when regular)."""
        return phantom.labels_at(self.centres_lps(), snap=self.grid)


@dataclass(frozen=True)
class LayoutInfo:
    """What :func:`write_layout` wrote: one series, its stacks in the order given, its files."""

    folder: Path
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    phantom: Phantom
    stacks: tuple[StackTruth, ...]
    paths: tuple[Path, ...]

    def stack(self, name: str) -> StackTruth:
        for stack in self.stacks:
            if stack.name == name:
                return stack
        raise KeyError(f"no stack {name!r}; stacks: {[s.name for s in self.stacks]}")

    def series_info(self, name: str) -> SeriesInfo:
        """A regular stack as :class:`synthetic.SeriesInfo`, so the checks written for one-stack series apply."""
        stack = self.stack(name)
        if stack.grid is None:
            raise ValueError(f"stack {name!r} is not a regular grid")
        uids = tuple(uid for uid, _ in stack.sources)
        frames = [frame for _, frame in stack.sources]
        if all(frame is None for frame in frames):
            return SeriesInfo(
                grid=stack.grid,
                folder=self.folder,
                paths=stack.paths,
                study_uid=self.study_uid,
                series_uid=self.series_uid,
                frame_of_reference_uid=self.frame_of_reference_uid,
                sop_uids=uids,
                sop_class_uid=stack.sop_class_uid,
            )
        if len(set(uids)) != 1:
            raise ValueError(f"stack {name!r} spans several multi-frame objects")
        return SeriesInfo(
            grid=stack.grid,
            folder=self.folder,
            paths=stack.paths[:1],
            study_uid=self.study_uid,
            series_uid=self.series_uid,
            frame_of_reference_uid=self.frame_of_reference_uid,
            sop_uids=uids[:1],
            sop_class_uid=stack.sop_class_uid,
            frame_numbers=tuple(int(f) for f in frames if f is not None),
        )


# -- pixels and headers -------------------------------------------------------------------------------------------


def plane_pixels(plane: PlaneSpec, phantom: Phantom) -> npt.NDArray[np.uint16]:
    """(rows, cols) stored values (CT: HU + 1024): brighter organs over a soft tissue background and a ramp."""
    labels = phantom.labels_at(plane.centres_lps())
    ramp = np.arange(plane.cols, dtype=np.float64) / max(plane.cols - 1, 1)
    return np.asarray(np.clip(np.rint(1064.0 + 60.0 * labels + 5.0 * ramp), 0, 4095), dtype=np.uint16)


def _enhanced_image(
    spec: EnhancedSpec, phantom: Phantom, base: Dataset, *, sop_uid: str, modality: Modality, rng: np.random.Generator
) -> tuple[Dataset, dict[tuple[int, int], int]]:
    """One Enhanced object; also (stack number in ``spec.stacks``, plane index) → 1-based frame number."""
    frames = [(s, k) for s, stack in enumerate(spec.stacks) for k in range(len(stack.planes))]
    first = spec.stacks[0].planes[0]
    if spec.geometry == "shared":
        for stack in spec.stacks:
            for plane in stack.planes:
                if (
                    plane.image_orientation != first.image_orientation
                    or plane.pixel_spacing != first.pixel_spacing
                    or plane.thickness != first.thickness
                ):
                    raise ValueError("shared geometry needs one orientation, spacing and thickness for all frames")
    temporal = any(s.temporal_position is not None for s in spec.stacks)
    echo_times = sorted({s.echo_time for s in spec.stacks if s.echo_time is not None})
    if echo_times and modality != "MR":
        raise ValueError("echo times are written into Enhanced MR objects only")
    stack_ids = sorted({s.stack_id for s in spec.stacks})
    ds = _enhanced_object(
        base,
        sop_uid=sop_uid,
        modality=modality,
        frames=len(frames),
        first=first,
        temporal=temporal,
        echoes=len(echo_times) > 1,
        shared_geometry=spec.geometry == "shared",
    )
    if len(echo_times) == 1:
        ds.SharedFunctionalGroupsSequence[0].MREchoSequence = _seq(_item(EffectiveEchoTime=echo_times[0]))

    order = _order(len(frames), spec.frame_order, rng)  # frames[order[i]] is stored as frame i + 1
    per_frame, pixels = [], []
    frame_number: dict[tuple[int, int], int] = {}
    for i, which in enumerate(order):
        s, k = frames[which]
        stack, plane = spec.stacks[s], spec.stacks[s].planes[k]
        frame_number[(s, k)] = i + 1
        index = [stack_ids.index(stack.stack_id) + 1, k + 1]
        temporal_position = (stack.temporal_position or 1) if temporal else None
        if temporal_position is not None:
            index.append(temporal_position)
        if len(echo_times) > 1:
            index.append(echo_times.index(stack.echo_time) + 1 if stack.echo_time is not None else 1)
        group = _frame_group(
            plane, stack_id=stack.stack_id, in_stack_position=k + 1, index=index, temporal_position=temporal_position
        )
        if spec.geometry == "per_frame":
            for keyword, value in _plane_groups(plane).items():
                setattr(group, keyword, value)
        if len(echo_times) > 1 and stack.echo_time is not None:
            group.MREchoSequence = _seq(_item(EffectiveEchoTime=stack.echo_time))
        per_frame.append(group)
        pixels.append(plane_pixels(plane, phantom))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = np.ascontiguousarray(np.stack(pixels)).tobytes()
    ds.file_meta = _file_meta(ds)
    return ds, frame_number


# -- writing a layout ---------------------------------------------------------------------------------------------


def _reference_grid(stacks: Sequence[StackSpec]) -> GridSpec:
    """The grid a default phantom fits: the first regular stack's (a single slice thickened to three around it, so
    the phantom is not flat)."""
    for stack in stacks:
        if stack.grid is not None:
            grid = stack.grid
            return grid if grid.slices > 1 else grid.replace(slices=3, origin=vec3(grid.position(-1)))
    raise ValueError("no stack is a regular grid: pass a phantom")


def write_layout(
    folder: Path,
    classic: Sequence[StackSpec] = (),
    enhanced: Sequence[EnhancedSpec] = (),
    *,
    modality: Modality = "CT",
    phantom: Phantom | None = None,
    uids: Mapping[str, str] | None = None,
    instance_numbers: FrameOrder = "shuffled",
    seed: int = 0,
) -> LayoutInfo:
    """Write one series into ``folder``: the ``classic`` stacks as single-frame images, each of ``enhanced`` as
    one Enhanced CT (``modality`` "CT") or Enhanced MR ("MR") object.

    Parameters
    ----------
    instance_numbers
        How InstanceNumber (and file name ``IM_<number>``) of the classic images relates to the order given
        (stack after stack, plane after plane); shuffled by default, so nothing can lean on it.
    phantom
        What the pixels show; by default :meth:`Phantom.fitting` the first stack that is a regular grid.
    uids
        ``study``, ``series`` and/or ``frame_of_reference`` UIDs to use; the rest are generated.
    """
    every = [*classic, *(s for e in enhanced for s in e.stacks)]
    if not every:
        raise ValueError("a layout needs at least one stack")
    names = [s.name for s in every]
    if len(set(names)) != len(names):
        raise ValueError(f"stack names must be unique: {names}")
    rng = np.random.default_rng(seed)
    given = dict(uids or {})
    all_uids = {key: given.get(key) or generate_uid() for key in ("study", "series", "frame_of_reference")}
    phantom = phantom or Phantom.fitting(_reference_grid(every))
    folder.mkdir(parents=True, exist_ok=True)
    truths: dict[str, StackTruth] = {}
    paths: list[Path] = []

    classic_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    base = _common_dataset(sop_class_uid=classic_class, modality=modality, uids=all_uids, omit_type2=False)
    images = [(stack, k) for stack in classic for k in range(len(stack.planes))]
    numbers = _order(len(images), instance_numbers, rng)  # images[numbers[i]] gets InstanceNumber i + 1
    instance_of = {which: i + 1 for i, which in enumerate(numbers)}
    written: dict[str, list[tuple[str, Path]]] = {stack.name: [] for stack in classic}
    for which, (stack, k) in enumerate(images):
        sop_uid = generate_uid()
        plane = stack.planes[k]
        ds = _classic_image(
            plane,
            plane_pixels(plane, phantom),
            base,
            sop_uid=sop_uid,
            instance_number=instance_of[which],
            modality=modality,
            attributes=stack.attributes_of(k),
        )
        path = folder / f"IM_{instance_of[which]:04d}"
        ds.save_as(path, enforce_file_format=True)
        written[stack.name].append((sop_uid, path))
        paths.append(path)
    for stack in classic:
        truths[stack.name] = StackTruth(
            spec=stack,
            sources=tuple((uid, None) for uid, _ in written[stack.name]),
            paths=tuple(p for _, p in written[stack.name]),
            sop_class_uid=classic_class,
        )

    enhanced_class = ENHANCED_CT_IMAGE_STORAGE if modality == "CT" else ENHANCED_MR_IMAGE_STORAGE
    enhanced_base = _common_dataset(sop_class_uid=enhanced_class, modality=modality, uids=all_uids, omit_type2=False)
    for number, spec in enumerate(enhanced, start=1):
        sop_uid = generate_uid()
        ds, frame_number = _enhanced_image(spec, phantom, enhanced_base, sop_uid=sop_uid, modality=modality, rng=rng)
        path = folder / f"EN_{number:04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        for s, stack in enumerate(spec.stacks):
            truths[stack.name] = StackTruth(
                spec=stack,
                sources=tuple((sop_uid, frame_number[(s, k)]) for k in range(len(stack.planes))),
                paths=(path,) * len(stack.planes),
                sop_class_uid=enhanced_class,
            )
    return LayoutInfo(
        folder=folder,
        study_uid=all_uids["study"],
        series_uid=all_uids["series"],
        frame_of_reference_uid=all_uids["frame_of_reference"],
        phantom=phantom,
        stacks=tuple(truths[name] for name in names),
        paths=tuple(paths),
    )


def write_enhanced(
    grid: GridSpec,
    folder: Path,
    *,
    modality: Modality = "CT",
    geometry: Literal["shared", "per_frame"] = "shared",
    temporal_positions: int = 1,
    echo_times: Sequence[float] = (),
    object_per_echo: bool = False,
    frame_order: FrameOrder = "shuffled",
    seed: int = 0,
    phantom: Phantom | None = None,
) -> LayoutInfo:
    """An Enhanced CT/MR series over ``grid``: one object, or with ``object_per_echo`` one object per echo.

    With several ``temporal_positions`` or ``echo_times`` every position repeats once per volume, told apart by
    TemporalPositionIndex or MREchoSequence > EffectiveEchoTime. Stacks are named ``t<i>``, ``echo<i>``,
    ``t<i>_echo<j>`` (1-based), or ``volume`` for a plain one-volume object.
    """
    stacks = []
    echoes: list[float | None] = list(echo_times) or [None]
    for t in range(1, temporal_positions + 1):
        for e, time in enumerate(echoes, start=1):
            parts = ([f"t{t}"] if temporal_positions > 1 else []) + ([f"echo{e}"] if time is not None else [])
            stacks.append(
                StackSpec.of_grid(
                    "_".join(parts) or "volume",
                    grid,
                    temporal_position=t if temporal_positions > 1 else None,
                    echo_time=time,
                )
            )
    if object_per_echo:
        specs = [EnhancedSpec(stacks=(s,), geometry=geometry, frame_order=frame_order) for s in stacks]
    else:
        specs = [EnhancedSpec(stacks=tuple(stacks), geometry=geometry, frame_order=frame_order)]
    return write_layout(folder, enhanced=specs, modality=modality, seed=seed, phantom=phantom)


# -- multi-stack presets ------------------------------------------------------------------------------------------


def echo_stacks(grid: GridSpec, echo_times: Sequence[float] = (12.0, 30.0)) -> list[StackSpec]:
    """Multi-echo: the same positions once per echo (EchoNumbers, EchoTime; EffectiveEchoTime when Enhanced)."""
    return [
        StackSpec.of_grid(f"echo{i}", grid, attributes={"EchoNumbers": i, "EchoTime": _ds(t)}, echo_time=t)
        for i, t in enumerate(echo_times, start=1)
    ]


def magnitude_phase_stacks(grid: GridSpec) -> list[StackSpec]:
    """Magnitude and phase images at the same positions, told apart by ImageType's third value only."""
    return [
        StackSpec.of_grid("magnitude", grid, attributes={"ImageType": MAGNITUDE}),
        StackSpec.of_grid("phase", grid, attributes={"ImageType": PHASE}),
    ]


def dynamic_stacks(grid: GridSpec, count: int = 3) -> list[StackSpec]:
    """Dynamics: the same positions once per time point (TemporalPositionIdentifier 1..count)."""
    return [
        StackSpec.of_grid(
            f"t{i}",
            grid,
            attributes={"TemporalPositionIdentifier": i, "NumberOfTemporalPositions": count},
            temporal_position=i,
        )
        for i in range(1, count + 1)
    ]


def diffusion_stacks(
    grid: GridSpec,
    b_value: float = 1000.0,
    directions: Sequence[Sequence[float]] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
) -> list[StackSpec]:
    """Diffusion: a b=0 volume and one b=``b_value`` volume per gradient direction, all at the same positions
    (DiffusionBValue, DiffusionGradientOrientation at the top level, as classic DWI images carry them)."""
    stacks = [StackSpec.of_grid("b0", grid, attributes={"DiffusionBValue": 0.0})]
    for i, direction in enumerate(directions, start=1):
        stacks.append(
            StackSpec.of_grid(
                f"b{b_value:g}_dir{i}",
                grid,
                attributes={
                    "DiffusionBValue": float(b_value),
                    "DiffusionGradientOrientation": [float(v) for v in direction],
                },
            )
        )
    return stacks


def localizer_stacks(
    *,
    rows: int = 16,
    cols: int = 20,
    slices: int = 3,
    row_spacing: float = 1.0,
    col_spacing: float = 1.25,
    slice_step: float = 5.0,
) -> list[StackSpec]:
    """A three-plane localiser: axial, coronal and sagittal stacks through one centre (one series)."""
    kwargs = {
        "rows": rows,
        "cols": cols,
        "slices": slices,
        "row_spacing": row_spacing,
        "col_spacing": col_spacing,
        "slice_step": slice_step,
    }
    return [StackSpec.of_grid(name, getattr(GridSpec, name)(**kwargs)) for name in ("axial", "coronal", "sagittal")]


def acquisition_number_stack(grid: GridSpec) -> StackSpec:
    """One volume whose every slice has its own AcquisitionNumber (some scanners do this): still one stack."""
    return StackSpec.of_grid("volume", grid, per_plane=tuple({"AcquisitionNumber": k + 1} for k in range(grid.slices)))


def jittered_stack(grid: GridSpec, *, low: float = 1e-6, high: float = 5e-5, seed: int = 0) -> StackSpec:
    """The slices of ``grid``, each turned by its own tiny rotation (``low``..``high`` radians about a random axis),
    so every ImageOrientationPatient value differs from the grid's by up to about ``high`` while the vectors stay
    unit and orthogonal, as a scanner computing each slice's cosines writes them. Positions stay on the grid, so it
    is still one regular stack (``grid`` is kept)."""
    rng = np.random.default_rng(seed)
    planes = []
    for plane in grid.planes():
        axis = [float(v) for v in rng.normal(size=3)]
        rotation = _rotation(axis, float(np.degrees(rng.uniform(low, high))))
        planes.append(
            plane.replace(
                col_dir=vec3(rotation @ np.asarray(plane.col_dir)), row_dir=vec3(rotation @ np.asarray(plane.row_dir))
            )
        )
    return StackSpec(name="jittered", planes=tuple(planes), grid=grid)


def missing_slice_stack(grid: GridSpec, missing: Sequence[int] = (3,)) -> StackSpec:
    """The slices of ``grid`` without those in ``missing``: one gap twice as wide."""
    planes = tuple(p for k, p in enumerate(grid.planes()) if k not in set(missing))
    return StackSpec(name="missing", planes=planes)


def uneven_stack(
    grid: GridSpec, gaps: Sequence[float], *, tilt_degrees: float = 0.0, name: str = "uneven"
) -> StackSpec:
    """Planes of ``grid``'s orientation and matrix from ``grid.origin``, ``gaps`` apart along the normal (mm).

    With ``tilt_degrees`` the step leans towards the row direction (gantry tilt): plane k sits at
    ``origin + d_k·(normal + tan(tilt)·row_dir)`` where ``d_k`` is its distance along the normal.
    """
    distances = np.concatenate([[0.0], np.cumsum(np.asarray(gaps, dtype=np.float64))])
    step = grid.normal + np.tan(np.radians(tilt_degrees)) * np.asarray(grid.row_dir)
    first = grid.planes()[0]
    planes = tuple(first.replace(position=vec3(np.asarray(grid.origin) + d * step)) for d in distances)
    return StackSpec(name=name, planes=planes)


def single_plane_stack(grid: GridSpec, *, thickness: float = 5.0) -> StackSpec:
    """The middle slice of ``grid`` alone (slice ``slices // 2``), ``thickness`` mm thick; its grid is that one
    slice with ``thickness`` as step (what a converter makes of it)."""
    middle = grid.position(grid.slices // 2)
    return StackSpec.of_grid("single", grid.replace(slices=1, slice_step=thickness, origin=vec3(middle)))


def write_mosaic(
    folder: Path,
    *,
    tiles: int = 4,
    tile_rows: int = 16,
    tile_cols: int = 20,
    images: int = 12,
    with_image_type: bool = True,
    with_private_count: bool = True,
    count: int = 1,
    seed: int = 0,
) -> LayoutInfo:
    """A Siemens-style mosaic series: ``count`` MR images, each ``tiles``×``tiles`` slices tiled into one frame.

    ImageType carries MOSAIC (``with_image_type``) and the CSA private block (0019,0010) "SIEMENS CSA HEADER"
    holds (0019,100A) NumberOfImagesInMosaic = ``images`` (US, ``with_private_count``).
    """
    grid = GridSpec.axial(rows=tiles * tile_rows, cols=tiles * tile_cols, slices=count, slice_step=3.0)
    attributes: dict[str, Any] = {
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM", "MOSAIC"] if with_image_type else list(MAGNITUDE),
        "TemporalPositionIdentifier": None,
    }
    stack = StackSpec(
        name="mosaic",
        planes=tuple(grid.planes()),
        grid=grid,
        per_plane=tuple({**attributes, "AcquisitionNumber": k + 1} for k in range(count)),
    )
    tile = GridSpec.axial(rows=tile_rows, cols=tile_cols, slices=images, slice_step=3.0)
    info = write_layout(folder, [stack], modality="MR", seed=seed, phantom=Phantom.fitting(tile))
    if with_private_count:
        for path in info.paths:
            ds = pydicom.dcmread(path)
            block = ds.private_block(0x0019, SIEMENS_CSA_CREATOR, create=True)
            block.add_new(0x0A, "US", images)
            ds.save_as(path, enforce_file_format=True)
    return info


# -- NIfTI grids over layouts -------------------------------------------------------------------------------------


def even_grid_over(stack: StackSpec, step: float) -> tuple[FloatArray, tuple[int, int, int]]:
    """RAS affine and shape (cols, rows, slices) of an evenly spaced grid from the first plane to the last along
    the normal, ``step`` mm apart along it (sheared like the planes under gantry tilt): the regular volume a tool
    segments when the planes themselves are not one (like dcm2niix's ``_Eq_`` file)."""
    order = np.argsort([np.asarray(p.position) @ stack.planes[0].normal for p in stack.planes])
    first, last = stack.planes[int(order[0])], stack.planes[int(order[-1])]
    span = np.asarray(last.position) - np.asarray(first.position)
    length = float(span @ first.normal)
    count = round(length / step) + 1
    if abs((count - 1) * step - length) > 1e-6:
        raise ValueError(f"step {step} does not divide the stack's length {length}")
    lps = np.eye(4)
    lps[:3, 0] = first.col_spacing * np.asarray(first.col_dir)
    lps[:3, 1] = first.row_spacing * np.asarray(first.row_dir)
    lps[:3, 2] = span / (count - 1)
    lps[:3, 3] = first.position
    return LPS_RAS @ lps, (first.cols, first.rows, count)


def dcm2niix_affine(grid: GridSpec) -> FloatArray:
    """RAS affine of the NIfTI dcm2niix writes for ``grid`` (array index (col, flipped row, slice)): rows flipped
    so the first stored row is the last DICOM row; the slice axis is the step (a single slice: its thickness)."""
    lps = np.eye(4)
    lps[:3, 0] = grid.col_spacing * np.asarray(grid.col_dir)
    lps[:3, 1] = -grid.row_spacing * np.asarray(grid.row_dir)
    lps[:3, 2] = grid.slice_step * grid.normal
    lps[:3, 3] = np.asarray(grid.origin) + (grid.rows - 1) * grid.row_spacing * np.asarray(grid.row_dir)
    return LPS_RAS @ lps


def nearest_labels_on_planes(
    labels: npt.NDArray[Any], affine_ras: npt.ArrayLike, planes: Sequence[PlaneSpec]
) -> IntArray:
    """(planes, rows, cols): the label voxel nearest to each source pixel centre (outside the array: 0)."""
    to_index = np.linalg.inv(LPS_RAS @ np.asarray(affine_ras, dtype=np.float64))
    out = np.zeros((len(planes), planes[0].rows, planes[0].cols), dtype=np.int64)
    for s, plane in enumerate(planes):
        index = np.rint(plane.centres_lps() @ to_index[:3, :3].T + to_index[:3, 3]).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.asarray(labels.shape[:3])), axis=-1)
        picked = index[inside]
        out[s][inside] = labels[picked[:, 0], picked[:, 1], picked[:, 2]]
    return out
