"""The HTTP endpoint (node/service/http.py): waitress serving pluggable routes, over real sockets with urllib."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from dcmtk import free_port, requires_dcmtk
from http_client import http_get
from nodes import folder_destination, start_node, write_config

from node.config import Config
from node.service.http import HttpServer, Request, Response


def hello(request: Request) -> Response:
    return Response.text(200, f"hello {request.query.get('who', ['world'])[0]}")


def broken(_request: Request) -> Response:
    raise RuntimeError("the page fell over")


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer("127.0.0.1", 0, {"/hello": hello, "/broken": broken}) as running:
        yield running


def test_a_route_answers_get_and_head(server: HttpServer) -> None:
    got = http_get(server.port, "/hello?who=pacs")
    assert (got.status, got.body) == (200, b"hello pacs\n")
    assert got.headers["Content-Type"].startswith("text/plain")
    head = http_get(server.port, "/hello?who=pacs", method="HEAD")
    assert head.status == 200 and head.body == b"" and head.headers["Content-Length"] == str(len(got.body))


def test_unknown_paths_are_404_and_other_methods_405(server: HttpServer) -> None:
    missing = http_get(server.port, "/nothing-here")
    assert missing.status == 404 and b"/nothing-here" in missing.body
    posted = http_get(server.port, "/hello", method="POST")
    assert posted.status == 405 and posted.headers["Allow"] == "GET, HEAD"


def test_a_failing_route_answers_500_in_one_line_and_is_logged(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="node.service.http"):
        got = http_get(server.port, "/broken")
    assert got.status == 500
    assert got.body.decode().splitlines() == ["internal error: RuntimeError: the page fell over"]
    assert any("GET /broken failed" in r.getMessage() and r.exc_info for r in caplog.records)
    # The server goes on serving.
    assert http_get(server.port, "/hello").status == 200


def test_routes_plug_in_by_exact_path_or_prefix(server: HttpServer) -> None:
    server.routes.add("/qc/", lambda request: Response.text(200, f"picture {request.path.removeprefix('/qc/')}"))
    server.routes.add("/", lambda _request: Response.text(200, "status page"))
    assert http_get(server.port, "/qc/1.2.3.png").body == b"picture 1.2.3.png\n"
    assert http_get(server.port, "/").body == b"status page\n"
    assert http_get(server.port, "/qcx").status == 404  # a prefix route serves only below its slash


def test_stop_closes_the_port() -> None:
    server = HttpServer("127.0.0.1", 0, {"/hello": hello})
    server.start()
    port = server.port
    assert http_get(port, "/hello").status == 200
    server.stop()
    assert not server.running
    with pytest.raises(OSError):
        http_get(port, "/hello")


def test_http_is_bound_to_loopback_by_default() -> None:
    assert Config().http.bind == "127.0.0.1"


@requires_dcmtk
def test_a_node_serves_http_on_loopback_unless_port_is_0(tmp_path: Path) -> None:
    http_port = free_port()
    config = write_config(
        tmp_path / "on", free_port(), folder_destination(), receive_processes=1, sections={"http": {"port": http_port}}
    )
    # The default bind: write_config sets only the port.
    assert "bind" not in config.read_text().split("[http]")[1].split("[")[0]
    node = start_node(config)
    try:
        assert node.http_port == http_port
        assert node.http is not None and node.http.address == ("127.0.0.1", http_port)
        assert http_get(http_port, "/metrics").status == 200
    finally:
        node.stop()
    with pytest.raises(OSError):
        http_get(http_port, "/metrics")
    off = start_node(write_config(tmp_path / "off", free_port(), folder_destination(), receive_processes=1))
    try:
        assert off.http is None and off.http_port == 0
    finally:
        off.stop()
