"""The node: wiring of receive → series completion → export → inbox → SEG → send, and its life cycle.

Each stage is a loop on its own thread with its own SQLite connection; the stages talk only through the database
and the file system, so a crash anywhere leaves a state that start-up resumes. The C-STORE association threads
(node.dicom.scp) only write files and index rows.
"""

from __future__ import annotations

import logging
import re
import shlex
import signal
import sqlite3
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

from node.config import Config
from node.convert import build_seg_from_input, error_line, write_dataset_atomically
from node.convert.seg import AlgorithmInfo, SegOptions, SegType
from node.convert.series import SourceSeries, choose_stack, read_header, stacks_from_headers
from node.destinations.dimse import Outcome, backoff_delay, send_files
from node.dicom.receivers import ReceiverPool
from node.dicom.scp import StorageSCP
from node.durable import remove_temp_files
from node.errors import InputError, SegnodeError
from node.pipeline.export import export_series, exported_grid
from node.pipeline.inbox import InboxItem, InboxWatcher, find_moved_item, move_item, restore_item
from node.pipeline.match import Candidate, match_item
from node.state import jobs
from node.state import sqlite as db
from node.state.instances import InstanceStore

log = logging.getLogger(__name__)

#: How often idle loops look for work; the inbox loop is woken early by file events.
POLL_SECONDS = 0.5
#: SIGTERM to exit: stages finish their current step within this; the rest resumes at next start.
STOP_SECONDS = 8.0


class Node:
    """One segnode instance. ``run()`` blocks until :meth:`stop` (or SIGTERM/SIGINT in the main thread)."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.stopping = threading.Event()
        self.paths = config.paths
        self.segs = config.paths.data / "segs"
        self.store = InstanceStore(config.paths.data)
        self.scp: StorageSCP | None = None
        self.receivers: ReceiverPool | None = None
        self.port = config.node.port
        self.watcher: InboxWatcher | None = None
        self._threads: list[threading.Thread] = []
        self._commands = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-command")
        self.options = SegOptions(
            seg_type=SegType(config.seg.type),
            algorithm=AlgorithmInfo(name=config.seg.algorithm_name,
                                    version=config.seg.algorithm_version or AlgorithmInfo().version),
            series_description=config.seg.series_description,
        )

    # -- life cycle -----------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create folders and the database; remove half-written files a crash left (start-up recovery)."""
        for folder in (self.paths.data, self.paths.inbox, self.paths.export, self.paths.processed,
                       self.paths.failed, self.segs):
            folder.mkdir(parents=True, exist_ok=True)
        removed = self.store.cleanup_temp() + remove_temp_files(self.paths.export) + remove_temp_files(self.segs)
        if removed:
            log.info("start-up: removed %d half-written temporary file(s)", removed)
        with self._connect() as conn:
            resumable = jobs.resumable_jobs(conn)
        if resumable:
            log.info("start-up: resuming %d unfinished job(s)", len(resumable))

    def start(self) -> None:
        """Prepare, then start the listener, the inbox watcher and the stage threads; returns at once."""
        self.prepare()
        if self.config.node.receive_processes > 1:
            self.receivers = ReceiverPool(self.config, self.config.node.receive_processes)
            self.receivers.start()
            self.port = self.receivers.port
        else:
            self.scp = StorageSCP.from_config(self.config)
            self.scp.start()
            self.port = self.scp.port
        self.watcher = InboxWatcher(self.paths.inbox, settle_seconds=self.config.inbox.settle_seconds,
                                    poll=self.config.inbox.poll)
        self.watcher.start()
        for name, loop in (("series", self._series_loop), ("inbox", self._inbox_loop), ("send", self._send_loop)):
            thread = threading.Thread(target=self._guarded, args=(name, loop), name=f"segnode-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("segnode running: %s:%d as %s, inbox %s, export %s, %d destination(s)", self.config.node.bind,
                 self.port, self.config.node.ae_title, self.paths.inbox, self.paths.export,
                 len(self.config.destinations))

    def stop(self) -> None:
        """Stop intake first (listener, watcher), then let the stages finish their current step."""
        self.stopping.set()
        # One deadline for everything: the stages stop in parallel while the listener drains.
        deadline = time.monotonic() + STOP_SECONDS
        if self.scp is not None:
            self.scp.stop()
        if self.receivers is not None:
            self.receivers.stop()
        if self.watcher is not None:
            self.watcher.stop()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._commands.shutdown(wait=False, cancel_futures=True)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("stopping with %s still busy; their work resumes at next start", ", ".join(alive))
        log.info("segnode stopped")

    def run(self) -> None:
        """Run in the foreground until SIGTERM/SIGINT."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: stopping intake and draining", signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        try:
            while not self.stopping.wait(1.0):
                if self.receivers is not None:
                    self.receivers.check()
                for thread in self._threads:
                    if not thread.is_alive():
                        log.error("stage %s died; stopping so the supervisor can restart the node", thread.name)
                        self.stopping.set()
        finally:
            self.stop()

    def _connect(self) -> sqlite3.Connection:
        return db.connect(self.paths.database)

    def _guarded(self, name: str, loop: Callable[[sqlite3.Connection], None]) -> None:
        conn = self._connect()
        try:
            while not self.stopping.is_set():
                try:
                    loop(conn)
                except sqlite3.Error as exc:
                    # A busy or momentarily unavailable database: log, back off, go on.
                    log.error("%s stage: database error (%s); retrying", name, exc)
                    self.stopping.wait(2.0)
        finally:
            conn.close()

    # -- series completion and export --------------------------------------------------------------------------------

    def _series_loop(self, conn: sqlite3.Connection) -> None:
        if not self.process_due_series(conn):
            self.stopping.wait(POLL_SECONDS)

    def process_due_series(self, conn: sqlite3.Connection) -> int:
        """Export every series that has been quiet long enough; returns how many were handled."""
        due = db.due_series(conn, self.clock(), self.config.series.quiet_seconds)
        for row in due:
            if self.stopping.is_set():
                break
            self._complete_series(conn, row)
        return len(due)

    def _stored_stacks(self, conn: sqlite3.Connection, uid: str) -> list[SourceSeries]:
        """Every stack of a stored series, read from its instance files' headers."""
        paths = db.series_instances(conn, uid)
        headers = [read_header(p) for p in paths]
        readable = [(h, p) for h, p in zip(headers, paths, strict=True) if h is not None]
        if len(readable) < len(paths):
            log.warning("series %s: %d stored file(s) unreadable, ignored", uid, len(paths) - len(readable))
        return stacks_from_headers([h for h, _ in readable], [p for _, p in readable])

    def _complete_series(self, conn: sqlite3.Connection, row: db.SeriesRow) -> None:
        uid = row.series_uid
        exported = []
        try:
            stacks = self._stored_stacks(conn, uid)
            for notice in stacks[0].notices:
                log.info("series %s: %s", uid, notice)
            if not self.config.export.enabled:
                db.mark_series(conn, uid, db.SeriesState.COMPLETE, if_revision=row.revision)
                return
            problems = []
            for stack in stacks:
                try:
                    exported.append(export_series(stack, self.paths.export, version=row.revision))
                except SegnodeError as exc:
                    problems.append(f"{stack.stack.describe()}: {error_line(exc)}")
            if not exported:
                raise InputError("; ".join(problems))
            for problem in problems:
                log.warning("series %s: not exported: %s", uid, problem)
        except SegnodeError as exc:
            reason = f"series {uid}: {error_line(exc)}"
            log.warning("%s", reason)
            db.mark_series(conn, uid, db.SeriesState.FAILED, reason=reason, if_revision=row.revision)
            return
        except Exception as exc:  # one bad series must not stop the stage; the reason is kept with the series
            log.exception("series %s: unexpected error", uid)
            db.mark_series(conn, uid, db.SeriesState.FAILED, reason=f"series {uid}: unexpected error:"
                           f" {error_line(exc)}", if_revision=row.revision)
            return
        marked = db.mark_series(conn, uid, db.SeriesState.EXPORTED, export_version=row.revision,
                                if_revision=row.revision)
        if marked and self.config.export.command:
            for export in exported:
                self._commands.submit(self._run_export_command, export.nifti, export.sidecar, uid)

    def _run_export_command(self, nifti: Path, sidecar: Path, series_uid: str) -> None:
        values = {"nifti": str(nifti), "sidecar": str(sidecar), "series_uid": series_uid,
                  "inbox": str(self.paths.inbox)}
        # Placeholders are filled after splitting, so paths with spaces stay one argument and nothing reaches a shell.
        argv = [part.format(**values) for part in shlex.split(self.config.export.command)]
        timeout = self.config.export.command_timeout
        log.info("series %s: running %s", series_uid, argv[0])
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            log.error("series %s: export command timed out after %g s", series_uid, timeout)
            return
        except OSError as exc:
            log.error("series %s: export command could not start: %s", series_uid, exc)
            return
        for stream, text in (("stdout", done.stdout), ("stderr", done.stderr)):
            for line in text.splitlines()[-50:]:
                log.info("series %s: command %s: %s", series_uid, stream, line)
        if done.returncode:
            log.error("series %s: export command exited with %d", series_uid, done.returncode)

    # -- inbox → SEG -------------------------------------------------------------------------------------------------

    def _inbox_loop(self, conn: sqlite3.Connection) -> None:
        assert self.watcher is not None
        self.watcher.wait(min(POLL_SECONDS, max(self.config.inbox.settle_seconds, 0.05)))
        for item in self.watcher.ready_items():
            if self.stopping.is_set():
                return
            self.handle_item(conn, item)

    def _candidates(self, conn: sqlite3.Connection) -> tuple[set[str], list[Candidate]]:
        """Received series, and the exported stacks an item may match (read from their export sidecars)."""
        known = {row.series_uid for row in db.all_series(conn)}
        candidates = []
        for row in db.all_series(conn, db.SeriesState.EXPORTED):
            main = self.paths.export / f"{row.series_uid}.json"
            for sidecar in (main, *sorted(self.paths.export.glob(f"{row.series_uid}_stack*.json"))):
                number = re.fullmatch(r"_stack([0-9]+)", sidecar.stem[len(row.series_uid):])
                grid = exported_grid(sidecar) if sidecar.is_file() else None
                if grid is not None and (sidecar == main or number):
                    stack = int(number.group(1)) if number else 1
                    candidates.append(Candidate(row.series_uid, grid, stack=stack))
        return known, candidates

    def handle_item(self, conn: sqlite3.Connection, item: InboxItem) -> None:
        """Turn one settled inbox item into a SEG queued for every destination, or a reasoned failure."""
        job_id = jobs.create_job(conn, item.path, item.kind.value, signature=item.signature)
        job = jobs.get_job(conn, job_id)
        if job.state is jobs.JobState.FAILED:
            # The same input dropped again (by a user, or by `segnode retry`): try it again.
            jobs.retry_job(conn, job_id)
            job = jobs.get_job(conn, job_id)
        if job.state not in (jobs.JobState.PENDING, jobs.JobState.MATCHED):
            # Built before a crash that came before the move: finish the move, do not build twice.
            move_item(item, self.paths.processed, f"SEG {job.seg_sop_uid} built earlier (job {job_id})")
            return
        try:
            known, candidates = self._candidates(conn)
            match = match_item(item.path, item.sidecar, known, candidates)
            jobs.mark_matched(conn, job_id, match.series_uid)
            series = choose_stack(self._stored_stacks(conn, match.series_uid), match.stack,
                                  f"series {match.series_uid}")
            result = build_seg_from_input(series, item.path, default_labels=self.config.seg.labels,
                                          options=self.options)
            sop_uid = str(result.dataset.SOPInstanceUID)
            seg_path = self.segs / f"{sop_uid}.dcm"
            write_dataset_atomically(result.dataset, seg_path)
        except SegnodeError as exc:
            self._fail_item(conn, job_id, item, error_line(exc))
            return
        except Exception as exc:  # one bad input must not stop the node; the reason is kept with the input
            log.exception("%s: unexpected error", item.path.name)
            self._fail_item(conn, job_id, item, f"unexpected error: {error_line(exc)}")
            return
        destinations = [d.name for d in self.config.destinations]
        jobs.mark_built(conn, job_id, seg_path, sop_uid, destinations)
        stack = f" {series.stack.describe()}" if series.stack.count > 1 else ""
        summary = (f"SEG {sop_uid} built for series {match.series_uid}{stack} (matched by {match.how}):"
                   f" {len(result.segments)} segment(s), {result.alignment.describe()}")
        notes = "\n".join(result.notices)
        move_item(item, self.paths.processed, summary + (f"\n{notes}" if notes else ""))
        log.info("%s: %s; queued for %s", item.path.name, summary, ", ".join(destinations) or "no destination")

    def requeue(self, job_id: int) -> str:
        """`segnode retry`: re-open a failed job; an input that never became a SEG goes back into the inbox."""
        with self._connect() as conn:
            job = jobs.get_job(conn, job_id)
            state = jobs.retry_job(conn, job_id)
        if state is not jobs.JobState.PENDING:
            return f"job {job_id}: {len(job.sends)} send(s) due again"
        moved = find_moved_item(self.paths.failed, job.inbox_path.name)
        if moved is None:
            return (f"job {job_id}: re-opened, but {job.inbox_path.name} is no longer in {self.paths.failed};"
                    " drop the file into the inbox again")
        restored = restore_item(moved, self.paths.inbox)
        return f"job {job_id}: {restored.name} is back in the inbox and will be processed again"

    def _fail_item(self, conn: sqlite3.Connection, job_id: int, item: InboxItem, reason: str) -> None:
        log.warning("%s: failed: %s", item.path.name, reason)
        jobs.mark_failed(conn, job_id, reason)
        move_item(item, self.paths.failed, reason)

    # -- sending -------------------------------------------------------------------------------------------------------

    def _send_loop(self, conn: sqlite3.Connection) -> None:
        if not self.send_due(conn):
            self.stopping.wait(POLL_SECONDS)

    def send_due(self, conn: sqlite3.Connection) -> int:
        """Send every due SEG, one association per destination; returns how many sends were attempted."""
        due = jobs.due_sends(conn, self.clock())
        by_destination: dict[str, list[jobs.SendRow]] = defaultdict(list)
        for row in due:
            by_destination[row.destination].append(row)
        for name, rows in by_destination.items():
            if self.stopping.is_set():
                break
            self._send_batch(conn, name, rows)
        return len(due)

    def _send_batch(self, conn: sqlite3.Connection, name: str, rows: list[jobs.SendRow]) -> None:
        try:
            destination = self.config.destination(name)
        except SegnodeError as exc:
            for row in rows:
                jobs.mark_send_failed(conn, row.id, error_line(exc))
            return
        paths = [row.seg_path for row in rows]
        results = send_files(destination, paths, calling_ae=self.config.node.ae_title,
                             timeout=self.config.send.timeout)
        settings = self.config.send
        for row, result in zip(rows, results, strict=True):
            if result.outcome is Outcome.SENT:
                jobs.mark_send_ok(conn, row.id)
            elif result.outcome is Outcome.RETRY and row.attempts + 1 < settings.max_attempts:
                delay = backoff_delay(row.attempts + 1, settings.backoff_initial, settings.backoff_max)
                jobs.mark_send_retry(conn, row.id, result.reason, self.clock() + delay)
            else:
                gave_up = f" (gave up after {row.attempts + 1} attempts)" if result.outcome is Outcome.RETRY else ""
                jobs.mark_send_failed(conn, row.id, result.reason + gave_up)
