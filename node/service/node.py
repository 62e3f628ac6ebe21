"""The node's life cycle: the listener, the inbox watcher, and the pipeline's stages, each on its own thread.

The stages (:mod:`node.pipeline`) talk only through the state and the file system, so a crash anywhere leaves a
state that start-up resumes. The C-STORE association threads (:mod:`node.dicom`) only write files and index
rows. :meth:`Node.run_until_idle` drives the stages in the caller's thread until nothing is due (burst mode, for
tests and one-shot runs).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from node.config import Config
from node.convert.seg import AlgorithmInfo, SegOptions, SegType
from node.dicom.counters import ROWS, ReceiverCounters
from node.dicom.receivers import ReceiverPool
from node.dicom.scp import StorageSCP
from node.dicom.tls import TlsFileError
from node.diskspace import DiskGuard
from node.durable import remove_temp_files
from node.errors import ConfigError, SegnodeError, TransientError, error_line
from node.pipeline.build import Build
from node.pipeline.completion import Completion
from node.pipeline.deliver import Deliver
from node.pipeline.export import Export
from node.pipeline.filing import find_moved_item, restore_item
from node.pipeline.inbox import InboxWatcher
from node.pipeline.intake import Intake
from node.pipeline.qc import qc_folder
from node.pipeline.retention import Retention
from node.pipeline.stage import PipelineContext, Stage
from node.service.health import Health, database_problem, health_route, oldest_pending_seconds, stage_health
from node.service.http import HttpServer
from node.service.metrics import Metrics
from node.service.reload import read_again, summary
from node.service.status_page import StatusPage
from node.service.systemd import ServiceManager, stalled_stages
from node.state import open_state
from node.state.instances import InstanceStore
from node.state.model import JobState

log = logging.getLogger(__name__)

#: How often an idle stage looks for work; the intake is woken early by file events.
POLL_SECONDS = 0.5
#: SIGTERM to exit: stages finish their current step within this; the rest resumes at next start.
STOP_SECONDS = 8.0
#: After an error a stage could not handle, it waits this long before its next step.
ERROR_PAUSE_SECONDS = 2.0


def seg_options(config: Config) -> SegOptions:
    """How ``config``'s ``[seg]`` builds SEGs."""
    return SegOptions(
        seg_type=SegType(config.seg.type),
        algorithm=AlgorithmInfo(
            name=config.seg.algorithm_name, version=config.seg.algorithm_version or AlgorithmInfo().version
        ),
        series_description=config.seg.series_description,
    )


class Node:
    """One segnode instance. ``run()`` blocks until :meth:`stop` (or SIGTERM/SIGINT in the main thread)."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time, node_id: str | None = None) -> None:
        self.config = config
        #: Two nodes on one data folder and database need different ids (default hostname:pid).
        self.state = open_state(config.paths.data, config.paths.database, node_id=node_id)
        self.paths = config.paths
        self.store = InstanceStore(config.paths.data)
        self.scp: StorageSCP | None = None
        self.receivers: ReceiverPool | None = None
        self.port = config.node.port
        #: The DICOM TLS port once started (0: none).
        self.tls_port = 0
        self.watcher: InboxWatcher | None = None
        self.stages: list[Stage] = []
        self._threads: list[threading.Thread] = []
        #: The receivers count into shared memory held here, so counts survive a receiver process's restart.
        # One row per receiver process; in-process receiving needs no shared memory (nor its tracker process).
        self.counters = ReceiverCounters(rows=1 if config.node.receive_processes == 1 else ROWS)
        self.disk = DiskGuard.from_config(config)
        self.metrics = Metrics([d.name for d in config.destinations])
        self.metrics.watch_receivers(self.counters.snapshot)
        self.metrics.watch_state(
            self.state, disk_free_bytes=lambda: self.disk.check().free_bytes, heartbeats=self.heartbeats
        )
        self.http: HttpServer | None = None
        self.status_page: StatusPage | None = None
        self.context = PipelineContext(
            config=config, options=seg_options(config), state=self.state, clock=clock, events=self.metrics
        )

    @property
    def stopping(self) -> threading.Event:
        return self.context.stopping

    def prepare(self) -> None:
        """Create folders and the database; remove half-written files a crash left (start-up recovery)."""
        for folder in (
            self.paths.data,
            self.paths.inbox,
            self.paths.export,
            self.paths.processed,
            self.paths.failed,
            self.context.segs,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        qc = qc_folder(self.config)
        qc.mkdir(exist_ok=True)
        removed = self.store.cleanup_temp() + sum(
            remove_temp_files(folder) for folder in (self.paths.export, self.context.segs, qc)
        )
        if removed:
            log.info("start-up: removed %d half-written temporary file(s)", removed)
        resumable = self.state.jobs.resumable()
        if resumable:
            log.info("start-up: resuming %d unfinished job(s)", len(resumable))

    def start(self, *, threads: bool = True) -> None:
        """Prepare, then start the listener, the inbox watcher and (unless ``threads`` is false, for burst mode
        with :meth:`run_until_idle`) the stage threads; returns at once."""
        self.prepare()
        if self.config.http.port:
            # First: an address already in use fails the start before anything else runs.
            routes = {"/healthz": health_route(self.health), "/metrics": self.metrics.route}
            # GET / and /qc/: the status page; it keeps the last warnings from here on (see close in stop()).
            self.status_page = StatusPage(self.config, self.state, self.health, self.context.clock)
            routes.update(self.status_page.routes())
            self.http = HttpServer(self.config.http.bind, self.config.http.port, routes)
            self.http.start()
        if self.config.node.receive_processes > 1:
            self.receivers = ReceiverPool(self.config, self.config.node.receive_processes, counters=self.counters)
            self.receivers.start()
            self.port = self.receivers.port
            self.tls_port = self.receivers.tls_port
        else:
            self.scp = StorageSCP.from_config(self.config, counters=self.counters, disk=self.disk)
            self.scp.start()
            self.port = self.scp.port
            self.tls_port = self.scp.tls_port
        self.watcher = InboxWatcher(
            self.paths.inbox, settle_seconds=self.config.inbox.settle_seconds, poll=self.config.inbox.poll
        )
        self.watcher.start()
        intake = Intake(self.context, self.watcher)
        self.stages = [
            Completion(self.context),
            Export(self.context),
            intake,
            Build(self.context, intake),
            Deliver(self.context),
            Retention(self.context),
        ]
        if threads:
            for stage in self.stages:
                thread = threading.Thread(target=self._loop, args=(stage,), name=f"segnode-{stage.name}", daemon=True)
                thread.start()
                self._threads.append(thread)
        log.info(
            "segnode running: %s, inbox %s, export %s, %d destination(s)",
            self.listening_on(),
            self.paths.inbox,
            self.paths.export,
            len(self.config.destinations),
        )

    def listening_on(self) -> str:
        """``0.0.0.0:11112 and TLS 0.0.0.0:2762 as SEGNODE``: where peers reach the node."""
        bind = self.config.node.bind
        ports = [f"{bind}:{self.port}"] if self.port else []
        ports += [f"TLS {bind}:{self.tls_port}"] if self.tls_port else []
        return f"{' and '.join(ports)} as {self.config.node.ae_title}"

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
        if self.http is not None:
            self.http.stop()  # last: /healthz answers 503 while the node drains
        if self.status_page is not None:
            self.status_page.close()
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("stopping with %s still busy; their work resumes at next start", ", ".join(alive))
        else:
            for stage in self.stages:
                stage.close()
            # What this node had claimed is free for the next start (or another node) at once, not at lease end.
            self.state.release_claims()
            self.state.close()
        log.info("segnode stopped")

    def run(self) -> None:
        """Run in the foreground until SIGTERM/SIGINT; SIGHUP reloads the configuration.

        Under systemd (``Type=notify``) it says READY=1 once listening with its state recovered, feeds the
        watchdog only while no stage is stalled, and says RELOADING=1 and STOPPING=1 (:mod:`.systemd`).
        """
        manager = ServiceManager()
        reload_requested = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if signum == signal.SIGHUP:
                reload_requested.set()  # done by the main loop, not inside whatever the signal interrupted
                return
            log.info("received %s: stopping intake and draining", signal.Signals(signum).name)
            self.stopping.set()

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, on_signal)
        self.start()
        serving = f"listening on {self.listening_on()}"
        manager.ready(serving)
        stalled: list[str] = []
        try:
            while not self.stopping.wait(manager.ping_interval(1.0)):
                if self.receivers is not None:
                    self.receivers.check()
                for thread in self._threads:
                    if not thread.is_alive():
                        log.error("stage %s died; stopping so the supervisor can restart the node", thread.name)
                        self.stopping.set()
                if reload_requested.is_set():
                    reload_requested.clear()
                    manager.reloading()
                    try:
                        self.reload()
                    except SegnodeError as exc:  # a bad new file: keep serving with the one already checked
                        log.error("reload failed, the running configuration stays: %s", error_line(exc))
                    manager.ready(serving)
                now_stalled = stalled_stages(self.heartbeats(), self.config.node.stall_seconds)
                if now_stalled != stalled:
                    if now_stalled:
                        log.error("stage(s) %s stalled; the watchdog is no longer fed", ", ".join(now_stalled))
                    manager.status(f"stalled: {', '.join(now_stalled)}" if now_stalled else serving)
                    stalled = now_stalled
                # A stalled stage starves the watchdog, so systemd restarts a node that no longer makes progress.
                if not stalled and not self.stopping.is_set():
                    manager.alive()
        finally:
            manager.stopping("stopping: intake closed, draining")
            self.stop()

    def reload(self) -> None:
        """SIGHUP: read the configuration file again; destinations, access lists, limits, [disk], TLS files,
        labels and [seg] apply from the next association or job on, and associations in progress go on.

        Raises
        ------
        ConfigError
            The file is missing or invalid, or its label table or TLS files do not load: nothing changes.
        """
        fresh = read_again(self.config)
        disk = DiskGuard.from_config(fresh)
        try:
            if self.scp is not None:
                self.scp.apply(fresh, disk=disk)
        except TlsFileError as exc:
            raise ConfigError(str(exc)) from exc
        if self.receivers is not None:
            self.receivers.reload(fresh)
        self.disk = disk
        self.config = fresh
        self.context.replace_settings(fresh, seg_options(fresh))
        log.info("reloaded %s: %s", fresh.source, summary(fresh))

    def _step(self, stage: Stage) -> int:
        """One step of ``stage``; an error it could not handle is logged and counts as no work done."""
        try:
            done = stage.step()
        except TransientError as exc:
            # A busy or momentarily unavailable database or disk: log, back off, go on.
            log.error("%s stage: %s; retrying", stage.name, exc)
            self.stopping.wait(ERROR_PAUSE_SECONDS)
            done = 0
        except SegnodeError as exc:
            # e.g. a destination a reload removed while its sends were claimed: one line, and the stage goes on.
            log.error("%s stage: %s", stage.name, error_line(exc))
            self.stopping.wait(ERROR_PAUSE_SECONDS)
            done = 0
        stage.beat()
        return done

    def _loop(self, stage: Stage) -> None:
        while not self.stopping.is_set():
            if not self._step(stage):
                stage.idle(self.stopping, POLL_SECONDS)

    def run_until_idle(self, timeout: float = 60.0) -> int:
        """Step every stage in turn, in this thread, until none has anything to do or on its way; return how many
        things were done. Raises TimeoutError if the pipeline is still busy after ``timeout`` seconds."""
        if self._threads:
            raise RuntimeError("run_until_idle drives the stages itself: start the node with threads=False")
        deadline = time.monotonic() + timeout
        total = 0
        while True:
            done = sum(self._step(stage) for stage in self.stages)
            total += done
            if not done and not any(stage.busy() for stage in self.stages):
                return total
            if time.monotonic() > deadline:
                raise TimeoutError(f"pipeline still busy after {timeout:g} s")
            if not done:
                time.sleep(0.05)

    @property
    def http_port(self) -> int:
        """The port /healthz and /metrics are served on; 0 when ``[http] port = 0`` or not started."""
        return self.http.port if self.http is not None else 0

    def listening(self) -> bool:
        """Whether the DICOM listener serves: the in-process SCP, or the pool's socket with every receiver alive."""
        if self.scp is not None:
            return self.scp.running
        if self.receivers is not None:
            return self.receivers.serving
        return False

    def stopped_stages(self) -> list[str]:
        """Stages whose thread has ended (none in burst mode, where the caller's thread steps them)."""
        return [stage.name for stage, thread in zip(self.stages, self._threads, strict=False) if not thread.is_alive()]

    def health(self) -> Health:
        """What GET /healthz answers: listener, database, disk, backlog and stages, each checked now."""
        return Health(
            listening=self.listening(),
            database_problem=database_problem(self.state),
            disk=self.disk.check(),
            reserve_bytes=self.disk.reserve_bytes,
            oldest_pending_job_seconds=oldest_pending_seconds(self.state, self.context.clock()),
            stages=stage_health(self.heartbeats(), self.stopped_stages(), self.config.node.stall_seconds),
        )

    def heartbeats(self) -> dict[str, float]:
        """Seconds since each stage last stepped."""
        now = time.monotonic()
        return {stage.name: now - stage.last_beat for stage in self.stages}

    def requeue(self, job_id: int) -> str:
        """`segnode retry`: re-open a failed job; an input that never became a SEG goes back into the inbox."""
        job = self.state.jobs.get(job_id)
        state = self.state.jobs.retry(job_id)
        if state is not JobState.PENDING:
            return f"job {job_id}: {len(job.sends)} send(s) due again"
        moved = find_moved_item(self.paths.failed, job.inbox_path.name)
        if moved is None:
            return (
                f"job {job_id}: re-opened, but {job.inbox_path.name} is no longer in {self.paths.failed};"
                " drop the file into the inbox again"
            )
        restored = restore_item(moved, self.paths.inbox)
        return f"job {job_id}: {restored.name} is back in the inbox and will be processed again"
