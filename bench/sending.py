"""storescu processes started together, timed from the first start to the last exit (every instance answered)."""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Sequence
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
    env = dcmtk_env(nodelay=nodelay)
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    handles = []
    try:
        for i in range(len(groups)):
            path = log_dir / f"storescu-{i}.log"
            handle = path.open("wb")
            handles.append(handle)
            logs.append(path)
        started = time.perf_counter()
        for i, group in enumerate(groups):
            processes.append(
                subprocess.Popen(
                    storescu_command(port, called_ae, group, timeout=60),
                    stdout=handles[i],
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
            )
        deadline = started + timeout
        codes: list[int] = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=max(0.1, deadline - time.perf_counter())))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        elapsed = time.perf_counter() - started
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for handle in handles:
            handle.close()
    return SendResult(elapsed, tuple(codes), tuple(logs))
