"""What every benchmark prints besides its figures: tool and library versions, the machine, medians."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def first_line(command: Sequence[str]) -> str:
    """First non-empty line a command prints (for version reports); never raises."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines[0] if lines else "?"


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def print_versions(extra: Mapping[str, str] | None = None) -> None:
    """segnode, DCMTK, Python libraries and the machine, one line each."""
    print("versions:")
    print(f"  segnode {package_version('segnode')} (python -m node, {sys.executable})")
    print(f"  DCMTK: {first_line(['storescu', '--version'])}")
    for name, version in (extra or {}).items():
        print(f"  {name}: {version}")
    print(
        f"  python {platform.python_version()}, pynetdicom {package_version('pynetdicom')}, pydicom"
        f" {package_version('pydicom')}, highdicom {package_version('highdicom')}, numpy"
        f" {package_version('numpy')}, nibabel {package_version('nibabel')}"
    )
    print(f"  machine: {os.cpu_count()} CPUs, {platform.machine()}, {platform.release()}")
