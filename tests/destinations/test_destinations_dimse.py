"""node/destinations/dimse*.py (the ``dicom`` kind) against real peers: Orthanc, DCMTK storescp and pynetdicom SCPs.

Every send goes through the registry and the Destination Protocol, as the node's own sends do."""

from __future__ import annotations

import errno
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import highdicom as hd
import numpy as np
import pydicom
import pytest
import synthetic as syn
from dcmtk import StoreSCP, requires_dcmtk
from orthanc import OrthancServer, free_port, orthanc_binary
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dsutils import split_dataset

from node.config.sections import TlsConfig
from node.destinations import Destination, Outcome, SendResult, create, dimse_connect, dimse_scu
from node.destinations.dimse import DicomDestination
from node.destinations.dimse_status import LABEL_MAP_SEGMENTATION_STORAGE
from node.errors import ConfigError

TIMEOUT = 10.0
requires_orthanc = pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc is not installed (orthanc)")


@dataclass(frozen=True)
class Files:
    ct: tuple[Path, ...]
    seg: Path
    labelmap_seg: Path

    @property
    def ct_and_seg(self) -> list[Path]:
        return [*self.ct, self.seg]


def _build_seg(sources: Sequence[pydicom.Dataset], path: Path, segmentation_type: str) -> Path:
    """A one-segment SEG on ``sources`` (a small box), written to ``path``."""
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    mask = np.zeros((len(sources), rows, cols), dtype=np.uint8)
    mask[1:3, 2:6, 3:7] = 1
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="liver",
        segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=mask,
        segmentation_type=segmentation_type,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="segnode-test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("send-files")
    series = syn.write_series(syn.GridSpec.axial(rows=12, cols=10, slices=4), root / "ct")
    sources = [pydicom.dcmread(p) for p in series.paths]
    return Files(
        ct=series.paths,
        seg=_build_seg(sources, root / "seg.dcm", "BINARY"),
        labelmap_seg=_build_seg(sources, root / "labelmap.dcm", "LABELMAP"),
    )


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    if orthanc_binary() is None:
        pytest.skip("Orthanc is not installed (orthanc)")
    server = OrthancServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.close()


def _dataset_bytes(data: bytes | Path, scratch: Path) -> bytes:
    """The encoded dataset after the file meta: what a receiver must keep unchanged."""
    if isinstance(data, bytes):
        scratch.write_bytes(data)
        data = scratch
    _, offset = split_dataset(data)
    return data.read_bytes()[offset:]


def _outcomes(results: Sequence[SendResult]) -> list[Outcome]:
    return [r.outcome for r in results]


def peer(config: DicomDestination, *, calling_ae: str = "SEGNODE") -> Destination:
    """The destination the node would make of ``config``."""
    return create(config, calling_ae=calling_ae, timeout=TIMEOUT)


# -- a scriptable pynetdicom SCP ----------------------------------------------------------------------------------


class ScriptedSCP:
    """A pynetdicom storage SCP on an OS-picked port; ``answer(index, event)`` gives each C-STORE's status."""

    def __init__(
        self,
        contexts: Sequence[tuple[str, str]],
        answer: Callable[[int, Any], int] | None = None,
        *,
        ae_title: str = "SCRIPTED",
    ) -> None:
        self.received: list[pydicom.Dataset] = []
        self._answer = answer or (lambda index, event: 0x0000)
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = True
        ae.add_supported_context("1.2.840.10008.1.1")
        for sop_class, transfer_syntax in contexts:
            ae.add_supported_context(sop_class, transfer_syntax)
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        assert server is not None  # non-blocking start returns the server
        self.server = server
        self.destination = DicomDestination("scripted", ae_title, "127.0.0.1", int(self.server.server_address[1]))

    def _store(self, event: Any) -> int:
        with self._lock:
            index = len(self.received)
            self.received.append(event.dataset)
        return self._answer(index, event)

    def __enter__(self) -> ScriptedSCP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


CT_EXPLICIT = (syn.CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
SEG_EXPLICIT = (syn.SEGMENTATION_STORAGE, ExplicitVRLittleEndian)


# -- Orthanc --------------------------------------------------------------------------------------------------------


@requires_orthanc
def test_all_sent_to_orthanc_and_stored_unchanged(orthanc: OrthancServer, files: Files, tmp_path: Path) -> None:
    paths = files.ct_and_seg
    results = peer(orthanc.destination()).send(paths)

    assert [r.path for r in results] == paths
    assert _outcomes(results) == [Outcome.SENT] * len(paths), [r.reason for r in results]
    assert all(r.status == 0x0000 for r in results)
    assert len(orthanc.instances()) == len(paths)
    assert len(orthanc.find_seg_instances()) == 1
    for path in paths:
        sent = pydicom.dcmread(path)
        instance = orthanc.find_instance(sent.SOPInstanceUID)
        assert instance is not None, f"{path.name} not in Orthanc"
        stored = orthanc.get_instance_file(instance)
        assert _dataset_bytes(stored, tmp_path / "stored.dcm") == _dataset_bytes(path, tmp_path), path.name
        tags = orthanc.instance_tags(instance)
        assert (tags["SOPClassUID"], tags["SeriesInstanceUID"]) == (sent.SOPClassUID, sent.SeriesInstanceUID)


@requires_orthanc
def test_orthanc_without_label_map_sop_class_fails_only_that_file(orthanc: OrthancServer, files: Files) -> None:
    # Orthanc 1.10 (DCMTK 3.6.7) predates Label Map Segmentation Storage: a PACS like it rejects the context.
    results = peer(orthanc.destination()).send([files.ct[0], files.labelmap_seg, files.seg])

    assert _outcomes(results) == [Outcome.SENT, Outcome.FAILED, Outcome.SENT]
    assert "destination does not accept Label Map Segmentation Storage" in results[1].reason
    assert results[1].status == 0x0122
    assert len(orthanc.instances()) == 2


@requires_orthanc
def test_label_map_seg_reaches_a_pacs_that_accepts_it(tmp_path: Path, files: Files) -> None:
    with OrthancServer(tmp_path, accept_unknown_sop_classes=True) as pacs:
        results = peer(pacs.destination()).send([files.labelmap_seg])
        assert _outcomes(results) == [Outcome.SENT], results[0].reason
        stored = pacs.find_seg_instances()
        assert [pacs.instance_tags(i)["SOPClassUID"] for i in stored] == [LABEL_MAP_SEGMENTATION_STORAGE]


@requires_orthanc
def test_pacs_down_then_up_is_retry_then_sent(orthanc: OrthancServer, files: Files) -> None:
    dest = orthanc.destination()
    orthanc.stop()
    down = peer(dest).send(files.ct_and_seg)
    assert _outcomes(down) == [Outcome.RETRY] * len(down)
    assert all("unreachable: connection refused" in r.reason and r.status is None for r in down), down[0].reason
    assert peer(dest).check() is not None

    orthanc.start()
    assert peer(dest).check() is None
    up = peer(dest).send([r.path for r in down])
    assert _outcomes(up) == [Outcome.SENT] * len(up), [r.reason for r in up]
    assert len(orthanc.instances()) == len(up)


@requires_orthanc
def test_orthanc_harness_pushes_a_series_to_a_modality(orthanc: OrthancServer, files: Files) -> None:
    # What the end-to-end tests rely on: Orthanc C-STOREs a series to a node registered after it started.
    sent = peer(orthanc.destination()).send(list(files.ct))
    assert _outcomes(sent) == [Outcome.SENT] * len(files.ct)
    with ScriptedSCP([CT_EXPLICIT], ae_title="NODE") as node:
        orthanc.add_modality("node", "NODE", "127.0.0.1", node.destination.port)
        assert orthanc.echo("node")
        (series_id,) = orthanc.series()
        orthanc.push_series(series_id, "node")
    assert sorted(ds.SOPInstanceUID for ds in node.received) == sorted(
        pydicom.dcmread(p).SOPInstanceUID for p in files.ct
    )


# -- no peer, rejecting peers, scripted statuses -----------------------------------------------------------------


def test_nothing_listening_is_retry_unreachable(files: Files) -> None:
    port = free_port()
    dest = DicomDestination("pacs", "PACS", "127.0.0.1", port)
    results = peer(dest).send(files.ct_and_seg)

    assert _outcomes(results) == [Outcome.RETRY] * len(results)
    assert results[0].reason == f"PACS pacs (PACS@127.0.0.1:{port}) unreachable: connection refused"
    assert peer(dest).check() == results[0].reason


class AbortingTls:
    """An SSL context whose handshake meets an OSError none of the TLS-specific branches name."""

    def wrap_socket(self, sock: socket.socket, server_hostname: str) -> ssl.SSLSocket:
        raise ConnectionAbortedError(errno.ECONNABORTED, os.strerror(errno.ECONNABORTED))


def test_any_os_error_during_the_tls_handshake_becomes_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # TCP connects (the backlog), the handshake fails
        port = listener.getsockname()[1]
        dest = DicomDestination("pacs", "PACS", "127.0.0.1", port, tls=True)
        reason = dimse_connect.connect_failure(dest, 1.0, cast(ssl.SSLContext, AbortingTls()))
    assert reason == (
        f"PACS pacs (PACS@127.0.0.1:{port}, TLS): TLS handshake failed ({os.strerror(errno.ECONNABORTED)})"
    )


def test_unresolvable_host_is_retry(files: Files) -> None:
    results = peer(DicomDestination("pacs", "PACS", "no-such-host.invalid", 104)).send([files.seg])
    assert _outcomes(results) == [Outcome.RETRY]
    assert "unreachable: cannot resolve host name" in results[0].reason


def test_peer_without_seg_storage_fails_seg_and_stores_ct(files: Files) -> None:
    with ScriptedSCP([CT_EXPLICIT]) as scp:
        results = peer(scp.destination).send([files.seg, *files.ct])
    assert _outcomes(results) == [Outcome.FAILED] + [Outcome.SENT] * len(files.ct)
    assert "destination does not accept Segmentation Storage" in results[0].reason
    assert len(scp.received) == len(files.ct)


def test_peer_accepting_none_of_the_files_fails_all(files: Files) -> None:
    with ScriptedSCP([CT_EXPLICIT]) as scp:
        results = peer(scp.destination).send([files.seg, files.labelmap_seg])
    assert _outcomes(results) == [Outcome.FAILED, Outcome.FAILED]
    assert "does not accept Segmentation Storage" in results[0].reason
    assert "does not accept Label Map Segmentation Storage" in results[1].reason


def test_rejected_association_is_retry_naming_the_rejection(files: Files) -> None:
    with ScriptedSCP([SEG_EXPLICIT]) as scp:
        wrong = DicomDestination("pacs", "NOT-THIS-AE", "127.0.0.1", scp.destination.port)
        results = peer(wrong).send([files.seg])
        reason = peer(wrong).check()
    assert _outcomes(results) == [Outcome.RETRY]
    assert "rejected the association" in results[0].reason
    assert "Called AE title not recognised" in results[0].reason
    assert reason is not None and "rejected the association" in reason
    assert scp.received == []


def test_implicit_only_peer_gets_a_converted_dataset(files: Files) -> None:
    with ScriptedSCP([(syn.SEGMENTATION_STORAGE, ImplicitVRLittleEndian)]) as scp:
        results = peer(scp.destination).send([files.seg])
    assert _outcomes(results) == [Outcome.SENT], results[0].reason
    assert scp.received[0].SOPInstanceUID == pydicom.dcmread(files.seg).SOPInstanceUID
    assert scp.received[0].PixelData == pydicom.dcmread(files.seg).PixelData


@pytest.mark.parametrize(
    ("status", "outcome", "phrase"),
    [
        (0xA700, Outcome.RETRY, "out of resources"),
        (0xA7FF, Outcome.RETRY, "out of resources"),
        (0x0110, Outcome.RETRY, "processing failure"),
        (0xA900, Outcome.FAILED, "does not match SOP class"),
        (0xC000, Outcome.FAILED, "cannot understand"),
        (0xC211, Outcome.FAILED, "cannot understand"),
        (0x0122, Outcome.FAILED, "SOP class not supported"),
        (0xB000, Outcome.SENT, "warning: data elements coerced"),
        (0xB006, Outcome.SENT, "warning: elements discarded"),
        (0xB007, Outcome.SENT, "warning: data set does not match SOP class"),
        (0x0111, Outcome.SENT, "already holds"),
    ],
)
def test_peer_status_is_classified(files: Files, status: int, outcome: Outcome, phrase: str) -> None:
    with ScriptedSCP([CT_EXPLICIT], lambda index, event: status) as scp:
        results = peer(scp.destination).send(files.ct[:2])
    assert [(r.outcome, r.status) for r in results] == [(outcome, status)] * 2
    assert phrase in results[0].reason and f"0x{status:04X}" in results[0].reason


def test_association_dropped_mid_batch_keeps_acknowledged_files_sent(files: Files) -> None:
    def answer(index: int, event: Any) -> int:
        if index == 1:
            event.assoc.abort()
        return 0x0000

    with ScriptedSCP([CT_EXPLICIT], answer) as scp:
        results = peer(scp.destination).send(list(files.ct))
    assert _outcomes(results) == [Outcome.SENT] + [Outcome.RETRY] * (len(files.ct) - 1)
    assert "association lost" in results[1].reason and results[1].status is None


def test_unreadable_file_fails_alone(files: Files, tmp_path: Path) -> None:
    junk = tmp_path / "not-dicom.dcm"
    junk.write_bytes(b"not a DICOM file")
    with ScriptedSCP([CT_EXPLICIT]) as scp:
        results = peer(scp.destination).send([junk, files.ct[0], tmp_path / "missing.dcm"])
    assert _outcomes(results) == [Outcome.FAILED, Outcome.SENT, Outcome.FAILED]
    assert "not-dicom.dcm" in results[0].reason and "missing.dcm" in results[2].reason
    assert len(scp.received) == 1


def test_invalid_ae_title_is_a_config_error(files: Files) -> None:
    with pytest.raises(ConfigError, match="destination pacs: AE title"):
        peer(DicomDestination("pacs", "A" * 17, "127.0.0.1", free_port())).send([files.seg])
    with pytest.raises(ConfigError, match=r"\[node\] ae_title"):
        peer(DicomDestination("pacs", "PACS", "127.0.0.1", free_port()), calling_ae="B" * 17).check()


def test_a_dicom_block_makes_a_store_scu_named_like_the_block() -> None:
    config = DicomDestination("pacs", "PACS", "127.0.0.1", 104)
    destination = peer(config)
    assert isinstance(destination, dimse_scu.StoreSCU)
    assert (destination.name, destination.describe()) == ("pacs", "pacs (PACS@127.0.0.1:104)")
    assert destination.describe() == config.describe()
    secure = DicomDestination("pacs", "PACS", "127.0.0.1", 104, tls=True)
    described = create(secure, calling_ae="SEGNODE", timeout=TIMEOUT, tls=TlsConfig()).describe()
    assert described == secure.describe() == "pacs (PACS@127.0.0.1:104, TLS)"


def test_empty_batch_sends_nothing() -> None:
    assert peer(DicomDestination("pacs", "PACS", "127.0.0.1", free_port())).send([]) == []


def test_many_sop_classes_split_into_associations(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    # With room for only two contexts per association, CT (2 contexts) and SEG (2) need one association each.
    monkeypatch.setattr(dimse_scu, "MAX_CONTEXTS", 2)
    associations: list[int] = []
    with ScriptedSCP([CT_EXPLICIT, SEG_EXPLICIT]) as scp:
        scp.server.bind(evt.EVT_ACCEPTED, lambda event: associations.append(1))
        results = peer(scp.destination).send([files.ct[0], files.seg, files.ct[1]])
    assert _outcomes(results) == [Outcome.SENT] * 3
    assert len(associations) == 2
    assert sorted(ds.SOPInstanceUID for ds in scp.received) == sorted(
        pydicom.dcmread(p).SOPInstanceUID for p in (files.ct[0], files.seg, files.ct[1])
    )


# -- DCMTK storescp -------------------------------------------------------------------------------------------------


@requires_dcmtk
def test_storescp_receives_ct_and_seg(files: Files, tmp_path: Path) -> None:
    with StoreSCP(tmp_path / "received", ae_title="STORESCP") as scp:
        dest = DicomDestination("dcmtk", "STORESCP", "127.0.0.1", scp.port)
        results = peer(dest).send(files.ct_and_seg)
        assert peer(dest).check() is None
        received = scp.received()
    assert _outcomes(results) == [Outcome.SENT] * len(results), [r.reason for r in results]
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: p for p in received}
    for path in files.ct_and_seg:
        uid = pydicom.dcmread(path).SOPInstanceUID
        assert uid in by_uid, f"storescp did not write {path.name}"
        assert _dataset_bytes(by_uid[uid], tmp_path) == _dataset_bytes(path, tmp_path)
