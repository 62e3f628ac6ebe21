"""The DICOM kind's network side (pynetdicom SCU): C-STORE batches of files to a peer, and C-ECHO.

:class:`StoreSCU` is the :class:`~node.destinations.Destination` that :mod:`node.destinations.dimse` creates for a
``kind = "dicom"`` block. How answers are classified is in :mod:`node.destinations.dimse_status`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config
from pynetdicom.association import Association

from node.destinations.dimse_connect import (
    DicomPeer,
    association_failure,
    connect_failure,
    describe_peer,
    new_ae,
    open_association,
)
from node.destinations.dimse_status import VERIFICATION, classify_status, sop_class_name
from node.destinations.results import Outcome, SendResult, log_batch
from node.errors import ConfigError, error_line

if TYPE_CHECKING:
    import ssl

    from node.config.sections import TlsConfig

log = logging.getLogger(__name__)

#: An association carries at most 128 presentation contexts (odd context IDs 1..255, PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
#: Transfer syntaxes pynetdicom converts between when it must re-encode a dataset.
_UNCOMPRESSED_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _file_stamps(tls: TlsConfig) -> tuple[tuple[int, int] | None, ...]:
    """Modification time and size of each ``[tls]`` file a client context loads (None: not set or unreadable)."""
    stamps: list[tuple[int, int] | None] = []
    for path in (tls.ca_certificates, tls.certificate, tls.private_key):
        try:
            stat = os.stat(path) if path is not None else None
        except OSError:
            stat = None  # client_context names the file when it fails to load it
        stamps.append(None if stat is None else (stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


@functools.lru_cache(maxsize=16)
def _cached_client_context(tls: TlsConfig, _stamps: tuple[tuple[int, int] | None, ...]) -> ssl.SSLContext:
    from node.dicom.tls import client_context

    return client_context(tls)


def client_context_for(tls: TlsConfig) -> ssl.SSLContext:
    """The client context of ``tls`` (:func:`node.dicom.tls.client_context`), built once and shared.

    Deliver makes a :class:`StoreSCU` per batch, so the context is kept here rather than on one. The key is the
    frozen ``[tls]`` section together with its files' modification times and sizes: a reload brings an equal
    section, and a certificate renewed in place is loaded again rather than served from the cache. Raises
    :class:`~node.dicom.tls.TlsFileError` (not cached) when a file does not load.
    """
    return _cached_client_context(tls, _file_stamps(tls))


class StoreSCU:
    """A DICOM peer as a destination: ``send`` is C-STORE (one association per batch), ``check`` is C-ECHO.

    Never raises for network trouble (a TLS handshake that fails included); raises
    :class:`~node.errors.ConfigError` only for an AE title pynetdicom refuses (config validation should have) and
    for a TLS peer without the ``[tls]`` section to verify it against.

    Parameters
    ----------
    peer
        The peer's name, AE title, host, port and whether it speaks DICOM TLS.
    calling_ae
        Our AE title.
    timeout
        Seconds allowed for the TCP connection, the association and each response.
    tls
        The node's ``[tls]`` section, for a peer with ``tls``: the CA bundle the server is verified against and
        the certificate presented as client certificate. The SSL context is built on the first send or check,
        and shared with every StoreSCU of an equal ``[tls]`` whose files have not changed (:func:`client_context_for`).
    """

    def __init__(self, peer: DicomPeer, *, calling_ae: str, timeout: float, tls: TlsConfig | None = None) -> None:
        if peer.tls and tls is None:
            raise ConfigError(f"destination {peer.name}: tls = true needs the [tls] section to verify the PACS against")
        self.peer = peer
        self.calling_ae = calling_ae
        self.timeout = timeout
        self.tls = tls

    @property
    def name(self) -> str:
        return self.peer.name

    def describe(self) -> str:
        return self.peer.describe()

    def _tls_context(self) -> tuple[ssl.SSLContext | None, str | None]:
        """The TLS context of a TLS peer (:func:`client_context_for`) and None, or None and the one line saying
        why it cannot be built; (None, None) for a plain peer."""
        if not self.peer.tls:
            return None, None
        from node.dicom.tls import TlsFileError  # ssl contexts only for TLS destinations

        assert self.tls is not None  # checked in __init__
        try:
            return client_context_for(self.tls), None
        except TlsFileError as exc:
            return None, f"{describe_peer(self.peer)}: {error_line(exc)}; fix the file, sends are retried"

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
        context, problem = self._tls_context() if items else (None, None)
        for batch in _batches([item for _, item in items]):
            if problem is not None:
                results = [SendResult(item.path, Outcome.RETRY, None, problem) for item in batch]
            else:
                results = _send_association(self.peer, batch, self.calling_ae, self.timeout, context)
            for item, result in zip(batch, results, strict=True):
                slots[position[id(item)]] = result
        sent = [result for result in slots if result is not None]
        log_batch(describe_peer(self.peer), sent)
        return sent

    def check(self) -> str | None:
        """C-ECHO the peer: None if it answered with success, else one line saying what went wrong."""
        dest, timeout = self.peer, self.timeout
        who = describe_peer(dest)
        context, problem = self._tls_context()
        if problem is not None:
            return problem
        ae = new_ae(self.calling_ae, timeout)
        ae.add_requested_context(VERIFICATION)
        assoc, connected = open_association(ae, dest, timeout, context)
        if assoc is None:
            return connect_failure(dest, timeout, context)
        if not assoc.is_established:
            answer = getattr(assoc.acceptor, "primitive", None)
            if answer is not None and answer.result == 0x00:
                return f"{who}: destination does not accept Verification (C-ECHO)"
            return association_failure(dest, assoc, connected, timeout, context)
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


def _send_association(
    dest: DicomPeer, items: Sequence[_Item], calling_ae: str, timeout: float, tls: ssl.SSLContext | None
) -> list[SendResult]:
    who = describe_peer(dest)
    ae = new_ae(calling_ae, timeout)
    for sop_class, transfer_syntax in dict.fromkeys(c for item in items for c in _contexts_of(item)):
        ae.add_requested_context(sop_class, transfer_syntax)
    assoc, connected = open_association(ae, dest, timeout, tls)
    if assoc is None:
        reason = connect_failure(dest, timeout, tls)
        return [SendResult(item.path, Outcome.RETRY, None, reason) for item in items]
    answer = getattr(assoc.acceptor, "primitive", None)
    # Accepted but without a single usable context: pynetdicom aborts, yet the answer is about SOP classes.
    negotiated = answer is not None and answer.result == 0x00
    if not assoc.is_established and not negotiated:
        reason = association_failure(dest, assoc, connected, timeout, tls)
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
