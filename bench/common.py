"""Shared pieces of the node benchmarks (bench_ingest.py, bench_latency.py).

A synthetic CT series written fast (vectorised phantom, one header reused for every slice), the node and DCMTK's
storescp as subprocesses that are ready once they answer C-ECHO, storescu runs timed from start to exit, and the
version lines every benchmark prints. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import itertools
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
#: Seconds a receiver has to answer its first C-ECHO.
START_TIMEOUT_S = 60.0
#: Seconds a receiver has to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 20.0


class BenchError(RuntimeError):
    """A tool under test failed (did not start, exited non-zero, lost instances); the bench exits non-zero."""


# --- small helpers ---------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def dcmtk_env(*, nodelay: bool = True) -> dict[str, str]:
    """Environment for DCMTK tools. Debian's DCMTK leaves Nagle's algorithm on unless TCP_NODELAY=1 is set."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


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


def require_tools(*names: str) -> None:
    """BenchError naming the first missing executable."""
    for name in names:
        if shutil.which(name) is None:
            raise BenchError(f"{name} is not on PATH; install it (Debian: apt-get install dcmtk) and run again")


def print_versions(extra: Mapping[str, str] | None = None) -> None:
    """segnode, DCMTK, Python libraries and the machine, one line each."""
    print("versions:")
    print(f"  segnode {package_version('segnode')} (python -m node, {sys.executable})")
    print(f"  DCMTK: {first_line(['storescu', '--version'])}")
    for name, version in (extra or {}).items():
        print(f"  {name}: {version}")
    print(f"  python {platform.python_version()}, pynetdicom {package_version('pynetdicom')}, pydicom"
          f" {package_version('pydicom')}, highdicom {package_version('highdicom')}, numpy"
          f" {package_version('numpy')}, nibabel {package_version('nibabel')}")
    print(f"  machine: {os.cpu_count()} CPUs, {platform.machine()}, {platform.release()}")


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


# --- profiling -------------------------------------------------------------------------------------------------


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
            [binary, "record", "--pid", str(self.pid), "--format", "raw", "--rate", str(self.rate), "--output",
             str(self.out), "--nonblocking", "--function", "--subprocesses", *(["--gil"] if self.gil_only else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
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


# --- synthetic CT series ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CtSpec:
    """A synthetic axial CT series; stored as JSON beside the files so a matching series is reused."""

    rows: int = 512
    cols: int = 512
    slices: int = 200
    fov_mm: float = 400.0
    slice_mm: float = 1.25
    seed: int = 1

    @property
    def pixel_mm(self) -> float:
        return self.fov_mm / max(self.rows, self.cols)


@dataclass(frozen=True)
class CtSeries:
    """A written series: its files (in slice order), UIDs and total size."""

    folder: Path
    files: tuple[Path, ...]
    series_uid: str
    study_uid: str

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def _template(spec: CtSpec) -> Dataset:
    """Header shared by every slice: a plausible CT with a synthetic identity only."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = "Bench^Phantom"
    ds.PatientID = "BENCH0002"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "BENCH2"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT chest abdomen (synthetic)"
    ds.SeriesDescription = "Bench phantom"
    ds.Modality = "CT"
    ds.Manufacturer = "segnode-bench"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.PatientPosition = "HFS"
    ds.PositionReferenceIndicator = ""
    ds.KVP = "120"
    ds.SliceThickness = f"{spec.slice_mm:g}"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [f"{spec.pixel_mm:.6g}", f"{spec.pixel_mm:.6g}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def phantom_slices(spec: CtSpec, rng: np.random.Generator) -> npt.NDArray[np.uint16]:
    """Stored values (HU + 1024) of a trunk phantom, (slice, row, col): fat rim, soft tissue, lungs, spine."""
    s = spec.pixel_mm
    y = (np.arange(spec.rows, dtype=np.float32) - spec.rows / 2 + 0.5)[:, None] * s
    x = (np.arange(spec.cols, dtype=np.float32) - spec.cols / 2 + 0.5)[None, :] * s
    # A few noise fields reused in turn: texture enough, without drawing rows*cols*slices normals.
    noise = rng.normal(0.0, 12.0, size=(4, spec.rows, spec.cols)).astype(np.float32)
    out = np.empty((spec.slices, spec.rows, spec.cols), dtype=np.uint16)
    for k in range(spec.slices):
        fraction = 1.0 - k / max(spec.slices - 1, 1)  # 1 at the head end
        scale = 0.85 + 0.15 * np.sin(np.pi * fraction)
        r_body = (x / (170 * scale)) ** 2 + (y / (115 * scale)) ** 2
        hu = np.where(r_body <= 1.0, -100.0, -1000.0).astype(np.float32)
        hu[(x / (155 * scale)) ** 2 + (y / (100 * scale)) ** 2 <= 1.0] = 40.0
        if fraction > 0.45:
            for side in (-1, 1):
                hu[((x - side * 75 * scale) / (55 * scale)) ** 2 + ((y + 10) / (75 * scale)) ** 2 <= 1.0] = -850.0
        hu[(x / 20) ** 2 + ((y - 75) / 18) ** 2 <= 1.0] = 700.0
        body = r_body <= 1.0
        hu[body] += noise[k % len(noise)][body]
        out[k] = np.clip(hu + 1024.0, 0, 4095).astype(np.uint16)
    return out


def add_series_arguments(parser: argparse.ArgumentParser, *, kind: str, slices: int, quick: CtSpec,
                         quick_note: str = "") -> None:
    """The options every bench has for its synthetic CT: size, ``--quick``, ``--workdir``, ``--fresh``."""
    parser.add_argument("--slices", type=int, default=slices, help=f"slices in the series (default {slices})")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help=f"{quick.rows}x{quick.cols}x{quick.slices}{quick_note}")
    parser.add_argument("--workdir", type=Path, default=None, help=f"default /tmp/segnode-bench-{kind}-RxCxS")
    parser.add_argument("--fresh", action="store_true", help="rebuild the series even if one is there")


def series_size(args: argparse.Namespace, quick: CtSpec) -> None:
    """Apply ``--quick`` to the parsed ``--rows/--cols/--slices``."""
    if args.quick:
        args.rows, args.cols, args.slices = quick.rows, quick.cols, quick.slices


def write_ct_series(spec: CtSpec, folder: Path, *, fresh: bool = False) -> CtSeries:
    """Single-frame Explicit VR Little Endian CT files in ``folder`` (reused when already written for ``spec``).

    Instance 1 is at the head end; slices are ``slice_mm`` apart along +z, so the series is a regular grid.
    """
    manifest = folder / "series.json"
    if not fresh and manifest.is_file():
        content = json.loads(manifest.read_text())
        files = tuple(folder / name for name in content["files"])
        if content.get("spec") == asdict(spec) and all(p.is_file() for p in files):
            return CtSeries(folder, files, content["series_uid"], content["study_uid"])
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    pixels = phantom_slices(spec, np.random.default_rng(spec.seed))
    ds = _template(spec)
    half = spec.fov_mm / 2
    top_z = (spec.slices - 1) * spec.slice_mm / 2
    names: list[str] = []
    for k in range(spec.slices):
        z = top_z - k * spec.slice_mm
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{-half + spec.pixel_mm / 2:.4f}", f"{-half + spec.pixel_mm / 2:.4f}",
                                   f"{z:.4f}"]
        ds.SliceLocation = f"{z:.4f}"
        ds.PixelData = pixels[k].tobytes()
        name = f"CT{k + 1:06d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        names.append(name)
    series = CtSeries(folder, tuple(folder / n for n in names), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID))
    manifest.write_text(json.dumps({"spec": asdict(spec), "files": names, "series_uid": series.series_uid,
                                    "study_uid": series.study_uid}, indent=1) + "\n")
    log.info("wrote %d slices in %.1f s", spec.slices, time.perf_counter() - started)
    return series


def check_readable(path: Path) -> None:
    """BenchError unless ``path`` is a DICOM file pydicom can read (a sanity check on the builder)."""
    try:
        pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise BenchError(f"{path}: the synthetic series is not readable DICOM ({exc})") from exc


# --- receivers ---------------------------------------------------------------------------------------------------


def echo(port: int, called_ae: str, *, timeout: float = 5.0) -> bool:
    """Whether the peer at ``HOST:port`` answers C-ECHO (echoscu, TCP_NODELAY=1)."""
    seconds = str(max(1, int(timeout)))
    try:
        done = subprocess.run(["echoscu", "-aet", "BENCH", "-aec", called_ae, "-to", seconds, "-ta", seconds,
                               "-td", seconds, HOST, str(port)], capture_output=True, timeout=timeout + 5,
                              env=dcmtk_env(), stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


class Receiver:
    """A receiving process (the node or storescp) on ``port``, ready once it answers C-ECHO as ``ae_title``."""

    name = "receiver"

    def __init__(self, ae_title: str, port: int, log_path: Path) -> None:
        self.ae_title = ae_title
        self.port = port
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log_file:
            self._process = subprocess.Popen(self.command(), stdout=log_file, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=self.env(), start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BenchError(f"{self.name} exited with {self._process.returncode} at start-up; see "
                                 f"{self.log_path}:\n{self.log_tail()}")
            if echo(self.port, self.ae_title, timeout=2.0):
                return
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"{self.name} did not answer C-ECHO on port {self.port} within {START_TIMEOUT_S:g} s; "
                         f"see {self.log_path}:\n{self.log_tail()}")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (all its threads; 0.0 when not running)."""
        if self._process is None or self._process.poll() is not None:
            return 0.0
        return process_cpu_seconds(self._process.pid)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; returns the exit code (None if never started)."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        return process.returncode

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


@dataclass(frozen=True)
class NodeSettings:
    """The config keys the benchmarks vary; everything else is the node's default."""

    ae_title: str = "SEGNODE"
    quiet_seconds: float = 2.0
    settle_seconds: float = 0.5
    export_enabled: bool = True
    seg_type: str = "binary"
    log_level: str = "INFO"
    destination: tuple[str, str, int] | None = None  # (ae_title, host, port) of a DICOM destination
    receive_processes: int | None = None  # None: the node's default


class NodeProcess(Receiver):
    """``segnode run`` on ``port`` with a config (and fresh data folders) under ``root``."""

    name = "segnode"

    def __init__(self, root: Path, port: int, settings: NodeSettings, *, python: str = sys.executable) -> None:
        super().__init__(settings.ae_title, port, root / "segnode.log")
        self.root = root
        self.settings = settings
        self.python = python
        self.config_path = root / "segnode.toml"
        self.data = root / "data"
        self.inbox = self.data / "inbox"
        self.export = self.data / "export"

    def write_config(self) -> None:
        s = self.settings
        lines = [
            "[node]", f'ae_title = "{s.ae_title}"', f'bind = "{HOST}"', f"port = {self.port}",
            f'log_level = "{s.log_level}"',
            *([f"receive_processes = {s.receive_processes}"] if s.receive_processes is not None else []), "",
            "[paths]", 'data = "data"', 'inbox = "data/inbox"', 'export = "data/export"', "",
            "[series]", f"quiet_seconds = {s.quiet_seconds}", "",
            "[inbox]", f"settle_seconds = {s.settle_seconds}", "",
            "[export]", f"enabled = {'true' if s.export_enabled else 'false'}", "",
            "[seg]", f'type = "{s.seg_type}"', "",
        ]
        if s.destination is not None:
            ae, host, port = s.destination
            lines += ["[[destinations]]", 'name = "pacs"', f'ae_title = "{ae}"', f'host = "{host}"', f"port = {port}"]
        else:
            lines += ["[[destinations]]", 'name = "outgoing"', 'folder = "data/outgoing"']
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [self.python, "-m", "node", "run", "--config", str(self.config_path)]

    def start(self) -> None:
        self.write_config()
        super().start()

    def instance_count(self, series_uid: str) -> int:
        """Instance files the node's store holds for a series (temporary files excluded)."""
        folder = self.data / "instances" / series_uid
        if not folder.is_dir():
            return 0
        return sum(1 for p in folder.iterdir() if p.suffix == ".dcm" and not p.name.startswith("."))


class StoreSCPProcess(Receiver):
    """DCMTK ``storescp -aet AE -od FOLDER PORT`` (one association at a time, no fsync)."""

    name = "storescp"

    def __init__(self, root: Path, port: int, *, ae_title: str = "STORESCP", nodelay: bool = True) -> None:
        super().__init__(ae_title, port, root / "storescp.log")
        self.folder = root / "received"
        self.nodelay = nodelay

    def command(self) -> list[str]:
        return ["storescp", "-aet", self.ae_title, "-od", str(self.folder), str(self.port)]

    def env(self) -> dict[str, str]:
        return dcmtk_env(nodelay=self.nodelay)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        super().start()

    def instance_count(self) -> int:
        return sum(1 for p in self.folder.iterdir() if p.is_file())


class BareScpProcess(Receiver):
    """A bare pynetdicom storage SCP (this file run as a script): one ``write()`` per instance, no fsync, no index.

    What any receiver built on pynetdicom costs before it does its own work; compare with the node and storescp.
    """

    name = "bare pynetdicom SCP"

    def __init__(self, root: Path, port: int, *, ae_title: str = "BARESCP") -> None:
        super().__init__(ae_title, port, root / "bare-scp.log")
        self.folder = root / "received"

    def command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "bare-scp", str(self.port), str(self.folder),
                self.ae_title]

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        super().start()

    def instance_count(self) -> int:
        return sum(1 for p in self.folder.iterdir() if p.is_file())


def serve_bare_scp(port: int, folder: Path, ae_title: str) -> None:
    """Run the bare pynetdicom SCP of :class:`BareScpProcess` until killed."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt
    from pynetdicom.presentation import AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    def on_store(event: Any) -> int:
        name = str(event.request.AffectedSOPInstanceUID)
        (folder / f"{name}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_supported_context(Verification)
    ae.start_server((HOST, port), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store)])


# --- sending -----------------------------------------------------------------------------------------------------


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
    seconds = str(max(1, int(timeout)))
    return ["storescu", "-aet", "BENCH", "-aec", called_ae, "-to", seconds, "-ta", seconds, "-td", seconds,
            HOST, str(port), *(str(f) for f in files)]


def send(port: int, called_ae: str, groups: Sequence[Sequence[Path]], log_dir: Path, *, nodelay: bool = True,
         timeout: float = 600.0) -> SendResult:
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
            processes.append(subprocess.Popen(storescu_command(port, called_ae, group, timeout=60),
                                              stdout=handles[i], stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=env))
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


if __name__ == "__main__":
    # Only the bare SCP is run this way (by BareScpProcess); the benchmarks import this module.
    if len(sys.argv) == 5 and sys.argv[1] == "bare-scp":
        serve_bare_scp(int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
    else:
        raise SystemExit("usage: common.py bare-scp PORT FOLDER AE_TITLE")
