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

The receivers count into one :class:`~node.dicom.counters.ReceiverCounters` made by the parent (shared memory,
so counts survive a receiver's restart, and the association limit holds over all receivers together). With
``[tls] port`` every receiver serves the TLS socket too, with an SSL context it builds itself from the config
(contexts do not pickle). On SIGHUP (:meth:`ReceiverPool.reload`) a receiver reads its configuration file again
and applies it to new associations (:meth:`StorageSCP.apply`); a file that does not load leaves the old one in
force, with the reason logged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import socket
import time
from types import FrameType
from typing import Any

from node import logs
from node.config import Config, load_config
from node.dicom.counters import ROWS, ReceiverCounters
from node.dicom.listener import open_listener
from node.dicom.scp import ABORT_WAIT_SECONDS, StorageSCP
from node.dicom.tls import TlsFileError
from node.errors import ConfigError

log = logging.getLogger(__name__)

#: Seconds a receiver lets open associations finish after SIGTERM (as :meth:`StorageSCP.stop`'s default).
DRAIN_SECONDS = 5.0
#: Seconds :meth:`ReceiverPool.stop` waits for receivers before it kills them.
STOP_SECONDS = DRAIN_SECONDS + ABORT_WAIT_SECONDS + 0.5
_PR_SET_PDEATHSIG = 1
#: Seconds a receiver's main loop sleeps between two looks at its signal flags and its parent.
TICK_SECONDS = 0.2


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


def _reload(scp: StorageSCP, config: Config) -> Config:
    """``config`` read again from its file and applied to ``scp``; on error the old one, with the reason logged."""
    if config.source is None:
        log.error("reload: the configuration was not read from a file; keeping it")
        return config
    try:
        fresh = load_config(config.source)
        scp.apply(fresh)
    except (ConfigError, TlsFileError) as exc:
        log.error("reload: keeping the previous configuration: %s", exc)
        return config
    return fresh


def serve(
    config: Config,
    listener: socket.socket | None,
    number: int,
    parent_pid: int,
    log_level: int,
    counters: ReceiverCounters | None = None,
    tls_listener: socket.socket | None = None,
) -> None:
    """A receiver process's body: serve ``listener`` (and ``tls_listener``) until SIGTERM/SIGINT or the parent's
    death; SIGHUP reloads the configuration."""
    # The handler only appends to lists: it runs on the main thread between two bytecodes, possibly while that
    # thread holds a lock (a threading.Event's, say), so taking any lock in it could deadlock the receiver.
    stops: list[int] = []
    reloads: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        (reloads if signum == signal.SIGHUP else stops).append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    # The pool blocks SIGHUP while it starts a receiver (a SIGHUP before this point would kill it); any that
    # came meanwhile is delivered now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    logs.configure(log_level, process=f"receiver-{number}", settings=config.logging)
    _die_with_parent(parent_pid)
    scp = StorageSCP.from_config(
        config,
        listener=listener,
        tls_listener=tls_listener,
        counters=counters.for_receiver(number) if counters is not None else None,
    )
    scp.start()
    drain = DRAIN_SECONDS
    try:
        while not stops:
            time.sleep(TICK_SECONDS)  # a signal's handler runs during it; the flags are seen at the next step
            if os.getppid() != parent_pid:
                log.error("the node's main process is gone; stopping at once")
                drain = 0.0
                break
            if reloads and not stops:
                reloads.clear()  # before reading the file: a SIGHUP from now on asks for another reload
                config = _reload(scp, config)
    finally:
        scp.stop(drain_seconds=drain)


class ReceiverPool:
    """``processes`` receiver processes serving the listening sockets of ``[node] bind:port`` and ``[tls] port``.

    Start it from the thread that will also stop it and that lives as long as the node (the main thread):
    Linux sends the parent-death signal when the *thread* that started a process exits.

    ``counters`` must have a row per receiver (the default :data:`~node.dicom.counters.ROWS` has); None: the pool
    makes its own (:attr:`counters`).
    """

    def __init__(self, config: Config, processes: int, *, counters: ReceiverCounters | None = None) -> None:
        if counters is not None and counters.rows <= processes:
            raise ValueError(f"counters of {counters.rows} rows cannot count {processes} receivers (row 0 is spare)")
        self.config = config
        self.processes = processes
        self.counters = counters if counters is not None else ReceiverCounters(rows=max(ROWS, processes + 1))
        self._context: Any = multiprocessing.get_context("spawn")
        self._listener: socket.socket | None = None
        self._tls_listener: socket.socket | None = None
        self._workers: dict[int, Any] = {}
        self.port = config.node.port if config.tls.plain else 0
        self.tls_port = config.tls.port

    def start(self) -> None:
        """Bind the addresses and start the receivers; returns at once (connections wait in the sockets' backlog
        until a receiver is up to accept them).

        Raises
        ------
        OSError
            An address cannot be bound.
        """
        node, tls = self.config.node, self.config.tls
        try:
            if tls.plain:
                self._listener = open_listener(node.bind, node.port)
                self.port = int(self._listener.getsockname()[1])
            if tls.port:
                self._tls_listener = open_listener(node.bind, tls.port)
                self.tls_port = int(self._tls_listener.getsockname()[1])
        except BaseException:
            self._close_listeners()
            raise
        for number in range(1, self.processes + 1):
            self._start(number)
        ports = ", ".join(f"{port} ({kind})" for port, kind in ((self.port, "plain"), (self.tls_port, "TLS")) if port)
        log.info(
            "listening as %s on %s port %s with %d receiver processes", node.ae_title, node.bind, ports, self.processes
        )

    def _close_listeners(self) -> None:
        for listener in (self._listener, self._tls_listener):
            if listener is not None:
                listener.close()  # the receivers hold their own copies until they stop
        self._listener = self._tls_listener = None

    def _start(self, number: int) -> None:
        args = (
            self.config,
            self._listener,
            number,
            os.getpid(),
            logging.getLogger().getEffectiveLevel(),
            self.counters,
            self._tls_listener,
        )
        process = self._context.Process(target=serve, name=f"segnode-receiver-{number}", daemon=True, args=args)
        # Blocked here, SIGHUP stays blocked in the new process (the mask survives fork and exec) until serve()
        # has a handler for it: a reload during start-up must not kill the receiver.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._workers[number] = process

    @property
    def pids(self) -> list[int]:
        """Process IDs of the receivers, in receiver order."""
        return [process.pid for _, process in sorted(self._workers.items())]

    @property
    def running(self) -> bool:
        return self._listener is not None or self._tls_listener is not None

    @property
    def serving(self) -> bool:
        """Whether the socket is open and every receiver process is alive (health checks, from any thread)."""
        workers = list(self._workers.values())  # a copy: stop() clears the dict from another thread
        return self.running and bool(workers) and all(process.is_alive() for process in workers)

    def check(self) -> None:
        """Start again every receiver that has exited (called periodically while the node runs)."""
        if not self.running:
            return
        for number, process in list(self._workers.items()):
            if not process.is_alive():
                log.error("receiver %d exited with status %s; starting it again", number, process.exitcode)
                process.close()
                lost = self.counters.forget_open(number)  # its associations died with it
                if lost:
                    log.warning("receiver %d took %d open association(s) with it", number, lost)
                self._start(number)

    def reload(self, config: Config | None = None) -> None:
        """Ask every receiver to read its configuration file again (SIGHUP); ``config``, when given, is what
        receivers started from now on begin with."""
        if config is not None:
            self.config = config
        for process in self._workers.values():
            if process.is_alive() and process.pid is not None:
                try:
                    os.kill(process.pid, signal.SIGHUP)
                except ProcessLookupError:
                    continue  # exited meanwhile; check() starts it again with the new config

    def stop(self) -> None:
        """Stop accepting, let every receiver drain, and kill those still running after :data:`STOP_SECONDS`."""
        self._close_listeners()
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
