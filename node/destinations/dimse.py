"""Send files to a destination: C-STORE to a DICOM peer, or an atomic copy into a folder.

Nothing here raises for network trouble: every file gets a :class:`SendResult` that says whether it arrived
(``SENT``), whether trying again later can help (``RETRY``) or not (``FAILED``), and one line saying why.

How a C-STORE response status is classified (DICOM PS3.4 Annex B.2.3 and PS3.7 Annex C):

======================  =============================================================  ========
status                  meaning                                                        outcome
======================  =============================================================  ========
0x0000                  Success                                                        SENT
0xB000                  Warning: coercion of data elements                             SENT
0xB006                  Warning: elements discarded                                    SENT
0xB007                  Warning: data set does not match SOP class                     SENT
other 0xBxxx, 0x0001    Warning (other)                                                SENT
0x0111                  Duplicate SOP instance: the peer already holds it              SENT
0xA7xx                  Refused: out of resources                                      RETRY
0x0213                  Refused: resource limitation                                   RETRY
0x0110                  Processing failure (peer-side fault, may pass)                 RETRY
0xFE00                  Cancel                                                         RETRY
0xA9xx                  Error: data set does not match SOP class                       FAILED
0xCxxx                  Error: cannot understand                                       FAILED
0x0122                  Refused: SOP class not supported                               FAILED
0x0124                  Refused: not authorized                                        FAILED
any other failure                                                                      FAILED
======================  =============================================================  ========

Outside the status: a presentation context the peer rejects is FAILED ("destination does not accept ...");
no connection, a rejected or aborted association, a timeout or no response is RETRY. If the association drops
mid-batch, files already acknowledged stay as they were and the rest are RETRY.
"""

from __future__ import annotations

import errno
import logging
import random
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association

from node.config import FolderDestination
from node.durable import atomic_write
from node.errors import ConfigError

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
#: Storage SOP classes newer than pydicom's UID dictionary, so that reasons name them instead of a bare UID.
_EXTRA_SOP_CLASS_NAMES = {
    LABEL_MAP_SEGMENTATION_STORAGE: "Label Map Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.8": "Height Map Segmentation Storage",
}
#: An association carries at most 128 presentation contexts (odd context IDs 1..255, PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
#: Seconds a second, diagnostic connection attempt may take when the association could not connect.
PROBE_TIMEOUT_S = 5.0
#: Transfer syntaxes pynetdicom converts between when it must re-encode a dataset.
_UNCOMPRESSED_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class Outcome(str, Enum):
    """What became of one file."""

    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True)
class SendResult:
    """One file's outcome and ``reason``, one line for a person.

    ``status`` is the C-STORE response status when the peer answered; 0x0122 (SOP class not supported) when
    the peer rejected the presentation context, so no request could be made; None when there was no answer.
    """

    path: Path
    outcome: Outcome
    status: int | None
    reason: str


class DicomPeer(Protocol):
    """Anything with a destination's fields (``config.py`` passes its own dataclass)."""

    @property
    def name(self) -> str: ...
    @property
    def ae_title(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


def send_to_folder(dest: FolderDestination, paths: Sequence[Path]) -> list[SendResult]:
    """Copy each file into ``dest.folder`` as ``<SOPInstanceUID>.dcm`` (temporary name, fsync, rename).

    Never raises for I/O trouble: a full disk or missing mount is RETRY (an operator can fix it), an unreadable
    source FAILED.
    """
    results = [_copy_to_folder(dest, Path(path)) for path in paths]
    _log_batch(dest.describe(), results)
    return results


def _copy_to_folder(dest: FolderDestination, path: Path) -> SendResult:
    try:
        meta = read_file_meta_info(path)
        instance_uid = str(meta.get("MediaStorageSOPInstanceUID", "")).strip()
    except (InvalidDicomError, OSError):
        instance_uid = ""
    target = dest.folder / (f"{instance_uid}.dcm" if instance_uid else path.name)
    try:
        source = path.open("rb")
    except OSError as exc:
        return SendResult(path, Outcome.FAILED, None, f"{path}: cannot read the file ({exc.strerror or exc})")
    try:
        with source:
            atomic_write(target, lambda handle: shutil.copyfileobj(source, handle, 1 << 20))
    except OSError as exc:
        return SendResult(path, Outcome.RETRY, None,
                          f"{dest.describe()}: cannot write {target.name} ({exc.strerror or exc})")
    return SendResult(path, Outcome.SENT, None, f"copied to {target}")


def sop_class_name(uid: str) -> str:
    """The SOP class's name for messages, e.g. ``Segmentation Storage``; the UID itself if unknown.

    >>> sop_class_name("1.2.840.10008.5.1.4.1.1.66.7")
    'Label Map Segmentation Storage'
    """
    if uid in _EXTRA_SOP_CLASS_NAMES:
        return _EXTRA_SOP_CLASS_NAMES[uid]
    return str(UID(uid).name)


def describe_peer(dest: DicomPeer) -> str:
    """``PACS pacs (PACS@10.0.0.5:104)``: how reasons and logs name a DICOM destination."""
    return f"PACS {dest.name} ({dest.ae_title}@{dest.host}:{dest.port})"


def classify_status(status: int) -> tuple[Outcome, str]:
    """The outcome of one C-STORE response status and a short phrase for the reason (see the module's table).

    >>> classify_status(0xA700)
    (<Outcome.RETRY: 'retry'>, 'out of resources (0xA700)')
    >>> classify_status(0xB007)[0].value
    'sent'
    """
    code = f"0x{status:04X}"
    if status == 0x0000:
        return Outcome.SENT, "stored"
    if status == 0xB000:
        return Outcome.SENT, f"stored with a warning: data elements coerced ({code})"
    if status == 0xB006:
        return Outcome.SENT, f"stored with a warning: elements discarded ({code})"
    if status == 0xB007:
        return Outcome.SENT, f"stored with a warning: data set does not match SOP class ({code})"
    if status & 0xF000 == 0xB000 or status in (0x0001, 0x0107, 0x0116):
        return Outcome.SENT, f"stored with a warning ({code})"
    if status == 0x0111:
        return Outcome.SENT, f"the destination already holds this instance ({code})"
    if status & 0xFF00 == 0xA700:
        return Outcome.RETRY, f"out of resources ({code})"
    if status == 0x0213:
        return Outcome.RETRY, f"resource limitation ({code})"
    if status == 0x0110:
        return Outcome.RETRY, f"processing failure ({code})"
    if status == 0xFE00:
        return Outcome.RETRY, f"cancelled ({code})"
    if status & 0xFF00 == 0xA900:
        return Outcome.FAILED, f"data set does not match SOP class ({code})"
    if status & 0xF000 == 0xC000:
        return Outcome.FAILED, f"cannot understand the data set ({code})"
    if status == 0x0122:
        return Outcome.FAILED, f"SOP class not supported ({code})"
    if status == 0x0124:
        return Outcome.FAILED, f"not authorized ({code})"
    return Outcome.FAILED, f"failure status {code}"


def backoff_delay(attempt: int, initial: float, maximum: float, *, jitter: float = 0.1) -> float:
    """Seconds to wait before attempt ``attempt + 1``: ``initial · 2^(attempt-1)``, capped at ``maximum``.

    Up to ``jitter`` (a fraction) is taken off at random so that many jobs failing together do not retry in
    lock-step; the result never exceeds ``maximum``.

    >>> [backoff_delay(n, 10, 60, jitter=0) for n in (1, 2, 3, 4, 50)]
    [10.0, 20.0, 40.0, 60.0, 60.0]
    """
    if attempt < 1:
        raise ValueError(f"backoff attempt must be 1 or more, got {attempt}")
    if initial <= 0 or maximum < initial:
        raise ValueError(f"backoff needs 0 < initial <= maximum, got initial={initial}, maximum={maximum}")
    # Past 2^62 the cap has long applied; clamping the exponent keeps the float finite.
    delay = min(float(maximum), initial * 2.0 ** min(attempt - 1, 62))
    return delay * (1.0 - jitter * random.random())


# -- C-STORE ------------------------------------------------------------------------------------------------------


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
        return SendResult(path, Outcome.FAILED, None,
                          f"{path}: file meta lacks the SOP class, instance or transfer syntax; rewrite it as a "
                          "DICOM Part 10 file")
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
        return (f"{who} rejected the association ({answer.result_str.lower()}, {answer.source_str}: "
                f"{answer.reason_str}){hint}")
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
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                             evt_handlers=[(evt.EVT_CONN_OPEN, on_open)])
    except OSError:
        # Name resolution happens before pynetdicom's own error handling.
        return None, False
    except ValueError as exc:
        raise ConfigError(f"destination {dest.name}: AE title {dest.ae_title!r} cannot be used ({exc}); "
                          "fix its ae_title in the configuration") from exc
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


def _send_batch(dest: DicomPeer, items: Sequence[_Item], calling_ae: str, timeout: float) -> list[SendResult]:
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
                results.append(SendResult(item.path, Outcome.FAILED, 0x0122,
                                          f"{who}: destination does not accept {name}{detail}"))
                continue
            try:
                if not assoc.is_established:
                    raise _NoResponse("association closed by the peer")
                status = _store_one(assoc, item)
            except _NoResponse as exc:
                reason = (f"{who}: {exc}; association lost with {len(items) - index} of {len(items)} files "
                          "not acknowledged")
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


def send_files(dest: DicomPeer | FolderDestination, paths: Sequence[Path], *, calling_ae: str = "SEGNODE",
               timeout: float = 30) -> list[SendResult]:
    """Send ``paths`` to ``dest``, one association for the batch; one result per path, in order.

    Presentation contexts come from each file's meta (SOP class, transfer syntax), so any storage class goes,
    including Segmentation and Label Map Segmentation Storage. Never raises for network trouble; raises
    :class:`~node.errors.ConfigError` only for an AE title pynetdicom refuses (config validation should have).

    Parameters
    ----------
    dest
        A DICOM peer (anything with ``name``, ``ae_title``, ``host``, ``port``) or a folder destination.
    paths
        DICOM Part 10 files; they are streamed from disk without decoding.
    calling_ae
        Our AE title.
    timeout
        Seconds allowed for the TCP connection, the association and each response.
    """
    if isinstance(dest, FolderDestination):
        return send_to_folder(dest, paths)
    peer = dest
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
        for item, result in zip(batch, _send_batch(peer, batch, calling_ae, timeout), strict=True):
            slots[position[id(item)]] = result
    results = [result for result in slots if result is not None]
    _log_batch(describe_peer(peer), results)
    return results


def echo(dest: DicomPeer, *, calling_ae: str = "SEGNODE", timeout: float = 30) -> str | None:
    """C-ECHO ``dest``: None if it answered with success, else one line saying what went wrong."""
    who = describe_peer(dest)
    ae = _new_ae(calling_ae, timeout)
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


def _log_batch(where: str, results: Sequence[SendResult]) -> None:
    counts = {outcome: sum(r.outcome is outcome for r in results) for outcome in Outcome}
    first_problem = next((r.reason for r in results if r.outcome is not Outcome.SENT), "")
    level = logging.INFO if not first_problem else logging.WARNING
    log.log(level, "send to %s: %d sent, %d retry, %d failed%s", where, counts[Outcome.SENT], counts[Outcome.RETRY],
            counts[Outcome.FAILED], f" (first problem: {first_problem})" if first_problem else "")
