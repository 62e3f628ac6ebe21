"""The C-STORE / C-ECHO listener (pynetdicom SCP), running in background threads.

Each association runs in its own pynetdicom thread. A C-STORE is answered with success only after the instance
is durable on disk (:class:`~node.state.instances.InstanceStore`) and its index row committed
(:meth:`node.state.SeriesIndex.record_instance`); nothing else happens on the association thread: pixel data is never
decoded, the only parsing is of the header up to the series and study UIDs.

Failures become DICOM statuses in exactly one place, :func:`~node.dicom.status.store_status`: ``0xA700`` for a
full disk (past the ``[disk]`` reserve, or ENOSPC) or a busy database, ``0xC000`` for what cannot be parsed,
``0x0110`` for the unexpected. The server keeps serving in every case.

Who may associate is decided before negotiation by :mod:`node.dicom.admission`; every outcome is counted in
:class:`~node.dicom.counters.ReceiverCounters`. With ``[tls] port`` the SCP also serves a DICOM TLS socket, and
with ``[tls] plain = false`` only that one. :meth:`StorageSCP.apply` takes a new configuration's access policy,
limits and certificates for new associations without touching open ones.

State access: the SCP opens the node's state (:func:`node.state.open_state`), which gives each association thread
a connection of its own; only the short index write is serialised by the database, so concurrent associations
write and fsync their files in parallel. The sockets it serves come from :mod:`node.dicom.listener`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt

from node.config import Config
from node.dicom.access import AccessPolicy
from node.dicom.admission import Admission, AssociationGate, peer_text
from node.dicom.counters import ReceiverCounters
from node.dicom.endpoints import PLAIN, TLS, Endpoints
from node.dicom.entity import MAX_PDU_BYTES, TRANSFER_SYNTAXES, NetworkSettings, application_entity
from node.dicom.listener import open_listener
from node.dicom.part10 import UnreadableInstanceError, file_meta, read_identity
from node.dicom.sessions import AssociationEnd, Sessions
from node.dicom.status import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    StoreOutcome,
    store_status,
)
from node.dicom.tls import server_context
from node.diskspace import DiskGuard
from node.errors import SegnodeError, TransientError
from node.state import State, open_state
from node.state.instances import InstanceStore, check_uid

log = logging.getLogger(__name__)

__all__ = [
    "ABORT_WAIT_SECONDS",
    "MAX_PDU_BYTES",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_PROCESSING_FAILURE",
    "STATUS_SUCCESS",
    "TRANSFER_SYNTAXES",
    "AssociationEnd",
    "StorageSCP",
    "StoreOutcome",
    "UnreadableInstanceError",
    "open_listener",
    "read_identity",
    "store_status",
]

#: How long :meth:`StorageSCP.stop` waits for aborted associations' threads to end.
ABORT_WAIT_SECONDS = 2.0


def _join_all(threads: list[threading.Thread], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))


class StorageSCP:
    """A DICOM C-STORE/C-ECHO server writing every received instance durably.

    Parameters
    ----------
    store
        Where instance files go.
    database
        The state database; the SCP opens the state (:func:`node.state.open_state`) for ``store.root`` on it.
    ae_title, bind, port, max_associations
        As ``[node]`` in the config; ``port=0`` lets the OS pick one (read it back from :attr:`port`).
        ``max_associations`` counts in ``counters``, over every receiver sharing them.
    listener
        A socket from :func:`open_listener` to serve instead of binding ``bind:port``; several processes can
        serve the same one. :meth:`stop` closes this process's copy.
    on_association_end
        Called on the association's thread after an association that stored instances is released or
        aborted (exceptions it raises are logged, not propagated).
    hint_completion
        On release, call :meth:`node.state.SeriesIndex.hint_complete` for the association's ``finished_series``, so
        they complete after a short grace instead of the full quiet period.
    clock
        Time source for ``received_at`` (POSIX seconds).
    counters
        Where instances, associations and refusals are counted, and open associations admitted; None: counters
        of this SCP's own (:attr:`counters`).
    access
        Who may associate; None: anyone, whatever AE title they call.
    disk
        Refuse new associations and C-STOREs while it reports no room; None: no check but the writes' own.
    network
        PDU size and timeouts (``[node] max_pdu`` and the three timeouts).
    tls_port, tls_context, tls_listener
        With ``tls_context``: also serve DICOM TLS on ``bind:tls_port`` (or on ``tls_listener``); read the port
        back from :attr:`tls_port`.
    plain
        False: serve only the TLS socket.
    """

    def __init__(
        self,
        store: InstanceStore,
        database: Path,
        *,
        ae_title: str = "SEGNODE",
        bind: str = "0.0.0.0",
        port: int = 11112,
        max_associations: int = 10,
        on_association_end: Callable[[AssociationEnd], None] | None = None,
        hint_completion: bool = True,
        clock: Callable[[], float] = time.time,
        listener: socket.socket | None = None,
        counters: ReceiverCounters | None = None,
        access: AccessPolicy | None = None,
        disk: DiskGuard | None = None,
        network: NetworkSettings | None = None,
        tls_port: int = 0,
        tls_context: ssl.SSLContext | None = None,
        tls_listener: socket.socket | None = None,
        plain: bool = True,
    ) -> None:
        self.store = store
        self.database = Path(database)
        self.ae_title = ae_title
        self.bind = bind
        self.requested_port = port
        self.on_association_end = on_association_end
        self.hint_completion = hint_completion
        self.clock = clock
        self.counters = counters if counters is not None else ReceiverCounters(rows=1)
        self.network = network or NetworkSettings()
        policy = access or AccessPolicy(ae_title, require_called_aet=False)
        self._gate = AssociationGate(Admission(policy, max_associations, disk), self.counters)
        self._endpoints = Endpoints(
            bind,
            port=port,
            listener=listener,
            plain=plain,
            tls_port=tls_port,
            tls_context=tls_context,
            tls_listener=tls_listener,
        )
        self._state: State | None = None
        self._sessions = Sessions()
        self._ae: Any = None

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        on_association_end: Callable[[AssociationEnd], None] | None = None,
        hint_completion: bool = True,
        listener: socket.socket | None = None,
        tls_listener: socket.socket | None = None,
        counters: ReceiverCounters | None = None,
        disk: DiskGuard | None = None,
    ) -> StorageSCP:
        """An SCP for ``config``'s ``[node]``, ``[paths]``, ``[tls]`` and ``[disk]`` (not started).

        ``disk`` defaults to a guard of ``[disk]``. Raises :class:`~node.dicom.tls.TlsFileError` when a TLS
        listener is configured and its files do not load.
        """
        tls = config.tls
        return cls(
            InstanceStore(config.paths.data),
            config.paths.database,
            ae_title=config.node.ae_title,
            bind=config.node.bind,
            port=config.node.port,
            max_associations=config.node.max_associations,
            on_association_end=on_association_end,
            hint_completion=hint_completion,
            listener=listener,
            counters=counters,
            access=AccessPolicy.from_config(config.node),
            disk=disk if disk is not None else DiskGuard.from_config(config),
            network=NetworkSettings.from_config(config.node),
            tls_port=tls.port,
            tls_context=server_context(tls) if tls.port else None,
            tls_listener=tls_listener,
            plain=tls.plain,
        )

    @property
    def max_associations(self) -> int:
        return self._gate.admission.max_associations

    def apply(self, config: Config, *, disk: DiskGuard | None = None) -> None:
        """Take ``config``'s access policy, association limit, network limits, ``[disk]`` (or ``disk``) and TLS
        certificates for new associations; open associations go on as they are.

        What needs new sockets (AE title, bind, ports, ``[tls] plain``) or another data folder is left as it is,
        with a warning: it takes a restart. Raises :class:`~node.dicom.tls.TlsFileError`, changing nothing, when
        the TLS files do not load.
        """
        context = server_context(config.tls) if self._endpoints.serves_tls and config.tls.port else None
        self._warn_fixed(config)
        self._gate.admission = Admission(
            AccessPolicy.from_config(config.node),
            config.node.max_associations,
            disk if disk is not None else DiskGuard.from_config(config),
        )
        self.network = NetworkSettings.from_config(config.node)
        if self._ae is not None:
            self.network.apply(self._ae)
        if context is not None:
            self._endpoints.use_tls_context(context)
        log.info("applied the configuration of %s to new associations", config.source or "(defaults)")

    def _warn_fixed(self, config: Config) -> None:
        fixed = {
            "[node] ae_title": (self.ae_title, config.node.ae_title),
            "[node] bind": (self.bind, config.node.bind),
            "[node] port": (self._endpoints.requested_port(PLAIN), config.node.port if config.tls.plain else None),
            "[tls] port": (self._endpoints.requested_port(TLS) or 0, config.tls.port),
            "[paths] data": (self.store.root, config.paths.data),
        }
        for key, (now, wanted) in fixed.items():
            if now != wanted:
                log.warning("%s changed from %s to %s: that takes a restart of the node", key, now, wanted)

    def _application_entity(self) -> Any:
        return application_entity(self.ae_title, self.network)

    def start(self) -> None:
        """Open the database and start listening; returns at once (the servers run in background threads).

        Raises
        ------
        OSError
            An address cannot be bound (port in use, no permission for ports below 1024).
        """
        if self._ae is not None:
            return
        self._state = open_state(self.store.root, self.database)
        ae = self._application_entity()
        handlers = [*self._gate.handlers(), *self._store_handlers()]
        try:
            self._endpoints.start(
                ae,
                handlers,
                on_exit=self._gate.exited,
                handshake_seconds=self.network.acse_timeout,
                source_allowed=self._gate.source_allowed,
            )
        except BaseException:
            self._state.close()
            self._state = None
            raise
        self._ae = ae

    def _store_handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]

    def stop(self, drain_seconds: float = 5.0) -> None:
        """Stop accepting associations, let open ones finish, then close the database connection.

        Associations still open after ``drain_seconds`` are aborted: their unanswered instances were never
        acknowledged, so their senders will send them again. Takes at most ``drain_seconds`` plus
        :data:`ABORT_WAIT_SECONDS`.
        """
        ae, self._ae = self._ae, None
        self._endpoints.shutdown()  # open associations go on
        if ae is not None:
            _join_all(ae.active_associations, drain_seconds)
            remaining = ae.active_associations
            if remaining:
                log.warning("aborting %d association(s) still open after %g s", len(remaining), drain_seconds)
            ae.shutdown()  # aborts whatever is left
            _join_all(remaining, ABORT_WAIT_SECONDS)
        state, self._state = self._state, None
        if state is not None:
            state.close()
        if ae is not None:
            log.info("stopped listening as %s", self.ae_title)

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The plain port listened on (the OS's pick when constructed with ``port=0``, once started); 0 when only
        TLS listens."""
        return self._endpoints.port(PLAIN)

    @property
    def tls_port(self) -> int:
        """The TLS port listened on, as :attr:`port`; 0 without a TLS listener."""
        return self._endpoints.port(TLS)

    @property
    def running(self) -> bool:
        return self._ae is not None

    @staticmethod
    def _peer(event: Any) -> tuple[str, str]:
        requestor = event.assoc.requestor
        return str(requestor.ae_title).strip(), peer_text(str(requestor.address), int(requestor.port))

    def _on_store(self, event: Any) -> int | Dataset:
        calling_ae, peer = self._peer(event)
        request = event.request
        sop_uid = str(request.AffectedSOPInstanceUID or "").strip()
        with store_status(f"C-STORE {sop_uid or '(no SOP Instance UID)'} from {calling_ae} at {peer}") as outcome:
            self._store(event, calling_ae, peer)
        if outcome.status != STATUS_SUCCESS:
            self.counters.refused(outcome.status)
        return outcome.response()

    def _store(self, event: Any, calling_ae: str, peer: str) -> None:
        disk = self._gate.admission.disk
        if disk is not None:
            disk.require_room()
        request = event.request
        sop_uid = check_uid(str(request.AffectedSOPInstanceUID or ""), "Affected SOP Instance UID")
        sop_class_uid = check_uid(str(request.AffectedSOPClassUID or ""), "Affected SOP Class UID")
        transfer_syntax = str(event.context.transfer_syntax)
        # The data set is stored as received: a view of pynetdicom's buffer, no copy and no decoding.
        with event.request.DataSet.getbuffer() as dataset:
            series_uid, study_uid = read_identity(dataset, transfer_syntax, sop_uid)
            meta = file_meta(sop_class_uid, sop_uid, transfer_syntax)
            path = self.store.put(series_uid, sop_uid, meta, dataset)
            size = len(meta) + len(dataset)
        received_at = self.clock()
        state = self._state
        if state is None:
            raise TransientError("the node is stopping; retry later")
        state.series.record_instance(series_uid, study_uid, sop_uid, sop_class_uid, path, size, received_at)
        self._sessions.stored(id(event.assoc), calling_ae, peer, series_uid)
        self.counters.stored(size)
        log.debug("stored %s of series %s from %s (%d bytes)", sop_uid, series_uid, calling_ae, size)

    def _on_released(self, event: Any) -> None:
        self._end(event, aborted=False)

    def _on_aborted(self, event: Any) -> None:
        self._end(event, aborted=True)

    def _on_closed(self, event: Any) -> None:
        # A peer that drops the connection may produce neither a release nor an abort event.
        self._end(event, aborted=True)

    def _end(self, event: Any, *, aborted: bool) -> None:
        ending = self._sessions.end(id(event.assoc), aborted=aborted)
        if ending is None:
            return
        finished = ending.finished_series
        if self.hint_completion and not aborted and finished:
            try:
                state = self._state
                if state is not None:
                    state.series.hint_complete(finished, self.clock())
            except SegnodeError as exc:
                # Only an optimisation: the quiet period still completes the series.
                log.warning("could not hint completion of %d series: %s", len(finished), exc)
        if self.on_association_end is not None:
            try:
                self.on_association_end(ending)
            except Exception:
                log.exception("association-end callback failed for %s at %s", ending.calling_ae, ending.peer)
