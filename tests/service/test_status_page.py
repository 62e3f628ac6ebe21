"""The status page without a browser: its model (node/service/status.py), its HTML and /qc/ (status_page.py), and
the warnings buffer (warnings_buffer.py); over real sockets where the path matters."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from dcmtk import free_port
from http_client import http_get
from nodes import folder_destination, start_node, write_config
from peers import HOST

from node.config import Config, PathsConfig
from node.config.sections import LoggingConfig
from node.service.health import Health, StageHealth
from node.service.http import HttpServer, Request, Routes
from node.service.status import Folders, gather, safe_reason
from node.service.status_page import StatusPage, qc_file_name, qc_route, render
from node.service.warnings_buffer import WarningsBuffer
from node.state import State, open_state
from node.state.model import JobState

SERIES = "1.2.826.0.1.3680043.8.498.101"
SEG_UID = "1.2.826.0.1.3680043.8.498.77"
T0 = 1_700_000_000.0
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


@dataclass(frozen=True)
class Disk:
    room: bool = True
    free_bytes: int = 5 << 30
    reason: str = ""


def healthy(*, listening: bool = True) -> Health:
    return Health(
        listening=listening,
        database_problem=None,
        disk=Disk(),
        reserve_bytes=1 << 30,
        oldest_pending_job_seconds=None,
        stages=(StageHealth("build", 0.2, running=True, stalled=False),),
    )


class Elements(HTMLParser):
    """Every start tag's name and attributes, and the page's text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    for name in ("export", "processed", "qc", "inbox"):
        (folder / name).mkdir(parents=True)
    return folder


@pytest.fixture
def state(data: Path) -> Iterator[State]:
    with open_state(data, data / "segnode.sqlite3", node_id="node-a") as opened:
        yield opened


def folders(data: Path) -> Folders:
    return Folders(export=data / "export", processed=data / "processed", qc=data / "qc")


def exported_series(state: State, data: Path, description: str) -> None:
    for n in range(3):
        path = data / "instances" / f"{n}.dcm"
        state.series.record_instance(SERIES, "1.2.3", f"1.2.3.{n}", "1.2.840.10008.5.1.4.1.1.2", path, 10, T0)
    (row,) = state.series.claim_due(0.0, now=T0 + 100)
    assert state.series.mark(SERIES, "exported", export_version=row.revision, if_revision=row.revision)
    sidecar = {"SeriesDescription": description, "Modality": "CT", "stack": {"count": 2}, "exported_at": "then"}
    (data / "export" / f"{SERIES}.json").write_text(json.dumps(sidecar))


def sent_job(state: State, data: Path, name: str) -> int:
    job_id = state.jobs.create(data / "inbox" / name, "nifti", signature=f"file:1:{name}", now=T0)
    assert state.jobs.claim_job(job_id, now=T0) is not None
    assert state.jobs.mark_matched(job_id, SERIES, how="geometry", now=T0)
    assert state.jobs.mark_built(job_id, data / "segs" / f"{SEG_UID}.dcm", SEG_UID, ["out", "pacs"], now=T0)
    sends = {s.destination: s for s in state.jobs.claim_sends(now=T0)}
    assert state.jobs.mark_send_ok(sends["out"].id, now=T0)
    assert state.jobs.mark_send_retry(sends["pacs"].id, "pacs unreachable", T0 + 60, now=T0)
    return job_id


def failed_job(state: State, data: Path, name: str, reason: str) -> int:
    job_id = state.jobs.create(data / "inbox" / name, "nifti", signature=f"file:2:{name}", now=T0)
    assert state.jobs.claim_job(job_id, now=T0) is not None
    assert state.jobs.mark_failed(job_id, reason, now=T0)
    return job_id


def write_qc(data: Path) -> None:
    (data / "qc" / f"{SEG_UID}.png").write_bytes(PNG_BYTES)
    segments = [
        {
            "number": 1,
            "name": "liver",
            "color_rgb": [200, 80, 40],
            "volume_ml": 1234.5678,
            "centroid_mm_lps": [1, 2, 3.06],
        },
        {"number": 2, "name": HOSTILE, "color_rgb": [0, 0, 0], "volume_ml": 0.0, "centroid_mm_lps": None},
    ]
    (data / "qc" / f"{SEG_UID}.json").write_text(json.dumps({"sop_instance_uid": SEG_UID, "segments": segments}))


def test_the_model_shows_series_jobs_sends_matching_and_qc_figures(state: State, data: Path) -> None:
    exported_series(state, data, "Thorax 1.0 B31f")
    sent_job(state, data, "liver.nii.gz")
    failed_job(state, data, "stranger.nii.gz", "stranger.nii.gz: no received series has this grid")
    write_qc(data)
    view = gather(state, healthy(), folders(data), title="segnode T", now=T0 + 30, include_phi=True)
    (series,) = view.series
    assert (series.state, series.instances, series.stacks, series.description) == ("exported", 3, 2, "Thorax 1.0 B31f")
    # Free text a scanner may fill with anything: without include_phi the page leaves it out.
    assert gather(state, healthy(), folders(data), title="t", now=T0 + 30).series[0].description == ""
    assert series.export.startswith("version ")
    failed, sent = view.jobs  # newest first
    assert (sent.state, sent.matched_by, sent.seg_sop_uid) == (JobState.RETRY_WAIT.value, "geometry", SEG_UID)
    assert [(s.destination, s.state, s.attempts, s.reason) for s in sent.sends] == [
        ("out", "ok", 1, ""),
        ("pacs", "retry_wait", 1, "pacs unreachable"),
    ]
    assert (failed.state, failed.matched_by, failed.qc) == ("failed", "-", None)
    assert "no received series has this grid" in failed.reason
    assert sent.qc is not None and sent.qc.picture == f"/qc/{SEG_UID}.png"
    liver, other = sent.qc.segments
    assert (liver.name, liver.volume_ml, liver.color) == ("liver", "1234.57", "#c85028")
    assert liver.centroid_mm == "1.0, 2.0, 3.1"
    assert (other.centroid_mm, other.volume_ml) == ("-", "0.000")
    assert view.job_counts["retry_wait"] == 1 and view.job_counts["failed"] == 1 and view.series_counts["exported"] == 1


def test_hostile_strings_are_escaped_and_no_script_or_handler_reaches_the_page(state: State, data: Path) -> None:
    exported_series(state, data, HOSTILE)
    failed_job(state, data, '"><b onclick=alert(2)>x.nii.gz', HOSTILE)
    sent_job(state, data, "liver.nii.gz")
    write_qc(data)
    html = render(gather(state, healthy(), folders(data), title="segnode <i>T</i>", now=T0, include_phi=True))
    parsed = Elements(html)
    assert not [tag for tag, _ in parsed.tags if tag in ("script", "b", "i")]
    assert not [attrs for _, attrs in parsed.tags if any(key.startswith("on") for key in attrs)]
    assert [attrs["src"] for tag, attrs in parsed.tags if tag == "img"] == [f"/qc/{SEG_UID}.png"]
    text = "".join(parsed.text)
    assert text.count(HOSTILE) == 3  # the description, the failed job's reason, the segment name: shown as text
    assert '"><b onclick=alert(2)>x.nii.gz' in text


def test_a_weird_series_description_is_shown_literally(state: State, data: Path) -> None:
    weird = "Ṫhörax\u202e ﾃｽﾄ {{ 7*191 }} {% raw %} \\ 'quoted' & <> " + "long" * 40
    exported_series(state, data, weird)
    parsed = Elements(render(gather(state, healthy(), folders(data), title="t", now=T0, include_phi=True)))
    assert weird in "".join(parsed.text)
    assert "1337" not in "".join(parsed.text)  # a value is never evaluated as a template
    # A right-to-left override in a description stays inside its cell.
    assert ("bdi", {}) in parsed.tags


def test_an_unreadable_export_sidecar_or_qc_json_leaves_the_rest_of_the_page(state: State, data: Path) -> None:
    exported_series(state, data, "x")
    (data / "export" / f"{SERIES}.json").write_text('{"Series')
    sent_job(state, data, "liver.nii.gz")
    (data / "qc" / f"{SEG_UID}.json").write_text("[1, 2")
    view = gather(state, healthy(), folders(data), title="t", now=T0)
    assert view.series[0].description == "" and view.series[0].stacks == 0
    assert view.jobs[0].qc is not None and view.jobs[0].qc.picture is None and view.jobs[0].qc.segments == ()


def test_a_library_s_quoted_value_after_unexpected_error_is_redacted_unless_phi_is_allowed() -> None:
    reason = "unexpected error: ValueError: Invalid value for VR PN: 'Doe^Jane'"
    assert "Doe^Jane" not in safe_reason(reason, include_phi=False)
    assert safe_reason(reason, include_phi=False).startswith("unexpected error: ValueError")
    assert safe_reason(reason, include_phi=True) == reason
    assert safe_reason("liver.nii.gz: no received series has 'this' grid", include_phi=False).endswith("'this' grid")


def test_the_page_is_html_that_refreshes_itself_and_forbids_scripts(state: State, data: Path) -> None:
    config = Config(paths=PathsConfig(data=data, inbox=data / "inbox", export=data / "export"))
    page = StatusPage(config, state, healthy, lambda: T0, warnings=WarningsBuffer())
    routes = Routes(page.routes())
    answer = routes.answer(Request("GET", "/"))
    assert answer.status == 200 and answer.content_type.startswith("text/html")
    headers = dict(answer.headers)
    assert "script-src" not in headers["Content-Security-Policy"]
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    refresh = [a for t, a in Elements(answer.body.decode()).tags if t == "meta" and a.get("http-equiv") == "refresh"]
    assert refresh == [{"http-equiv": "refresh", "content": "10"}]
    assert routes.answer(Request("POST", "/")).status == 405
    unhealthy = StatusPage(config, state, lambda: healthy(listening=False), lambda: T0, warnings=WarningsBuffer())
    body = unhealthy.page(Request("GET", "/")).body.decode()
    assert "the DICOM listener is not running" in body and 'class="badge bad"' in body


@pytest.mark.parametrize(
    "name",
    ["1.2.3.png", "1.2.3.json", "1.2.840.10008.5.1.4.1.1.66.4.png", "0.1.png"],
)
def test_qc_names_that_are_uids_pass(name: str) -> None:
    assert qc_file_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../segnode.sqlite3",
        "..png",
        "1.2.3.PNG",
        "1.2.3.png.txt",
        "1.2.3.txt",
        "1..2.png",
        ".1.2.png",
        "1.02.png",
        "1.2.3/../x.png",
        "1.2.3.png\0",
        "1.2.3.png\n",
        " 1.2.3.png",
        "1." + "2" * 70 + ".png",
        "١.٢.png",  # Arabic-Indic digits are digits to str.isdigit, not to a UID
    ],
)
def test_qc_names_that_are_not_uids_are_refused(name: str) -> None:
    assert qc_file_name(name) is None


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """A request with the path exactly as given: no client-side normalisation of dot segments."""
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_qc_serves_pictures_and_figures_and_404s_every_traversal(tmp_path: Path, data: Path) -> None:
    write_qc(data)
    secret = data / "secret.png"
    secret.write_bytes(b"not for the web")
    (data / "qc" / "9.9.png").symlink_to(secret)
    (data / "qc" / "8.8.png").mkdir()
    with HttpServer("127.0.0.1", 0, {"/qc/": qc_route(data / "qc")}) as server:
        picture = http_get(server.port, f"/qc/{SEG_UID}.png")
        assert (picture.status, picture.body, picture.headers["Content-Type"]) == (200, PNG_BYTES, "image/png")
        figures = http_get(server.port, f"/qc/{SEG_UID}.json")
        assert figures.status == 200 and figures.json()["sop_instance_uid"] == SEG_UID
        for path in (
            "/qc/../secret.png",
            "/qc/..%2Fsecret.png",
            "/qc/%2e%2e/secret.png",
            "/qc/%2E%2E%2Fsegnode.sqlite3",
            f"/qc/{SEG_UID}.png/../../secret.png",
            "/qc//etc/passwd",
            "/qc/%2Fetc%2Fpasswd",
            "/qc/9.9.png",  # a symlink out of the folder
            "/qc/8.8.png",  # not a file
            "/qc/7.7.png",  # not there
            "/qc/",
            f"/qc/{SEG_UID}.png%00.txt",
        ):
            status, body = raw_get(server.port, path)
            assert status == 404, (path, status, body)
            assert b"not for the web" not in body


def test_the_buffer_keeps_the_last_warnings_phi_free_and_newest_first() -> None:
    buffer = WarningsBuffer(size=3).install()
    library = logging.getLogger("pydicom.test")
    # Its own level: node.logs.configure, if an earlier test ran it here, keeps pydicom's warnings at ERROR.
    library.setLevel(logging.WARNING)
    try:
        log = logging.getLogger("node.test_status")
        log.info("not kept")
        for n in range(5):
            log.warning("warning %d", n, extra={"phi": {"PatientName": "Doe^Jane"}})
        library.warning("Invalid value for VR PN: 'Doe^Jane'")
    finally:
        buffer.uninstall()
        library.setLevel(logging.NOTSET)
    logging.getLogger("node.test_status").warning("after uninstall")
    lines = buffer.lines()
    assert [line.level for line in lines] == ["WARNING"] * 3
    assert "'<redacted>'" in lines[0].line and "pydicom.test" in lines[0].line
    assert [line.line.split(": ", 1)[1] for line in lines[1:]] == ["warning 4", "warning 3"]
    assert not any("Doe" in line.line for line in lines)
    assert not lines[1].line[:1].isdigit()  # the time is a column of its own, not part of the line


def test_a_buffer_that_allows_phi_shows_it() -> None:
    buffer = WarningsBuffer(include_phi=True).install()
    try:
        logging.getLogger("node.test_status").warning("series complete", extra={"phi": {"PatientID": "SYN-1"}})
    finally:
        buffer.uninstall()
    assert "PatientID=SYN-1" in buffer.lines()[0].line


def test_a_node_with_http_serves_the_page_and_removes_its_handler_on_stop(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "node",
        free_port(),
        folder_destination(),
        receive_processes=1,
        sections={"http": {"port": free_port()}},
    )
    node = start_node(config)
    try:
        assert node.status_page is not None
        installed = node.status_page.warnings
        assert installed in logging.getLogger().handlers
        logging.getLogger("node.test_status").warning("something odd with item <x>")
        page = http_get(node.http_port, "/")
        assert page.status == 200 and b"segnode SEGNODE" in page.body
        assert b"something odd with item &lt;x&gt;" in page.body
        assert http_get(node.http_port, "/qc/../segnode.sqlite3").status == 404
    finally:
        node.stop()
    assert installed not in logging.getLogger().handlers


def test_include_phi_reaches_the_page_s_warnings(state: State, data: Path) -> None:
    config = Config(logging=LoggingConfig(include_phi=True), paths=PathsConfig(data=data))
    page = StatusPage(config, state, healthy, lambda: T0)
    try:
        assert page.warnings.formatter is not None
        logging.getLogger("node.test_status").warning("x", extra={"phi": {"PatientID": "SYN-2"}})
        assert "PatientID=SYN-2" in page.view().warnings[0].line
    finally:
        page.close()
