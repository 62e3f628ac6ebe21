"""storescu processes started together, timed from the first start to the last exit (every instance answered)."""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dcmtk import association_args
from peers import HOST, dcmtk_env


@dataclass(frozen=True)
class SendResult:
    """storescu processes started together: wall time from the first start to the last exit."""

    seconds: float
    returncodes: tuple[int, ...]
    logs: tuple[Path, ...]

    @property
    def ok(self) -> bool:
        return all(code == 0 for code in self.returncodes)


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """``files`` in ``parts`` contiguous groups of near-equal size (empty groups dropped)."""
    parts = max(1, min(parts, len(files)))
    bounds = np.linspace(0, len(files), parts + 1).round().astype(int)
    return [list(files[a:b]) for a, b in itertools.pairwise(bounds) if b > a]


def storescu_command(port: int, called_ae: str, files: Sequence[Path], *, timeout: float) -> list[str]:
    return ["storescu", *association_args("BENCH", called_ae, timeout), HOST, str(port), *(str(f) for f in files)]


def run_at_once(
    commands: Sequence[Sequence[str]], logs: Sequence[Path], env: Mapping[str, str], timeout: float
) -> tuple[float, tuple[int, ...]]:
    """Start every command together, each writing to its log; the seconds from the first start to the last exit,
    and the exit codes. A command still running after ``timeout`` is killed; none is left running."""
    handles = [path.open("wb") for path in logs]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        started = time.perf_counter()
        for command, handle in zip(commands, handles, strict=True):
            processes.append(
                subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            )
        codes: list[int] = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=max(0.1, started + timeout - time.perf_counter())))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        return time.perf_counter() - started, tuple(codes)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for handle in handles:
            handle.close()


def send(
    port: int,
    called_ae: str,
    groups: Sequence[Sequence[Path]],
    log_dir: Path,
    *,
    nodelay: bool = True,
    timeout: float = 600.0,
) -> SendResult:
    """Start one storescu per group at once (one association each); time from the first start to the last exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [log_dir / f"storescu-{i}.log" for i in range(len(groups))]
    commands = [storescu_command(port, called_ae, group, timeout=60) for group in groups]
    elapsed, codes = run_at_once(commands, logs, dcmtk_env(nodelay=nodelay), timeout)
    return SendResult(elapsed, codes, tuple(logs))
