"""Running a segnode for tests: its config file, in-process or as `python -m node run`, and waiting on it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tomli_w
from orthanc import OrthancServer

from node.config import load_config
from node.service.node import Node

WAIT_S = 60.0


def wait_for(what: str, condition: Callable[[], object], timeout: float = WAIT_S) -> object:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def write_config(
    folder: Path,
    port: int,
    destinations: str,
    *,
    quiet: float = 1.0,
    receive_processes: int = 2,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """A node config in ``folder``; ``sections`` adds or overrides keys table by table (``{"tls": {...}}``).

    The HTTP endpoint is off unless ``sections`` turns it on, so that nodes of parallel tests never share a port.
    """
    folder.mkdir(parents=True, exist_ok=True)
    document: dict[str, dict[str, Any]] = {
        "node": {
            "ae_title": "SEGNODE",
            "bind": "127.0.0.1",
            "port": port,
            "log_level": "DEBUG",
            "receive_processes": receive_processes,
        },
        "paths": {"data": "data", "inbox": "data/inbox", "export": "data/export"},
        "series": {"quiet_seconds": quiet},
        "inbox": {"settle_seconds": 0.3},
        "send": {"max_attempts": 50, "backoff_initial": 0.2, "backoff_max": 1.0, "timeout": 5},
        "http": {"port": 0},
    }
    for name, keys in (sections or {}).items():
        document.setdefault(name, {}).update(keys)
    path = folder / "node.toml"
    path.write_text(tomli_w.dumps(document) + "\n" + destinations)
    return path


def folder_destination(name: str = "out") -> str:
    return f'[[destinations]]\nname = "{name}"\nfolder = "data/outgoing"\n'


def dicom_destination(orthanc: OrthancServer) -> str:
    return (
        f'[[destinations]]\nname = "pacs"\nae_title = "{orthanc.aet}"\nhost = "127.0.0.1"\n'
        f"port = {orthanc.dicom_port}\n"
    )


def start_node(config_path: Path) -> Node:
    node = Node(load_config(config_path))
    node.start()
    return node


def run_node_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "node", "run", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


class Burst:
    """A node whose stages run only when the test says so (burst mode), with a clock the test can move on.

    The listener and the inbox watcher run as usual, so real peers can push to it; ``run(later=...)`` first moves
    the node's clock on (past a series' quiet period, a retry's wait) and then steps every stage until nothing is
    due. No wall-clock polling: what a test sees after ``run`` is what the pipeline did.
    """

    def __init__(self, config_path: Path) -> None:
        self.offset = 0.0
        self.node = Node(load_config(config_path), clock=lambda: time.time() + self.offset)
        self.node.start(threads=False)
        self.port = self.node.port
        self.data = self.node.paths.data

    def run(self, *, later: float = 0.0, timeout: float = WAIT_S) -> int:
        self.offset += later
        return self.node.run_until_idle(timeout)

    def stop(self) -> None:
        self.node.stop()
