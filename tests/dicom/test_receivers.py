"""node/receivers.py and the shared listener: several receiver processes on one port, with DCMTK as the senders."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pytest
import synthetic as syn
from dcmtk import HOST, dcmtk_env, echoscu, free_port, wait_for_echo
from nodes import folder_destination, run_node_process, start_node, wait_for, write_config

from node.dicom.scp import open_listener
from node.service.node import Node
from node.state import open_state

# nibabel's annotations are partial: used as a dynamic module, as in tests/synthetic.py.
nib: Any = nibabel

pytestmark = pytest.mark.skipif(
    shutil.which("storescu") is None, reason="DCMTK not installed (scripts/test.sh installs it)"
)


def children_of(pid: int) -> set[int]:
    """Live child processes of ``pid`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def receivers_of(pid: int) -> set[int]:
    """The receiver processes among ``pid``'s children (multiprocessing also starts a resource tracker)."""
    found = set()
    for child in children_of(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except OSError:
            continue
    return found


def is_resource_tracker(pid: int) -> bool:
    try:
        return b"multiprocessing.resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    config = write_config(tmp_path / "node", free_port(), folder_destination(), receive_processes=3)
    running = start_node(config)
    try:
        yield running
    finally:
        running.stop()


def test_concurrent_associations_are_all_stored_and_the_series_completes_once(node: Node, tmp_path: Path) -> None:
    assert node.receivers is not None and node.scp is None
    assert len(node.receivers.pids) == 3 and set(node.receivers.pids) <= children_of(os.getpid())
    grid = syn.GridSpec.axial(rows=64, cols=48, slices=24)
    info = syn.write_series(grid, tmp_path / "dicom", instance_numbers="shuffled")
    senders = [
        subprocess.Popen(
            ["storescu", "-aec", "SEGNODE", HOST, str(node.port), *map(str, info.paths[k::4])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=dcmtk_env(),
        )
        for k in range(4)
    ]
    assert [sender.wait(60) for sender in senders] == [0, 0, 0, 0]
    with open_state(node.paths.data, node.paths.database, node_id="test-reader") as state:
        stored = state.series.instances(info.series_uid)
    assert sorted(p.stem for p in stored) == sorted(info.sop_uids)
    assert all(p.read_bytes()[128:132] == b"DICM" for p in stored)
    export = node.paths.export / f"{info.series_uid}.nii.gz"
    wait_for("the series exported", export.exists)
    image = nib.load(export)
    assert image.shape[2] == grid.slices
    # Whole and in order: the first voxel sits on the first slice's first pixel (NIfTI RAS, DICOM LPS).
    np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0]) @ image.affine[:3, 3], grid.centres_lps()[0, 0, 0], atol=1e-4)


def test_a_receiver_that_dies_is_started_again(node: Node) -> None:
    assert node.receivers is not None
    before = node.receivers.pids
    os.kill(before[1], signal.SIGKILL)
    wait_for("the receiver to die", lambda: not alive(before[1]))
    node.receivers.check()
    after = node.receivers.pids
    assert after[0] == before[0] and after[2] == before[2] and after[1] != before[1]
    assert alive(after[1])
    for _ in range(6):  # every receiver that might take the connection answers
        assert echoscu(node.port, called_ae="SEGNODE").ok


def test_killing_the_node_kills_its_receivers_and_frees_the_port(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "node", port, folder_destination(), receive_processes=2)
    process = run_node_process(config, tmp_path / "node.log")
    try:
        wait_for_echo(port, called_ae="SEGNODE")
        receivers = wait_for("two receivers", lambda: len(receivers_of(process.pid)) == 2 and receivers_of(process.pid))
        assert isinstance(receivers, set)
        process.kill()
        process.wait(10)
        wait_for("the receivers to die with the node", lambda: not any(alive(pid) for pid in receivers), timeout=5)
        # Nothing holds the port any more: a restart binds it, within the few seconds a restart retries for (the
        # kernel may take a moment to close the dead processes' sockets on a loaded machine); a leak never would.
        open_listener(HOST, port, retry_seconds=5).close()
    finally:
        if process.poll() is None:
            process.kill()


def test_one_receive_process_receives_in_the_nodes_own_process(tmp_path: Path) -> None:
    config = write_config(tmp_path / "node", free_port(), folder_destination(), receive_processes=1)
    before = children_of(os.getpid())
    node = start_node(config)
    try:
        assert node.receivers is None and node.scp is not None
        assert echoscu(node.port, called_ae="SEGNODE").ok
        # Shared counters may start multiprocessing's resource tracker; no receiver, nor anything else, starts.
        started = {pid for pid in children_of(os.getpid()) - before if not is_resource_tracker(pid)}
        assert started == set()
    finally:
        node.stop()


def test_open_listener_waits_for_an_address_still_in_use(tmp_path: Path) -> None:
    port = free_port()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind((HOST, port))
    blocker.listen()
    with pytest.raises(OSError) as caught:
        open_listener(HOST, port, retry_seconds=0)
    assert caught.value.errno == errno.EADDRINUSE
    threading.Timer(1.0, blocker.close).start()
    started = time.monotonic()
    listener = open_listener(HOST, port, retry_seconds=10)
    try:
        assert time.monotonic() - started >= 0.9
        assert listener.getsockname()[1] == port and listener.getblocking() is False
    finally:
        listener.close()
