"""Admission of associations: the node's decision when an A-ASSOCIATE-RQ arrives, and its slot until the end.

When an association is requested (pynetdicom's ``EVT_REQUESTED``, before any negotiation) :class:`AssociationGate`
asks, in order: the :class:`~node.dicom.access.AccessPolicy` (source address, calling and called AE title), the
:class:`~node.diskspace.DiskGuard` (room for more instances), and the node-wide association count in
:class:`~node.dicom.counters.ReceiverCounters` (one slot per association over every receiver process). The first
that says no decides the A-ASSOCIATE-RJ; it is logged once and counted. pynetdicom's own checks of AE titles and
of its per-process association limit are switched off (:func:`disable_pynetdicom_admission`), so this is the only
place that decides.

A slot is given back when the association's thread ends (:meth:`AssociationGate.exited`, called by
:class:`~node.dicom.listener.ListenerServer`), which every path reaches: release, abort, the peer disconnecting,
a network or ACSE timeout, a rejection after the slot was taken, an exception in a handler.

Admission fails closed: an exception while deciding is logged and rejects the association (transient,
service-provider, temporary congestion), since pynetdicom would swallow it and negotiate regardless.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pynetdicom import evt

from node.dicom.access import AccessPolicy, Rejection, RejectionKind, RejectReason, RejectResult, RejectSource
from node.dicom.counters import ReceiverCounters
from node.errors import error_line

if TYPE_CHECKING:
    from node.diskspace import DiskGuard

log = logging.getLogger(__name__)

__all__ = ["Admission", "AssociationGate", "disable_pynetdicom_admission"]

#: pynetdicom's own association limit, set so high that it never decides (it counts per process, and counts
#: associations that are still negotiating or already rejected).
PYNETDICOM_MAXIMUM_ASSOCIATIONS = 1 << 20


def disable_pynetdicom_admission(ae: Any) -> None:
    """Leave every admission decision to :class:`AssociationGate`."""
    ae.maximum_associations = PYNETDICOM_MAXIMUM_ASSOCIATIONS
    ae.require_called_aet = False
    ae.require_calling_aet = []


@dataclass(frozen=True)
class Admission:
    """What a new association must pass; replaced as a whole by a reload, so a request sees one version."""

    policy: AccessPolicy
    max_associations: int
    disk: DiskGuard | None = None

    def decide(self, address: str, calling_aet: str, called_aet: str) -> Rejection | None:
        """The policy's answer, then the disk's; the association count comes last (it takes a slot)."""
        rejection = self.policy.check(address, calling_aet, called_aet)
        if rejection is None and self.disk is not None:
            space = self.disk.check()
            if not space.room:
                rejection = Rejection.disk(space.reason)
        return rejection


def peer_text(address: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets.

    >>> peer_text("10.0.0.1", 104), peer_text("fd00::1", 104)
    ('10.0.0.1:104', '[fd00::1]:104')
    """
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


#: A-ASSOCIATE-RJ reason when admission itself failed: with a service-provider (presentation) source and a
#: transient result, temporary congestion (PS3.8 9.3.4), so the peer tries again later.
FAILED_REASON = RejectReason.TEMPORARY_CONGESTION


def _who(assoc: Any) -> str:
    """The requestor's ``host:port`` for a log line, or a placeholder when even that cannot be read."""
    try:
        return peer_text(str(assoc.requestor.address), int(assoc.requestor.port))
    except Exception:
        return "an unknown peer"


def _reject(assoc: Any, result: int, source: int, reason: int) -> None:
    assoc.acse.send_reject(int(result), int(source), reason)
    # As pynetdicom does after its own rejections: wait until the A-ASSOCIATE-RJ has gone out and the peer has
    # closed (or the ARTIM timer expired) before the connection is shut down.
    assoc.kill()


class AssociationGate:
    """Admits or rejects each requested association and holds its slot in ``counters`` while it is open."""

    def __init__(self, admission: Admission, counters: ReceiverCounters) -> None:
        self.admission = admission
        self.counters = counters
        self._slots: set[int] = set()
        self._lock = threading.Lock()

    def handlers(self) -> list[tuple[Any, Any]]:
        """The pynetdicom event handlers to bind on the server."""
        return [(evt.EVT_REQUESTED, self.requested), (evt.EVT_ACCEPTED, self.accepted)]

    def requested(self, event: Any) -> None:
        """``EVT_REQUESTED``: admit, or send the A-ASSOCIATE-RJ and end the association.

        Fails closed: pynetdicom swallows an exception raised here and, its own checks being switched off, would
        go on to negotiate. So any exception gives back the slot if one was taken, is logged and rejects
        transiently (the node's trouble, not the peer's).
        """
        assoc = event.assoc
        try:
            self._admit(assoc)
        except Exception as exc:
            self.exited(assoc)  # a slot taken before the failure is given back now
            log.error("admission failed for an association from %s, rejecting it: %s", _who(assoc), error_line(exc))
            log.debug("admission failure", exc_info=True)
            try:
                _reject(assoc, RejectResult.TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION, FAILED_REASON)
            except Exception:
                log.debug("could not send the A-ASSOCIATE-RJ either; aborting", exc_info=True)
                assoc.abort()  # negotiation must not go on whatever happens

    def _admit(self, assoc: Any) -> None:
        request = assoc.requestor.primitive
        calling, called = str(request.calling_ae_title).strip(), str(request.called_ae_title).strip()
        address = str(assoc.requestor.address)
        admission = self.admission
        rejection = admission.decide(address, calling, called)
        if rejection is None:
            if self.counters.try_open(admission.max_associations):
                with self._lock:
                    self._slots.add(id(assoc))
                return
            rejection = Rejection.limit(admission.max_associations)
        self.counters.rejected(rejection.kind)
        log.warning(
            "rejected association from %s (calling %s, called %s): %s",
            peer_text(address, int(assoc.requestor.port)),
            calling,
            called,
            rejection.why,
        )
        _reject(assoc, rejection.result, rejection.source, rejection.reason)

    def source_allowed(self, address: str, port: int) -> bool:
        """Whether a TLS connection from ``address`` may go on to its handshake; a refusal is logged and counted
        here, as its association would have been rejected."""
        if self.admission.policy.source_allowed(address):
            return True
        self.counters.rejected(RejectionKind.SOURCE)
        why = Rejection.source_address(address).why
        log.warning("refused TLS connection from %s before the handshake: %s", peer_text(address, port), why)
        return False

    def accepted(self, _event: Any) -> None:
        """``EVT_ACCEPTED``: count it."""
        self.counters.accepted()

    def exited(self, assoc: Any) -> None:
        """The association's thread is ending: give back its slot, if it took one."""
        with self._lock:
            held = id(assoc) in self._slots
            self._slots.discard(id(assoc))
        if held:
            self.counters.close()
