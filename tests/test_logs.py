"""The log lines (node/logs.py): their shapes, journald's priorities, and patient data kept out unless allowed."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pydicom
import pytest
import synthetic as syn
from dcmtk import free_port, storescu, wait_for_echo
from nodes import folder_destination, wait_for, write_config
from synthetic import nib

from node import logs
from node.config import LoggingConfig
from node.errors import InputError

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
#: Distinctive patient data (a birth date pydicom finds invalid, which it would quote in a warning).
PATIENT = {"PatientName": "Quuxley^Zebediah", "PatientID": "PID-93847261", "PatientBirthDate": "1931-04-07"}


def record(
    message: str,
    *args: object,
    level: int = logging.INFO,
    name: str = "node.pipeline.export",
    exc_info: ExcInfo | None = None,
    **extra: object,
) -> logging.LogRecord:
    made = logging.LogRecord(name, level, __file__, 1, message, args, exc_info)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def caught(exc: BaseException) -> ExcInfo:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    assert info[0] is not None and info[1] is not None
    return info


def test_a_text_line_has_time_level_process_logger_message_and_fields() -> None:
    line = logs.TextFormatter(process="receiver-2", journal=False).format(
        record("series %s exported", "1.2.3", series_uid="1.2.3")
    )
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO \[receiver-2\] node\.pipeline\.export: series 1\.2\.3 exported"
        r" series_uid=1\.2\.3",
        line,
    ), line


def test_in_the_journal_a_line_starts_with_its_priority_and_has_no_time() -> None:
    formatter = logs.TextFormatter(journal=True)
    assert formatter.format(record("refused", level=logging.ERROR)) == "<3>ERROR node.pipeline.export: refused"
    assert formatter.format(record("moved", level=logging.INFO)).startswith("<6>INFO ")
    assert formatter.format(record("detail", level=logging.DEBUG)).startswith("<7>DEBUG ")
    assert formatter.format(record("odd", level=logging.WARNING)).startswith("<4>WARNING ")


def test_the_journal_is_recognised_by_the_device_and_inode_of_stderr(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w") as stream, (tmp_path / "other").open("w") as other:
        stat = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        assert logs.stream_is_journal(stream, environ)
        assert not logs.stream_is_journal(other, environ)  # stderr redirected elsewhere by a child: not the journal
        assert not logs.stream_is_journal(stream, {})
        assert not logs.stream_is_journal(stream, {"JOURNAL_STREAM": "garbage"})


def test_a_traceback_stays_on_the_line_of_its_event() -> None:
    line = logs.TextFormatter(journal=True).format(
        record("series 1.2.3: unexpected error", level=logging.ERROR, exc_info=caught(KeyError("Rows")))
    )
    assert "\n" not in line and line.startswith("<3>ERROR ")
    assert "Traceback (most recent call last):" in line and line.endswith("KeyError: '<redacted>'")


def test_a_json_line_holds_the_fields_and_the_exception_as_one_field() -> None:
    formatter = logs.JsonFormatter(process="receiver-1", journal=False)
    line = formatter.format(
        record(
            "%s: refused",
            "1.2.3.4",
            level=logging.WARNING,
            exc_info=caught(InputError("no SeriesInstanceUID")),
            sop_instance_uid="1.2.3.4",
        )
    )
    assert "\n" not in line
    document = json.loads(line)
    assert document["level"] == "WARNING" and document["logger"] == "node.pipeline.export"
    assert document["process"] == "receiver-1" and document["pid"] == os.getpid()
    assert document["message"] == "1.2.3.4: refused" and document["sop_instance_uid"] == "1.2.3.4"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", document["time"])
    assert document["exception"].endswith("node.errors.InputError: no SeriesInstanceUID")


def test_a_json_line_in_the_journal_is_json_after_the_priority() -> None:
    line = logs.JsonFormatter(journal=True).format(record("stalled", level=logging.CRITICAL))
    assert line.startswith("<2>{") and json.loads(line[3:])["level"] == "CRITICAL"


@pytest.mark.parametrize("shape", [logs.TextFormatter, logs.JsonFormatter])
def test_patient_data_attached_to_a_record_is_printed_only_when_allowed(shape: type[logs.LineFormatter]) -> None:
    def line(include_phi: bool) -> str:
        formatter = shape(include_phi=include_phi, journal=False)
        return formatter.format(record("series %s complete", "1.2.3", phi=PATIENT, series_uid="1.2.3"))

    assert all(value not in line(False) for value in PATIENT.values()) and "1.2.3" in line(False)
    assert all(value in line(True) for value in PATIENT.values())
    if shape is logs.JsonFormatter:
        assert json.loads(line(True))["PatientID"] == PATIENT["PatientID"]


def test_values_quoted_by_libraries_are_redacted_unless_patient_data_is_allowed() -> None:
    birth_date = PATIENT["PatientBirthDate"]
    from_pydicom = record("Invalid value for VR DA: '%s'.", birth_date, name="pydicom", level=logging.WARNING)
    warning = UserWarning(f"Value '{PATIENT['PatientName']}' is not a valid PN")
    from_our_code = record("highdicom: %s", warning, name="node.convert.seg")
    ours = record("%s", InputError("instance 1.2.3: header cannot be parsed"), name="node.dicom.status")
    foreign_traceback = record("failed", exc_info=caught(ValueError(f"bad date '{birth_date}'")))
    hidden, shown = logs.TextFormatter(journal=False), logs.TextFormatter(include_phi=True, journal=False)
    for made in (from_pydicom, from_our_code, foreign_traceback):
        assert birth_date not in hidden.format(made) and PATIENT["PatientName"] not in hidden.format(made)
        assert logs.REDACTED in hidden.format(made)
    assert birth_date in shown.format(from_pydicom) and PATIENT["PatientName"] in shown.format(from_our_code)
    assert birth_date in shown.format(foreign_traceback)
    assert hidden.format(ours).endswith("instance 1.2.3: header cannot be parsed")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_configure_takes_the_shape_and_patient_setting_of_the_logging_section(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO", process="receiver-3", settings=LoggingConfig(format="json", include_phi=False))
    logging.getLogger("node.test").info("series %s complete", "1.2.3", extra={"phi": PATIENT})
    logs.configure("INFO")  # without settings, as a receiver configured by an older caller: text, no PHI
    logging.getLogger("node.test").info("plain", extra={"phi": PATIENT})
    first, second = capsys.readouterr().err.splitlines()[-2:]
    assert json.loads(first)["process"] == "receiver-3" and json.loads(first)["message"] == "series 1.2.3 complete"
    assert "PatientID" not in first and second.endswith("INFO node.test: plain")


def with_patient_data(series: syn.SeriesInfo) -> None:
    for path in series.paths:
        dataset = pydicom.dcmread(path)
        for keyword, value in PATIENT.items():
            setattr(dataset, keyword, value)
        dataset.save_as(path)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed (scripts/test.sh installs it)")
@pytest.mark.parametrize(("shape", "include_phi"), [("text", False), ("json", False), ("json", True)])
def test_a_series_through_the_node_leaves_no_patient_data_in_the_log_unless_allowed(
    tmp_path: Path, shape: str, include_phi: bool
) -> None:
    grid = syn.GridSpec.axial(rows=8, cols=10, slices=4, row_spacing=1.0, col_spacing=1.0, slice_step=2.0)
    series = syn.write_series(grid, tmp_path / "dicom")
    with_patient_data(series)
    port = free_port()
    # Two receiver processes: their lines must take [logging]'s shape as the main process's do.
    sections = {"logging": {"format": shape, "include_phi": include_phi}}
    config = write_config(tmp_path / "node", port, folder_destination(), receive_processes=2, sections=sections)
    data = tmp_path / "node" / "data"
    log = tmp_path / "node.log"
    # -v: every library's debug chatter too, the most a log ever holds.
    process = subprocess.Popen(
        [sys.executable, "-m", "node", "-v", "run", "--config", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_echo(port, called_ae="SEGNODE")
        sent = storescu(port, series.paths, called_ae="SEGNODE")
        assert sent.ok and sent.statuses() == [0] * len(series.paths), sent.output[-2000:]
        exported = data / "export" / f"{series.series_uid}.nii.gz"
        wait_for("the export", exported.exists)
        labels = syn.label_nifti_on_grid(
            nib.load(exported), syn.Phantom.fitting(grid), tmp_path / "seg.nii.gz", snap=grid
        )
        labels.rename(data / "inbox" / labels.name)  # complete when it appears, as a careful tool writes it
        wait_for("the SEG in the folder destination", lambda: list((data / "outgoing").glob("*.dcm")))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    text = log.read_text()
    lines = text.splitlines()
    assert any(series.series_uid in line for line in lines) and any("seg.nii.gz" in line for line in lines)
    if shape == "json":
        assert all(isinstance(json.loads(line), dict) for line in lines)  # every line is one JSON object
    leaked = [value for value in PATIENT.values() if value in text]
    if include_phi:  # the export names the patient, so an operator can find the series in the PACS
        assert leaked == list(PATIENT.values()), f"patient data missing from the log: {PATIENT}"
    else:
        assert not leaked, f"patient data in the log: {leaked}"
