"""The listening socket the node serves DICOM on, and pynetdicom's server serving a socket opened beforehand.

:func:`open_listener` binds once, in the main process; the in-process :class:`~node.dicom.scp.StorageSCP` or
several receiver processes (:mod:`node.dicom.receivers`) then serve that one socket through
:class:`ListenerServer`.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)


#: How long :func:`open_listener` retries an address still held by a previous node's receivers.
BIND_RETRY_SECONDS = 10.0


def open_listener(
    bind: str, port: int, *, backlog: int = 64, retry_seconds: float = BIND_RETRY_SECONDS
) -> socket.socket:
    """A listening TCP socket on ``bind:port`` (``port=0``: the OS picks), to serve from one or more processes.

    The socket is non-blocking: when several receiver processes share it, the ones that lose the race for a
    connection must not block in ``accept()``. An address in use is retried for ``retry_seconds``: when a
    supervisor restarts the node at once, the receivers of the one it just stopped may not have exited yet.

    Raises
    ------
    OSError
        The address cannot be bound (still in use after the retries, no permission for ports below 1024).
    """
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    deadline = time.monotonic() + retry_seconds
    warned = False
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((bind, port))
            sock.listen(backlog)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise
            if not warned:
                log.warning("%s:%d is in use; retrying for up to %g s", bind, port, retry_seconds)
                warned = True
            time.sleep(0.5)


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's association server, serving a socket opened beforehand (:func:`open_listener`)."""

    def __init__(self, *args: Any, listener: socket.socket, **kwargs: Any) -> None:
        self._listener = listener
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.close()  # the one socketserver made; ours is already bound and listening
        self.socket = self._listener
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass
