#!/usr/bin/env python3
"""Concurrent load on the node: throughput against DCMTK storescp and a bare pynetdicom SCP, nothing lost.

Scenario 1 (load): ``--associations`` DCMTK storescu processes (default 8) start at once on loopback, each sending a
series of its own (``--instances`` slices, default 200, 256x256 16-bit CT) to ``segnode run`` (its default
``receive_processes``, durable writes), to ``storescp`` (as it ships: one association at a time) and to the bare
pynetdicom SCP of bench_ingest (``--no-bare`` drops it). Wall time from the first start to the last exit; ``--rounds``
rounds with the receivers alternating, the median reported. After every round each receiver's files are compared
with what was sent, instance by instance (the SHA-256 of the data set after the file meta: a receiver storing "as
sent" keeps it identical), and for the node its index must list every instance too.

Scenario 2 (limit): the same associations at once against a node with ``[node] max_associations = --limit``
(default 4). The surplus must be rejected as transient (storescu's own report of the A-ASSOCIATE-RJ), at most
``--limit`` accepted, and every instance storescu saw acknowledged must be stored, intact and indexed.

Scenario 3 (one association): one series to the node and to the bare pynetdicom SCP, alternating, to report the
node's overhead over pynetdicom itself (target: within 1.15x).

Timings are printed, never asserted. The exit status is non-zero when an instance is lost, refused or corrupt, when
an association is rejected in scenario 1, or when scenario 2's limit is not kept. Run with ``--help``; ``--quick``
is a smoke run (2 associations of 20 small instances, 1 round).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The peers are the test harness's (tests/peers.py, tests/dcmtk.py), imported as the tests import them.
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))

from ct_series import CtSeries, CtSpec, check_readable, write_ct_series
from dcmtk import StoreSCP, association_args
from errors import BenchError, require_tools
from load_checks import StoredCheck, StorescuAccount, check_stored, fingerprints, read_storescu_log
from peers import HOST, PeerError, dcmtk_env, free_port
from receivers import BareScpProcess, NodeProcess, NodeSettings, storescp
from report import median, print_versions
from sending import run_at_once

from node.state import open_state

log = logging.getLogger(__name__)

#: Seconds one storescu may take for its connection, association and each response.
STORESCU_TIMEOUT_S = 120


class LoadNode(NodeProcess):
    """``segnode run`` as bench_ingest starts it, with ``[node] max_associations`` set and the HTTP endpoint off."""

    def __init__(self, root: Path, port: int, settings: NodeSettings, *, max_associations: int | None = None) -> None:
        super().__init__(root, port, settings)
        self.max_associations = max_associations

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text()
        if self.max_associations is not None:
            text = text.replace("[node]\n", f"[node]\nmax_associations = {self.max_associations}\n", 1)
        # A table after the [[destinations]] array is valid TOML; port 0 keeps benches off a shared 8080.
        self.config_path.write_text(text + "\n[http]\nport = 0\n")

    def indexed(self, series_uid: str) -> int:
        """Instances the node's index lists for a series."""
        with open_state(self.data, self.data / "segnode.sqlite3", node_id="bench-load-reader") as state:
            return len(state.series.instances(series_uid))

    def stored_files(self) -> list[Path]:
        folder = self.data / "instances"
        return sorted(p for p in folder.rglob("*.dcm") if not p.name.startswith(".")) if folder.is_dir() else []


Receiver = LoadNode | StoreSCP | BareScpProcess


def stored_files(receiver: Receiver) -> list[Path]:
    if isinstance(receiver, LoadNode):
        return receiver.stored_files()
    if isinstance(receiver, BareScpProcess):
        return sorted(p for p in receiver.folder.iterdir() if p.is_file())
    return receiver.received()


@dataclass(frozen=True)
class Load:
    """The series to send, one per association, and what was sent ({SOP Instance UID: data set digest})."""

    series: tuple[CtSeries, ...]
    sent: dict[str, str]
    #: Each series' SOP Instance UIDs in the order storescu sends them (its files' order).
    order: dict[str, tuple[str, ...]]

    def digests(self, series: CtSeries, first: int | None = None) -> dict[str, str]:
        """{SOP Instance UID: digest} of the series' instances (its ``first`` ones)."""
        return {uid: self.sent[uid] for uid in self.order[series.series_uid][:first]}

    @property
    def instances(self) -> int:
        return sum(len(s.files) for s in self.series)

    @property
    def megabytes(self) -> float:
        return sum(s.total_bytes for s in self.series) / 1e6


@dataclass(frozen=True)
class Sent:
    """storescu processes started together: the wall time and each one's account."""

    seconds: float
    accounts: tuple[StorescuAccount, ...]


def send_at_once(port: int, called_ae: str, series: Sequence[CtSeries], log_dir: Path, timeout: float) -> Sent:
    """One ``storescu -v`` per series, all started together; time from the first start to the last exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    paths = [log_dir / f"storescu-{i}.log" for i in range(len(series))]
    commands = [
        ["storescu", "-v", *association_args("BENCH", called_ae, STORESCU_TIMEOUT_S), HOST, str(port)]
        + [str(f) for f in one.files]
        for one in series
    ]
    seconds, codes = run_at_once(commands, paths, dcmtk_env(), timeout)
    return Sent(seconds, tuple(read_storescu_log(p, c) for p, c in zip(paths, codes, strict=True)))


@dataclass
class Case:
    label: str
    receiver: str  # "node", "storescp" or "pynetdicom"
    associations: int
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.seconds)


def make_receiver(kind: str, root: Path, settings: NodeSettings, max_associations: int | None = None) -> Receiver:
    if kind == "node":
        return LoadNode(root, free_port(), settings, max_associations=max_associations)
    if kind == "pynetdicom":
        return BareScpProcess(root, free_port())
    return storescp(root, free_port())


def check_node_index(receiver: Receiver, expected: dict[str, int]) -> list[str]:
    """Series whose index row count is not ``expected[series_uid]`` (node only)."""
    if not isinstance(receiver, LoadNode):
        return []
    wrong = []
    for series_uid, count in expected.items():
        indexed = receiver.indexed(series_uid)
        if indexed != count:
            wrong.append(f"series {series_uid}: {indexed} of {count} indexed")
    return wrong


def fresh(root: Path) -> Path:
    if root.exists():
        shutil.rmtree(root)
    return root


def drop_copies(root: Path) -> None:
    """Keep the logs, drop the received copies."""
    for folder in (root / "data" / "instances", root / "received"):
        if folder.exists():
            shutil.rmtree(folder)


def run_load(case: Case, load: Load, root: Path, settings: NodeSettings, timeout: float) -> float:
    """Scenario 1, one round: every association accepted, every instance acknowledged and stored intact."""
    series = load.series[: case.associations]
    receiver = make_receiver(case.receiver, fresh(root), settings)
    with receiver:
        sent = send_at_once(receiver.port, receiver.ae_title, series, root / "storescu", timeout)
        # Checked before the receiver stops: a success status means the instance was already on disk.
        expected = {uid: digest for one in series for uid, digest in load.digests(one).items()}
        stored = check_stored(stored_files(receiver), expected)
        index = check_node_index(receiver, {s.series_uid: len(s.files) for s in series})
        receiver.stop()
    problems = [
        f"storescu {i}: exit {a.returncode}, {a.acknowledged} acknowledged, {a.refused} refused"
        + (f", rejected {a.rejection}" if a.rejection else "")
        for i, a in enumerate(sent.accounts)
        if a.returncode != 0 or a.rejection or a.refused or a.acknowledged != len(series[i].files)
    ]
    if not stored.ok:
        problems.append(stored.describe())
    problems += index
    if problems:
        raise BenchError(f"{case.label}: " + "; ".join(problems) + f"; see {root}")
    drop_copies(root)
    return sent.seconds


def prepare(spec: CtSpec, count: int, workdir: Path, fresh_series: bool) -> Load:
    """``count`` series of ``spec`` (different phantoms and UIDs), fingerprinted."""
    series = []
    sent: dict[str, str] = {}
    order: dict[str, tuple[str, ...]] = {}
    for index in range(count):
        one = write_ct_series(
            CtSpec(rows=spec.rows, cols=spec.cols, slices=spec.slices, seed=index + 1),
            workdir / "series" / f"{spec.rows}x{spec.cols}x{spec.slices}-{index + 1}",
            fresh=fresh_series,
        )
        digests = fingerprints(one.files)
        order[one.series_uid] = tuple(digests)
        sent.update(digests)
        series.append(one)
    check_readable(series[0].files[0])
    return Load(tuple(series), sent, order)


@dataclass(frozen=True)
class LimitOutcome:
    seconds: float
    accepted: int
    transient: int
    other_rejections: list[str]
    acknowledged: int
    stored: StoredCheck
    index_problems: list[str]


def run_limit(load: Load, root: Path, settings: NodeSettings, limit: int, timeout: float) -> LimitOutcome:
    """Scenario 2: every association at once against ``max_associations = limit``."""
    receiver = LoadNode(fresh(root), free_port(), settings, max_associations=limit)
    with receiver:
        sent = send_at_once(receiver.port, receiver.ae_title, load.series, root / "storescu", timeout)
        acknowledged_per_series = {
            one.series_uid: account.acknowledged for one, account in zip(load.series, sent.accounts, strict=True)
        }
        # What storescu saw acknowledged must be stored: per series, since each association sent a series of its own.
        files = stored_files(receiver)
        index = check_node_index(receiver, acknowledged_per_series)
        receiver.stop()
    # Acknowledged are the first ones storescu sent (responses come in order); a series cut short may have one
    # more on disk than acknowledged, which check_stored reports as not sent, so such a series fails the bench.
    expected: dict[str, str] = {}
    for one, account in zip(load.series, sent.accounts, strict=True):
        expected.update(load.digests(one, account.acknowledged))
    stored = check_stored(files, expected)
    accepted = sum(1 for a in sent.accounts if a.rejection is None)
    transient = sum(1 for a in sent.accounts if a.transient_rejection)
    others = [
        f"storescu {i}: {a.rejection}" for i, a in enumerate(sent.accounts) if a.rejection and not a.transient_rejection
    ]
    return LimitOutcome(sent.seconds, accepted, transient, others, sum(acknowledged_per_series.values()), stored, index)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--associations", type=int, default=8, help="concurrent storescu associations (default 8)")
    parser.add_argument("--instances", type=int, default=200, help="instances per association (default 200)")
    parser.add_argument("--rows", type=int, default=256, help="image rows (default 256)")
    parser.add_argument("--cols", type=int, default=256, help="image columns (default 256)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of scenarios 1 and 3 (default 3); medians")
    parser.add_argument("--limit", type=int, default=4, help="[node] max_associations in scenario 2 (default 4)")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare pynetdicom SCP in scenario 1")
    parser.add_argument("--no-limit", action="store_true", help="skip scenario 2")
    parser.add_argument("--no-single", action="store_true", help="skip scenario 3")
    parser.add_argument("--quick", action="store_true", help="2 associations of 20 instances of 128x128, 1 round")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/segnode-bench-load"))
    parser.add_argument("--fresh", action="store_true", help="write the series again")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per send before it is killed")
    args = parser.parse_args(argv)
    if args.quick:
        args.associations, args.instances, args.rows, args.cols, args.rounds = 2, 20, 128, 128, 1
        args.limit = min(args.limit, 1)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        require_tools("storescu", "storescp", "echoscu")
        spec = CtSpec(rows=args.rows, cols=args.cols, slices=args.instances)
        load = prepare(spec, args.associations, args.workdir, args.fresh)
        return run(args, load)
    except (BenchError, PeerError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, load: Load) -> int:
    settings = NodeSettings(export_enabled=False, quiet_seconds=2.0)
    n = args.associations
    print(f"load: {n} associations x {args.instances} instances ({args.rows}x{args.cols}), {load.instances} instances,")
    print(f"      {load.megabytes:.1f} MB; node: export off, durable writes, default receive_processes")
    print_versions()
    print()
    runs = args.workdir / "runs"
    cases = [Case(f"segnode, {n} associations", "node", n), Case(f"storescp, {n} associations", "storescp", n)]
    if not args.no_bare:
        cases.append(Case(f"bare pynetdicom SCP, {n} associations", "pynetdicom", n))
    single = []
    if not args.no_single:
        single = [
            Case("segnode, 1 association", "node", 1),
            Case("bare pynetdicom SCP, 1 association", "pynetdicom", 1),
        ]
    for round_index in range(args.rounds):
        order = cases + single if round_index % 2 == 0 else [*reversed(cases), *reversed(single)]
        for case in order:
            slug = f"{round_index + 1}-{case.receiver}-{case.associations}"
            seconds = run_load(case, load, runs / slug, settings, args.timeout)
            case.seconds.append(seconds)
            count = sum(len(s.files) for s in load.series[: case.associations])
            mb = sum(s.total_bytes for s in load.series[: case.associations]) / 1e6
            print(
                f"round {round_index + 1}: {case.label:<40} {seconds:7.2f} s  {count / seconds:7.1f} inst/s"
                f"  {mb / seconds:7.1f} MB/s  all {count} stored intact",
                flush=True,
            )
    print_table([*cases, *single], load)
    node, dcmtk = cases[0].median, cases[1].median
    print(f"\nnode/storescp time ratio, {n} associations: {node / dcmtk:.2f}")
    if not args.no_bare:
        print(f"node/bare pynetdicom time ratio, {n} associations: {node / cases[2].median:.2f}")
    if single:
        ratio = single[0].median / single[1].median
        verdict = "met" if ratio <= 1.15 else "NOT met"
        print(f"node/bare pynetdicom time ratio, 1 association: {ratio:.2f}  (target <= 1.15: {verdict})")
    if args.no_limit:
        return 0
    return report_limit(run_limit(load, runs / "limit", settings, args.limit, args.timeout), n, args.limit)


def report_limit(outcome: LimitOutcome, n: int, limit: int) -> int:
    print(f"\n{n} associations at once against max_associations = {limit} ({outcome.seconds:.2f} s):")
    others = len(outcome.other_rejections)
    print(f"  accepted {outcome.accepted}, rejected as transient {outcome.transient}, other rejections {others}")
    print(f"  acknowledged {outcome.acknowledged} instances; {outcome.stored.describe()}")
    problems = list(outcome.other_rejections) + outcome.index_problems
    if outcome.accepted > limit:
        problems.append(f"{outcome.accepted} associations accepted, more than the limit of {limit}")
    if outcome.accepted == 0:
        problems.append("no association accepted")
    if outcome.accepted + outcome.transient != n:
        problems.append(f"{n - outcome.accepted - outcome.transient} association(s) neither accepted nor rejected")
    if not outcome.stored.ok:
        problems.append(f"acknowledged instances not stored intact: {outcome.stored.describe()}")
    if outcome.accepted < min(limit, n):
        print(f"  note: fewer than {min(limit, n)} accepted (an association may have ended before the last arrived)")
    if problems:
        print("FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("  the limit held and every acknowledged instance is stored, intact and indexed")
    return 0


def print_table(cases: Sequence[Case], load: Load) -> None:
    print(f"\n{'case':<40} {'median s':>9} {'inst/s':>8} {'MB/s':>8}  runs (s)")
    for case in cases:
        count = sum(len(s.files) for s in load.series[: case.associations])
        mb = sum(s.total_bytes for s in load.series[: case.associations]) / 1e6
        m = case.median
        runs = " ".join(f"{s:.2f}" for s in case.seconds)
        print(f"{case.label:<40} {m:9.2f} {count / m:8.1f} {mb / m:8.1f}  {runs}")
    print("(median wall time from the first storescu start to the last exit, every instance acknowledged)")


if __name__ == "__main__":
    raise SystemExit(main())
