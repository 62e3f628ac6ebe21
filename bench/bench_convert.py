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
import io
import json
import logging
import os
import platform
import pstats
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The benches share the test harness's builders and peers (tests/synthetic.py, dcmtk.py) instead of copying them.
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))
from convert_inputs import Inputs, prepare_inputs
from ct_series import CtSpec
from report import first_line, package_version

log = logging.getLogger(__name__)

QUICK = {"rows": 128, "cols": 128, "slices": 60}


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
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", LAUNCHER, str(record), *command],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the launcher leads its own session: this ends the tool too
            proc.wait()
            print(f"  timed out after {timeout:g} s: {command[0]}")
    if not record.is_file():
        return Run(wall_s=float("nan"), cpu_s=float("nan"), max_rss_mb=float("nan"), exit_code=proc.returncode or -1)
    measured = json.loads(record.read_text())
    return Run(
        wall_s=measured["wall_s"],
        cpu_s=measured["cpu_s"],
        max_rss_mb=measured["max_rss_kb"] / 1024.0,
        exit_code=measured["exit_code"],
    )


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
    if int(ds.BitsAllocated) == 1 and pixels % 8 == 0 and not ds.file_meta.TransferSyntaxUID.is_compressed:
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
        print(text[text.find("   ncalls") :].rstrip())


def print_versions(tools: Sequence[Tool], dcm2niix: str) -> None:
    print("\nversions:")
    for tool in tools:
        print(f"  {tool.name}: {tool.version}")
    print(f"  dcm2niix: {first_line([dcm2niix, '--version'])}")
    print(
        f"  python {platform.python_version()}, highdicom {package_version('highdicom')}, pydicom"
        f" {package_version('pydicom')}, numpy {package_version('numpy')}, nibabel {package_version('nibabel')},"
        f" dcmqi (PyPI) {package_version('dcmqi')}; {os.cpu_count()} CPUs, {platform.machine()}"
    )


def print_results(tools: Sequence[Tool], inputs: Inputs, failed: bool) -> None:
    """The table, the two ratios, and the sanity check of both SEGs against the label map."""
    results = {tool.name: describe_seg(tool.output) for tool in tools}
    print(
        f"{'tool':8s} {'best s':>7s} {'runs s':>12s} {'cpu s':>6s} {'peak MB':>8s} {'frames':>7s}"
        f" {'(empty)':>7s} {'segments':>8s} {'voxels':>10s} {'size MB':>8s}  transfer syntax"
    )
    for tool in tools:
        info = results[tool.name]
        runs = " ".join(f"{r.wall_s:.1f}" for r in tool.runs)
        cpu = min(r.cpu_s for r in tool.runs)
        tail = "   (no output)"
        if info["exists"]:
            tail = (
                f"{info['frames']:7d} {info['empty_frames'] if info['empty_frames'] is not None else '?':>7}"
                f" {info['segments']:8d} {info['voxels'] if info['voxels'] is not None else '?':>10}"
                f" {info['size_mb']:8.1f}  {info['transfer_syntax']} ({info['type']})"
            )
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
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small series for a smoke run: {QUICK['rows']}x{QUICK['cols']}x{QUICK['slices']}",
    )
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
    spec = CtSpec(
        rows=args.rows, cols=args.cols, slices=args.slices, fov_mm=args.fov_mm, slice_mm=args.slice_mm, seed=args.seed
    )
    workdir: Path = args.workdir or Path(f"/tmp/segnode-bench-{spec.rows}x{spec.cols}x{spec.slices}")
    workdir.mkdir(parents=True, exist_ok=True)
    segnode = args.segnode or str(Path(sys.executable).parent / "segnode")
    dcmqi = args.dcmqi or dcmqi_binary()
    if shutil.which(args.dcm2niix) is None:
        raise SystemExit(f"{args.dcm2niix} not found: apt-get install dcm2niix (or pass --dcm2niix PATH)")

    print(
        f"series {spec.rows}x{spec.cols}x{spec.slices}, pixel {spec.pixel_mm:.4g} mm, slice {spec.slice_mm:g} mm;"
        f" workdir {workdir}"
    )
    inputs = prepare_inputs(spec, workdir, args.dcm2niix, args.fresh)
    # Warm the page cache so that neither tool pays for the first read from disk.
    for path in [*inputs.dicom_dir.iterdir(), inputs.labels]:
        path.read_bytes()

    tools = [
        Tool("segnode", first_line([segnode, "--version"]), workdir / "out" / "segnode.dcm"),
        Tool("dcmqi", first_line([dcmqi, "--version"]), workdir / "out" / "dcmqi.dcm"),
    ]

    def segnode_args(out: Path) -> list[str]:
        return [
            "convert",
            "--dicom",
            str(inputs.dicom_dir),
            "--nifti",
            str(inputs.labels),
            "--out",
            str(out),
            "--labels",
            str(inputs.segnode_labels),
            "--type",
            "binary",
        ]

    commands = {
        "segnode": [segnode, *segnode_args(tools[0].output)],
        "dcmqi": [
            dcmqi,
            "--inputImageList",
            str(inputs.labels),
            "--inputDICOMDirectory",
            str(inputs.dicom_dir),
            "--outputDICOM",
            str(tools[1].output),
            "--inputMetadata",
            str(inputs.dcmqi_meta),
            "--useLabelIDAsSegmentNumber",
        ],
    }
    (workdir / "out").mkdir(exist_ok=True)
    failed = False
    for round_number in range(1, args.rounds + 1):
        for tool in tools:
            tool.output.unlink(missing_ok=True)
            log_path = workdir / "out" / f"{tool.name}_r{round_number}.log"
            run = measure(commands[tool.name], log_path, args.timeout)
            tool.runs.append(run)
            print(
                f"round {round_number} {tool.name:8s} {run.wall_s:7.2f} s  {run.max_rss_mb:8.1f} MB"
                f"  exit {run.exit_code}"
            )
            if run.exit_code != 0 or not tool.output.is_file():
                failed = True
                print(f"  {tool.name} failed; last lines of {log_path}:")
                print("  " + "\n  ".join(log_path.read_text(errors="replace").splitlines()[-15:]))
        if failed:
            break

    print_versions(tools, args.dcm2niix)
    print(
        f"\ninputs: {spec.slices} slices of {spec.rows}x{spec.cols}, {inputs.label_count} labels,"
        f" {inputs.labelled_voxels} labelled voxels ({inputs.labelled_fraction:.0%} of the body);"
        f" {args.rounds} round(s): best time, peak memory\n"
    )
    print_results(tools, inputs, failed)
    if failed:
        return 1
    if args.profile:
        profile_segnode(segnode_args(workdir / "out" / "segnode_profiled.dcm"), workdir / "out", args.profile_top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
