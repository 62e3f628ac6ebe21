"""The node's HTTP endpoint: a small WSGI app of pluggable routes, served by waitress on a background thread.

Only GET and HEAD; an unknown path is 404. A route that raises answers 500 with one line and is logged: a
failing page never takes the node down. Routes are registered by exact path (``/healthz``) or, ending in ``/``,
by prefix (``/qc/`` serves ``/qc/<anything>``), so later pages (the status page, QC pictures) plug in beside
/healthz and /metrics.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import waitress

from node.errors import error_line

log = logging.getLogger(__name__)

#: Worker threads answering requests; health checks and scrapes are short, so two are plenty.
HTTP_THREADS = 2
#: How long :meth:`HttpServer.stop` waits for the serving thread.
STOP_SECONDS = 5.0

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass(frozen=True)
class Request:
    """What a route sees of a request."""

    method: str
    path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    """What a route answers."""

    status: int = 200
    body: bytes = b""
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: int, line: str) -> Response:
        return cls(status, (line + "\n").encode())


Route = Callable[[Request], Response]


class Routes:
    """The WSGI application: dispatches GET/HEAD requests to the registered routes."""

    def __init__(self, routes: Mapping[str, Route] | None = None) -> None:
        self._routes: dict[str, Route] = dict(routes or {})

    def add(self, path: str, route: Route) -> None:
        """Serve ``path`` (a prefix when it ends in ``/``, except ``/`` itself) with ``route``."""
        self._routes[path] = route

    @property
    def paths(self) -> list[str]:
        """The paths served, in the order they were added (a prefix ends in ``/``)."""
        return list(self._routes)

    def find(self, path: str) -> Route | None:
        """The route for ``path``: an exact one, else the longest prefix route that holds it."""
        if path in self._routes:
            return self._routes[path]
        prefixes = [p for p in self._routes if p.endswith("/") and p != "/" and path.startswith(p)]
        return self._routes[max(prefixes, key=len)] if prefixes else None

    def answer(self, request: Request) -> Response:
        """The response to ``request``, whatever its route does."""
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"only GET and HEAD\n", headers=(("Allow", "GET, HEAD"),))
        route = self.find(request.path)
        if route is None:
            return Response.text(404, f"no such page: {request.path}")
        try:
            return route(request)
        except Exception as exc:  # a failing page must answer and leave the node running
            log.exception("HTTP %s %s failed", request.method, request.path)
            return Response.text(500, f"internal error: {error_line(exc)}")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request = Request(
            method=str(environ.get("REQUEST_METHOD", "GET")).upper(),
            path=str(environ.get("PATH_INFO", "") or "/"),
            query=parse_qs(str(environ.get("QUERY_STRING", ""))),
        )
        response = self.answer(request)
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Cache-Control", "no-store"),
            *response.headers,
        ]
        start_response(f"{response.status} {reason}", headers)
        return [] if request.method == "HEAD" else [response.body]


class HttpServer:
    """``routes`` served on ``bind:port`` (``port`` 0: one the OS picks) by waitress, on a daemon thread.

    Raises OSError from :meth:`start` when the address cannot be bound.
    """

    def __init__(self, bind: str, port: int, routes: Mapping[str, Route] | None = None) -> None:
        self.bind = bind
        self.routes = Routes(routes)
        self._requested_port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the OS's pick for port 0), once started; 0 before."""
        return int(self._server.effective_port) if self._server is not None else 0

    @property
    def address(self) -> tuple[str, int]:
        """The host and port the socket is bound to, once started."""
        return (str(self._server.effective_host), self.port) if self._server is not None else (self.bind, 0)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._server = waitress.create_server(
            self.routes, host=self.bind, port=self._requested_port, threads=HTTP_THREADS, ident="segnode"
        )
        self._thread = threading.Thread(target=self._server.run, name="segnode-http", daemon=True)
        self._thread.start()
        log.info("HTTP on %s:%d (%s)", self.bind, self.port, ", ".join(self.routes.paths))

    def stop(self) -> None:
        """Close the listening socket and every connection, and stop the worker threads."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        # The socket map belongs to the serving thread: close everything from there, then its loop ends.
        try:
            server.trigger.pull_trigger(lambda: _close_all(server))
        except OSError as exc:
            # The loop's wake-up pipe is gone (seen once as EBADF): close the sockets from here, so that stopping
            # never raises and the port is free.
            log.debug("HTTP server: waking its loop failed (%s); closing its sockets directly", exc)
            _close_all(server)
        thread.join(STOP_SECONDS)
        if thread.is_alive():
            log.warning("HTTP server did not stop within %g s", STOP_SECONDS)
        server.task_dispatcher.shutdown(timeout=STOP_SECONDS)
        self._thread = None

    def __enter__(self) -> HttpServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _close_all(server: Any) -> None:
    for channel in list(server._map.values()):
        channel.close()
