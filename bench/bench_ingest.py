#!/usr/bin/env python3
"""C-STORE ingest throughput of the running node against DCMTK's storescp, in the same run.

A synthetic CT series (default 512x512x200, 16-bit, uncompressed Explicit VR Little Endian) is sent by DCMTK
storescu to (a) ``segnode run`` (fresh data folder each time; every instance written durably: fsync of the file and
its folder before the success status) and (b) ``storescp -aet STORESCP -od DIR PORT`` (writes without fsync, one
association at a time). Each case is timed from the start of storescu to its exit (every instance acknowledged),
once with one association and once with the files split over ``--concurrency`` storescu processes started together.
Cases alternate over ``--rounds``; the median is reported. After each node round the instance files in its store
are counted, so a fast but lossy run cannot look good.

Run ``python bench/bench_ingest.py --help``; ``--quick`` is a smoke run. Timings are printed, never asserted: the
exit status is non-zero only when a tool fails or loses instances.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The peers (free ports, DCMTK tools, storescp) are the test harness's, tests/peers.py and tests/dcmtk.py, imported
# as the tests import them (top-level modules from tests/), so benches and tests start them the same way.
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))

from ct_series import CtSeries, CtSpec, add_series_arguments, check_readable, series_size, write_ct_series
from errors import BenchError, require_tools
from peers import PeerError, free_port
from profiling import PySpy, add_profile_arguments, cpu_seconds, print_profile
from receivers import BareScpProcess, NodeProcess, NodeSettings, Receiver, storescp
from report import median, print_versions
from sending import send, split

log = logging.getLogger(__name__)

QUICK = CtSpec(rows=256, cols=256, slices=60)


@dataclass
class Case:
    """One receiver/association setup, measured once per round."""

    label: str
    receiver: str  # "node", "storescp" or "pynetdicom"
    associations: int
    nodelay: bool = True
    receive_processes: int | None = None  # node only; None: the node's default
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.seconds)


def make_receiver(case: Case, root: Path, settings: NodeSettings) -> Receiver:
    if case.receiver == "node":
        if case.receive_processes is not None:
            settings = dataclasses.replace(settings, receive_processes=case.receive_processes)
        return NodeProcess(root, free_port(), settings)
    if case.receiver == "pynetdicom":
        return BareScpProcess(root, free_port())
    return storescp(root, free_port(), nodelay=case.nodelay)


def measure(
    case: Case,
    series: CtSeries,
    root: Path,
    settings: NodeSettings,
    timeout: float,
    during: Callable[[Receiver], Callable[[], None]] | None = None,
) -> tuple[float, float]:
    """One timed send into a fresh receiver: (wall seconds, receiver CPU seconds during the send).

    BenchError when a tool fails or an instance is missing. ``during(receiver)`` is started after the receiver is
    ready and returns a function called after the send (the profiler hook).
    """
    if root.exists():
        shutil.rmtree(root)
    receiver = make_receiver(case, root, settings)
    groups = split(series.files, case.associations)
    with receiver:
        finish = during(receiver) if during is not None else None
        cpu_before = cpu_seconds(receiver)
        try:
            result = send(
                receiver.port, receiver.ae_title, groups, root / "storescu", nodelay=case.nodelay, timeout=timeout
            )
        finally:
            cpu = cpu_seconds(receiver) - cpu_before
            if finish is not None:
                finish()
        if not result.ok:
            tails = "\n".join(p.read_text(errors="replace")[-1500:] for p in result.logs)
            raise BenchError(
                f"{case.label}: storescu exited with {result.returncodes}:\n{tails}\n"
                f"receiver log:\n{receiver.log_tail()}"
            )
        # Counted before the receiver stops: a success status means the instance was already on disk.
        if isinstance(receiver, NodeProcess):
            stored = receiver.instance_count(series.series_uid)
        elif isinstance(receiver, BareScpProcess):
            stored = receiver.instance_count()
        else:
            stored = len(receiver.received())
        code = receiver.stop()
    if stored != len(series.files):
        raise BenchError(f"{case.label}: {stored} of {len(series.files)} instances stored; see {receiver.log_path}")
    if isinstance(receiver, NodeProcess) and code not in (0, None):
        raise BenchError(f"{case.label}: segnode exited with {code} after SIGTERM; see {receiver.log_path}")
    # Keep the logs, drop the received copies (hundreds of MB per round).
    for folder in (root / "data" / "instances", root / "received"):
        if folder.exists():
            shutil.rmtree(folder)
    return result.seconds, cpu


# --- profiling ---------------------------------------------------------------------------------------------------


def py_spy_hook(out: Path, rate: int, gil_only: bool) -> Callable[[Receiver], Callable[[], None]]:
    """A ``during`` hook that samples the receiver with py-spy while it receives (see :class:`profiling.PySpy`)."""

    def start(receiver: Receiver) -> Callable[[], None]:
        assert receiver.pid is not None
        spy = PySpy(receiver.pid, out, rate=rate, gil_only=gil_only)
        spy.start()
        return spy.stop

    return start


# --- main --------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_series_arguments(parser, kind="ingest", slices=200, quick=QUICK, quick_note=", 1 round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every case (default 3); median reported")
    parser.add_argument("--concurrency", type=int, default=4, help="associations at once in the concurrent cases")
    parser.add_argument(
        "--no-as-shipped",
        action="store_true",
        help="skip the storescp run without TCP_NODELAY (slow: ~40 ms stall per instance)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the bare pynetdicom SCP (write only, no fsync, no index): pynetdicom's own cost",
    )
    parser.add_argument(
        "--export",
        action="store_true",
        help="leave series export on in the node (off by default: this measures intake only)",
    )
    add_profile_arguments(parser, what="node round (1 association)", rate=1000)
    parser.add_argument(
        "--profile-all",
        action="store_true",
        help="sample every non-idle thread (default: only the thread holding the GIL)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per send before it is killed")
    args = parser.parse_args(argv)
    series_size(args, QUICK)
    if args.quick:
        args.rounds = min(args.rounds, 1)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        require_tools("storescu", "storescp", "echoscu")
        spec = CtSpec(rows=args.rows, cols=args.cols, slices=args.slices)
        workdir = args.workdir or Path(f"/tmp/segnode-bench-ingest-{spec.rows}x{spec.cols}x{spec.slices}")
        series = write_series(spec, workdir, args.fresh)
        return run(args, series, workdir)
    except (BenchError, PeerError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1


def write_series(spec: CtSpec, workdir: Path, fresh: bool) -> CtSeries:
    series = write_ct_series(spec, workdir / "series", fresh=fresh)
    check_readable(series.files[0])
    return series


def swap_pairs(cases: Sequence[Case]) -> list[Case]:
    """Cases with the node/storescp pairs (0-1, 2-3) swapped; the rest as it is."""
    return [cases[1], cases[0], cases[3], cases[2], *cases[4:]]


def run(args: argparse.Namespace, series: CtSeries, workdir: Path) -> int:
    n = max(1, args.concurrency)
    settings = NodeSettings(export_enabled=args.export, quiet_seconds=2.0)
    cases = [
        Case("segnode, 1 association", "node", 1),
        Case("storescp, 1 association", "storescp", 1),
        Case(f"segnode, {n} associations", "node", n),
        Case(f"storescp, {n} associations", "storescp", n),
    ]
    if n > 1:
        cases.append(Case(f"segnode, 1 receiver process, {n} associations", "node", n, receive_processes=1))
    if not args.no_as_shipped:
        cases.append(Case("storescp as shipped (no TCP_NODELAY), 1 assoc.", "storescp", 1, nodelay=False))
    if not args.no_reference:
        cases += [
            Case("bare pynetdicom SCP (reference), 1 association", "pynetdicom", 1),
            Case(f"bare pynetdicom SCP (reference), {n} associations", "pynetdicom", n),
        ]
    total_mb = series.total_bytes / 1e6
    count = len(series.files)
    print(f"series: {count} instances, {args.rows}x{args.cols}, {total_mb:.1f} MB, {series.folder}")
    print(f"node: export {'on' if args.export else 'off'}, durable writes (fsync file + folder) per instance")
    print_versions()
    print()
    for round_index in range(args.rounds):
        # Alternate who goes first, so drift (page cache, CPU frequency) does not favour one side.
        order = cases if round_index % 2 == 0 else swap_pairs(cases)
        for case in order:
            slug = (
                f"{case.receiver}-{case.associations}"
                + ("" if case.nodelay else "-nagle")
                + ("" if case.receive_processes is None else f"-p{case.receive_processes}")
            )
            seconds, cpu = measure(case, series, workdir / "runs" / f"{round_index + 1}-{slug}", settings, args.timeout)
            case.seconds.append(seconds)
            case.cpu.append(cpu)
            print(
                f"round {round_index + 1}: {case.label:<48} {seconds:7.2f} s  {count / seconds:7.1f} inst/s"
                f"  {total_mb / seconds:7.1f} MB/s  receiver CPU {cpu:5.2f} s",
                flush=True,
            )
    print_table(cases, count, total_mb)
    by_key = {(c.receiver, c.associations, c.nodelay, c.receive_processes): c for c in cases}
    node_one, node_many = by_key[("node", 1, True, None)].median, by_key[("node", n, True, None)].median
    one = node_one / by_key[("storescp", 1, True, None)].median
    many = node_many / by_key[("storescp", n, True, None)].median
    print(f"\nnode/storescp time ratio, 1 association:  {one:.2f}  (target <= 3: {'met' if one <= 3 else 'NOT met'})")
    print(f"node/storescp time ratio, {n} associations: {many:.2f}")
    print(
        f"node, {n} associations vs 1: {node_one / node_many:.2f}x the throughput"
        f"  (target > 1, faster still with several: {'met' if node_many < node_one else 'NOT met'})"
    )
    if args.profile:
        raw = workdir / "py-spy.txt"
        raw.unlink(missing_ok=True)
        case = Case("segnode, 1 association (py-spy)", "node", 1)
        seconds, cpu = measure(
            case,
            series,
            workdir / "runs" / "profile",
            settings,
            args.timeout,
            during=py_spy_hook(raw, args.profile_rate, gil_only=not args.profile_all),
        )
        print(
            f"\nprofiled node round: {seconds:.2f} s ({count / seconds:.1f} inst/s), node CPU {cpu:.2f} s, with"
            f" py-spy attached; {raw}"
        )
        if raw.is_file():
            print_profile(raw, args.top, "active-thread" if args.profile_all else "GIL-holding")
    return 0


def print_table(cases: Sequence[Case], count: int, total_mb: float) -> None:
    print(f"\n{'case':<48} {'median s':>9} {'inst/s':>8} {'MB/s':>8} {'rcv CPU s':>9}  runs (s)")
    for case in cases:
        m = case.median
        runs = " ".join(f"{s:.2f}" for s in case.seconds)
        print(f"{case.label:<48} {m:9.2f} {count / m:8.1f} {total_mb / m:8.1f} {median(case.cpu):9.2f}  {runs}")
    print(
        "(median wall time from the first storescu start to the last exit; rcv CPU: the receiving process's"
        " user+system CPU time during the send)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
