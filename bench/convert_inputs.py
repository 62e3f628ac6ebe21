"""The inputs bench_convert.py gives both converters: CT series, dcm2niix's NIfTI, a TotalSegmentator-like map.

The label map has the 117 labels of TotalSegmentator's ``total`` task as rotated lumpy ellipsoids inside the body,
on the dcm2niix grid and saved with the CT's header (as TotalSegmentator saves it); beside it the ``--labels`` file
for segnode and the metadata JSON for dcmqi. Everything is reused from the workdir when built for the same spec.
"""

from __future__ import annotations

import colorsys
import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from ct_series import CtSpec, write_ct_series
from synthetic import TOTALSEG_TOTAL

assert len(TOTALSEG_TOTAL) == 117

#: Structures drawn as large blobs; the rest are medium, and these are small (ribs, vertebrae, glands...).
LARGE = (
    "lung",
    "liver",
    "colon",
    "small_bowel",
    "stomach",
    "heart",
    "brain",
    "skull",
    "hip_",
    "gluteus_maximus",
    "autochthon",
    "iliopsoas",
    "urinary_bladder",
    "femur",
)
SMALL = (
    "rib_",
    "vertebrae_",
    "adrenal",
    "kidney_cyst",
    "thyroid",
    "gallbladder",
    "prostate",
    "clavicula",
    "subclavian",
    "carotid",
    "brachiocephalic",
    "atrial",
    "pulmonary_vein",
    "gluteus_minimus",
    "sternum",
    "esophagus",
    "trachea",
    "spinal_cord",
    "iliac_",
    "sacrum",
    "costal",
)

#: CID 7150 "Anatomical Structure" (SCT 91723000, which replaced 123037004 there): the generic fallback code.
ANATOMICAL_STRUCTURE = {"CodeValue": "91723000", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Anatomical Structure"}


@dataclass(frozen=True)
class Inputs:
    """Everything both tools read."""

    dicom_dir: Path
    nifti: Path
    labels: Path
    segnode_labels: Path
    dcmqi_meta: Path
    label_count: int = 0
    labelled_fraction: float = 0.0
    labelled_voxels: int = 0


def run_dcm2niix(dicom_dir: Path, out_dir: Path, dcm2niix: str) -> Path:
    """``dcm2niix -z y``, as a TotalSegmentator user would; returns the one NIfTI it wrote."""
    out_dir.mkdir(parents=True)
    done = subprocess.run(
        [dcm2niix, "-z", "y", "-f", "ct", "-o", str(out_dir), str(dicom_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    written = sorted(out_dir.glob("*.nii.gz"))
    if done.returncode != 0 or len(written) != 1:
        raise SystemExit(
            f"dcm2niix failed (exit {done.returncode}, {len(written)} NIfTI written):\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return written[0]


def _radii_mm(name: str, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    if name.startswith(LARGE):
        low, high = 35.0, 70.0
    elif name.startswith(SMALL):
        low, high = 6.0, 14.0
    else:
        low, high = 15.0, 30.0
    return rng.uniform(low, high, size=3)


def _rotation(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation: npt.NDArray[np.float64] = q * np.sign(np.diag(r))
    return rotation


def paint_blob(
    labels: npt.NDArray[np.uint8],
    value: int,
    centre: npt.NDArray[np.int64],
    radii_mm: npt.NDArray[np.float64],
    zooms: npt.NDArray[np.float64],
    rng: np.random.Generator,
) -> None:
    """Paint a rotated, lumpy ellipsoid of ``value`` around voxel ``centre``; only its bounding box is computed."""
    reach = np.ceil(radii_mm.max() * 1.25 / zooms).astype(np.int64)
    low = np.maximum(centre - reach, 0)
    high = np.minimum(centre + reach + 1, labels.shape)
    axes = [(np.arange(lo, hi) - c) * z for lo, hi, c, z in zip(low, high, centre, zooms, strict=True)]
    i, j, k = np.meshgrid(*axes, indexing="ij", sparse=True)
    rot = _rotation(rng)
    # Coordinates in the blob's own frame, scaled so that the ellipsoid surface is at radius 1.
    u = (rot[0, 0] * i + rot[1, 0] * j + rot[2, 0] * k) / radii_mm[0]
    v = (rot[0, 1] * i + rot[1, 1] * j + rot[2, 1] * k) / radii_mm[1]
    w = (rot[0, 2] * i + rot[1, 2] * j + rot[2, 2] * k) / radii_mm[2]
    phase = rng.uniform(0, 2 * np.pi, size=2)
    lumps = 0.18 * np.sin(3 * u + phase[0]) * np.cos(2 * v + phase[1])
    inside = u * u + v * v + w * w <= 1.0 + lumps
    region = labels[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    region[inside] = value


def make_label_map(ct_nifti: Path, out: Path, seed: int) -> tuple[int, float, int]:
    """A TotalSegmentator-like ``total`` map on the dcm2niix grid, saved with the CT's header.

    Returns (labels present, fraction of body voxels labelled, labelled voxels). Large structures are painted
    first so that small ones stay visible; any label that ends up covered is painted again as a small blob.
    """
    image: Any = nib.load(ct_nifti)
    proxy = image.dataobj
    slope = float(proxy.slope) if proxy.slope is not None else 1.0
    inter = float(proxy.inter) if proxy.inter is not None else 0.0
    # Compare unscaled values: scaling the whole CT to float64 would cost 8 bytes a voxel.
    body = np.asarray(proxy.get_unscaled()) > (-500.0 - inter) / slope
    body_voxels = np.argwhere(body[::4, ::4, ::2]) * np.array([4, 4, 2])
    zooms = np.array(image.header.get_zooms()[:3], dtype=np.float64)
    rng = np.random.default_rng(seed)
    labels = np.zeros(body.shape, dtype=np.uint8)
    order = sorted(
        range(len(TOTALSEG_TOTAL)),
        key=lambda n: (not TOTALSEG_TOTAL[n].startswith(LARGE), TOTALSEG_TOTAL[n].startswith(SMALL), n),
    )
    for n in order:
        centre = body_voxels[rng.integers(len(body_voxels))]
        paint_blob(labels, n + 1, centre, _radii_mm(TOTALSEG_TOTAL[n], rng), zooms, rng)
    labels[~body] = 0
    for _attempt in range(10):
        counts = np.bincount(labels.ravel(), minlength=len(TOTALSEG_TOTAL) + 1)
        missing = [v for v in range(1, len(TOTALSEG_TOTAL) + 1) if counts[v] == 0]
        if not missing:
            break
        for value in missing:
            centre = body_voxels[rng.integers(len(body_voxels))]
            paint_blob(labels, value, centre, rng.uniform(8.0, 12.0, size=3), zooms, rng)
        labels[~body] = 0
    present = int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
    voxels = int(np.count_nonzero(labels))
    fraction = voxels / max(int(np.count_nonzero(body)), 1)
    # As TotalSegmentator saves its multilabel output: the input image's header, uint8 data, no scaling.
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    nib.save(nib.Nifti1Image(labels, image.affine, header), out)  # type: ignore[no-untyped-call]
    return present, fraction, voxels


def _colour(n: int) -> list[int]:
    r, g, b = colorsys.hsv_to_rgb((n * 0.618034) % 1.0, 0.65, 0.9)
    return [round(r * 255), round(g * 255), round(b * 255)]


def _code_json(code: Any) -> dict[str, str]:
    return {
        "CodeValue": str(code.value),
        "CodingSchemeDesignator": str(code.scheme_designator),
        "CodeMeaning": str(code.meaning),
    }


def segment_attributes(names: Sequence[str]) -> list[dict[str, Any]]:
    """dcmqi segmentAttributes entries: the codes and colours segnode itself would use (node.convert.anatomy), so both
    SEGs describe the same segments; a generic "Anatomical Structure" code when node.convert.anatomy is unavailable."""
    common = {"SegmentAlgorithmType": "AUTOMATIC", "SegmentAlgorithmName": "TotalSegmentator"}
    try:
        from node.convert.anatomy import segment_specs
        from node.convert.label_tables import LabelEntry
    except ImportError:
        return [
            {
                "labelID": n,
                "SegmentLabel": name[:64],
                "SegmentDescription": name[:64],
                **common,
                "SegmentedPropertyCategoryCodeSequence": ANATOMICAL_STRUCTURE,
                "SegmentedPropertyTypeCodeSequence": ANATOMICAL_STRUCTURE,
                "recommendedDisplayRGBValue": _colour(n),
            }
            for n, name in enumerate(names, start=1)
        ]
    specs = segment_specs(range(1, len(names) + 1), {n: LabelEntry(name=name) for n, name in enumerate(names, start=1)})
    entries = []
    for spec in specs:
        entry: dict[str, Any] = {
            "labelID": spec.label,
            "SegmentLabel": spec.name[:64],
            "SegmentDescription": spec.name[:64],
            **common,
            "SegmentedPropertyCategoryCodeSequence": _code_json(spec.category),
            "SegmentedPropertyTypeCodeSequence": _code_json(spec.type),
            "recommendedDisplayRGBValue": list(spec.color),
        }
        if spec.modifier is not None:
            entry["SegmentedPropertyTypeModifierCodeSequence"] = _code_json(spec.modifier)
        if spec.region is not None:
            entry["AnatomicRegionSequence"] = _code_json(spec.region)
        if spec.region_modifier is not None:
            entry["AnatomicRegionModifierSequence"] = _code_json(spec.region_modifier)
        entries.append(entry)
    return entries


def write_label_tables(names: Sequence[str], segnode_path: Path, dcmqi_path: Path) -> None:
    """The ``--labels`` file for segnode (names only, as a TotalSegmentator user would have: segnode looks up
    codes and colours itself) and the ``--inputMetadata`` JSON for dcmqi (codes spelled out, as dcmqi needs)."""
    segnode_path.write_text(json.dumps({str(n): name for n, name in enumerate(names, start=1)}, indent=1))
    meta = {
        "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/seg-schema.json#",
        "ContentCreatorName": "Bench^Reader",
        "ClinicalTrialSeriesID": "Session1",
        "ClinicalTrialTimePointID": "1",
        "ClinicalTrialCoordinatingCenterName": "segnode-bench",
        "SeriesDescription": "dcmqi SEG",
        "SeriesNumber": "1003",
        "InstanceNumber": "1",
        "BodyPartExamined": "CHEST",
        "segmentAttributes": [segment_attributes(names)],
    }
    dcmqi_path.write_text(json.dumps(meta, indent=1))


def prepare_inputs(spec: CtSpec, workdir: Path, dcm2niix: str, fresh: bool) -> Inputs:
    """Build the inputs, or reuse the ones in ``workdir`` when they were made with the same spec."""
    stamp = workdir / "inputs.json"
    inputs = Inputs(
        dicom_dir=workdir / "dicom",
        nifti=workdir / "nifti" / "ct.nii.gz",
        labels=workdir / "seg" / "total.nii.gz",
        segnode_labels=workdir / "seg" / "total_labels.json",
        dcmqi_meta=workdir / "seg" / "total_dcmqi_meta.json",
    )
    if not fresh and stamp.is_file():
        saved = json.loads(stamp.read_text())
        if saved.get("spec") == asdict(spec) and "stats" in saved and inputs.labels.is_file():
            print(f"reusing inputs in {workdir} (--fresh to rebuild)")
            stats = saved["stats"]
            return replace(
                inputs,
                label_count=int(stats["label_count"]),
                labelled_fraction=float(stats["labelled_fraction"]),
                labelled_voxels=int(stats["labelled_voxels"]),
            )
    for sub in ("dicom", "nifti", "seg"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    started = time.perf_counter()
    write_ct_series(spec, inputs.dicom_dir, fresh=True)
    print(f"wrote {spec.slices} CT slices {spec.rows}x{spec.cols} in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    nifti = run_dcm2niix(inputs.dicom_dir, inputs.nifti.parent, dcm2niix)
    if nifti != inputs.nifti:
        nifti.rename(inputs.nifti)
    print(f"dcm2niix made {inputs.nifti.name} in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    inputs.labels.parent.mkdir(parents=True)
    count, fraction, voxels = make_label_map(inputs.nifti, inputs.labels, spec.seed)
    write_label_tables(TOTALSEG_TOTAL, inputs.segnode_labels, inputs.dcmqi_meta)
    print(
        f"label map: {count} labels, {fraction:.0%} of body voxels labelled, in {time.perf_counter() - started:.1f} s"
    )
    inputs = replace(inputs, label_count=count, labelled_fraction=fraction, labelled_voxels=voxels)
    stats = {"label_count": count, "labelled_fraction": fraction, "labelled_voxels": voxels}
    stamp.write_text(json.dumps({"spec": asdict(spec), "stats": stats}))
    return inputs
