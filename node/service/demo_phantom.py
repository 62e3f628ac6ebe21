"""A synthetic CT phantom for ``segnode demo``: a body-like cylinder with a liver, an aorta and a spine rod.

Everything is at a known place in patient space (LPS, mm), so a SEG made of it can be checked by where its
segments are, not only by what it holds. The series looks like an ordinary axial abdomen CT (head first, supine):
unsigned 12-bit pixels with the usual -1024 intercept, a soft-tissue window, real UIDs. The pixel values carry a
little bounded noise so that the demo's threshold segmenter works on something that is not perfectly flat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

Point = tuple[float, float, float]

PATIENT_NAME = "DEMO^PHANTOM"
PATIENT_ID = "SEGNODE-DEMO"
SERIES_DESCRIPTION = "segnode demo phantom CT"
#: Stored value = HU - intercept: the unsigned encoding most CT scanners use.
RESCALE_INTERCEPT = -1024.0
AIR_HU = -1000.0
#: Noise is uniform and bounded, so each structure's values stay inside a known band (see demo_segmenter).
NOISE_HU = 10


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid in patient space; an infinite semi-axis makes it a cylinder along that axis."""

    centre: Point
    semi_axes: Point

    def contains(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Which of ``points`` (..., 3) in LPS mm lie inside."""
        scaled = (points - np.asarray(self.centre)) / np.asarray(self.semi_axes)
        return np.asarray(np.sum(scaled**2, axis=-1) <= 1.0)


@dataclass(frozen=True)
class Structure:
    """One region of uniform density; ``name`` is the label name the demo segmenter gives it ("" for none)."""

    name: str
    hu: float
    shape: Ellipsoid


#: Painted in this order, each over the ones before. Patient's right is -x (LPS), posterior is +y.
STRUCTURES: tuple[Structure, ...] = (
    Structure("", -90.0, Ellipsoid((0.0, 0.0, 0.0), (140.0, 100.0, math.inf))),  # subcutaneous fat
    Structure("", 40.0, Ellipsoid((0.0, 0.0, 0.0), (132.0, 92.0, math.inf))),  # soft tissue
    Structure("liver", 110.0, Ellipsoid((-65.0, -5.0, 10.0), (50.0, 45.0, 55.0))),  # contrast-enhanced
    Structure("aorta", 250.0, Ellipsoid((25.0, 25.0, 0.0), (11.0, 11.0, math.inf))),
    Structure("vertebrae_lumbar", 700.0, Ellipsoid((0.0, 60.0, 0.0), (14.0, 14.0, math.inf))),  # the bone rod
)


@dataclass(frozen=True)
class PhantomGrid:
    """The axial acquisition grid: square pixels, slices evenly spaced along +z, centred on the origin."""

    rows: int = 128
    columns: int = 128
    slices: int = 48
    pixel_mm: float = 2.5
    slice_mm: float = 4.0

    def origin(self) -> Point:
        """Centre of the first pixel of the lowest (most inferior) slice."""
        return (
            -(self.columns - 1) / 2 * self.pixel_mm,
            -(self.rows - 1) / 2 * self.pixel_mm,
            -(self.slices - 1) / 2 * self.slice_mm,
        )

    def slice_z(self, index: int) -> float:
        return self.origin()[2] + index * self.slice_mm

    def centres(self) -> npt.NDArray[np.float64]:
        """LPS mm of every voxel centre, shaped (slice, row, column, 3); rows run to +y, columns to +x."""
        x0, y0, z0 = self.origin()
        z = z0 + np.arange(self.slices) * self.slice_mm
        y = y0 + np.arange(self.rows) * self.pixel_mm
        x = x0 + np.arange(self.columns) * self.pixel_mm
        zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
        return np.stack([xx, yy, zz], axis=-1)

    def index_of(self, point: Point) -> tuple[int, int, int]:
        """(slice, row, column) of the voxel whose centre is nearest ``point``."""
        x0, y0, z0 = self.origin()
        return (
            round((point[2] - z0) / self.slice_mm),
            round((point[1] - y0) / self.pixel_mm),
            round((point[0] - x0) / self.pixel_mm),
        )


def structure(name: str) -> Structure:
    """The labelled structure called ``name``."""
    for candidate in STRUCTURES:
        if candidate.name == name:
            return candidate
    known = ", ".join(s.name for s in STRUCTURES if s.name)
    raise KeyError(f"no phantom structure {name!r} (known: {known})")


def truth_masks(grid: PhantomGrid) -> dict[str, npt.NDArray[np.bool_]]:
    """Where each labelled structure is visible (not painted over by a later one), as (slice, row, column)."""
    centres = grid.centres()
    owner = np.full(centres.shape[:3], -1)
    for index, item in enumerate(STRUCTURES):
        owner[item.shape.contains(centres)] = index
    return {item.name: owner == index for index, item in enumerate(STRUCTURES) if item.name}


def phantom_hu(grid: PhantomGrid, *, seed: int = 0) -> npt.NDArray[np.int16]:
    """The phantom in HU, (slice, row, column), noise included; reproducible for a given ``seed``."""
    centres = grid.centres()
    hu = np.full(centres.shape[:3], AIR_HU)
    for item in STRUCTURES:
        hu[item.shape.contains(centres)] = item.hu
    noise = np.random.default_rng(seed).integers(-NOISE_HU, NOISE_HU + 1, size=hu.shape)
    return np.asarray(hu + noise, dtype=np.int16)


@dataclass(frozen=True)
class PhantomSeries:
    """What :func:`write_phantom` wrote: one file per slice, and the UIDs a SEG of it must reference."""

    paths: tuple[Path, ...]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    grid: PhantomGrid


def write_phantom(folder: Path, grid: PhantomGrid | None = None, *, seed: int = 0) -> PhantomSeries:
    """Write the phantom as a CT series, one Part 10 file per slice, into ``folder``; fresh UIDs each call."""
    grid = grid or PhantomGrid()
    folder.mkdir(parents=True, exist_ok=True)
    hu = phantom_hu(grid, seed=seed)
    stored = np.asarray(hu - RESCALE_INTERCEPT, dtype=np.uint16)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    now = datetime.now()
    paths = []
    # Numbered head to feet, as scanners usually do, so the file order is not the order along +z.
    for number, index in enumerate(reversed(range(grid.slices)), start=1):
        ds = _slice_dataset(grid, index, stored[index], now)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.InstanceNumber = number
        path = folder / f"CT{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return PhantomSeries(tuple(paths), study_uid, series_uid, frame_uid, grid)


def _slice_dataset(grid: PhantomGrid, index: int, pixels: npt.NDArray[np.uint16], now: datetime) -> pydicom.Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    x0, y0, _ = grid.origin()
    z = grid.slice_z(index)
    attributes: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 100",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SOPClassUID": CTImageStorage,
        "SOPInstanceUID": sop_uid,
        "StudyDate": date,
        "SeriesDate": date,
        "ContentDate": date,
        "StudyTime": time,
        "SeriesTime": time,
        "ContentTime": time,
        "AccessionNumber": "",
        "Modality": "CT",
        "Manufacturer": "segnode",
        "ReferringPhysicianName": "",
        "StudyDescription": "segnode demo",
        "SeriesDescription": SERIES_DESCRIPTION,
        "PatientName": PATIENT_NAME,
        "PatientID": PATIENT_ID,
        "PatientBirthDate": "",
        "PatientSex": "O",
        "BodyPartExamined": "ABDOMEN",
        "SliceThickness": grid.slice_mm,
        "KVP": 120,
        "PatientPosition": "HFS",
        "StudyID": "1",
        "SeriesNumber": 1,
        "AcquisitionNumber": 1,
        "ImagePositionPatient": [x0, y0, z],
        "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        "PositionReferenceIndicator": "",
        "SliceLocation": z,
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": grid.rows,
        "Columns": grid.columns,
        "PixelSpacing": [grid.pixel_mm, grid.pixel_mm],
        "BitsAllocated": 16,
        "BitsStored": 12,
        "HighBit": 11,
        "PixelRepresentation": 0,
        "WindowCenter": 40,
        "WindowWidth": 400,
        "RescaleIntercept": RESCALE_INTERCEPT,
        "RescaleSlope": 1,
        "RescaleType": "HU",
    }
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds
