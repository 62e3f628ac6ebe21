#!/usr/bin/env python3
"""Benchmark ``segnode convert`` against dcmqi's ``itkimage2segimage`` on the same inputs, in the same run.

The inputs are what a TotalSegmentator user has in hand: a CT series (synthetic, single-frame files), the NIfTI
dcm2niix made of it, and a 117-label ``total`` map on that NIfTI's grid, saved with the CT's header. Both tools turn
the label map into a BINARY DICOM SEG; they run alternately, each in its own process, and we record wall time and
the peak resident memory the kernel reports for that process (``os.wait4``).

Run ``python bench/bench_convert.py --help``; ``--quick`` makes a small series for a smoke run. Timings are
printed, never asserted: the exit status is non-zero only when a tool fails.
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import logging
import os
import platform
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CtSpec, first_line, package_version, write_ct_series

log = logging.getLogger(__name__)

#: TotalSegmentator v2 ``total`` task, label value = index + 1 (totalsegmentator/map_to_binary.py, class_map).
TOTALSEG_TOTAL: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea",
    "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate", "kidney_cyst_left",
    "kidney_cyst_right", "sacrum", "vertebrae_S1",
    *(f"vertebrae_L{i}" for i in range(5, 0, -1)),
    *(f"vertebrae_T{i}" for i in range(12, 0, -1)),
    *(f"vertebrae_C{i}" for i in range(7, 0, -1)),
    "heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
    "subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left",
    "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left", "superior_vena_cava",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right",
    "iliac_vena_left", "iliac_vena_right", "humerus_left", "humerus_right", "scapula_left", "scapula_right",
    "clavicula_left", "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right", "spinal_cord",
    "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
    "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left",
    "iliopsoas_right", "brain", "skull",
    *(f"rib_left_{i}" for i in range(1, 13)),
    *(f"rib_right_{i}" for i in range(1, 13)),
    "sternum", "costal_cartilages",
)
assert len(TOTALSEG_TOTAL) == 117

#: Structures drawn as large blobs; the rest are medium, and these are small (ribs, vertebrae, glands...).
LARGE = ("lung", "liver", "colon", "small_bowel", "stomach", "heart", "brain", "skull", "hip_", "gluteus_maximus",
         "autochthon", "iliopsoas", "urinary_bladder", "femur")
SMALL = ("rib_", "vertebrae_", "adrenal", "kidney_cyst", "thyroid", "gallbladder", "prostate", "clavicula",
         "subclavian", "carotid", "brachiocephalic", "atrial", "pulmonary_vein", "gluteus_minimus", "sternum",
         "esophagus", "trachea", "spinal_cord", "iliac_", "sacrum", "costal")

#: CID 7150 "Anatomical Structure" (SCT 91723000, which replaced 123037004 there): the generic fallback code.
ANATOMICAL_STRUCTURE = {"CodeValue": "91723000", "CodingSchemeDesignator": "SCT",
                        "CodeMeaning": "Anatomical Structure"}

QUICK = {"rows": 128, "cols": 128, "slices": 60}


# --- inputs -------------------------------------------------------------------------------------------------------


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
    done = subprocess.run([dcm2niix, "-z", "y", "-f", "ct", "-o", str(out_dir), str(dicom_dir)],
                          capture_output=True, text=True, timeout=600, check=False)
    written = sorted(out_dir.glob("*.nii.gz"))
    if done.returncode != 0 or len(written) != 1:
        raise SystemExit(f"dcm2niix failed (exit {done.returncode}, {len(written)} NIfTI written):\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
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


def paint_blob(labels: npt.NDArray[np.uint8], value: int, centre: npt.NDArray[np.int64],
               radii_mm: npt.NDArray[np.float64], zooms: npt.NDArray[np.float64], rng: np.random.Generator) -> None:
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
    region = labels[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
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
    order = sorted(range(len(TOTALSEG_TOTAL)), key=lambda n: (not TOTALSEG_TOTAL[n].startswith(LARGE),
                                                              TOTALSEG_TOTAL[n].startswith(SMALL), n))
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
    return {"CodeValue": str(code.value), "CodingSchemeDesignator": str(code.scheme_designator),
            "CodeMeaning": str(code.meaning)}


def segment_attributes(names: Sequence[str]) -> list[dict[str, Any]]:
    """dcmqi segmentAttributes entries: the codes and colours segnode itself would use (node.convert.anatomy), so both
    SEGs describe the same segments; a generic "Anatomical Structure" code when node.convert.anatomy is unavailable."""
    common = {"SegmentAlgorithmType": "AUTOMATIC", "SegmentAlgorithmName": "TotalSegmentator"}
    try:
        from node.convert.anatomy import segment_specs
        from node.convert.label_tables import LabelEntry
    except ImportError:
        return [{"labelID": n, "SegmentLabel": name[:64], "SegmentDescription": name[:64], **common,
                 "SegmentedPropertyCategoryCodeSequence": ANATOMICAL_STRUCTURE,
                 "SegmentedPropertyTypeCodeSequence": ANATOMICAL_STRUCTURE, "recommendedDisplayRGBValue": _colour(n)}
                for n, name in enumerate(names, start=1)]
    specs = segment_specs(range(1, len(names) + 1),
                          {n: LabelEntry(name=name) for n, name in enumerate(names, start=1)})
    entries = []
    for spec in specs:
        entry: dict[str, Any] = {
            "labelID": spec.label, "SegmentLabel": spec.name[:64], "SegmentDescription": spec.name[:64], **common,
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
    inputs = Inputs(dicom_dir=workdir / "dicom", nifti=workdir / "nifti" / "ct.nii.gz",
                    labels=workdir / "seg" / "total.nii.gz", segnode_labels=workdir / "seg" / "total_labels.json",
                    dcmqi_meta=workdir / "seg" / "total_dcmqi_meta.json")
    if not fresh and stamp.is_file():
        saved = json.loads(stamp.read_text())
        if saved.get("spec") == asdict(spec) and "stats" in saved and inputs.labels.is_file():
            print(f"reusing inputs in {workdir} (--fresh to rebuild)")
            stats = saved["stats"]
            return replace(inputs, label_count=int(stats["label_count"]),
                           labelled_fraction=float(stats["labelled_fraction"]),
                           labelled_voxels=int(stats["labelled_voxels"]))
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
    print(f"label map: {count} labels, {fraction:.0%} of body voxels labelled,"
          f" in {time.perf_counter() - started:.1f} s")
    inputs = replace(inputs, label_count=count, labelled_fraction=fraction, labelled_voxels=voxels)
    stats = {"label_count": count, "labelled_fraction": fraction, "labelled_voxels": voxels}
    stamp.write_text(json.dumps({"spec": asdict(spec), "stats": stats}))
    return inputs


# --- running and measuring ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """One timed child process."""

    wall_s: float
    cpu_s: float
    max_rss_mb: float
    exit_code: int


@dataclass
class Tool:
    """A converter under test and its measurements."""

    name: str
    version: str
    output: Path
    runs: list[Run] = field(default_factory=list)

    @property
    def best_wall(self) -> float:
        return min(r.wall_s for r in self.runs)

    @property
    def peak_rss(self) -> float:
        return max(r.max_rss_mb for r in self.runs)


#: Runs argv[2:] as its child and writes that child's wall time and rusage to argv[1]. Why a launcher: Linux
#: folds the RSS of the process that forks into the child's ru_maxrss (the pre-exec memory image counts), so a
#: child forked straight from this bench, which holds the label map, would report our size, not its own. This
#: launcher is a bare interpreter (-I -S), a few MB, far below anything the tools use.
LAUNCHER = """
import json, os, sys, time
record, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
code = os.waitstatus_to_exitcode(status)
with open(record, "w") as handle:
    json.dump({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_kb": usage.ru_maxrss,
               "exit_code": code}, handle)
sys.exit(code if 0 <= code < 256 else 128 - code)
"""


def measure(command: Sequence[str], log_path: Path, timeout: float) -> Run:
    """Run ``command`` with output to ``log_path``; its wall time (fork to reaping), CPU time and peak RSS come
    from the kernel via ``wait4`` in a small launcher process (see :data:`LAUNCHER`)."""
    record = log_path.with_suffix(".rusage.json")
    record.unlink(missing_ok=True)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", LAUNCHER, str(record), *command],
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the launcher leads its own session: this ends the tool too
            proc.wait()
            print(f"  timed out after {timeout:g} s: {command[0]}")
    if not record.is_file():
        return Run(wall_s=float("nan"), cpu_s=float("nan"), max_rss_mb=float("nan"),
                   exit_code=proc.returncode or -1)
    measured = json.loads(record.read_text())
    return Run(wall_s=measured["wall_s"], cpu_s=measured["cpu_s"], max_rss_mb=measured["max_rss_kb"] / 1024.0,
               exit_code=measured["exit_code"])


def dcmqi_binary() -> str:
    """The real itkimage2segimage executable, not the PyPI package's Python wrapper that only forwards to it."""
    try:
        import dcmqi

        candidate = Path(dcmqi.__file__).parent / "bin" / "itkimage2segimage"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("itkimage2segimage")
    if found is None:
        raise SystemExit("itkimage2segimage not found: pip install dcmqi (or pass --dcmqi PATH)")
    return found


def describe_seg(path: Path) -> dict[str, Any]:
    """What the sanity check compares: frames (and how many are empty), segments, voxels set, type, size."""
    if not path.is_file():
        return {"exists": False}
    ds = pydicom.dcmread(path)
    frames = int(getattr(ds, "NumberOfFrames", 1))
    info: dict[str, Any] = {
        "exists": True,
        "frames": frames,
        "segments": len(getattr(ds, "SegmentSequence", [])),
        "type": str(getattr(ds, "SegmentationType", "?")),
        "transfer_syntax": ds.file_meta.TransferSyntaxUID.name,
        "size_mb": path.stat().st_size / 2**20,
        "empty_frames": None,
        "voxels": None,
    }
    pixels = int(ds.Rows) * int(ds.Columns)
    # Counted from the packed bits: unpacking a full-size BINARY SEG would take a byte per voxel (~1 GB).
    if (int(ds.BitsAllocated) == 1 and pixels % 8 == 0 and not ds.file_meta.TransferSyntaxUID.is_compressed):
        packed = np.frombuffer(ds.PixelData, np.uint8, count=frames * pixels // 8).reshape(frames, -1)
        info["empty_frames"] = int(np.count_nonzero(~packed.any(axis=1)))
        info["voxels"] = int(np.bitwise_count(packed).sum(dtype=np.int64))
    return info


def profile_segnode(command: Sequence[str], workdir: Path, top: int) -> None:
    """One extra segnode run under cProfile (in a child process); prints the top functions by cumulative and own
    time."""
    out = workdir / "segnode.prof"
    python = sys.executable
    argv = [python, "-m", "cProfile", "-o", str(out), "-m", "node", *command]
    run = measure(argv, workdir / "segnode_profile.log", timeout=3600)
    print(f"\ncProfile run: {run.wall_s:.1f} s wall (profiling overhead included), exit {run.exit_code}")
    if run.exit_code != 0 or not out.is_file():
        print((workdir / "segnode_profile.log").read_text()[-2000:])
        return
    for key in ("cumulative", "tottime"):
        buffer = io.StringIO()
        pstats.Stats(str(out), stream=buffer).strip_dirs().sort_stats(key).print_stats(top)
        text = buffer.getvalue()
        print(f"\n--- top {top} by {key} ---")
        print(text[text.find("   ncalls"):].rstrip())


def print_versions(tools: Sequence[Tool], dcm2niix: str) -> None:
    print("\nversions:")
    for tool in tools:
        print(f"  {tool.name}: {tool.version}")
    print(f"  dcm2niix: {first_line([dcm2niix, '--version'])}")
    print(f"  python {platform.python_version()}, highdicom {package_version('highdicom')}, pydicom"
          f" {package_version('pydicom')}, numpy {package_version('numpy')}, nibabel {package_version('nibabel')},"
          f" dcmqi (PyPI) {package_version('dcmqi')}; {os.cpu_count()} CPUs, {platform.machine()}")


def print_results(tools: Sequence[Tool], inputs: Inputs, failed: bool) -> None:
    """The table, the two ratios, and the sanity check of both SEGs against the label map."""
    results = {tool.name: describe_seg(tool.output) for tool in tools}
    print(f"{'tool':8s} {'best s':>7s} {'runs s':>12s} {'cpu s':>6s} {'peak MB':>8s} {'frames':>7s}"
          f" {'(empty)':>7s} {'segments':>8s} {'voxels':>10s} {'size MB':>8s}  transfer syntax")
    for tool in tools:
        info = results[tool.name]
        runs = " ".join(f"{r.wall_s:.1f}" for r in tool.runs)
        cpu = min(r.cpu_s for r in tool.runs)
        tail = "   (no output)"
        if info["exists"]:
            tail = (f"{info['frames']:7d} {info['empty_frames'] if info['empty_frames'] is not None else '?':>7}"
                    f" {info['segments']:8d} {info['voxels'] if info['voxels'] is not None else '?':>10}"
                    f" {info['size_mb']:8.1f}  {info['transfer_syntax']} ({info['type']})")
        print(f"{tool.name:8s} {tool.best_wall:7.2f} {runs:>12s} {cpu:6.1f} {tool.peak_rss:8.1f} {tail}")
    if failed:
        return
    mine, theirs = tools
    print(f"\nsegnode/dcmqi wall time ratio:   {mine.best_wall / theirs.best_wall:.2f}")
    print(f"segnode/dcmqi peak memory ratio: {mine.peak_rss / theirs.peak_rss:.2f}")
    problems = []
    for name, info in results.items():
        if info["segments"] != inputs.label_count:
            problems.append(f"{name} has {info['segments']} segments, the label map {inputs.label_count} labels")
        if info["voxels"] is not None and info["voxels"] != inputs.labelled_voxels:
            problems.append(f"{name} sets {info['voxels']} voxels, the label map has {inputs.labelled_voxels}")
    if all(info["empty_frames"] is not None for info in results.values()):
        filled = {name: info["frames"] - info["empty_frames"] for name, info in results.items()}
        if len(set(filled.values())) != 1:
            problems.append(f"non-empty frame counts differ: {filled}")
    for problem in problems:
        print(f"WARNING: {problem}")
    if not problems:
        print("sanity: both SEGs hold every label and exactly the labelled voxels")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--quick", action="store_true",
                        help=f"small series for a smoke run: {QUICK['rows']}x{QUICK['cols']}x{QUICK['slices']}")
    parser.add_argument("--fov-mm", type=float, default=400.0, help="field of view (pixel spacing = fov / size)")
    parser.add_argument("--slice-mm", type=float, default=1.25, help="slice spacing and thickness")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each tool, alternating")
    parser.add_argument("--workdir", type=Path, default=None, help="default: /tmp/segnode-bench-ROWSxCOLSxSLICES")
    parser.add_argument("--fresh", action="store_true", help="rebuild the inputs even if the workdir has them")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per tool run")
    parser.add_argument("--segnode", default=None, help="segnode executable (default: beside this Python)")
    parser.add_argument("--dcmqi", default=None, help="itkimage2segimage executable (default: the dcmqi package's)")
    parser.add_argument("--dcm2niix", default="dcm2niix")
    parser.add_argument("--profile", action="store_true", help="then run segnode once more under cProfile")
    parser.add_argument("--profile-top", type=int, default=25)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.cols, args.slices = QUICK["rows"], QUICK["cols"], QUICK["slices"]
    spec = CtSpec(rows=args.rows, cols=args.cols, slices=args.slices, fov_mm=args.fov_mm,
                      slice_mm=args.slice_mm, seed=args.seed)
    workdir: Path = args.workdir or Path(f"/tmp/segnode-bench-{spec.rows}x{spec.cols}x{spec.slices}")
    workdir.mkdir(parents=True, exist_ok=True)
    segnode = args.segnode or str(Path(sys.executable).parent / "segnode")
    dcmqi = args.dcmqi or dcmqi_binary()
    if shutil.which(args.dcm2niix) is None:
        raise SystemExit(f"{args.dcm2niix} not found: apt-get install dcm2niix (or pass --dcm2niix PATH)")

    print(f"series {spec.rows}x{spec.cols}x{spec.slices}, pixel {spec.pixel_mm:.4g} mm, slice {spec.slice_mm:g} mm;"
          f" workdir {workdir}")
    inputs = prepare_inputs(spec, workdir, args.dcm2niix, args.fresh)
    # Warm the page cache so that neither tool pays for the first read from disk.
    for path in [*inputs.dicom_dir.iterdir(), inputs.labels]:
        path.read_bytes()

    tools = [
        Tool("segnode", first_line([segnode, "--version"]), workdir / "out" / "segnode.dcm"),
        Tool("dcmqi", first_line([dcmqi, "--version"]), workdir / "out" / "dcmqi.dcm"),
    ]

    def segnode_args(out: Path) -> list[str]:
        return ["convert", "--dicom", str(inputs.dicom_dir), "--nifti", str(inputs.labels), "--out", str(out),
                "--labels", str(inputs.segnode_labels), "--type", "binary"]

    commands = {
        "segnode": [segnode, *segnode_args(tools[0].output)],
        "dcmqi": [dcmqi, "--inputImageList", str(inputs.labels), "--inputDICOMDirectory", str(inputs.dicom_dir),
                  "--outputDICOM", str(tools[1].output), "--inputMetadata", str(inputs.dcmqi_meta),
                  "--useLabelIDAsSegmentNumber"],
    }
    (workdir / "out").mkdir(exist_ok=True)
    failed = False
    for round_number in range(1, args.rounds + 1):
        for tool in tools:
            tool.output.unlink(missing_ok=True)
            log_path = workdir / "out" / f"{tool.name}_r{round_number}.log"
            run = measure(commands[tool.name], log_path, args.timeout)
            tool.runs.append(run)
            print(f"round {round_number} {tool.name:8s} {run.wall_s:7.2f} s  {run.max_rss_mb:8.1f} MB"
                  f"  exit {run.exit_code}")
            if run.exit_code != 0 or not tool.output.is_file():
                failed = True
                print(f"  {tool.name} failed; last lines of {log_path}:")
                print("  " + "\n  ".join(log_path.read_text(errors="replace").splitlines()[-15:]))
        if failed:
            break

    print_versions(tools, args.dcm2niix)
    print(f"\ninputs: {spec.slices} slices of {spec.rows}x{spec.cols}, {inputs.label_count} labels,"
          f" {inputs.labelled_voxels} labelled voxels ({inputs.labelled_fraction:.0%} of the body);"
          f" {args.rounds} round(s): best time, peak memory\n")
    print_results(tools, inputs, failed)
    if failed:
        return 1
    if args.profile:
        profile_segnode(segnode_args(workdir / "out" / "segnode_profiled.dcm"), workdir / "out", args.profile_top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
