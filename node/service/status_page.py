"""GET / (the status page) and GET /qc/<SEG SOP Instance UID>.png|.json (its QC pictures and figures).

The page is rendered on the server from ``templates/status.html`` (Jinja2, autoescaped: every value on it comes
from files and tools the node does not control, such as series descriptions, item names and reasons) and refreshes
itself with a meta refresh; it carries no script at all, and its Content-Security-Policy forbids any, so markup
that slipped into a value could not run. /qc/ serves only names that are a DICOM UID plus ``.png`` or ``.json``
from ``data/qc`` itself, so no request reaches any other file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import jinja2

from node.config import Config
from node.pipeline.qc import qc_folder
from node.service.health import Health
from node.service.http import JSON, Request, Response, Route
from node.service.status import Folders, StatusView, gather
from node.service.warnings_buffer import WarningsBuffer
from node.state import State

HTML = "text/html; charset=utf-8"
PNG = "image/png"
#: Seconds between the page's own reloads.
REFRESH_SECONDS = 10
#: A DICOM UID (PS3.5 9.1: digits and dots, no empty or zero-led component, at most 64 characters) and a suffix.
_QC_NAME = re.compile(r"(?P<uid>(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*)\.(?P<suffix>png|json)")
_UID_MAX = 64
#: No script, no frames, no form; pictures and styles only from the page itself.
_PAGE_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)

_environment = jinja2.Environment(
    loader=jinja2.PackageLoader("node.service", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a misspelt field fails the tests instead of rendering as nothing
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(view: StatusView) -> str:
    """The status page's HTML for ``view``."""
    return _environment.get_template("status.html").render(view=view)


def qc_file_name(name: str) -> str | None:
    """``name`` when it is ``<UID>.png`` or ``<UID>.json``, else None (anything else is never looked up).

    >>> qc_file_name("1.2.840.10008.5.1.png"), qc_file_name("../segnode.sqlite3"), qc_file_name("1.02.png")
    ('1.2.840.10008.5.1.png', None, None)
    """
    found = _QC_NAME.fullmatch(name)
    if found is None or len(found.group("uid")) > _UID_MAX:
        return None
    return name


def qc_route(folder: Path) -> Route:
    """GET /qc/<UID>.png|.json from ``folder``; 404 for any other name or a file that is not there."""

    def route(request: Request) -> Response:
        name = qc_file_name(request.path.removeprefix("/qc/"))
        if name is None:
            return Response.text(404, "no such QC file")
        path = folder / name
        # A link planted in the folder must not lead out of it either.
        if path.is_symlink() or not path.is_file():
            return Response.text(404, f"no QC file {name}")
        try:
            body = path.read_bytes()
        except FileNotFoundError:  # removed by retention between the check and the read
            return Response.text(404, f"no QC file {name}")
        kind = PNG if name.endswith(".png") else JSON
        return Response(200, body, kind, headers=(("X-Content-Type-Options", "nosniff"),))

    return route


class StatusPage:
    """The status page of one node: its routes, and the warnings buffer it installed (remove with :meth:`close`)."""

    def __init__(
        self,
        config: Config,
        state: State,
        health: Callable[[], Health],
        clock: Callable[[], float],
        *,
        warnings: WarningsBuffer | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.health = health
        self.clock = clock
        self.warnings = warnings or WarningsBuffer(include_phi=config.logging.include_phi).install()
        self.folders = Folders(export=config.paths.export, processed=config.paths.processed, qc=qc_folder(config))

    def view(self) -> StatusView:
        node = self.config.node
        return gather(
            self.state,
            self.health(),
            self.folders,
            title=f"segnode {node.ae_title}",
            now=self.clock(),
            warnings=self.warnings.lines(),
            include_phi=self.config.logging.include_phi,
            refresh_seconds=REFRESH_SECONDS,
        )

    def page(self, _request: Request) -> Response:
        return Response(200, render(self.view()).encode("utf-8"), HTML, headers=_PAGE_HEADERS)

    def routes(self) -> dict[str, Route]:
        return {"/": self.page, "/qc/": qc_route(self.folders.qc)}

    def close(self) -> None:
        self.warnings.uninstall()
