"""A synthetic CT series written fast for the benchmarks: a vectorised trunk phantom, one header for every slice.

Not tests/synthetic.py's ``write_series``: that one computes every voxel centre of its grid in float64 (about
2 GB for 512x512x300) to draw its phantom, which a bench-size series cannot afford. The series is stored with a
JSON manifest, so a second run with the same :class:`CtSpec` reuses it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from errors import BenchError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CtSpec:
    """A synthetic axial CT series; stored as JSON beside the files so a matching series is reused."""

    rows: int = 512
    cols: int = 512
    slices: int = 200
    fov_mm: float = 400.0
    slice_mm: float = 1.25
    seed: int = 1

    @property
    def pixel_mm(self) -> float:
        return self.fov_mm / max(self.rows, self.cols)


@dataclass(frozen=True)
class CtSeries:
    """A written series: its files (in slice order), UIDs and total size."""

    folder: Path
    files: tuple[Path, ...]
    series_uid: str
    study_uid: str

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def _template(spec: CtSpec) -> Dataset:
    """Header shared by every slice: a plausible CT with a synthetic identity only."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = "Bench^Phantom"
    ds.PatientID = "BENCH0002"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "BENCH2"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT chest abdomen (synthetic)"
    ds.SeriesDescription = "Bench phantom"
    ds.Modality = "CT"
    ds.Manufacturer = "segnode-bench"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.PatientPosition = "HFS"
    ds.PositionReferenceIndicator = ""
    ds.KVP = "120"
    ds.SliceThickness = f"{spec.slice_mm:g}"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [f"{spec.pixel_mm:.6g}", f"{spec.pixel_mm:.6g}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def phantom_slices(spec: CtSpec, rng: np.random.Generator) -> npt.NDArray[np.uint16]:
    """Stored values (HU + 1024) of a trunk phantom, (slice, row, col): fat rim, soft tissue, lungs, spine."""
    s = spec.pixel_mm
    y = (np.arange(spec.rows, dtype=np.float32) - spec.rows / 2 + 0.5)[:, None] * s
    x = (np.arange(spec.cols, dtype=np.float32) - spec.cols / 2 + 0.5)[None, :] * s
    # A few noise fields reused in turn: texture enough, without drawing rows*cols*slices normals.
    noise = rng.normal(0.0, 12.0, size=(4, spec.rows, spec.cols)).astype(np.float32)
    out = np.empty((spec.slices, spec.rows, spec.cols), dtype=np.uint16)
    for k in range(spec.slices):
        fraction = 1.0 - k / max(spec.slices - 1, 1)  # 1 at the head end
        scale = 0.85 + 0.15 * np.sin(np.pi * fraction)
        r_body = (x / (170 * scale)) ** 2 + (y / (115 * scale)) ** 2
        hu = np.where(r_body <= 1.0, -100.0, -1000.0).astype(np.float32)
        hu[(x / (155 * scale)) ** 2 + (y / (100 * scale)) ** 2 <= 1.0] = 40.0
        if fraction > 0.45:
            for side in (-1, 1):
                hu[((x - side * 75 * scale) / (55 * scale)) ** 2 + ((y + 10) / (75 * scale)) ** 2 <= 1.0] = -850.0
        hu[(x / 20) ** 2 + ((y - 75) / 18) ** 2 <= 1.0] = 700.0
        body = r_body <= 1.0
        hu[body] += noise[k % len(noise)][body]
        out[k] = np.clip(hu + 1024.0, 0, 4095).astype(np.uint16)
    return out


def add_series_arguments(
    parser: argparse.ArgumentParser, *, kind: str, slices: int, quick: CtSpec, quick_note: str = ""
) -> None:
    """The options every bench has for its synthetic CT: size, ``--quick``, ``--workdir``, ``--fresh``."""
    parser.add_argument("--slices", type=int, default=slices, help=f"slices in the series (default {slices})")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help=f"{quick.rows}x{quick.cols}x{quick.slices}{quick_note}")
    parser.add_argument("--workdir", type=Path, default=None, help=f"default /tmp/segnode-bench-{kind}-RxCxS")
    parser.add_argument("--fresh", action="store_true", help="rebuild the series even if one is there")


def series_size(args: argparse.Namespace, quick: CtSpec) -> None:
    """Apply ``--quick`` to the parsed ``--rows/--cols/--slices``."""
    if args.quick:
        args.rows, args.cols, args.slices = quick.rows, quick.cols, quick.slices


def write_ct_series(spec: CtSpec, folder: Path, *, fresh: bool = False) -> CtSeries:
    """Single-frame Explicit VR Little Endian CT files in ``folder`` (reused when already written for ``spec``).

    Instance 1 is at the head end; slices are ``slice_mm`` apart along +z, so the series is a regular grid.
    """
    manifest = folder / "series.json"
    if not fresh and manifest.is_file():
        content = json.loads(manifest.read_text())
        files = tuple(folder / name for name in content["files"])
        if content.get("spec") == asdict(spec) and all(p.is_file() for p in files):
            return CtSeries(folder, files, content["series_uid"], content["study_uid"])
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    pixels = phantom_slices(spec, np.random.default_rng(spec.seed))
    ds = _template(spec)
    half = spec.fov_mm / 2
    top_z = (spec.slices - 1) * spec.slice_mm / 2
    names: list[str] = []
    for k in range(spec.slices):
        z = top_z - k * spec.slice_mm
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{-half + spec.pixel_mm / 2:.4f}", f"{-half + spec.pixel_mm / 2:.4f}", f"{z:.4f}"]
        ds.SliceLocation = f"{z:.4f}"
        ds.PixelData = pixels[k].tobytes()
        name = f"CT{k + 1:06d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        names.append(name)
    series = CtSeries(folder, tuple(folder / n for n in names), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID))
    manifest.write_text(
        json.dumps(
            {"spec": asdict(spec), "files": names, "series_uid": series.series_uid, "study_uid": series.study_uid},
            indent=1,
        )
        + "\n"
    )
    log.info("wrote %d slices in %.1f s", spec.slices, time.perf_counter() - started)
    return series


def check_readable(path: Path) -> None:
    """BenchError unless ``path`` is a DICOM file pydicom can read (a sanity check on the builder)."""
    try:
        pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise BenchError(f"{path}: the synthetic series is not readable DICOM ({exc})") from exc
