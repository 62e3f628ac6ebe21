"""Header fuzzing of the conversion engine: whatever a source header holds, never a traceback.

Real and synthetic source series have each attribute the engine reads removed, emptied or corrupted (one at a
time, then random combinations drawn by hypothesis), and ``segnode convert`` must then either

* exit 0 with a SEG that exists and reads back (a sample is also checked with dciodvfy), or
* exit non-zero with exactly one line on stderr, ``segnode convert: ...``, naming the input or the problem,
  with no traceback, no "internal error", no library warning as an extra line, and no output file.

The node must survive the same headers: a mutated series pushed with DCMTK and its label map end up in
``data/failed/`` with a readable reason, and a good series afterwards still becomes a SEG.

Corrupt values are written as raw element bytes (``RawDataElement``), so the files hold exactly what a broken
modality would send, including values pydicom itself refuses to create. The label map is always made on the
unmutated series' export grid. Real headers come from ``<repo>/../shared/real-dicom/*.tar.xz`` (small cases only);
without that folder those parametrizations skip.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import struct
import tarfile
import tempfile
import traceback
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import nibabel
import numpy as np
import pydicom
import pytest
import synthetic as syn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

REPO_ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = REPO_ROOT / "node"
REAL_DICOM = REPO_ROOT.parent / "shared" / "real-dicom"

#: The small real cases (name -> whether it is one Enhanced object); the others take too long to fuzz.
REAL_CASES: dict[str, bool] = {
    "ct_ge_3slice_implicit": False,
    "mr_ge_ffs_vol1": False,
    "mr_toshiba_ax30": False,
    "mr_xa30_enh_t1": True,
    "ct_philips_localizer": False,
}
SYNTHETIC_CASES: dict[str, bool] = {"synthetic_ct": False, "synthetic_mr": False, "synthetic_enhanced_ct": True}
#: Real series are cut to this many planes in the middle of the stack (same headers, a fraction of the run time).
REAL_KEEP_PLANES = 6
#: SEGNODE_FUZZ_FULL=1: every mutation on every scope of every source (minutes); by default a bounded selection.
FULL = os.environ.get("SEGNODE_FUZZ_FULL", "") not in ("", "0")
GRID = syn.GridSpec.axial(rows=16, cols=16, slices=6, row_spacing=1.0, col_spacing=1.0, slice_step=2.0)

ERROR_PREFIX = "segnode convert: "
#: What a bug caught by a last-resort handler says (the CLI's, the node's): no input problem, an engine problem.
INTERNAL_ERROR = ("internal error", "unexpected error")


# -- what is mutated ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """An attribute the engine reads: at the top level, or inside a functional group macro of an Enhanced object.

    ``macro`` names the functional group sequence (e.g. ``PixelMeasuresSequence``); it is looked up in the
    per-frame groups first, then in the shared group, wherever the source keeps it. ``keyword == macro`` mutates
    the macro sequence itself.
    """

    keyword: str
    macro: str | None = None

    @property
    def label(self) -> str:
        return self.keyword if self.macro is None or self.macro == self.keyword else f"{self.macro}>{self.keyword}"


IDENTITY = ("SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")
PIXEL_MODULE = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "SamplesPerPixel",
)
PATIENT_STUDY = (
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)
CLASSIC_GEOMETRY = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
)
CLASSIC_TRAITS = (
    "InstanceNumber",
    "ImageType",
    "EchoNumbers",
    "AcquisitionNumber",
    "TemporalPositionIdentifier",
    "RescaleSlope",
    "RescaleIntercept",
    "NumberOfFrames",
)

SINGLE_FRAME_TARGETS: tuple[Target, ...] = tuple(
    Target(k) for k in (*IDENTITY, *CLASSIC_GEOMETRY, *PIXEL_MODULE, *CLASSIC_TRAITS, *PATIENT_STUDY)
)
ENHANCED_TARGETS: tuple[Target, ...] = (
    *(
        Target(k)
        for k in (
            *IDENTITY,
            *PIXEL_MODULE,
            "NumberOfFrames",
            "ImageType",
            "InstanceNumber",
            *PATIENT_STUDY,
            "SharedFunctionalGroupsSequence",
            "PerFrameFunctionalGroupsSequence",
        )
    ),
    Target("PixelMeasuresSequence", "PixelMeasuresSequence"),
    Target("PixelSpacing", "PixelMeasuresSequence"),
    Target("SliceThickness", "PixelMeasuresSequence"),
    Target("SpacingBetweenSlices", "PixelMeasuresSequence"),
    Target("PlaneOrientationSequence", "PlaneOrientationSequence"),
    Target("ImageOrientationPatient", "PlaneOrientationSequence"),
    Target("PlanePositionSequence", "PlanePositionSequence"),
    Target("ImagePositionPatient", "PlanePositionSequence"),
    Target("FrameContentSequence", "FrameContentSequence"),
    Target("StackID", "FrameContentSequence"),
    Target("InStackPositionNumber", "FrameContentSequence"),
    Target("TemporalPositionIndex", "FrameContentSequence"),
    Target("RescaleSlope", "PixelValueTransformationSequence"),
    Target("RescaleIntercept", "PixelValueTransformationSequence"),
)


@dataclass(frozen=True)
class Delete:
    """Remove the attribute."""


@dataclass(frozen=True)
class Raw:
    """Write these bytes as the attribute's value (padded to even length), whatever its VR allows."""

    value: bytes


@dataclass(frozen=True)
class SequenceEdit:
    """An empty sequence, a sequence of one item without content, or a per-frame sequence one item short."""

    how: Literal["empty", "empty_item", "drop_last"]


Edit = Delete | Raw | SequenceEdit


@dataclass(frozen=True)
class Mutation:
    name: str
    edit: Edit


def _text(*values: str) -> Raw:
    return Raw("\\".join(values).encode("ascii"))


def _us(*values: int) -> Raw:
    return Raw(struct.pack(f"<{len(values)}H", *values))


#: Expected value multiplicity of the multi-valued numbers the geometry reads.
VECTOR_VM = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}
SPACINGS = ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices")


def mutations_for(keyword: str) -> tuple[Mutation, ...]:
    """The corruptions tried on one attribute, chosen by its VR and its meaning."""
    vr = dictionary_VR(keyword)
    delete, empty = Mutation("delete", Delete()), Mutation("empty", Raw(b""))
    if vr == "SQ":
        found = [
            delete,
            Mutation("empty sequence", SequenceEdit("empty")),
            Mutation("item without content", SequenceEdit("empty_item")),
        ]
        if keyword == "PerFrameFunctionalGroupsSequence":
            found.append(Mutation("one item short", SequenceEdit("drop_last")))
        return tuple(found)
    if vr == "DS":
        n = VECTOR_VM.get(keyword, 1)
        good = {"ImageOrientationPatient": ["1", "0", "0", "0", "1", "0"]}.get(keyword, ["1"] * n)
        found = [
            delete,
            empty,
            Mutation("not a number", _text(*["abc"] * n)),
            Mutation("NaN", _text("nan", *good[1:])),
            Mutation("infinite", _text(*good[:-1], "inf")),
        ]
        found.append(Mutation("one value", _text("1")) if n > 1 else Mutation("two values", _text("1", "2")))
        if n > 1:
            found.append(Mutation(f"{n + 1 if n != 6 else 7} values", _text(*good, "1")))
        if keyword in SPACINGS or keyword == "RescaleSlope":
            found += [Mutation("zero", _text(*["0"] * n)), Mutation("negative", _text(*["-1.5"] * n))]
        if keyword == "ImageOrientationPatient":
            found += [
                Mutation("non-unit vectors", _text("2", "0", "0", "0", "3", "0")),
                Mutation("parallel vectors", _text("1", "0", "0", "1", "0", "0")),
                Mutation("zero vectors", _text(*["0"] * 6)),
            ]
        if keyword == "ImagePositionPatient":
            found.append(Mutation("absurd position", _text("1e300", "-1e300", "1e300")))
        return tuple(found)
    if vr == "IS":
        return (
            delete,
            empty,
            Mutation("not a number", _text("abc")),
            Mutation("negative", _text("-7")),
            Mutation("huge", _text("999999999999")),
            Mutation("fraction", _text("1.5")),
            Mutation("two values", _text("1", "2")),
        )
    if vr == "US":
        found = [
            delete,
            empty,
            Mutation("zero", _us(0)),
            Mutation("absurd", _us(65535)),
            Mutation("two values", _us(16, 16)),
        ]
        found += {
            "BitsAllocated": [Mutation("1 bit", _us(1)), Mutation("32 bits", _us(32))],
            "BitsStored": [Mutation("more than allocated", _us(40))],
            "SamplesPerPixel": [Mutation("three samples", _us(3))],
            "PixelRepresentation": [Mutation("signed", _us(1)), Mutation("undefined", _us(2))],
        }.get(keyword, [])
        return tuple(found)
    if vr == "UI":
        found = [
            delete,
            empty,
            Mutation("not a UID", _text("1.2.abc.4")),
            Mutation("too long", _text("1." + "2" * 80)),
            Mutation("path", _text("../../etc")),
        ]
        if keyword == "SOPClassUID":
            found += [
                Mutation("RT Structure Set", _text("1.2.840.10008.5.1.4.1.1.481.3")),
                Mutation("Segmentation", _text(syn.SEGMENTATION_STORAGE)),
            ]
        return tuple(found)
    found = [
        delete,
        empty,
        Mutation("undecodable bytes", Raw(b"\xff\xfe\\\x80bad\x00")),
        Mutation("too long", Raw(b"X" * 300)),
    ]
    found += {
        "SpecificCharacterSet": [
            Mutation("unknown", _text("ISO_IR 999")),
            Mutation("ISO 2022 Japanese", _text("ISO 2022 IR 6", "ISO 2022 IR 87")),
        ],
        "PhotometricInterpretation": [Mutation("RGB", _text("RGB")), Mutation("palette", _text("PALETTE COLOR"))],
        "Modality": [Mutation("SEG", _text("SEG"))],
        "ImageType": [Mutation("localizer", _text("ORIGINAL", "PRIMARY", "LOCALIZER"))],
        "PatientBirthDate": [Mutation("impossible date", _text("20241399"))],
        "StudyDate": [Mutation("impossible date", _text("20241399"))],
        "StudyTime": [Mutation("impossible time", _text("996199"))],
        "PatientName": [Mutation("one component", _text("ANONYMOUS"))],
    }.get(keyword, [])
    return tuple(found)


# -- sources ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A pristine series to mutate: its files' bytes, which of them are images, and a label map on its grid."""

    name: str
    files: tuple[tuple[str, bytes], ...]
    #: Indexes into ``files`` of the image instances (file-name order).
    images: tuple[int, ...]
    #: Frames of the Enhanced object; 0 for single-frame series.
    frames: int
    labels: Path
    series_uid: str

    @property
    def enhanced(self) -> bool:
        return self.frames > 0

    @property
    def targets(self) -> tuple[Target, ...]:
        return ENHANCED_TARGETS if self.enhanced else SINGLE_FRAME_TARGETS


def _read_files(folder: Path) -> list[tuple[str, bytes]]:
    return [(str(p.relative_to(folder)), p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()]


def _image_indexes(files: Sequence[tuple[str, bytes]]) -> tuple[int, ...]:
    found = []
    for index, (_, data) in enumerate(files):
        try:
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception:  # not DICOM: never mutated
            continue
        if "ImagePositionPatient" in header or "PerFrameFunctionalGroupsSequence" in header:
            found.append(index)
    return tuple(found)


def _synthetic_source(name: str, work: Path) -> Source:
    modality: Literal["CT", "MR"] = "MR" if name == "synthetic_mr" else "CT"
    info = syn.write_series(
        GRID, work / "dicom", enhanced=name == "synthetic_enhanced_ct", modality=modality, instance_numbers="shuffled"
    )
    reference = (syn.export_grid_affine(GRID), syn.export_grid_shape(GRID))
    labels = syn.label_nifti_on_grid(reference, syn.Phantom.fitting(GRID), work / "labels.nii.gz", snap=GRID)
    files = _read_files(info.folder)
    return Source(
        name=name,
        files=tuple(files),
        images=_image_indexes(files),
        frames=GRID.slices if info.frame_numbers is not None else 0,
        labels=labels,
        series_uid=info.series_uid,
    )


def _centre_labels(reference: nibabel.Nifti1Image, path: Path) -> Path:
    """Two box-shaped labels around the centre of a NIfTI grid: label 1, with label 2 in one corner of it."""
    shape = reference.shape[:3]
    data = np.zeros(shape, dtype=np.uint8)
    centre = [n // 2 for n in shape]
    half = [max(1, n // 6) for n in shape]
    box = tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(centre, half, shape, strict=True))
    data[box] = 1
    corner = tuple(slice(b.start, max(b.start + 1, (b.start + b.stop) // 2)) for b in box)
    data[corner] = 2
    return syn.save_nifti(data, reference.affine, path)


def _distance_along_normal(orientation: Sequence[float], position: Sequence[float]) -> float:
    iop = np.asarray([float(v) for v in orientation])
    return float(np.asarray([float(v) for v in position]) @ np.cross(iop[:3], iop[3:]))


def _middle(count: int, keep: int) -> slice:
    start = max(0, (count - keep) // 2)
    return slice(start, start + keep)


def _trim_single_frames(folder: Path, keep: int) -> None:
    """Remove all but the ``keep`` image files in the middle of the stack (non-image files stay)."""
    placed = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            placed.append((_distance_along_normal(header.ImageOrientationPatient, header.ImagePositionPatient), path))
        except Exception:  # not an image with a position: kept as it is
            continue
    placed.sort()
    kept = {path for _, path in placed[_middle(len(placed), keep)]}
    for _, path in placed:
        if path not in kept:
            path.unlink()


def _trim_enhanced(path: Path, keep: int) -> None:
    """Keep the ``keep`` frames in the middle of the stack of an uncompressed Enhanced object."""
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed or int(ds.NumberOfFrames) <= keep:
        return
    shared = ds.SharedFunctionalGroupsSequence[0]
    frames = ds.PerFrameFunctionalGroupsSequence

    def orientation(item: Dataset) -> Sequence[float]:
        group = item if "PlaneOrientationSequence" in item else shared
        return list(group.PlaneOrientationSequence[0].ImageOrientationPatient)

    order = sorted(
        range(len(frames)),
        key=lambda f: _distance_along_normal(
            orientation(frames[f]), frames[f].PlanePositionSequence[0].ImagePositionPatient
        ),
    )
    chosen = sorted(order[_middle(len(order), keep)])
    size = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8
    data = bytes(ds.PixelData)
    ds.PixelData = b"".join(data[f * size : (f + 1) * size] for f in chosen)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([frames[f] for f in chosen])
    ds.NumberOfFrames = len(chosen)
    ds.save_as(path)


def _real_source(name: str, work: Path) -> Source:
    from node.convert.series import load_series
    from node.pipeline.export import export_series

    archive = REAL_DICOM / f"{name}.tar.xz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found: real headers come from {REAL_DICOM}")
    folder = work / "dicom"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    if REAL_CASES[name]:
        for path in (p for p in folder.rglob("*") if p.is_file()):
            _trim_enhanced(path, REAL_KEEP_PLANES)
    else:
        _trim_single_frames(folder, REAL_KEEP_PLANES)
    exported = export_series(load_series(folder), work / "export")
    labels = _centre_labels(cast(nibabel.Nifti1Image, nibabel.load(exported.nifti)), work / "labels.nii.gz")
    files = _read_files(folder)
    images = _image_indexes(files)
    first = pydicom.dcmread(io.BytesIO(files[images[0]][1]), stop_before_pixels=True)
    frames = int(first.NumberOfFrames) if REAL_CASES[name] else 0
    return Source(
        name=name,
        files=tuple(files),
        images=images,
        frames=frames,
        labels=labels,
        series_uid=str(first.SeriesInstanceUID),
    )


class SourceLibrary:
    """Sources built on first use and kept for the module (unpacking and exporting real data takes a moment)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, Source] = {}

    def get(self, name: str) -> Source:
        if name not in self._built:
            work = self.root / name
            work.mkdir(parents=True, exist_ok=True)
            self._built[name] = _synthetic_source(name, work) if name in SYNTHETIC_CASES else _real_source(name, work)
        return self._built[name]

    def scratch(self) -> Path:
        """A new empty folder for one mutated copy and its output."""
        return Path(tempfile.mkdtemp(prefix="case", dir=self.root))


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> SourceLibrary:
    return SourceLibrary(tmp_path_factory.mktemp("header_fuzz"))


# -- writing a mutated copy ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedEdit:
    """One mutation of one target; ``where`` picks image instances (single-frame) or frames (Enhanced per-frame
    groups) by index, None meaning all of them."""

    target: Target
    mutation: Mutation
    where: tuple[int, ...] | None = None

    def describe(self) -> str:
        scope = "all" if self.where is None else f"#{','.join(map(str, self.where))}"
        return f"{self.target.label}: {self.mutation.name} ({scope})"


def _set(container: Dataset, keyword: str, edit: Edit, implicit: bool) -> None:
    tag = Tag(keyword)
    if isinstance(edit, Delete):
        if tag in container:
            del container[tag]
    elif isinstance(edit, Raw):
        value = edit.value
        if len(value) % 2:
            value += b"\0" if dictionary_VR(tag) == "UI" else b" "
        container[tag] = RawDataElement(
            tag, None if implicit else dictionary_VR(tag), len(value), value, 0, implicit, True
        )
    elif edit.how == "drop_last":
        if tag in container and len(container[tag].value) > 1:
            del container[tag].value[-1]
    else:
        items = [] if edit.how == "empty" else [Dataset()]
        container[tag] = DataElement(tag, "SQ", DicomSequence(items))


def _functional_containers(ds: Dataset, target: Target, frames: tuple[int, ...] | None) -> list[Dataset]:
    """The datasets holding ``target`` in the chosen frames (per-frame groups) or in the shared group."""
    assert target.macro is not None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    if per_frame and target.macro in per_frame[0]:
        groups = [per_frame[i] for i in (range(len(per_frame)) if frames is None else frames) if i < len(per_frame)]
    elif shared and target.macro in shared[0]:
        groups = [shared[0]]
    else:
        return []
    if target.keyword == target.macro:
        return groups
    return [g[target.macro].value[0] for g in groups if target.macro in g and len(g[target.macro].value)]


def applicable(source: Source, edit: PlannedEdit) -> bool:
    """Whether ``edit`` changes anything in ``source`` (deleting an absent attribute does not)."""
    if edit.target.macro is not None and not source.enhanced:
        return False
    for index in source.images:
        ds = pydicom.dcmread(io.BytesIO(source.files[index][1]), stop_before_pixels=True)
        containers = [ds] if edit.target.macro is None else _functional_containers(ds, edit.target, edit.where)
        if not containers:
            return False
        if not isinstance(edit.mutation.edit, Delete):
            return True
        if any(Tag(edit.target.keyword) in c for c in containers):
            return True
    return False


def write_mutated(source: Source, edits: Sequence[PlannedEdit], folder: Path) -> None:
    """Write ``source`` into ``folder`` with ``edits`` applied (files without an edit are copied byte for byte)."""
    touched: dict[int, list[PlannedEdit]] = {}
    for edit in edits:
        if edit.target.macro is not None or source.enhanced or edit.where is None:
            chosen = list(source.images)
        else:
            chosen = [source.images[i] for i in edit.where if i < len(source.images)]
        for index in chosen:
            touched.setdefault(index, []).append(edit)
    for index, (relative, data) in enumerate(source.files):
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if index not in touched:
            path.write_bytes(data)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data))
            implicit = bool(ds.file_meta.TransferSyntaxUID.is_implicit_VR)
            for edit in touched[index]:
                containers: list[Dataset]
                if edit.target.macro is None:
                    containers = [ds]
                else:
                    frames = None if edit.where is None else tuple(edit.where)
                    containers = _functional_containers(ds, edit.target, frames)
                for container in containers:
                    _set(container, edit.target.keyword, edit.mutation.edit, implicit)
            # Keep every raw element as written: a changed character set would otherwise make pydicom re-encode
            # (and so parse) them all.
            ds.set_original_encoding(implicit, True, ds._character_set)
            ds.save_as(path)


# -- running and judging ---------------------------------------------------------------------------------------------


def as_a_console_script_does() -> None:
    """Python's default warning filters, as a fresh ``segnode`` process has them (pytest's are stricter or looser).

    Whatever the node does with warnings (logging.captureWarnings, filters) then shows on the captured stderr
    exactly as a user would see it; changing the filters also resets the once-per-location registries, so a warning
    shown for one case is shown again for the next.
    """
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)


def _frame_text(frame: traceback.FrameSummary) -> str:
    try:
        where = Path(frame.filename).resolve().relative_to(REPO_ROOT)
    except ValueError:
        where = Path(*Path(frame.filename).parts[-2:])
    return f"{where}:{frame.lineno} {frame.name}"


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` with the last frame in node/ code and the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(NODE_DIR)]
    last_ours = _frame_text(ours[-1]) if ours else "no node/ frame"
    innermost = _frame_text(frames[-1]) if frames else "?"
    message = " ".join(str(exc).split())[:160]
    return f"traceback {type(exc).__name__} at {last_ours} (raised in {innermost}): {message}"


@dataclass(frozen=True)
class Outcome:
    """What one conversion did, and every way it broke the contract (empty when it kept it)."""

    succeeded: bool
    problems: tuple[str, ...]
    #: The exit code and the first stderr line, for messages.
    summary: str = ""


def convert_and_judge(
    run: syn.ConvertRunner, source: Source, dicom: Path, out: Path, names: Sequence[str] = ()
) -> Outcome:
    """Run ``segnode convert`` on ``dicom`` and the source's label map, and check the one-line contract."""
    with warnings.catch_warnings():
        as_a_console_script_does()
        try:
            result = run("--dicom", str(dicom), "--nifti", str(source.labels), "--out", str(out))
        except Exception as exc:
            return Outcome(False, (describe_exception(exc),), "raised")
    problems: list[str] = []
    lines = result.stderr.splitlines()
    if "Traceback" in result.stderr:
        problems.append(f"'Traceback' on stderr: {result.stderr[-300:]!r}")
    for phrase in INTERNAL_ERROR:
        if phrase in result.stderr:
            problems.append(f"{phrase!r} on stderr: {result.stderr[:300]!r}")
    leftovers = sorted(p.name for p in out.parent.iterdir() if p != out) if out.parent.exists() else []
    if result.code == 0:
        if not out.is_file():
            problems.append("exit 0 but no SEG written")
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    pydicom.dcmread(out)
                except Exception as exc:
                    problems.append(f"exit 0 but the SEG does not read back: {type(exc).__name__}: {exc}")
            complaints = sorted({str(w.message).split(". Please see")[0] for w in caught})
            if complaints:
                problems.append(f"exit 0 but pydicom finds invalid values in the SEG: {complaints[:2]}")
        extra = [line for line in lines if not line.startswith("notice: ")]
        if extra:
            problems.append(f"exit 0 with other lines than notices on stderr: {extra[:3]!r}")
        if leftovers:
            problems.append(f"exit 0 left other files beside the SEG: {leftovers}")
        return Outcome(not problems and out.is_file(), tuple(problems), "exit 0")
    if len(lines) != 1:
        problems.append(f"exit {result.code} with {len(lines)} stderr lines: {result.stderr[:300]!r}")
    elif not lines[0].startswith(ERROR_PREFIX):
        problems.append(f"exit {result.code}: stderr line lacks {ERROR_PREFIX!r}: {lines[0][:200]!r}")
    else:
        wanted = [str(dicom), dicom.name, source.labels.name, source.series_uid, *names]
        if not any(name and name in lines[0] for name in wanted):
            problems.append(f"exit {result.code}: the line names neither the input nor {list(names)}: {lines[0]!r}")
    if out.exists() or leftovers:
        problems.append(f"exit {result.code} but output left behind: {[out.name] if out.exists() else leftovers}")
    return Outcome(False, tuple(problems), f"exit {result.code}: {lines[0] if lines else ''}")


def dciodvfy_problems(seg: Path) -> list[str]:
    if not syn.have_tool("dciodvfy"):
        return []
    errors = syn.run_dciodvfy(seg)
    return [f"dciodvfy: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")] if errors else []


def run_case(
    run: syn.ConvertRunner,
    library: SourceLibrary,
    source: Source,
    edits: Sequence[PlannedEdit],
    *,
    validate: bool = False,
) -> Outcome:
    """Mutate a copy of ``source``, convert it, judge the result; the copy is removed afterwards."""
    scratch = library.scratch()
    try:
        dicom = scratch / "dicom"
        write_mutated(source, edits, dicom)
        out = scratch / "out" / "seg.dcm"
        keywords = [e.target.keyword for e in edits] + [e.target.macro or "" for e in edits]
        outcome = convert_and_judge(run, source, dicom, out, keywords)
        if validate and outcome.succeeded:
            found = dciodvfy_problems(out)
            if found:
                outcome = Outcome(True, tuple(found), outcome.summary)
        return outcome
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


#: Targets also mutated on one instance (frame) alone by default: where slices disagreeing matters most.
PER_INSTANCE = frozenset(
    {
        *IDENTITY,
        *CLASSIC_GEOMETRY,
        "Rows",
        "Columns",
        "PlanePositionSequence",
        "PlaneOrientationSequence",
        "PixelMeasuresSequence",
    }
)


def one_at_a_time(source: Source, target: Target) -> list[PlannedEdit]:
    """The mutations of ``target`` on every instance (or frame), and on the middle one only.

    With SEGNODE_FUZZ_FULL every mutation runs on both scopes. By default a source gets
    :data:`MUTATIONS_PER_TARGET` of them, rotated by source and target so that the sources of one kind together
    cover the whole catalogue; only :data:`PER_INSTANCE` targets of synthetic sources also get the middle one.
    """
    count = source.frames if (source.enhanced and target.macro is not None) else len(source.images)
    scopes: list[tuple[int, ...] | None] = [None]
    per_instance = FULL or (source.name in SYNTHETIC_CASES and target.keyword in PER_INSTANCE)
    if count > 1 and (target.macro is not None or not source.enhanced) and per_instance:
        scopes.append((count // 2,))
    mutations = [m for m in mutations_for(target.keyword) if applicable(source, PlannedEdit(target, m))]
    if not FULL and mutations:
        kin = [n for n, enhanced in ALL_CASES.items() if enhanced == source.enhanced]
        per_source = MUTATIONS_PER_TARGET.get(source.name, 1)
        first = kin.index(source.name) * per_source + zlib.crc32(target.label.encode())
        mutations = [mutations[(first + i) % len(mutations)] for i in range(min(per_source, len(mutations)))]
    edits = [PlannedEdit(target, m, where) for m, where in itertools.product(mutations, scopes)]
    return [e for e in edits if applicable(source, e)]


ALL_CASES = {**SYNTHETIC_CASES, **REAL_CASES}
#: Default mode: how many mutations of each target a source gets (the rest get one).
MUTATIONS_PER_TARGET = {"synthetic_ct": 2, "synthetic_enhanced_ct": 2}


def _target_params() -> list[object]:
    params: list[object] = []
    for name, enhanced in ALL_CASES.items():
        for target in ENHANCED_TARGETS if enhanced else SINGLE_FRAME_TARGETS:
            params.append(pytest.param(name, target, id=f"{name}-{target.label}"))
    return params


# -- tests -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_unmutated_source_converts(name: str, library: SourceLibrary, segnode_convert: syn.ConvertRunner) -> None:
    """The baseline every mutation is measured against: the pristine series gives a valid SEG."""
    source = library.get(name)
    outcome = run_case(segnode_convert, library, source, [], validate=True)
    assert outcome.succeeded and not outcome.problems, "\n".join(outcome.problems) or f"no SEG: {outcome.summary}"


@pytest.mark.parametrize(("name", "target"), _target_params())
def test_each_mutation_of_one_attribute_keeps_the_contract(
    name: str, target: Target, library: SourceLibrary, segnode_convert: syn.ConvertRunner
) -> None:
    source = library.get(name)
    edits = list(one_at_a_time(source, target))
    if not edits:
        pytest.skip(f"{name} has no {target.label} to mutate")
    problems: list[str] = []
    validated = False
    for edit in edits:
        outcome = run_case(segnode_convert, library, source, [edit], validate=not validated)
        validated = validated or outcome.succeeded
        problems += [f"{edit.describe()} -> {p[:300]}" for p in outcome.problems]
    assert not problems, f"{len(problems)} broken contract(s) for {name}:\n" + "\n".join(problems)


@st.composite
def edit_plans(draw: st.DrawFn, source: Source) -> list[PlannedEdit]:
    """One to four random mutations, each on all instances (frames) or a random subset of them."""
    plan = []
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(source.targets))
        mutation = draw(st.sampled_from(mutations_for(target.keyword)))
        count = source.frames if (source.enhanced and target.macro is not None) else len(source.images)
        where = None
        if count > 1 and (target.macro is not None or not source.enhanced):
            subset = draw(st.none() | st.sets(st.integers(0, count - 1), min_size=1, max_size=count))
            where = None if subset is None else tuple(sorted(subset))
        plan.append(PlannedEdit(target, mutation, where))
    return plan


def _random_settings(examples: int) -> settings:
    return settings(
        max_examples=examples * (5 if FULL else 1),
        deadline=None,
        database=None,
        derandomize=not FULL,
        # No shrinking: against today's engine it would replay failures for minutes.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def _check_random_plan(name: str, library: SourceLibrary, run: syn.ConvertRunner, data: st.DataObject) -> None:
    source = library.get(name)
    plan = data.draw(edit_plans(source), label="plan")
    outcome = run_case(run, library, source, plan, validate=len(plan) == 1)
    assert not outcome.problems, "; ".join(e.describe() for e in plan) + " ->\n" + "\n".join(outcome.problems)


@pytest.mark.parametrize("name", list(SYNTHETIC_CASES))
@_random_settings(40)
@given(data=st.data())
def test_random_combinations_on_synthetic_series(
    name: str, library: SourceLibrary, segnode_convert: syn.ConvertRunner, data: st.DataObject
) -> None:
    _check_random_plan(name, library, segnode_convert, data)


@pytest.mark.parametrize("name", list(REAL_CASES))
@_random_settings(10)
@given(data=st.data())
def test_random_combinations_on_real_headers(
    name: str, library: SourceLibrary, segnode_convert: syn.ConvertRunner, data: st.DataObject
) -> None:
    _check_random_plan(name, library, segnode_convert, data)


# -- the node keeps serving ------------------------------------------------------------------------------------------

#: Mutations pushed through the node (a receiver refuses instances without usable UIDs, so none of these).
NODE_MUTATIONS: tuple[tuple[str, bool, tuple[PlannedEdit, ...]], ...] = (
    (
        "iop_parallel",
        False,
        (
            PlannedEdit(
                Target("ImageOrientationPatient"), Mutation("parallel vectors", _text("1", "0", "0", "1", "0", "0"))
            ),
        ),
    ),
    (
        "spacing_text_one",
        False,
        (PlannedEdit(Target("PixelSpacing"), Mutation("not a number", _text("abc", "abc")), (2,)),),
    ),
    ("charset_empty", False, (PlannedEdit(Target("SpecificCharacterSet"), Mutation("empty", Raw(b""))),)),
    ("rows_zero", False, (PlannedEdit(Target("Rows"), Mutation("zero", _us(0))),)),
    (
        "position_empty_frame",
        True,
        (
            PlannedEdit(
                Target("PlanePositionSequence", "PlanePositionSequence"),
                Mutation("empty sequence", SequenceEdit("empty")),
                (3,),
            ),
        ),
    ),
    (
        "pixel_measures_per_frame_missing",
        True,
        (PlannedEdit(Target("PixelMeasuresSequence", "PixelMeasuresSequence"), Mutation("delete", Delete())),),
    ),
    (
        "spacing_between_slices_nan",
        True,
        (PlannedEdit(Target("SpacingBetweenSlices", "PixelMeasuresSequence"), Mutation("NaN", _text("nan"))),),
    ),
    (
        "series_number_two_values",
        False,
        (PlannedEdit(Target("SeriesNumber"), Mutation("two values", _text("1", "2"))),),
    ),
)


def _fresh_source(folder: Path, *, enhanced: bool) -> Source:
    """A synthetic series with its own UIDs (each push is a new series for the node) and its label map."""
    info = syn.write_series(GRID, folder / "dicom", enhanced=enhanced)
    reference = (syn.export_grid_affine(GRID), syn.export_grid_shape(GRID))
    labels = syn.label_nifti_on_grid(
        reference, syn.Phantom.fitting(GRID), folder / f"{info.series_uid}.nii.gz", snap=GRID
    )
    files = _read_files(info.folder)
    return Source(
        name=folder.name,
        files=tuple(files),
        images=_image_indexes(files),
        frames=GRID.slices if enhanced else 0,
        labels=labels,
        series_uid=info.series_uid,
    )


def _moved(root: Path, name: str) -> Path | None:
    """The folder the item was filed into, once the item itself is there (its reason.txt is written first)."""
    if not root.is_dir():
        return None
    found = [p for p in root.iterdir() if p.name.endswith(f"_{name}") and (p / name).exists()]
    return found[0] if found else None


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK is not installed (dcmtk)")
def test_node_fails_mutated_series_with_a_reason_and_keeps_serving(tmp_path: Path) -> None:
    from dcmtk import free_port, storescu
    from nodes import folder_destination, start_node, wait_for, write_config

    from node.state.model import SeriesRow, SeriesState

    port = free_port()
    node = start_node(write_config(tmp_path / "node", port, folder_destination(), quiet=0.5, receive_processes=1))
    data = tmp_path / "node" / "data"
    problems: list[str] = []
    try:
        for name, enhanced, edits in NODE_MUTATIONS:
            source = _fresh_source(tmp_path / name, enhanced=enhanced)
            folder = tmp_path / name / "mutated"
            write_mutated(source, edits, folder)
            sent = storescu(port, sorted(p for p in folder.rglob("*") if p.is_file()), called_ae="SEGNODE")
            if not sent.ok or any(s != 0 for s in sent.statuses()):
                problems.append(f"{name}: the node refused the push: statuses {sent.statuses()}")
                continue

            def settled(uid: str = source.series_uid) -> SeriesRow | None:
                row = node.state.series.get(uid)
                return row if row is not None and row.state is not SeriesState.RECEIVING else None

            try:
                row = wait_for(f"series {name} to be exported or refused", settled, timeout=15)
            except AssertionError as exc:
                dead = [t.name for t in node._threads if not t.is_alive()]
                problems.append(f"{name}: {exc}; dead stage threads: {dead}")
                continue
            assert isinstance(row, SeriesRow)
            if row.reason and any(phrase in row.reason for phrase in INTERNAL_ERROR):
                problems.append(f"{name}: series reason is an internal error: {row.reason}")
            item = source.labels.name
            partial = data / "inbox" / f"{item}.part"
            shutil.copyfile(source.labels, partial)
            partial.rename(data / "inbox" / item)
            try:

                def left(item: str = item) -> Path | None:
                    return _moved(data / "failed", item) or _moved(data / "processed", item)

                wait_for(f"{item} to leave the inbox", left, timeout=15)
            except AssertionError as exc:
                dead = [t.name for t in node._threads if not t.is_alive()]
                problems.append(f"{name}: {exc}; dead stage threads: {dead}")
                continue
            failed = _moved(data / "failed", item)
            if failed is None:
                continue  # the node found this header usable and built a SEG: allowed
            try:
                reason = (failed / "reason.txt").read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{name}: reason.txt unreadable: {exc}")
                continue
            if not reason.strip() or "Traceback" in reason or any(phrase in reason for phrase in INTERNAL_ERROR):
                problems.append(f"{name}: bad reason.txt: {reason[:300]!r}")
        good = _fresh_source(tmp_path / "good", enhanced=False)
        sent = storescu(port, [p for p in (tmp_path / "good" / "dicom").iterdir()], called_ae="SEGNODE")
        assert sent.ok, sent.output[-2000:]
        try:
            wait_for("the good series' export", (data / "export" / f"{good.series_uid}.json").exists, timeout=20)
            shutil.copyfile(good.labels, data / "inbox" / f"{good.labels.name}.part")
            (data / "inbox" / f"{good.labels.name}.part").rename(data / "inbox" / good.labels.name)
            wait_for("a SEG of the good series", lambda: _moved(data / "processed", good.labels.name), timeout=20)
        except AssertionError as exc:
            dead = [t.name for t in node._threads if not t.is_alive()]
            problems.append(f"good series after the mutations: {exc}; dead stage threads: {dead}")
    finally:
        node.stop()
    assert not problems, "\n".join(problems)


def test_mutation_catalogue_is_well_formed() -> None:
    """Every target has mutations, and no two of one target share a name (the report tells them apart)."""
    for target in (*SINGLE_FRAME_TARGETS, *ENHANCED_TARGETS):
        found = mutations_for(target.keyword)
        assert found and len({m.name for m in found}) == len(found), target
