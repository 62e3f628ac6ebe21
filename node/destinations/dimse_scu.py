"""The DICOM kind's network side (pynetdicom SCU): C-STORE batches of files to a peer, and C-ECHO.

:class:`StoreSCU` is the :class:`~node.destinations.Destination` that :mod:`node.destinations.dimse` creates for a
``kind = "dicom"`` block. How answers are classified is in :mod:`node.destinations.dimse_status`.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association

from node.destinations.dimse_status import VERIFICATION, classify_status, sop_class_name
from node.destinations.results import Outcome, SendResult, log_batch
from node.errors import ConfigError

log = logging.getLogger(__name__)

#: An association carries at most 128 presentation contexts (odd context IDs 1..255, PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
#: Seconds a second, diagnostic connection attempt may take when the association could not connect.
PROBE_TIMEOUT_S = 5.0
#: Transfer syntaxes pynetdicom converts between when it must re-encode a dataset.
_UNCOMPRESSED_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class DicomPeer(Protocol):
    """Anything with a DICOM destination's fields (``DicomDestination`` from the configuration)."""

    @property
    def name(self) -> str: ...
    @property
    def ae_title(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


def describe_peer(dest: DicomPeer) -> str:
    """``PACS pacs (PACS@10.0.0.5:104)``: how reasons and logs name a DICOM destination."""
    return f"PACS {dest.name} ({dest.ae_title}@{dest.host}:{dest.port})"


class StoreSCU:
    """A DICOM peer as a destination: ``send`` is C-STORE (one association per batch), ``check`` is C-ECHO.

    Never raises for network trouble; raises :class:`~node.errors.ConfigError` only for an AE title pynetdicom
    refuses (config validation should have).

    Parameters
    ----------
    peer
        The peer's name, AE title, host and port.
    calling_ae
        Our AE title.
    timeout
        Seconds allowed for the TCP connection, the association and each response.
    """

    def __init__(self, peer: DicomPeer, *, calling_ae: str, timeout: float) -> None:
        self.peer = peer
        self.calling_ae = calling_ae
        self.timeout = timeout

    @property
    def name(self) -> str:
        return self.peer.name

    def describe(self) -> str:
        return f"{self.peer.name} ({self.peer.ae_title}@{self.peer.host}:{self.peer.port})"

    def send(self, paths: Sequence[Path]) -> list[SendResult]:
        """C-STORE ``paths``, one association for the batch (more only past :data:`MAX_CONTEXTS` contexts).

        Presentation contexts come from each file's meta (SOP class, transfer syntax), so any storage class goes,
        including Segmentation and Label Map Segmentation Storage. Files are streamed from disk without decoding.
        """
        slots: list[SendResult | None] = [None] * len(paths)
        items: list[tuple[int, _Item]] = []
        for index, path in enumerate(paths):
            read = _read_item(Path(path))
            if isinstance(read, SendResult):
                slots[index] = read
            else:
                items.append((index, read))
        position = {id(item): index for index, item in items}
        for batch in _batches([item for _, item in items]):
            results = _send_association(self.peer, batch, self.calling_ae, self.timeout)
            for item, result in zip(batch, results, strict=True):
                slots[position[id(item)]] = result
        sent = [result for result in slots if result is not None]
        log_batch(describe_peer(self.peer), sent)
        return sent

    def check(self) -> str | None:
        """C-ECHO the peer: None if it answered with success, else one line saying what went wrong."""
        dest, timeout = self.peer, self.timeout
        who = describe_peer(dest)
        ae = _new_ae(self.calling_ae, timeout)
        ae.add_requested_context(VERIFICATION)
        assoc, connected = _open(ae, dest, timeout)
        if assoc is None:
            return f"{who} unreachable: {_unreachable_reason(dest, timeout)}"
        if not assoc.is_established:
            answer = getattr(assoc.acceptor, "primitive", None)
            if answer is not None and answer.result == 0x00:
                return f"{who}: destination does not accept Verification (C-ECHO)"
            return _association_failure(dest, assoc, connected, timeout)
        try:
            response = assoc.send_c_echo()
        finally:
            if assoc.is_established:
                assoc.release()
        if "Status" not in response:
            return f"{who}: no response to C-ECHO within {timeout:g} s"
        if int(response.Status) != 0x0000:
            return f"{who}: C-ECHO answered with status 0x{int(response.Status):04X}"
        return None


@dataclass(frozen=True)
class _Item:
    path: Path
    sop_class: str
    transfer_syntax: str


def _contexts_of(item: _Item) -> list[tuple[str, str]]:
    """Presentation contexts (SOP class, one transfer syntax each) that can carry ``item``.

    One transfer syntax per context, so the peer's choice is the file's own encoding and the bytes go out as
    they are on disk. Uncompressed little endian files also offer the other uncompressed syntax, because
    pynetdicom can re-encode between the two if the peer accepts only that one (Implicit VR LE is the
    default every SCP must support).
    """
    contexts = [(item.sop_class, item.transfer_syntax)]
    if item.transfer_syntax in _UNCOMPRESSED_LE:
        contexts += [(item.sop_class, ts) for ts in _UNCOMPRESSED_LE if ts != item.transfer_syntax]
    return contexts


def _read_item(path: Path) -> _Item | SendResult:
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError) as exc:
        return SendResult(path, Outcome.FAILED, None, f"{path}: not a readable DICOM file ({exc})")
    sop_class = str(meta.get("MediaStorageSOPClassUID", "")).strip()
    transfer_syntax = str(meta.get("TransferSyntaxUID", "")).strip()
    if not sop_class or not transfer_syntax or "MediaStorageSOPInstanceUID" not in meta:
        return SendResult(
            path,
            Outcome.FAILED,
            None,
            f"{path}: file meta lacks the SOP class, instance or transfer syntax; rewrite it as a DICOM Part 10 file",
        )
    return _Item(path, sop_class, transfer_syntax)


def _batches(items: Sequence[_Item]) -> list[list[_Item]]:
    """Group ``items`` so that each association needs at most :data:`MAX_CONTEXTS` contexts (usually one group).

    First fit: an item joins the first group its contexts fit in, so files of one kind share an association.
    """
    batches: list[tuple[list[_Item], set[tuple[str, str]]]] = []
    for item in items:
        wanted = set(_contexts_of(item))
        for members, contexts in batches:
            if len(contexts | wanted) <= MAX_CONTEXTS:
                members.append(item)
                contexts |= wanted
                break
        else:
            batches.append(([item], wanted))
    return [members for members, _ in batches]


def _unreachable_reason(dest: DicomPeer, timeout: float) -> str:
    """Why no TCP connection could be made, found by one plain connection attempt (pynetdicom only logs it)."""
    # The association attempt already waited its full timeout; the probe only needs to name the error.
    probe_timeout = min(timeout, PROBE_TIMEOUT_S)
    try:
        with socket.create_connection((dest.host, dest.port), timeout=probe_timeout):
            return "could not open an association (the port answered a moment later)"
    except socket.gaierror as exc:
        return f"cannot resolve host name ({exc.strerror or exc})"
    except TimeoutError:
        return "connection timed out"
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        return (exc.strerror or str(exc)).lower()


def _association_failure(dest: DicomPeer, assoc: Association, connected: bool, timeout: float) -> str:
    who = describe_peer(dest)
    if not connected:
        return f"{who} unreachable: {_unreachable_reason(dest, timeout)}"
    answer = getattr(assoc.acceptor, "primitive", None)
    if assoc.is_rejected and answer is not None:
        hint = "; check the AE titles in the configuration and on the PACS" if "AE title" in answer.reason_str else ""
        return (
            f"{who} rejected the association ({answer.result_str.lower()}, {answer.source_str}: "
            f"{answer.reason_str}){hint}"
        )
    if answer is None:
        return f"{who} did not answer the association request within {timeout:g} s"
    return f"{who} aborted the association"


def _open(ae: AE, dest: DicomPeer, timeout: float) -> tuple[Association | None, bool]:
    """Associate; returns the association (None if the host name did not resolve) and whether TCP connected.

    Raises ConfigError if the destination's AE title is not a valid one.
    """
    connected: list[bool] = []

    def on_open(event: evt.Event) -> None:
        connected.append(True)

    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, on_open)])
    except OSError:
        # Name resolution happens before pynetdicom's own error handling.
        return None, False
    except ValueError as exc:
        raise ConfigError(
            f"destination {dest.name}: AE title {dest.ae_title!r} cannot be used ({exc}); "
            "fix its ae_title in the configuration"
        ) from exc
    return assoc, bool(connected)


def _new_ae(calling_ae: str, timeout: float) -> AE:
    try:
        ae = AE(ae_title=calling_ae)
    except ValueError as exc:
        raise ConfigError(f"our AE title {calling_ae!r} cannot be used ({exc}); fix [node] ae_title") from exc
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


class _NoResponse(Exception):
    """The peer did not acknowledge a C-STORE: the association is gone or cannot be trusted."""


def _store_one(assoc: Association, item: _Item) -> int:
    """C-STORE one file and return the peer's status.

    Raises :class:`_NoResponse` when the peer did not answer, and OSError/ValueError/AttributeError when this
    file could not be sent (unreadable, encoding the peer's context cannot carry).
    """
    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    if (item.sop_class, item.transfer_syntax) in accepted:
        # Stream the file's bytes as they are: no decode, no re-encode, constant memory. The switch is
        # process-wide in pynetdicom but only changes sends given a path, which only this module does.
        _config.STORE_SEND_CHUNKED_DATASET = True
        target: Path | Any = item.path
    else:
        # Only the other uncompressed syntax was accepted: pynetdicom re-encodes from a full read.
        target = dcmread(item.path)
    try:
        response = assoc.send_c_store(target)
    except RuntimeError as exc:
        # pynetdicom raises this when the association ended before the request could go out.
        raise _NoResponse(str(exc)) from exc
    if "Status" not in response:
        raise _NoResponse("no response to C-STORE")
    return int(response.Status)


def _send_association(dest: DicomPeer, items: Sequence[_Item], calling_ae: str, timeout: float) -> list[SendResult]:
    who = describe_peer(dest)
    ae = _new_ae(calling_ae, timeout)
    for sop_class, transfer_syntax in dict.fromkeys(c for item in items for c in _contexts_of(item)):
        ae.add_requested_context(sop_class, transfer_syntax)
    assoc, connected = _open(ae, dest, timeout)
    if assoc is None:
        reason = f"{who} unreachable: {_unreachable_reason(dest, timeout)}"
        return [SendResult(item.path, Outcome.RETRY, None, reason) for item in items]
    answer = getattr(assoc.acceptor, "primitive", None)
    # Accepted but without a single usable context: pynetdicom aborts, yet the answer is about SOP classes.
    negotiated = answer is not None and answer.result == 0x00
    if not assoc.is_established and not negotiated:
        reason = _association_failure(dest, assoc, connected, timeout)
        return [SendResult(item.path, Outcome.RETRY, None, reason) for item in items]

    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    results: list[SendResult] = []
    try:
        for index, item in enumerate(items):
            if not any(context in accepted for context in _contexts_of(item)):
                name = sop_class_name(item.sop_class)
                other_syntax = any(sop == item.sop_class for sop, _ in accepted)
                detail = f" in {UID(item.transfer_syntax).name}" if other_syntax else ""
                results.append(
                    SendResult(item.path, Outcome.FAILED, 0x0122, f"{who}: destination does not accept {name}{detail}")
                )
                continue
            try:
                if not assoc.is_established:
                    raise _NoResponse("association closed by the peer")
                status = _store_one(assoc, item)
            except _NoResponse as exc:
                reason = (
                    f"{who}: {exc}; association lost with {len(items) - index} of {len(items)} files not acknowledged"
                )
                results += [SendResult(i.path, Outcome.RETRY, None, reason) for i in items[index:]]
                break
            except (OSError, ValueError, AttributeError) as exc:
                # This file cannot go out as it is; the association carries on with the others.
                results.append(SendResult(item.path, Outcome.FAILED, None, f"{who}: cannot send {item.path} ({exc})"))
                continue
            outcome, phrase = classify_status(status)
            results.append(SendResult(item.path, outcome, status, f"{who}: {phrase}"))
    finally:
        if len(results) < len(items) or any(r.status is None and r.outcome is Outcome.RETRY for r in results):
            assoc.abort()
        elif assoc.is_established:
            assoc.release()
    return results
