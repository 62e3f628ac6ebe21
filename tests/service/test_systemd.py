"""segnode under systemd (node/service/systemd.py, node/service/install.py, systemd/segnode.service).

The notify protocol is checked against a datagram socket standing in for systemd, given to a real
`python -m node run` as NOTIFY_SOCKET; the unit is checked by systemd-analyze itself (verify, security).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import synthetic as syn
from dcmtk import free_port
from nodes import folder_destination, run_node_process, write_config

from node.cli import main
from node.config import Config, ExportConfig, FolderDestination, NodeConfig, PathsConfig, load_config
from node.service import install as installer
from node.service.systemd import ServiceManager, notify, stalled_stages, watchdog_seconds

Message = dict[str, str]
REPOSITORY = Path(__file__).resolve().parents[2]
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: every datagram, parsed, in arrival order."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + address[1:] if address.startswith("@") else address)
        self.received: list[Message] = []

    def _receive(self, timeout: float) -> Message | None:
        self.socket.settimeout(max(timeout, 0.001))
        try:
            data = self.socket.recv(4096)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append(message)
        return message

    def wait_for(self, what: str, condition: Callable[[Message], bool], timeout: float = 60.0) -> Message:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self._receive(remaining)
            if message is not None and condition(message):
                return message
        raise AssertionError(f"no {what} within {timeout:g} s; got {self.received[-10:]}")

    def collect(self, seconds: float) -> list[Message]:
        deadline = time.monotonic() + seconds
        got = []
        while (remaining := deadline - time.monotonic()) > 0:
            message = self._receive(remaining)
            if message is not None:
                got.append(message)
        return got

    def close(self) -> None:
        self.socket.close()


@pytest.mark.parametrize("address", ["path", "@abstract"])
def test_notify_reaches_a_path_or_an_abstract_socket(tmp_path: Path, address: str) -> None:
    name = str(tmp_path / "notify") if address == "path" else f"@segnode-test-{os.getpid()}-{time.monotonic_ns()}"
    systemd = FakeSystemd(name)
    try:
        assert notify({"READY": "1", "STATUS": "listening"}, {"NOTIFY_SOCKET": name})
        assert systemd.collect(0.2) == [{"READY": "1", "STATUS": "listening"}]
    finally:
        systemd.close()


def test_without_a_manager_notify_does_nothing_and_a_gone_one_is_not_an_error(tmp_path: Path) -> None:
    assert not notify({"READY": "1"}, {})
    assert not notify({"READY": "1"}, {"NOTIFY_SOCKET": str(tmp_path / "absent")})
    assert not notify({"READY": "1"}, {"NOTIFY_SOCKET": "vsock:2:1234"})


def test_the_watchdog_is_for_the_process_systemd_named() -> None:
    mine = str(os.getpid())
    assert watchdog_seconds({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": mine}) == 60.0
    assert watchdog_seconds({"WATCHDOG_USEC": "60000000"}) == 60.0
    assert watchdog_seconds({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None  # inherited by a child
    assert watchdog_seconds({}) is None and watchdog_seconds({"WATCHDOG_USEC": "0"}) is None
    manager = ServiceManager({"WATCHDOG_USEC": "3000000"})
    assert manager.ping_interval(1.0) == 1.0 and ServiceManager({"WATCHDOG_USEC": "1000000"}).ping_interval(1.0) == 0.5
    assert stalled_stages({"export": 2.0, "deliver": 0.5, "build": 1.5}, 1.0) == ["build", "export"]


def config_with(port: int) -> Config:
    return Config(node=NodeConfig(port=port))


def test_the_unit_grants_the_bind_capability_only_for_a_port_below_1024() -> None:
    low = installer.render_unit(config_with(104), ["/opt/segnode/.venv/bin/segnode"])
    high = installer.render_unit(config_with(11112), ["/opt/segnode/.venv/bin/segnode"])
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n" in low and "AmbientCapabilities=CAP_NET_BIND_SERVICE\n" in low
    assert "CapabilityBoundingSet=\n" in high and "AmbientCapabilities" not in high and "PrivateUsers=yes" in high
    assert "PrivateUsers" not in low  # a capability inside a user namespace of its own cannot bind a host port
    assert "ExecStart=/opt/segnode/.venv/bin/segnode run --config /etc/segnode/segnode.toml\n" in high


def test_the_unit_may_write_exactly_the_configured_folders() -> None:
    config = Config(
        paths=PathsConfig(data=Path("/srv/segnode"), inbox=Path("/srv/segnode/inbox"), export=Path("/exchange/out")),
        destinations=(FolderDestination(name="copies", folder=Path("/mnt/pacs-drop")),),
    )
    unit = installer.render_unit(config, ["/usr/bin/segnode"])
    assert "ReadWritePaths=/srv/segnode /exchange/out /mnt/pacs-drop\n" in unit
    assert "WorkingDirectory=/srv/segnode\n" in unit


def test_an_export_command_keeps_devices_and_jit_for_the_tool_it_runs() -> None:
    plain = installer.render_unit(Config(), ["/usr/bin/segnode"])
    with_tool = installer.render_unit(Config(export=ExportConfig(command="TotalSegmentator -i {nifti}")), ["x"])
    assert "MemoryDenyWriteExecute=yes" in plain and "PrivateDevices=yes" in plain
    assert "MemoryDenyWriteExecute=yes" not in with_tool and "PrivateDevices=yes" not in with_tool


def test_the_unit_in_the_repository_is_the_rendering_of_the_shipped_config() -> None:
    rendered = installer.render_unit(load_config(installer.CHECKOUT_CONFIG), ["/opt/segnode/.venv/bin/segnode"])
    assert (REPOSITORY / "systemd" / "segnode.service").read_text() == rendered, (
        "systemd/segnode.service is stale: regenerate it with node.service.install.render_unit"
    )


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120, check=False)


@needs_analyze
@pytest.mark.parametrize("port", [11112, 104])
def test_systemd_analyze_verifies_the_unit_and_rates_its_exposure_low(tmp_path: Path, port: int) -> None:
    # verify wants ExecStart's binary to exist (this installation's segnode does), not the user: that is
    # resolved when the service starts, so this runs on a machine without a segnode user as well.
    unit = tmp_path / "segnode.service"
    unit.write_text(installer.render_unit(config_with(port), installer.segnode_executable()))
    verified = analyze("verify", str(unit))
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    security = analyze("security", "--offline=true", str(unit))
    score = re.search(r"Overall exposure level for segnode\.service: (\d+\.\d+)", security.stdout)
    assert score is not None, security.stdout + security.stderr
    assert float(score.group(1)) < 3.0, security.stdout


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    return root


def test_a_dry_run_says_every_step_and_does_none(staging: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install-service", "--root", str(staging), "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "would create system user segnode" in said and f"would write {staging}/etc/systemd/system" in said
    assert sorted(p.name for p in staging.rglob("*")) == ["etc"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("systemd-sysusers") is None, reason="needs root and sysusers")
def test_install_into_a_staging_root_makes_user_folders_config_and_unit(staging: Path) -> None:
    said: list[str] = []
    installer.install(root=staging, say=said.append)
    passwd = (staging / "etc/passwd").read_text()
    entry = next(line.split(":") for line in passwd.splitlines() if line.startswith("segnode:"))
    uid, gid = int(entry[2]), int(entry[3])
    assert 0 < uid < 1000 and entry[6] == "/usr/sbin/nologin"  # a system user that cannot log in
    data = staging / "var/lib/segnode"
    assert (data.stat().st_uid, data.stat().st_gid, data.stat().st_mode & 0o777) == (uid, gid, 0o750)
    config = staging / "etc/segnode/segnode.toml"
    assert (config.stat().st_uid, config.stat().st_gid, config.stat().st_mode & 0o777) == (0, gid, 0o640)
    assert config.read_text() == installer.CHECKOUT_CONFIG.read_text()
    unit = (staging / "etc/systemd/system/segnode.service").read_text()
    assert f"ExecStart={installer.segnode_executable()[0]} run --config /etc/segnode/segnode.toml\n" in unit
    assert any("no daemon-reload" in line for line in said)

    config.write_text(config.read_text().replace("port = 11112", "port = 104"))
    again: list[str] = []
    installer.install(root=staging, say=again.append)  # a second run keeps the user and the edited config
    assert "user segnode: exists" in again and (staging / "etc/passwd").read_text() == passwd
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in (staging / "etc/systemd/system/segnode.service").read_text()
    if shutil.which("systemd-analyze"):
        verified = analyze("verify", str(staging / "etc/systemd/system/segnode.service"))
        assert verified.returncode == 0, verified.stderr


def test_install_reads_a_given_config_as_its_installed_copy_and_keeps_a_shared_folder_s_owner(
    staging: Path, tmp_path: Path
) -> None:
    shared = staging / "srv/share"  # a folder destination another service reads
    shared.mkdir(parents=True)
    shared.chmod(0o755)
    source = tmp_path / "mine.toml"
    source.write_text(
        '[paths]\ndata = "state"\ninbox = "state/inbox"\nexport = "state/export"\n'
        '[[destinations]]\nname = "share"\nfolder = "/srv/share"\n'
    )
    installer.install(root=staging, source_config=source, say=lambda _line: None)
    unit = (staging / "etc/systemd/system/segnode.service").read_text()
    # Relative paths are the installed copy's: under /etc/segnode, not under the folder the source came from.
    assert "/etc/segnode/state" in unit and str(tmp_path) not in unit
    assert (staging / "etc/segnode/state").is_dir()
    assert (shared.stat().st_uid, shared.stat().st_mode & 0o777) == (0, 0o755)  # not taken over


MDWE_PROBE = """
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux >= 6.3)
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("writable executable memory was allowed")
except OSError:
    pass
import pydicom
from pydicom.data import get_testdata_file
for name in ("JPEG2000.dcm", "JPEGLSNearLossless_16.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_RLE.dcm"):
    path = get_testdata_file(name)
    if path is not None:
        assert pydicom.dcmread(path).pixel_array.size > 0, name
from node.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_node_converts_without_writable_executable_memory(tmp_path: Path) -> None:
    """What MemoryDenyWriteExecute=yes forbids, Linux's own PR_SET_MDWE forbids too: decoders and convert work."""
    grid = syn.GridSpec.axial(rows=8, cols=10, slices=4, row_spacing=1.0, col_spacing=1.0, slice_step=2.0)
    series = syn.write_series(grid, tmp_path / "dicom")
    reference = (syn.export_grid_affine(grid), syn.export_grid_shape(grid))
    nifti = syn.label_nifti_on_grid(reference, syn.Phantom.fitting(grid), tmp_path / "seg.nii.gz", snap=grid)
    out = tmp_path / "seg.dcm"
    args = ["convert", "--dicom", str(series.folder), "--nifti", str(nifti), "--out", str(out)]
    done = subprocess.run([sys.executable, "-c", MDWE_PROBE, *args], capture_output=True, text=True, timeout=300)
    if done.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert done.returncode == 0, done.stderr
    assert out.is_file() and np.count_nonzero(syn.seg_labels_on_source(out, grid)) > 0


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    """A stand-in for systemd: the node processes a test starts notify it, with a 1 s watchdog."""
    fake = FakeSystemd(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", fake.address)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    yield fake
    fake.close()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.slow
def test_the_node_says_ready_once_listening_feeds_the_watchdog_and_says_reloading_and_stopping(
    tmp_path: Path, systemd: FakeSystemd, processes: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    log = tmp_path / "node.log"
    processes.append(run_node_process(write_config(tmp_path / "node", port, folder_destination()), log))
    process = processes[0]
    ready = systemd.wait_for("READY=1", lambda m: "READY" in m)
    assert systemd.received == [ready], "nothing before READY=1"
    assert ready["READY"] == "1" and f"127.0.0.1:{port}" in ready["STATUS"]
    socket.create_connection(("127.0.0.1", port), timeout=2).close()  # READY=1 means it listens
    pings = [m for m in systemd.collect(2.5) if m.get("WATCHDOG") == "1"]
    assert len(pings) >= 3, f"expected a ping every 0.5 s, got {systemd.received}"

    process.send_signal(signal.SIGHUP)
    systemd.wait_for("RELOADING=1", lambda m: m.get("RELOADING") == "1")
    systemd.wait_for("READY=1 after the reload", lambda m: m.get("READY") == "1", timeout=30)
    systemd.wait_for("WATCHDOG=1 after the reload", lambda m: m.get("WATCHDOG") == "1", timeout=10)
    assert process.poll() is None, log.read_text()

    process.send_signal(signal.SIGTERM)
    stopping = systemd.wait_for("STOPPING=1", lambda m: "STOPPING" in m, timeout=10)
    assert stopping["STOPPING"] == "1" and "draining" in stopping["STATUS"]
    assert process.wait(20) == 0, log.read_text()


@pytest.mark.slow
def test_a_stalled_stage_starves_the_watchdog_until_it_moves_again(
    tmp_path: Path, systemd: FakeSystemd, processes: list[subprocess.Popen[bytes]]
) -> None:
    config = write_config(
        tmp_path / "node",
        free_port(),
        folder_destination(),
        receive_processes=1,
        sections={"node": {"stall_seconds": 1}},
    )
    log = tmp_path / "node.log"
    processes.append(run_node_process(config, log))
    systemd.wait_for("READY=1", lambda m: m.get("READY") == "1")
    systemd.wait_for("a first WATCHDOG=1", lambda m: m.get("WATCHDOG") == "1")
    # Another process holding the database's write lock: every stage waits in its next claim (a real stall).
    holder = sqlite3.connect(load_config(config).paths.database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        stalled = systemd.wait_for("STATUS=stalled", lambda m: m.get("STATUS", "").startswith("stalled"), timeout=15)
        assert "completion" in stalled["STATUS"] or "export" in stalled["STATUS"], stalled
        during = systemd.collect(3.0)
        assert not [m for m in during if "WATCHDOG" in m], f"fed the watchdog while stalled: {during}"
    finally:
        holder.rollback()
        holder.close()
    systemd.wait_for("WATCHDOG=1 once the stages move again", lambda m: m.get("WATCHDOG") == "1", timeout=15)
    assert "stalled; the watchdog is no longer fed" in log.read_text()
    processes[0].send_signal(signal.SIGTERM)
    assert processes[0].wait(20) == 0, log.read_text()
