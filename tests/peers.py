"""What every peer process of the tests and benches shares: loopback ports, DCMTK's environment, start and stop.

    with MyPeer(log_path) as peer:   # a PeerProcess subclass: command() and ready()
        ...

:mod:`dcmtk` (storescu, echoscu, storescp) and :mod:`orthanc` build on this module; ``bench/`` imports all three
(with ``tests/`` on ``sys.path``), so the benchmarks start their peers the way the tests do. Nothing here imports
pytest or the node.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
#: Seconds a peer has to become ready (see :meth:`PeerProcess.ready`).
START_TIMEOUT_S = 60.0
#: Seconds a peer has to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 15.0


class PeerError(RuntimeError):
    """A peer process did not start, or exited; the message ends with the tail of its log."""


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def dcmtk_env(*, nodelay: bool = True) -> dict[str, str]:
    """The environment for DCMTK processes: the current one with TCP_NODELAY=1 (or without it: ``nodelay=False``).

    Debian's DCMTK leaves Nagle's algorithm on unless TCP_NODELAY=1 is set, which makes each small PDU wait for
    a delayed ACK (about 40 ms per instance).
    """
    env = {key: value for key, value in os.environ.items() if key != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def stop_process(process: subprocess.Popen[bytes], *, graceful: bool = True, timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM (SIGKILL when not ``graceful``), then SIGKILL if it lingers past ``timeout``; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    return int(process.returncode)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or ``(no log)``."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class PeerProcess:
    """A process with its output in ``log_path``, ready once :meth:`ready` says so; stopped with SIGTERM.

    Subclasses give :meth:`command` (and :meth:`env` when the environment differs); :meth:`start` fails with
    :class:`PeerError` when the process exits or is not ready within ``START_TIMEOUT_S``.
    """

    name = "peer"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> Sequence[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        """Whether the running process serves (e.g. answers C-ECHO); polled by :meth:`start`."""
        raise NotImplementedError

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log_file:
            self._process = subprocess.Popen(
                list(self.command()),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise PeerError(f"{self.name} exited with {code} at start-up; see {self.log_path}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise PeerError(f"{self.name} was not ready within {timeout:g} s; see {self.log_path}:\n{self.log_tail()}")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; the exit code (None if it was not started)."""
        process, self._process = self._process, None
        return stop_process(process) if process is not None else None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> PeerProcess:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
