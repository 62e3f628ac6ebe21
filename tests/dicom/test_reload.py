"""ReceiverPool.reload: every receiver process reads its configuration file again on SIGHUP."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dcmtk import echoscu, free_port
from nodes import folder_destination, wait_for, write_config

from node.config import load_config
from node.dicom.receivers import ReceiverPool

pytestmark = pytest.mark.skipif(shutil.which("echoscu") is None, reason="DCMTK not installed")

#: Echoes after a change: with two receivers sharing the socket, enough that both answer some.
TRIES = 8


def write(folder: Path, port: int, **node: Any) -> Path:
    sections = {"node": node, "disk": {"reserve_mb": 0, "max_usage_percent": 100.0}}
    return write_config(folder, port, folder_destination(), sections=sections)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[ReceiverPool]:
    config = load_config(write(tmp_path / "node", free_port()))
    config.paths.data.mkdir(parents=True, exist_ok=True)
    receivers = ReceiverPool(config, 2)
    receivers.start()
    try:
        yield receivers
    finally:
        receivers.stop()


def answers(port: int, calling_ae: str) -> list[bool]:
    return [echoscu(port, called_ae="SEGNODE", calling_ae=calling_ae, timeout=10).ok for _ in range(TRIES)]


def test_a_reload_during_start_up_does_not_kill_a_receiver(pool: ReceiverPool) -> None:
    pids = pool.pids
    pool.reload()  # the receivers are still importing: SIGHUP must wait for their handler
    wait_for("both receivers to answer", lambda: all(answers(pool.port, "ANYONE")))
    time.sleep(0.5)
    assert pool.pids == pids and all(process.is_alive() for process in pool._workers.values())


def test_receivers_apply_a_changed_file_and_keep_it_when_the_next_one_is_broken(pool: ReceiverPool) -> None:
    wait_for("both receivers to answer", lambda: all(answers(pool.port, "ANYONE")))
    pids = pool.pids
    source = pool.config.source
    assert source is not None
    write(source.parent, pool.port, allowed_calling_aets=["PACS"])
    pool.reload(load_config(source))
    wait_for("every receiver to reject strangers", lambda: not any(answers(pool.port, "ANYONE")))
    assert all(answers(pool.port, "PACS"))
    assert pool.config.node.allowed_calling_aets == ("PACS",)  # what a restarted receiver starts with

    source.write_text(source.read_text() + "\n[node\nbroken = \n")
    pool.reload()
    time.sleep(2.5)  # time for both receivers to read the broken file (they log why they keep the old one)
    assert not any(answers(pool.port, "ANYONE")) and all(answers(pool.port, "PACS"))
    assert pool.pids == pids
