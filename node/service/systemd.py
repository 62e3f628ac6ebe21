"""Telling systemd how the node is doing: the sd_notify(3) protocol, spoken directly.

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path,
or an abstract address written with a leading ``@``). That is a few lines of :mod:`socket`; the alternatives
(the ``systemd-python`` binding, ``sdnotify``) add a compiled dependency on libsystemd or a package that does the
same few lines, and neither changes what is sent. Outside systemd (no ``$NOTIFY_SOCKET``) every call does
nothing, so the node behaves the same in a terminal, a container or a test.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(fields: Mapping[str, str], environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``fields`` (``{"READY": "1", "STATUS": "..."}``) to the service manager; False when none listens.

    A failure to send is logged, never raised: the node must not stop because its supervisor is gone.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux abstract namespace
    elif not address.startswith("/"):
        return False  # unset, or a vsock address (only for VMs; systemd never sets one for a service)
    message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("could not notify the service manager at %s: %s", environ["NOTIFY_SOCKET"], exc)
        return False
    return True


def watchdog_seconds(environ: Mapping[str, str] = os.environ) -> float | None:
    """The service's watchdog timeout (``$WATCHDOG_USEC``), when it is meant for this process; else None."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    # WATCHDOG_PID names the process the manager watches; a child that inherited the variables is not it.
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6


class ServiceManager:
    """The node's side of the conversation with systemd (``Type=notify`` with ``WatchdogSec=``)."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.environ = environ
        self.watchdog = watchdog_seconds(environ)

    def ping_interval(self, longest: float) -> float:
        """How often the main loop should wake: at most ``longest``, and twice per watchdog period, as
        sd_watchdog_enabled(3) advises."""
        return min(longest, self.watchdog / 2) if self.watchdog else longest

    def ready(self, status: str) -> None:
        notify({"READY": "1", "STATUS": status}, self.environ)

    def status(self, status: str) -> None:
        notify({"STATUS": status}, self.environ)

    def alive(self) -> None:
        """Feed the watchdog; call only while the node does its work (every stage's heartbeat is fresh)."""
        if self.watchdog:
            notify({"WATCHDOG": "1"}, self.environ)

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (>= 253, Type=notify-reload) tell this reload from an earlier one.
        notify({"RELOADING": "1", "MONOTONIC_USEC": str(time.monotonic_ns() // 1000)}, self.environ)

    def stopping(self, status: str) -> None:
        notify({"STOPPING": "1", "STATUS": status}, self.environ)


def stalled_stages(heartbeats: Mapping[str, float], stall_seconds: float) -> list[str]:
    """The stages whose last heartbeat is older than ``stall_seconds`` (:meth:`Node.heartbeats`), by name.

    >>> stalled_stages({"export": 700.0, "deliver": 0.4}, 600.0)
    ['export']
    """
    return sorted(name for name, age in heartbeats.items() if age > stall_seconds)
