#!/usr/bin/env python3
"""Inbox → PACS latency of the running node for a TotalSegmentator-sized case (117 labels).

A real Orthanc is started (tests/orthanc.py's ``OrthancServer``), then ``segnode run`` with Orthanc as its DICOM
destination. A synthetic CT series (default 512x512x300) is pushed to the node with storescu (TCP_NODELAY=1); once
the node has exported ``export/<uid>.nii.gz`` and its sidecar, each round paints a 117-label uint8 label map on
that export grid (same shape and affine), writes it into the inbox under a temporary name and renames it to
``<uid>.nii.gz``. The latency is the time from that rename until Orthanc reports the SEG instance (its REST
``/changes`` polled every ~50 ms). Nothing is subtracted: the node's ``settle_seconds`` (printed) is part of it.

Run ``python bench/bench_latency.py --help``; ``--quick`` is a smoke run. Timings are printed, never asserted: the
exit status is non-zero only when a tool fails (or the SEG in Orthanc does not have every segment).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The peers (free ports, DCMTK tools, Orthanc) are the test harness's, tests/peers.py, dcmtk.py and orthanc.py,
# imported as the tests import them (top-level modules from tests/); orthanc.py needs the repository root for node.
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(2, str(Path(__file__).resolve().parents[1]))

from ct_series import CtSeries, CtSpec, add_series_arguments, check_readable, series_size, write_ct_series
from errors import BenchError, require_tools
from orthanc import OrthancServer, orthanc_binary
from peers import HOST, PeerError, free_port
from profiling import PySpy, add_profile_arguments, print_profile
from receivers import NodeProcess, NodeSettings
from report import first_line, median, print_versions
from sending import send

log = logging.getLogger(__name__)

QUICK = CtSpec(rows=128, cols=128, slices=60)
LABELS = 117
POLL_SECONDS = 0.05


# --- the label map -----------------------------------------------------------------------------------------------


def paint_label_map(
    shape: tuple[int, int, int], affine: npt.NDArray[np.float64], seed: int, labels: int = LABELS
) -> npt.NDArray[np.uint8]:
    """``labels`` ellipsoids (label values 1..labels) inside a trunk-sized region of the export grid.

    Large structures are painted first and small ones last, so every label keeps voxels; sizes are in mm (from the
    affine's column norms), so the map looks alike at any resolution. Every label is present in the result.
    """
    rng = np.random.default_rng(seed)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    extent_mm = np.asarray(shape) * spacing
    out = np.zeros(shape, dtype=np.uint8)
    # Radii in mm: a few large organs, many medium ones, the rest small (ribs, vertebrae, vessels).
    radii = np.concatenate(
        [
            rng.uniform(35, 60, size=(12, 3)),
            rng.uniform(15, 30, size=(45, 3)),
            rng.uniform(6, 14, size=(labels - 57, 3)),
        ]
    )[:labels]
    radii[:, 2] *= 1.5  # organs are longer head-to-foot than wide
    for index, radius_mm in enumerate(radii):
        value = index + 1
        # Centres inside an elliptic "body" of 80% x 55% of the field of view, anywhere along the slices.
        angle, r = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1))
        centre_mm = extent_mm / 2 + np.array(
            [
                0.35 * extent_mm[0] * r * np.cos(angle),
                0.25 * extent_mm[1] * r * np.sin(angle),
                rng.uniform(-0.4, 0.4) * extent_mm[2],
            ]
        )
        centre = centre_mm / spacing
        half = np.maximum(radius_mm / spacing, 1.0)
        low = np.maximum(np.floor(centre - half).astype(int), 0)
        high = np.minimum(np.ceil(centre + half).astype(int) + 1, shape)
        if np.any(high <= low):
            low = np.clip(centre.astype(int), 0, np.asarray(shape) - 1)
            high = low + 1
        axes = [(np.arange(lo, hi) - c) / h for lo, hi, c, h in zip(low, high, centre, half, strict=True)]
        inside = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2 <= 1.0
        region = out[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
        region[inside] = value
        if not inside.any():
            region[tuple((h - lo - 1) // 2 for lo, h in zip(low, high, strict=True))] = value
    missing = sorted(set(range(1, labels + 1)) - set(np.unique(out).tolist()))
    if missing:
        raise BenchError(f"label map for seed {seed}: labels {missing} got no voxels; use a larger grid")
    return out


def write_into_inbox(labels: npt.NDArray[np.uint8], affine: npt.NDArray[np.float64], inbox: Path, name: str) -> float:
    """Write the label map as ``inbox/.NAME.tmp``, then rename it to ``inbox/NAME``; returns time.time() after the
    rename (the start of the measured latency)."""
    image: Any = nib.Nifti1Image(labels, affine)  # type: ignore[no-untyped-call]
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    data = gzip.compress(image.to_bytes(), compresslevel=1)
    temp = inbox / f".{name}.tmp"
    with temp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, inbox / name)
    return time.time()


# --- Orthanc -----------------------------------------------------------------------------------------------------


def last_change(orthanc: OrthancServer) -> int:
    return int(orthanc.get_json("/changes?last")["Last"])


def wait_new_instance(orthanc: OrthancServer, since: int, timeout: float) -> tuple[str, float, int]:
    """Poll ``/changes`` until a NewInstance appears after ``since``; returns (instance id, time.time(), seq)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = orthanc.get_json(f"/changes?since={since}&limit=100", timeout=10)
        seen = time.time()
        for change in answer.get("Changes", []):
            if change.get("ChangeType") == "NewInstance":
                return str(change["ID"]), seen, int(change["Seq"])
        since = int(answer.get("Last", since))
        time.sleep(POLL_SECONDS)
    raise BenchError(f"Orthanc received no new instance within {timeout:g} s")


@dataclass(frozen=True)
class SegFacts:
    segments: int
    frames: int
    size_mb: float
    sop_class: str
    referenced_series: str


def seg_facts(orthanc: OrthancServer, instance_id: str) -> SegFacts:
    data = orthanc.get_instance_file(instance_id)
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    referenced = ""
    if "ReferencedSeriesSequence" in ds and len(ds.ReferencedSeriesSequence):
        referenced = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    return SegFacts(
        segments=len(getattr(ds, "SegmentSequence", [])),
        frames=int(getattr(ds, "NumberOfFrames", 1)),
        size_mb=len(data) / 1e6,
        sop_class=str(ds.SOPClassUID),
        referenced_series=referenced,
    )


# --- the node's log ----------------------------------------------------------------------------------------------

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_time(log_path: Path, pattern: str, after: float) -> float | None:
    """time.time() of the first node log line after ``after`` that contains ``pattern`` (None if none)."""
    for line in log_path.read_text(errors="replace").splitlines():
        match = _STAMP.match(line)
        if match is None or pattern not in line:
            continue
        stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if stamp >= after - 0.001:
            return stamp
    return None


# --- main --------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_series_arguments(parser, kind="latency", slices=300, quick=QUICK)
    parser.add_argument("--rounds", type=int, default=2, help="label maps sent, each distinct (default 2)")
    parser.add_argument("--settle", type=float, default=0.5, help="the node's [inbox] settle_seconds")
    parser.add_argument(
        "--seg-type",
        choices=["binary", "labelmap", "fractional"],
        default="binary",
        help="the node's [seg] type (default binary)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for each SEG in Orthanc")
    add_profile_arguments(parser, what="round (not counted) with the node", rate=200)
    args = parser.parse_args(argv)
    series_size(args, QUICK)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        require_tools("storescu", "echoscu")
        if orthanc_binary() is None:
            raise BenchError("Orthanc is not installed (Debian: apt-get install orthanc)")
        spec = CtSpec(rows=args.rows, cols=args.cols, slices=args.slices)
        workdir = args.workdir or Path(f"/tmp/segnode-bench-latency-{spec.rows}x{spec.cols}x{spec.slices}")
        series = write_ct_series(spec, workdir / "series", fresh=args.fresh)
        check_readable(series.files[0])
        return run(args, series, workdir)
    except (BenchError, PeerError) as exc:  # OrthancError is a PeerError
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, series: CtSeries, workdir: Path) -> int:
    run_dir = workdir / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    print_versions({"Orthanc": first_line([str(orthanc_binary()), "--version"])})
    print(f"series: {len(series.files)} instances, {args.rows}x{args.cols}, {series.total_bytes / 1e6:.1f} MB")
    orthanc = OrthancServer(run_dir)
    orthanc.start()
    finished = False
    try:
        latencies = push_and_measure(args, orthanc, series, run_dir)
        finished = True
    finally:
        # close() prints Orthanc's log tail (for pytest); show it only when something went wrong.
        with contextlib.redirect_stdout(io.StringIO()) as tail:
            orthanc.close()
        if not finished:
            print(tail.getvalue(), file=sys.stderr)
    print(f"\ninbox → Orthanc latency, {LABELS} labels, {args.rows}x{args.cols}x{args.slices}:")
    print(f"  rounds: {' '.join(f'{s:.2f}' for s in latencies)} s")
    print(f"  median: {median(latencies):.2f} s  (settle_seconds {args.settle:g} s included)")
    return 0


def push_and_measure(args: argparse.Namespace, orthanc: OrthancServer, series: CtSeries, run_dir: Path) -> list[float]:
    """Start the node, push the series, wait for its export, then measure every round."""
    settings = NodeSettings(
        settle_seconds=args.settle,
        quiet_seconds=2.0,
        seg_type=args.seg_type,
        destination=(orthanc.aet, HOST, orthanc.dicom_port),
    )
    node = NodeProcess(run_dir / "node", free_port(), settings)
    with node:
        print(
            f"node: settle_seconds = {args.settle:g} (part of every latency below), quiet_seconds ="
            f" {settings.quiet_seconds:g}, SEG type {args.seg_type}; Orthanc DICOM port {orthanc.dicom_port}"
        )
        result = send(node.port, node.ae_title, [series.files], run_dir / "storescu")
        if not result.ok:
            raise BenchError(f"storescu to the node exited with {result.returncodes}; see {result.logs[0]}")
        sent_at = time.time()
        print(f"pushed {len(series.files)} instances to the node in {result.seconds:.2f} s")
        stored = node.instance_count(series.series_uid)
        if stored != len(series.files):
            raise BenchError(f"the node stored {stored} of {len(series.files)} instances; see {node.log_path}")
        nifti, sidecar = node.export / f"{series.series_uid}.nii.gz", node.export / f"{series.series_uid}.json"
        deadline = time.monotonic() + args.timeout
        while not sidecar.is_file():
            if time.monotonic() > deadline:
                raise BenchError(f"no export sidecar {sidecar} after {args.timeout:g} s; see {node.log_path}")
            time.sleep(0.05)
        print(f"export ready {time.time() - sent_at:.2f} s after storescu exit (includes the completion grace)")
        exported: Any = nib.load(str(nifti))
        shape = tuple(int(n) for n in exported.shape)
        affine = np.asarray(exported.affine, dtype=np.float64)
        print(f"export grid: shape {shape}, spacing {np.linalg.norm(affine[:3, :3], axis=0).round(4).tolist()}")
        latencies = measure_rounds(args, orthanc, node, series, shape, affine)
    return latencies


def measure_rounds(
    args: argparse.Namespace,
    orthanc: OrthancServer,
    node: NodeProcess,
    series: CtSeries,
    shape: tuple[int, ...],
    affine: npt.NDArray[np.float64],
) -> list[float]:
    """The measured rounds, then (with ``--profile``) one more under py-spy that is not counted."""
    assert len(shape) == 3
    grid = (shape[0], shape[1], shape[2])
    latencies = [
        one_round(index + 1, orthanc, node, series, grid, affine, args.timeout) for index in range(args.rounds)
    ]
    if args.profile:
        raw = node.root / "py-spy.txt"
        assert node.pid is not None
        spy = PySpy(node.pid, raw, rate=args.profile_rate)
        spy.start()
        try:
            latency = one_round(args.rounds + 1, orthanc, node, series, grid, affine, args.timeout)
        finally:
            spy.stop()
        print(f"\nprofiled round (not counted): {latency:.2f} s with py-spy attached; {raw}")
        if raw.is_file():
            print_profile(raw, args.top, "active-thread")
    return latencies


def one_round(
    number: int,
    orthanc: OrthancServer,
    node: NodeProcess,
    series: CtSeries,
    grid: tuple[int, int, int],
    affine: npt.NDArray[np.float64],
    timeout: float,
) -> float:
    """Drop a fresh label map into the inbox; seconds from its rename until Orthanc has the SEG (checked)."""
    name = f"{series.series_uid}.nii.gz"
    started = time.perf_counter()
    labels = paint_label_map(grid, affine, seed=1000 + number)
    print(
        f"\nround {number}: label map painted in {time.perf_counter() - started:.1f} s,"
        f" {np.count_nonzero(labels) / labels.size:.1%} of voxels labelled"
    )
    since = last_change(orthanc)
    renamed_at = write_into_inbox(labels, affine, node.inbox, name)
    instance_id, seen_at, _ = wait_new_instance(orthanc, since, timeout)
    latency = seen_at - renamed_at
    facts = seg_facts(orthanc, instance_id)
    built_at = log_time(node.log_path, f"{name}: SEG ", renamed_at)
    split = ""
    if built_at is not None:
        split = (
            f" (rename → SEG built and queued {built_at - renamed_at:.2f} s, incl. settle;"
            f" → in Orthanc {seen_at - built_at:.2f} s)"
        )
    print(f"round {number}: latency {latency:.2f} s{split}")
    print(
        f"round {number}: SEG in Orthanc: {facts.segments} segments, {facts.frames} frames,"
        f" {facts.size_mb:.1f} MB, SOP class {facts.sop_class}"
    )
    if facts.segments != LABELS:
        raise BenchError(f"the SEG in Orthanc has {facts.segments} segments, expected {LABELS}")
    if facts.referenced_series != series.series_uid:
        raise BenchError(f"the SEG references series {facts.referenced_series!r}, not {series.series_uid}")
    wait_gone(node.inbox / name, timeout)
    return latency


def wait_gone(path: Path, timeout: float) -> None:
    """Wait until the node has moved the inbox item out (so the next round's file is a new item)."""
    deadline = time.monotonic() + timeout
    while path.exists():
        if time.monotonic() > deadline:
            raise BenchError(f"{path} still in the inbox after {timeout:g} s")
        time.sleep(0.05)


if __name__ == "__main__":
    raise SystemExit(main())
