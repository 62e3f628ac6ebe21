"""Receiver processes: C-STORE throughput that grows with concurrent associations.

pynetdicom serves each association on Python threads, so one process receives at most one CPU's worth however
many peers send at once (the GIL). With ``[node] receive_processes`` above 1 the node opens the listening
socket itself and starts that many receiver processes that all accept from it. Each runs a
:class:`~node.dicom.scp.StorageSCP` with its own database connection (SQLite in WAL mode serialises their short
writes); the node's other stages stay in the main process and, as with the in-process receiver, see received
instances only through the database and the store.

Receivers start with the ``spawn`` method: a fresh interpreter inherits none of the main process's threads or
open database connections. On SIGTERM a receiver drains like the in-process receiver (open associations may
finish for a while, then are aborted). When the main process dies, its receivers are killed with it
(``PR_SET_PDEATHSIG``): a ``kill -9`` of the node stops the whole node at once, as it would without receiver
processes, and leaves no orphan holding the port. Nothing acknowledged is lost either way, since a success status
is only sent once the instance is on disk and indexed. A receiver that exits while the node runs is started
again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

from node import logs
from node.config import Config
from node.dicom.listener import open_listener
from node.dicom.scp import ABORT_WAIT_SECONDS, StorageSCP

log = logging.getLogger(__name__)

#: Seconds a receiver lets open associations finish after SIGTERM (as :meth:`StorageSCP.stop`'s default).
DRAIN_SECONDS = 5.0
#: Seconds :meth:`ReceiverPool.stop` waits for receivers before it kills them.
STOP_SECONDS = DRAIN_SECONDS + ABORT_WAIT_SECONDS + 0.5
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (where prctl is missing, :func:`serve`'s poll
    notices within a second)."""
    name = ctypes.util.find_library("c")
    if name is not None:
        libc = ctypes.CDLL(name, use_errno=True)
        if hasattr(libc, "prctl"):
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def serve(config: Config, listener: socket.socket, number: int, parent_pid: int, log_level: int) -> None:
    """A receiver process's body: serve ``listener`` until SIGTERM/SIGINT or the parent's death."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logs.configure(log_level, process=f"receiver-{number}")
    _die_with_parent(parent_pid)
    scp = StorageSCP.from_config(config, listener=listener)
    scp.start()
    drain = DRAIN_SECONDS
    try:
        while not stop.wait(1.0):
            if os.getppid() != parent_pid:
                log.error("the node's main process is gone; stopping at once")
                drain = 0.0
                break
    finally:
        scp.stop(drain_seconds=drain)


class ReceiverPool:
    """``processes`` receiver processes serving one listening socket on ``[node] bind:port``.

    Start it from the thread that will also stop it and that lives as long as the node (the main thread):
    Linux sends the parent-death signal when the *thread* that started a process exits.
    """

    def __init__(self, config: Config, processes: int) -> None:
        self.config = config
        self.processes = processes
        self._context: Any = multiprocessing.get_context("spawn")
        self._listener: socket.socket | None = None
        self._workers: dict[int, Any] = {}
        self.port = config.node.port

    def start(self) -> None:
        """Bind the address and start the receivers; returns at once (connections wait in the socket's backlog
        until a receiver is up to accept them).

        Raises
        ------
        OSError
            The address cannot be bound.
        """
        self._listener = open_listener(self.config.node.bind, self.config.node.port)
        self.port = int(self._listener.getsockname()[1])
        for number in range(1, self.processes + 1):
            self._start(number)
        log.info(
            "listening as %s on %s:%d with %d receiver processes",
            self.config.node.ae_title,
            self.config.node.bind,
            self.port,
            self.processes,
        )

    def _start(self, number: int) -> None:
        assert self._listener is not None
        process = self._context.Process(
            target=serve,
            name=f"segnode-receiver-{number}",
            daemon=True,
            args=(self.config, self._listener, number, os.getpid(), logging.getLogger().getEffectiveLevel()),
        )
        process.start()
        self._workers[number] = process

    @property
    def pids(self) -> list[int]:
        """Process IDs of the receivers, in receiver order."""
        return [process.pid for _, process in sorted(self._workers.items())]

    def check(self) -> None:
        """Start again every receiver that has exited (called periodically while the node runs)."""
        if self._listener is None:
            return
        for number, process in list(self._workers.items()):
            if not process.is_alive():
                log.error("receiver %d exited with status %s; starting it again", number, process.exitcode)
                process.close()
                self._start(number)

    def stop(self) -> None:
        """Stop accepting, let every receiver drain, and kill those still running after :data:`STOP_SECONDS`."""
        if self._listener is not None:
            self._listener.close()  # the receivers hold their own copies until they stop
            self._listener = None
        workers = list(self._workers.values())
        self._workers.clear()
        for process in workers:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_SECONDS
        for process in workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("receiver %s did not stop in %g s; killing it", process.name, STOP_SECONDS)
                process.kill()
                process.join(1.0)
