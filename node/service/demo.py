"""``segnode demo``: the whole flow on one machine, without a PACS, in a folder that is removed afterwards.

A node starts on loopback ports in a temporary folder; a synthetic CT phantom (:mod:`node.service.demo_phantom`)
is pushed to it by C-STORE; the export command hook runs the threshold segmenter
(:mod:`node.service.demo_segmenter`); the SEG the node builds lands in the output folder (a folder destination),
with its QC picture and the node's log. Each step prints one line; a failure is one line naming the step it was
stuck in, and the temporary folder is removed whatever happened.
"""

from __future__ import annotations

import errno
import logging
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from node import logs
from node.config import Config
from node.config.sections import (
    DiskConfig,
    ExportConfig,
    HttpConfig,
    InboxConfig,
    NodeConfig,
    PathsConfig,
    QcConfig,
    RetentionConfig,
    SendConfig,
    SeriesConfig,
)
from node.destinations import Outcome, create
from node.destinations.dimse import DicomDestination
from node.destinations.folder import FolderDestination
from node.errors import SegnodeError, error_line
from node.pipeline.qc import qc_paths
from node.service.demo_phantom import PATIENT_NAME, PhantomSeries, write_phantom
from node.service.node import Node
from node.state import State
from node.state.model import JobRow, JobState, SendState, SeriesState

AE_TITLE = "SEGNODE"
CALLING_AE = "DEMO_CT"
LOOPBACK = "127.0.0.1"
#: Exit code when Ctrl-C (or SIGTERM) stops the demo before its SEG is ready (128 + SIGINT, as shells report).
INTERRUPTED = 130
#: How long to wait for the QC picture once the SEG is there (the build stage writes it beside the SEG).
QC_WAIT_SECONDS = 10.0
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class DemoOptions:
    """What ``segnode demo`` was asked for; ports 0 mean "a free one"."""

    output: Path
    exit_when_done: bool = False
    timeout: float = 120.0
    port: int = 0
    http_port: int = 0
    verbose: bool = False


class DemoError(SegnodeError):
    """A step of the demo failed; the message names the step."""


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while ``step`` was under way."""

    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run the demo; 0 when the SEG was made (and, without ``exit_when_done``, Ctrl-C stopped it afterwards),
    :data:`INTERRUPTED` when stopped before. A failed step raises :class:`DemoError`, after the clean-up."""

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    output = options.output.expanduser().resolve()
    stop = threading.Event()
    with _stop_on_signals(stop):
        work = Path(tempfile.mkdtemp(prefix="segnode-demo-"))
        try:
            say(f"working folder {work} (removed when the demo ends)")
            try:
                output.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DemoError(f"preparing the output folder {output}: {error_line(exc)}") from exc
            with _node_log(output / "node.log", options.verbose) as errors:
                say(f"node log: {output / 'node.log'}")
                phantom = write_phantom(work / "phantom")
                grid = phantom.grid
                say(
                    f"wrote a synthetic CT phantom ({PATIENT_NAME}): {grid.slices} slices of"
                    f" {grid.rows}x{grid.columns}, {grid.pixel_mm:g} mm pixels, {grid.slice_mm:g} mm slices"
                )
                node = _start_node(work, output, options)
                try:
                    say(f"node {AE_TITLE} listening on {LOOPBACK}:{node.port}, writing SEGs to {output}")
                    _check(stop, "sending the phantom")
                    _send(phantom, node.port)
                    say(f"sent {len(phantom.paths)} instances by C-STORE to {AE_TITLE}@{LOOPBACK}:{node.port}")
                    seg, sop_uid = _wait_for_seg(node, phantom, output, options.timeout, stop, errors, say)
                    say(f"SEG ready: {seg}")
                    say(_qc_line(node, sop_uid, output, stop))
                    http = node.http_port
                    say(f"status page: http://{LOOPBACK}:{http}/" if http else "status page: not served by this node")
                    if options.exit_when_done:
                        return 0
                    say("running; press Ctrl-C to stop the node and remove the working folder")
                    stop.wait()
                    return 0
                finally:
                    node.stop()  # inside the log's block: its shutdown lines go to node.log, not the terminal
        except _Interrupted as interrupted:
            say(f"interrupted while {interrupted.step}")
            return INTERRUPTED
        finally:
            _remove(work, say)


def _check(stop: threading.Event, step: str) -> None:
    if stop.is_set():
        raise _Interrupted(step)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` instead of raising somewhere inside a step, so clean-up always runs."""

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class _ErrorRecords(logging.Handler):
    """Keeps the node's error lines, so that a step stuck on one can say why."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _node_log(path: Path, verbose: bool) -> Iterator[_ErrorRecords]:
    """The node's log goes to ``path``; the terminal shows only the demo's own lines (unless ``verbose``)."""
    root = logging.getLogger()
    file_handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    file_handler.setFormatter(logs.TextFormatter(journal=False))
    file_handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    errors = _ErrorRecords()
    muted = [] if verbose else [(h, h.level) for h in root.handlers]
    for handler, _ in muted:
        handler.setLevel(logging.CRITICAL + 1)
    level = root.level
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    root.addHandler(file_handler)
    root.addHandler(errors)
    try:
        yield errors
    finally:
        root.removeHandler(errors)
        root.removeHandler(file_handler)
        file_handler.close()
        root.setLevel(level)
        for handler, handler_level in muted:
            handler.setLevel(handler_level)


def _free_port(port: int, what: str) -> int:
    """``port`` if it can be bound now, a free one the OS picks for 0; DemoError naming ``what`` if busy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError as exc:
            reason = "is busy" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            raise DemoError(f"starting the node: {what} port {port} {reason}; pick another or leave it out") from exc
        return int(probe.getsockname()[1])


def demo_config(work: Path, output: Path, *, port: int, http_port: int) -> Config:
    """The demo node's configuration: loopback only, short waits, the segmenter as export command."""
    command = f"{shlex.quote(sys.executable)} -m node.service.demo_segmenter {{nifti}} {{inbox}}/{{series_uid}}.nii.gz"
    data = work / "data"
    return Config(
        node=NodeConfig(ae_title=AE_TITLE, bind=LOOPBACK, port=port, receive_processes=1, log_level="INFO"),
        paths=PathsConfig(data=data, inbox=data / "inbox", export=data / "export"),
        series=SeriesConfig(quiet_seconds=1.0),
        inbox=InboxConfig(settle_seconds=0.3),
        export=ExportConfig(command=command, command_timeout=120.0),
        send=SendConfig(max_attempts=5, backoff_initial=0.5, backoff_max=2.0, timeout=10.0),
        # The phantom is a few MB: a nearly full disk must not refuse it, as it would refuse a real study.
        disk=DiskConfig(reserve_mb=16, max_usage_percent=100.0),
        retention=RetentionConfig(days=0.0),
        http=HttpConfig(bind=LOOPBACK, port=http_port),
        qc=QcConfig(enabled=True, send=False),
        destinations=(FolderDestination(name="demo-output", folder=output),),
    )


def _start_node(work: Path, output: Path, options: DemoOptions) -> Node:
    # DICOM port 0 is bound by the listener itself (no race); the HTTP port is picked here as the config needs one.
    port = _free_port(options.port, "DICOM") if options.port else 0
    http_port = _free_port(options.http_port, "HTTP")
    node = Node(demo_config(work, output, port=port, http_port=http_port))
    try:
        node.start()
    except (SegnodeError, OSError) as exc:
        node.stop()
        raise DemoError(f"starting the node: {error_line(exc)}") from exc
    return node


def _send(phantom: PhantomSeries, port: int) -> None:
    peer = DicomDestination(name="demo-node", ae_title=AE_TITLE, host=LOOPBACK, port=port)
    results = create(peer, calling_ae=CALLING_AE, timeout=30.0).send(list(phantom.paths))
    refused = [r for r in results if r.outcome is not Outcome.SENT]
    if refused:
        raise DemoError(f"sending the phantom: {len(refused)} of {len(results)} refused: {refused[0].reason}")


def _wait_for_seg(
    node: Node,
    phantom: PhantomSeries,
    output: Path,
    timeout: float,
    stop: threading.Event,
    errors: _ErrorRecords,
    say: Callable[[str], None],
) -> tuple[Path, str]:
    """Follow the series and its job through the node's state until the SEG is in ``output``."""
    deadline = time.monotonic() + timeout
    step = ""
    while True:
        progress = stage_of(node.state, phantom.series_uid)
        if progress.problem is not None:
            raise DemoError(f"{progress.step}: {progress.problem}")
        if progress.step != step:
            step = progress.step
            if progress.seg_sop_uid is None:
                say(f"{step} ...")
        if progress.seg_sop_uid is not None:
            seg = output / f"{progress.seg_sop_uid}.dcm"
            if not seg.is_file():
                raise DemoError(f"delivering the SEG: the node says it is sent, but {seg} is not there")
            return seg, progress.seg_sop_uid
        hook = _hook_failure(errors)
        if hook is not None:
            raise DemoError(f"{step}: {hook} (see {output / 'node.log'})")
        _check(stop, step)
        if time.monotonic() > deadline:
            last = f"; last node error: {errors.records[-1].getMessage()}" if errors.records else ""
            raise DemoError(f"timed out after {timeout:g} s {step}{last} (see {output / 'node.log'})")
        stop.wait(POLL_SECONDS)


@dataclass(frozen=True)
class Progress:
    """Where the phantom is on its way through the node: the step under way, or what went wrong in it."""

    step: str
    problem: str | None = None
    #: Set once the SEG has reached every destination.
    seg_sop_uid: str | None = None


def stage_of(state: State, series_uid: str) -> Progress:
    """The demo's progress as the node's state tells it (series row first, then the job of its label map)."""
    series = state.series.get(series_uid)
    if series is None or series.state is SeriesState.RECEIVING:
        return Progress("waiting for the series to complete")
    if series.state is SeriesState.FAILED:
        return Progress("exporting the series", series.reason or "the node could not export it")
    if series.state is SeriesState.COMPLETE:
        return Progress("exporting the series as NIfTI")
    jobs = [job for job in state.jobs.list_jobs(limit=None) if job.series_uid in (None, series_uid)]
    if not jobs:
        return Progress("waiting for the segmenter's label map (the export command)")
    done = next((job for job in jobs if job.state is JobState.SENT), None)
    if done is not None:
        return Progress("delivering the SEG", seg_sop_uid=done.seg_sop_uid)
    return _job_progress(jobs[0])


def _job_progress(job: JobRow) -> Progress:
    if job.state is JobState.FAILED:
        return Progress("building the SEG", job.reason or "the node could not build it")
    if job.state in (JobState.PENDING, JobState.MATCHED):
        return Progress("building the SEG")
    if job.state is JobState.RETRY_WAIT and job.seg_path is None:
        return Progress("building the SEG (retrying)")
    failed = [send for send in job.sends if send.state is SendState.FAILED]
    if failed:
        return Progress("delivering the SEG", failed[0].reason or f"{failed[0].destination} refused it")
    return Progress("delivering the SEG to the output folder")


def _hook_failure(errors: _ErrorRecords) -> str | None:
    """The export command's failure, which the state does not record (the node only logs it)."""
    for record in errors.records:
        if record.name == "node.pipeline.export" and "command" in record.getMessage():
            return record.getMessage()
    return None


def _qc_line(node: Node, sop_uid: str, output: Path, stop: threading.Event) -> str:
    """Copy the QC picture into ``output`` when the node makes one; the line to print either way."""
    if not node.config.qc.enabled:
        return "QC picture: none, QC pictures are off in this node"
    picture = qc_paths(node.config, sop_uid)[0]
    deadline = time.monotonic() + QC_WAIT_SECONDS
    while not picture.is_file():
        if time.monotonic() > deadline or stop.is_set():
            return f"QC picture: none, the node wrote no {picture.name} within {QC_WAIT_SECONDS:g} s"
        stop.wait(POLL_SECONDS)
    copy = output / picture.name
    shutil.copyfile(picture, copy)
    return f"QC picture: {copy}"


def _remove(work: Path, say: Callable[[str], None]) -> None:
    try:
        shutil.rmtree(work)
    except OSError as exc:
        say(f"could not remove the working folder {work}: {error_line(exc)}")
        return
    say(f"stopped; removed {work}")
