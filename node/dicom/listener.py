"""The listening socket the node serves DICOM on, and pynetdicom's server serving a socket opened beforehand.

:func:`open_listener` binds once, in the main process; the in-process :class:`~node.dicom.scp.StorageSCP` or
several receiver processes (:mod:`node.dicom.receivers`) then serve that one socket through
:class:`ListenerServer`. For DICOM TLS the server wraps each accepted connection and runs the handshake on the
connection's own thread (after refusing sources the access policy does not allow, so a stranger gets no
handshake), and shutting the server down does not wait for handshakes in progress; it reports the end of every
association's thread, where admission gives back its slot (:mod:`node.dicom.admission`).
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

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


#: Seconds a TLS client has to complete its handshake unless the server is told otherwise.
HANDSHAKE_SECONDS = 30.0


class _ExitReportingHandler(RequestHandler):
    """pynetdicom's request handler, whose associations report to their server when their thread ends."""

    server: ListenerServer

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        reactor = assoc.run
        server = self.server

        def run_then_report() -> None:
            try:
                reactor()
            finally:
                server.association_exited(assoc)

        # The association's own thread runs this: its end is the one point every path reaches (release, abort,
        # rejection, timeout, the peer vanishing, an exception), which events cannot promise.
        assoc.run = run_then_report  # type: ignore[method-assign]
        return assoc


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's association server, serving a socket opened beforehand (:func:`open_listener`).

    Parameters
    ----------
    listener
        The listening socket.
    on_exit
        Called with each association on its own thread as that thread ends (exceptions are logged).
    handshake_seconds
        With an ``ssl_context``: how long a client has for its TLS handshake. The handshake runs on the
        connection's own thread, not in ``accept``, so a client that never completes it delays nobody else.
    source_allowed
        With an ``ssl_context``: called with the peer's address and port as a connection is accepted; False
        closes it before the handshake (the callable logs why). Plain connections are not asked: admission
        answers them with an A-ASSOCIATE-RJ.
    """

    # A connection's thread only does the TLS handshake, then starts the association's own (daemon) thread and
    # ends. Shutting the server down must not wait for handshakes in progress (up to ``handshake_seconds``):
    # StorageSCP.stop drains and aborts the associations themselves.
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        *args: Any,
        listener: socket.socket,
        on_exit: Callable[[Any], None] | None = None,
        handshake_seconds: float = HANDSHAKE_SECONDS,
        source_allowed: Callable[[str, int], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        self._listener = listener
        self.on_exit = on_exit
        self.handshake_seconds = handshake_seconds
        self.source_allowed = source_allowed
        self._closed = False
        kwargs.setdefault("request_handler", _ExitReportingHandler)
        super().__init__(*args, **kwargs)

    def association_exited(self, assoc: Any) -> None:
        if self.on_exit is None:
            return
        try:
            self.on_exit(assoc)
        except Exception:
            log.exception("association exit handler failed")

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        client, address = self.socket.accept()
        context = self.ssl_context  # read per connection: a reload may have replaced it
        if context is not None:
            client = context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """A TLS connection from a source the access policy refuses is closed before its handshake."""
        if not isinstance(request, ssl.SSLSocket) or self.source_allowed is None:
            return True
        try:
            return self.source_allowed(str(client_address[0]), int(client_address[1]))
        except Exception:
            # Raising here would end the accept loop; refuse this one connection instead (fail closed).
            log.exception("could not check the source of a TLS connection from %s; closing it", client_address[0])
            return False

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.handshake_seconds)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
                host, port = client_address[0], client_address[1]
                log.warning("TLS handshake with %s:%s failed: %s", host, port, getattr(exc, "reason", None) or exc)
                self.shutdown_request(request)
                return
            if self._closed:  # the server was shut down during the handshake: no association after that
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def server_close(self) -> None:
        self._closed = True
        super().server_close()

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.close()  # the one socketserver made; ours is already bound and listening
        self.socket = self._listener
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass
