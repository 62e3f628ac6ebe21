"""Sampling a running node with py-spy, and the CPU time a process tree has used (from /proc)."""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from errors import BenchError
from peers import PeerProcess


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process and its live descendants (the node's receiver processes) from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        times[child] = int(fields[11]) + int(fields[12])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def py_spy_binary() -> str | None:
    """py-spy from PATH or beside this Python (``pip install py-spy``), or None."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else None


class PySpy:
    """py-spy sampling a running process (all threads, by function) from :meth:`start` to :meth:`stop`.

    The output is py-spy's collapsed stacks (``--format raw``), read by :func:`print_profile`. ``gil_only``
    samples only the thread holding the GIL (where Python CPU time goes); otherwise every non-idle thread.
    """

    def __init__(self, pid: int, out: Path, *, rate: int = 1000, gil_only: bool = False) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.gil_only = gil_only
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = py_spy_binary()
        if binary is None:
            raise BenchError("py-spy is not installed; pip install py-spy (into this venv) or drop --profile")
        self.out.unlink(missing_ok=True)
        self._process = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(self.pid),
                "--format",
                "raw",
                "--rate",
                str(self.rate),
                "--output",
                str(self.out),
                "--nonblocking",
                "--function",
                "--subprocesses",
                *(["--gil"] if self.gil_only else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy needs a moment to attach; what is measured starts after this

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            _, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        if not self.out.is_file():
            print(f"py-spy wrote nothing (exit {process.returncode}): {err.decode(errors='replace')[-800:]}")


def print_profile(raw: Path, top: int, what: str) -> None:
    """Top functions by own and by inclusive samples, from py-spy's collapsed stacks (``frame;frame;... count``)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        for frame in set(frames):  # a recursive function counts once per sample
            inclusive[frame] += count
    if not total:
        print("py-spy recorded no samples")
        return
    for title, counter in (("own time", own), ("inclusive time", inclusive)):
        print(f"\n--- top {top} by {title} (% of {total} {what} samples) ---")
        for frame, count in counter.most_common(top):
            print(f"  {100 * count / total:5.1f}%  {frame}")


def cpu_seconds(peer: PeerProcess) -> float:
    """User + system CPU time a peer process (and its children) has used so far; 0.0 when it is not running."""
    pid = peer.pid
    return process_cpu_seconds(pid) if pid is not None and peer.running else 0.0


def add_profile_arguments(parser: argparse.ArgumentParser, *, what: str, rate: int) -> None:
    """``--profile`` (one extra run of ``what``, sampled with py-spy), ``--profile-rate`` and ``--top``."""
    parser.add_argument(
        "--profile", action="store_true", help=f"one extra {what} sampled with py-spy; prints top functions"
    )
    parser.add_argument("--profile-rate", type=int, default=rate, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25, help="functions listed by --profile")
