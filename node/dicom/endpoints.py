"""The sockets one SCP serves: the plain DICOM port, the DICOM TLS port, or both, each with its own server.

Both servers belong to one pynetdicom AE, so open associations, handlers and admission are shared; only the TLS
server wraps its connections (its context can be replaced for new connections while it serves).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.dicom.listener import ListenerServer, open_listener

log = logging.getLogger(__name__)

__all__ = ["PLAIN", "TLS", "Endpoints"]

PLAIN = "plain"
TLS = "TLS"


@dataclass
class _Endpoint:
    name: str
    requested_port: int
    listener: socket.socket | None
    ssl_context: ssl.SSLContext | None = None
    server: Any = None
    port: int = 0


class Endpoints:
    """The plain and/or TLS sockets of one SCP on ``bind``.

    Parameters
    ----------
    bind
        The address both listen on.
    port, listener
        The plain port (0: the OS picks) or a socket already listening; ``plain=False``: no plain socket.
    tls_port, tls_context, tls_listener
        With ``tls_context``: the TLS socket, as ``port`` and ``listener``.
    """

    def __init__(
        self,
        bind: str,
        *,
        port: int,
        listener: socket.socket | None = None,
        plain: bool = True,
        tls_port: int = 0,
        tls_context: ssl.SSLContext | None = None,
        tls_listener: socket.socket | None = None,
    ) -> None:
        self.bind = bind
        self._all: list[_Endpoint] = []
        if plain:
            self._all.append(_Endpoint(PLAIN, port, listener, port=port))
        if tls_context is not None:
            self._all.append(_Endpoint(TLS, tls_port, tls_listener, tls_context, port=tls_port))
        if not self._all:
            raise ValueError("plain=False needs a tls_context: the SCP would listen nowhere")

    def _find(self, name: str) -> _Endpoint | None:
        return next((e for e in self._all if e.name == name), None)

    def requested_port(self, name: str) -> int | None:
        """The port asked for (None: no such socket)."""
        endpoint = self._find(name)
        return endpoint.requested_port if endpoint is not None else None

    def port(self, name: str) -> int:
        """The port listened on (the OS's pick for port 0, once started); 0 without such a socket."""
        endpoint = self._find(name)
        return endpoint.port if endpoint is not None else 0

    @property
    def serves_tls(self) -> bool:
        return self._find(TLS) is not None

    def use_tls_context(self, context: ssl.SSLContext) -> None:
        """Wrap new TLS connections with ``context``; connections already open keep theirs."""
        endpoint = self._find(TLS)
        if endpoint is None:
            return
        endpoint.ssl_context = context
        if endpoint.server is not None:
            endpoint.server.ssl_context = context

    def start(
        self,
        ae: Any,
        handlers: list[tuple[Any, Any]],
        *,
        on_exit: Callable[[Any], None],
        handshake_seconds: float,
        source_allowed: Callable[[str, int], bool] | None = None,
    ) -> None:
        """Bind what is not bound yet and serve every socket from ``ae`` in background threads;
        ``source_allowed`` screens TLS connections before their handshake (:class:`ListenerServer`).

        Raises
        ------
        OSError
            An address cannot be bound; nothing is left listening.
        """
        made: list[Any] = []
        try:
            for endpoint in self._all:
                listener = endpoint.listener or open_listener(self.bind, endpoint.requested_port)
                endpoint.listener = None  # the server owns it now
                server = ae.make_server(
                    listener.getsockname(),
                    evt_handlers=handlers,
                    ssl_context=endpoint.ssl_context,
                    server_class=ListenerServer,
                    listener=listener,
                    on_exit=on_exit,
                    handshake_seconds=handshake_seconds,
                    source_allowed=source_allowed,
                )
                made.append(server)
                endpoint.server, endpoint.port = server, int(server.server_address[1])
        except BaseException:
            for server in made:
                server.server_close()  # never served: shutdown() would wait for a loop that never ran
            for endpoint in self._all:
                endpoint.server = None
            raise
        for endpoint in self._all:
            # As AE.start_server(block=False) does: AE.shutdown() and server.shutdown() expect it in the list.
            ae._servers.append(endpoint.server)
            name = f"segnode-accept-{endpoint.name}-{ae.ae_title}"
            threading.Thread(target=endpoint.server.serve_forever, name=name, daemon=True).start()
            log.info("listening as %s on %s:%d (%s)", ae.ae_title, self.bind, endpoint.port, endpoint.name)

    def shutdown(self) -> None:
        """Close the listening sockets; open associations go on."""
        servers = [e.server for e in self._all if e.server is not None]
        for endpoint in self._all:
            endpoint.server = None
        for server in servers:
            server.shutdown()
