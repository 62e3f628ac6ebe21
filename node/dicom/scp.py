"""The C-STORE / C-ECHO listener (pynetdicom SCP), running in background threads.

Each association runs in its own pynetdicom thread. A C-STORE is answered with success only after the instance
is durable on disk (:class:`~node.state.instances.InstanceStore`) and its index row committed
(:meth:`node.state.SeriesIndex.record_instance`); nothing else happens on the association thread: pixel data is never
decoded, the only parsing is of the header up to the series and study UIDs.

Failures become DICOM statuses in exactly one place, :func:`store_status`: a full disk (or a locked/full
database) is ``0xA700`` Out of Resources, so the sender retries later; an instance that cannot be parsed or lacks
usable UIDs is ``0xC000`` Cannot Understand, with a one-line reason logged and sent as Error Comment; anything
unexpected is ``0x0110`` Processing Failure, logged with its traceback. The server keeps serving in every case.

State access: the SCP opens the node's state (:func:`node.state.open_state`), which gives each association thread
a connection of its own; only the short index write is serialised by the database, so concurrent associations
write and fsync their files in parallel. The socket it serves comes from :mod:`node.dicom.listener`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import Config
from node.dicom.listener import ListenerServer, open_listener
from node.dicom.part10 import UnreadableInstanceError, file_meta, read_identity
from node.dicom.status import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    StoreOutcome,
    store_status,
)
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

#: Transfer syntaxes accepted for storage; instances are stored exactly as sent, in the syntax the peer chose.
TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,  # 1.2.840.10008.1.2.4.50
    JPEGExtended12Bit,  # .51
    JPEGLossless,  # .57
    JPEGLosslessSV1,  # .70
    JPEGLSLossless,  # .80
    JPEGLSNearLossless,  # .81
    JPEG2000Lossless,  # .90
    JPEG2000,  # .91
    RLELossless,  # 1.2.840.10008.1.2.5
)

#: The largest PDU the node accepts. Senders split a data set into PDUs of at most this size, and pynetdicom's
#: per-PDU decoding costs CPU: 1 MiB instead of its 16 KiB default cuts the receiver's CPU per instance by a
#: fifth (bench/bench_ingest.py) for 1 MiB of buffer per association.
MAX_PDU_BYTES = 1 << 20

#: How long :meth:`StorageSCP.stop` waits for aborted associations' threads to end.
ABORT_WAIT_SECONDS = 2.0


def _join_all(threads: list[threading.Thread], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))


@dataclass(frozen=True)
class AssociationEnd:
    """What an association that stored instances did, reported when it is released or aborted.

    ``finished_series`` are the series of ``series_uids`` that no other open association has stored instances
    of: the ones a release can hint as complete.
    """

    calling_ae: str
    peer: str
    series_uids: frozenset[str]
    finished_series: frozenset[str]
    instances: int
    aborted: bool


@dataclass
class _Session:
    calling_ae: str
    peer: str
    series_uids: set[str] = field(default_factory=set)
    instances: int = 0


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

    Examples
    --------
    ::

        with StorageSCP(InstanceStore(data), data / "segnode.sqlite3", port=0) as scp:
            print(scp.port)
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
    ) -> None:
        self.store = store
        self.database = Path(database)
        self.ae_title = ae_title
        self.bind = bind
        self.requested_port = port
        self._bound_port = port
        self.max_associations = max_associations
        self.on_association_end = on_association_end
        self.hint_completion = hint_completion
        self.clock = clock
        self._listener = listener
        self._state: State | None = None
        self._sessions: dict[int, _Session] = {}
        self._sessions_lock = threading.Lock()
        self._ae: Any = None
        self._server: Any = None

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        on_association_end: Callable[[AssociationEnd], None] | None = None,
        hint_completion: bool = True,
        listener: socket.socket | None = None,
    ) -> StorageSCP:
        """An SCP for ``config``'s ``[node]`` and ``[paths]`` (not started)."""
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
        )

    def _application_entity(self) -> Any:
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
            # pynetdicom's standard handlers build a log message for every PDU and DIMSE message, logged or not;
            # with its logger at WARNING (node.logs) that is a tenth of the receiver's CPU for nothing.
            _config.LOG_HANDLER_LEVEL = "none"
        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = self.max_associations
        ae.maximum_pdu_size = MAX_PDU_BYTES
        # supported_contexts has no 128-context limit (that applies to what a requestor proposes).
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
        return ae

    def start(self) -> None:
        """Open the database and start listening; returns at once (the server runs in background threads).

        Raises
        ------
        OSError
            The address cannot be bound (port in use, no permission for ports below 1024).
        """
        if self._server is not None:
            return
        self._state = open_state(self.store.root, self.database)
        self._ae = self._application_entity()
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        try:
            listener = self._listener or open_listener(self.bind, self.requested_port)
            self._listener = None  # the server owns it now
            server = self._ae.make_server(
                listener.getsockname(), evt_handlers=handlers, server_class=ListenerServer, listener=listener
            )
        except BaseException:
            self._state.close()
            self._state = None
            raise
        # As AE.start_server(block=False) does: AE.shutdown() and server.shutdown() expect it in the list.
        self._ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name=f"segnode-accept-{self.ae_title}", daemon=True).start()
        self._server = server
        self._bound_port = int(server.server_address[1])
        log.info("listening as %s on %s:%d", self.ae_title, self.bind, self.port)

    def stop(self, drain_seconds: float = 5.0) -> None:
        """Stop accepting associations, let open ones finish, then close the database connection.

        Associations still open after ``drain_seconds`` are aborted: their unanswered instances were never
        acknowledged, so their senders will send them again. Takes at most ``drain_seconds`` plus
        :data:`ABORT_WAIT_SECONDS`.
        """
        ae, server = self._ae, self._server
        self._ae = self._server = None
        if server is not None:
            server.shutdown()  # closes the listening socket; open associations go on
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
        if server is not None:
            log.info("stopped listening as %s", self.ae_title)

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port listened on (the OS's pick when constructed with ``port=0``, once started)."""
        return self._bound_port

    @property
    def running(self) -> bool:
        return self._server is not None

    @staticmethod
    def _peer(event: Any) -> tuple[str, str]:
        requestor = event.assoc.requestor
        return str(requestor.ae_title).strip(), f"{requestor.address}:{requestor.port}"

    def _on_store(self, event: Any) -> int | Dataset:
        calling_ae, peer = self._peer(event)
        request = event.request
        sop_uid = str(request.AffectedSOPInstanceUID or "").strip()
        with store_status(f"C-STORE {sop_uid or '(no SOP Instance UID)'} from {calling_ae} at {peer}") as outcome:
            self._store(event, calling_ae, peer)
        return outcome.response()

    def _store(self, event: Any, calling_ae: str, peer: str) -> None:
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
        with self._sessions_lock:
            session = self._sessions.setdefault(id(event.assoc), _Session(calling_ae, peer))
            session.series_uids.add(series_uid)
            session.instances += 1
        log.debug("stored %s of series %s from %s (%d bytes)", sop_uid, series_uid, calling_ae, size)

    def _on_released(self, event: Any) -> None:
        self._end(event, aborted=False)

    def _on_aborted(self, event: Any) -> None:
        self._end(event, aborted=True)

    def _on_closed(self, event: Any) -> None:
        # A peer that drops the connection may produce neither a release nor an abort event.
        self._end(event, aborted=True)

    def _end(self, event: Any, *, aborted: bool) -> None:
        with self._sessions_lock:
            session = self._sessions.pop(id(event.assoc), None)
            if session is None:
                return
            still_sending = set().union(*(s.series_uids for s in self._sessions.values()))
        finished = frozenset(session.series_uids - still_sending)
        ending = AssociationEnd(
            calling_ae=session.calling_ae,
            peer=session.peer,
            series_uids=frozenset(session.series_uids),
            finished_series=finished,
            instances=session.instances,
            aborted=aborted,
        )
        log.info(
            "association from %s at %s %s: %d instance(s) of %d series",
            session.calling_ae,
            session.peer,
            "aborted" if aborted else "released",
            session.instances,
            len(session.series_uids),
        )
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
                log.exception("association-end callback failed for %s at %s", session.calling_ae, session.peer)
