"""Tests of node/receive.py against real peers: DCMTK storescu/echoscu, pynetdicom SCUs and raw sockets."""

from __future__ import annotations

import errno
import logging
import os
import queue
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import synthetic as syn
from dcmtk import echoscu, requires_dcmtk, storescu, storescu_config
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pynetdicom import AE
from raw_pdu import associate_rq, recv_exactly

from node.config import load_config
from node.dicom.scp import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    TRANSFER_SYNTAXES,
    AssociationEnd,
    StorageSCP,
    UnreadableInstanceError,
    read_identity,
    store_status,
)
from node.diskspace import DiskFullError
from node.errors import InputError, StateUnavailableError
from node.state import open_state
from node.state.instances import InstanceStore, InvalidUIDError, StorageFullError
from node.state.model import SeriesRow, SeriesState

AE_TITLE = "SEGNODE"
HOST = "127.0.0.1"
EVENT_TIMEOUT_S = 20.0
TOOL_TIMEOUT_S = 60.0


@dataclass
class Node:
    scp: StorageSCP
    data: Path
    ends: queue.Queue[AssociationEnd]

    @property
    def port(self) -> int:
        return self.scp.port

    def next_end(self) -> AssociationEnd:
        return self.ends.get(timeout=EVENT_TIMEOUT_S)

    def series(self, uid: str) -> SeriesRow | None:
        with open_state(self.data, self.data / "segnode.sqlite3", node_id="test-reader") as state:
            return state.series.get(uid)

    def stored(self) -> list[Path]:
        return sorted(p for p in (self.data / "instances").rglob("*") if p.is_file())


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    data = tmp_path / "data"
    ends: queue.Queue[AssociationEnd] = queue.Queue()
    scp = StorageSCP(
        InstanceStore(data), data / "segnode.sqlite3", ae_title=AE_TITLE, bind=HOST, port=0, on_association_end=ends.put
    )
    scp.start()
    try:
        yield Node(scp, data, ends)
    finally:
        # Half-open raw connections linger until pynetdicom's ACSE timeout; do not wait that long for them.
        scp.stop(drain_seconds=1.0)


def small_series(folder: Path, *, slices: int = 3, size: int = 16) -> syn.SeriesInfo:
    return syn.write_series(syn.GridSpec.axial(rows=size, cols=size, slices=slices), folder)


def send(node: Node, files: list[Path], extra_args: tuple[str, ...] = ("-R",)) -> list[int]:
    result = storescu(node.port, files, called_ae=AE_TITLE, extra_args=extra_args, timeout=TOOL_TIMEOUT_S)
    statuses = result.statuses()
    assert len(statuses) == len(files), result.output[-3000:]
    return statuses


def run(args: list[str]) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=TOOL_TIMEOUT_S, stdin=subprocess.DEVNULL)


def assert_serving(node: Node) -> None:
    answer = echoscu(node.port, called_ae=AE_TITLE, timeout=TOOL_TIMEOUT_S)
    assert answer.ok, answer.output


# -- DCMTK peers ---------------------------------------------------------------------------------------------------


@requires_dcmtk
def test_echo(node: Node) -> None:
    assert_serving(node)
    assert echoscu(node.port, called_ae="ANYTHING", timeout=TOOL_TIMEOUT_S).ok  # called AE title not enforced


@requires_dcmtk
def test_series_lands_as_files_and_rows(node: Node, tmp_path: Path) -> None:
    info = small_series(tmp_path / "ct", slices=4)
    assert send(node, list(info.paths)) == [0, 0, 0, 0]
    expected = sorted(node.data / "instances" / info.series_uid / f"{sop}.dcm" for sop in info.sop_uids)
    assert node.stored() == expected
    for source, sop in zip(info.paths, info.sop_uids, strict=True):
        stored = pydicom.dcmread(node.data / "instances" / info.series_uid / f"{sop}.dcm")
        original = pydicom.dcmread(source)
        assert stored.SOPInstanceUID == sop and stored.file_meta.MediaStorageSOPInstanceUID == sop
        assert np.array_equal(stored.pixel_array, original.pixel_array)
    end = node.next_end()
    assert (end.calling_ae, end.instances, end.aborted) == ("STORESCU", 4, False)
    assert end.series_uids == end.finished_series == frozenset({info.series_uid})
    row = node.series(info.series_uid)
    assert row is not None
    assert (row.state, row.instance_count, row.study_uid) == (SeriesState.RECEIVING, 4, info.study_uid)
    assert row.hint_at is not None  # the release hinted completion


@requires_dcmtk
def test_resent_instance_replaces_the_stored_copy(node: Node, tmp_path: Path) -> None:
    info = small_series(tmp_path / "ct", slices=2)
    assert send(node, list(info.paths)) == [0, 0]
    first = node.series(info.series_uid)
    changed = pydicom.dcmread(info.paths[0])
    changed.ImageComments = "second version"
    changed.save_as(info.paths[0])
    assert send(node, [info.paths[0]]) == [0]
    stored = pydicom.dcmread(node.data / "instances" / info.series_uid / f"{info.sop_uids[0]}.dcm")
    assert stored.ImageComments == "second version"
    row = node.series(info.series_uid)
    assert first is not None and row is not None
    assert row.instance_count == 2 and row.revision > first.revision
    assert len(node.stored()) == 2


def compressed_variants(source: list[Path], folder: Path) -> list[Path]:
    """One file per accepted transfer syntax, each made from its own slice (lossless ones keep their UID)."""
    folder.mkdir()
    made: list[Path] = []

    def dcmtk(tool: list[str], src: Path, name: str) -> None:
        target = folder / name
        run([*tool, str(src), str(target)])
        made.append(target)

    dcmtk(["dcmconv", "+ti"], source[0], "implicit.dcm")
    dcmtk(["dcmconv", "+te"], source[1], "explicit.dcm")
    dcmtk(["dcmconv", "+tb"], source[2], "big_endian.dcm")
    dcmtk(["dcmconv", "+td"], source[3], "deflated.dcm")
    dcmtk(["dcmcjpeg", "+eb"], source[4], "jpeg_baseline.dcm")
    dcmtk(["dcmcjpeg", "+ee"], source[5], "jpeg_extended.dcm")
    dcmtk(["dcmcjpeg", "+el"], source[6], "jpeg_lossless_p14.dcm")
    dcmtk(["dcmcjpeg", "+e1"], source[7], "jpeg_lossless_sv1.dcm")
    dcmtk(["dcmcjpls", "+el"], source[8], "jpeg_ls_lossless.dcm")
    dcmtk(["dcmcjpls", "+en"], source[9], "jpeg_ls_near.dcm")
    dcmtk(["dcmcrle"], source[10], "rle.dcm")
    # Debian's DCMTK has no JPEG 2000 encoder; pydicom's (pylibjpeg-openjpeg) makes these.
    for index, (syntax, name, options) in enumerate(
        [(JPEG2000Lossless, "j2k_lossless.dcm", {}), (JPEG2000, "j2k.dcm", {"j2k_cr": [5]})]
    ):
        ds = pydicom.dcmread(source[11 + index])
        ds.compress(syntax, **options)  # type: ignore[arg-type]
        ds.save_as(folder / name)
        made.append(folder / name)
    return made


@requires_dcmtk
def test_compressed_transfer_syntaxes_are_stored_intact_and_decodable(node: Node, tmp_path: Path) -> None:
    info = small_series(tmp_path / "ct", slices=13, size=64)  # 64 px: OpenJPEG's default needs >= 32
    variants = compressed_variants(list(info.paths), tmp_path / "variants")
    originals = {path.name: pydicom.dcmread(path) for path in variants}
    syntaxes = {str(ds.file_meta.TransferSyntaxUID) for ds in originals.values()}
    assert syntaxes == {str(uid) for uid in TRANSFER_SYNTAXES}  # every accepted syntax is exercised
    args = storescu_config(tmp_path, syn.CT_IMAGE_STORAGE, sorted(syntaxes))
    assert send(node, variants, extra_args=tuple(args)) == [0] * len(variants)
    for name, original in originals.items():
        path = node.data / "instances" / info.series_uid / f"{original.SOPInstanceUID}.dcm"
        stored = pydicom.dcmread(path)
        syntax = original.file_meta.TransferSyntaxUID
        assert stored.file_meta.TransferSyntaxUID == syntax, name
        assert stored.PixelData == original.PixelData, name
        assert np.array_equal(stored.pixel_array, original.pixel_array), name
    row = node.series(info.series_uid)
    assert row is not None and row.instance_count == len(variants)


@requires_dcmtk
def test_pixel_data_is_not_decoded_on_receipt(node: Node, tmp_path: Path) -> None:
    info = small_series(tmp_path / "ct", slices=2, size=64)
    ds = pydicom.dcmread(info.paths[0])
    ds.compress(JPEG2000Lossless)
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51 this is not a codestream"])
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    args = storescu_config(tmp_path, syn.CT_IMAGE_STORAGE, [str(JPEG2000Lossless)])
    assert send(node, [broken], extra_args=tuple(args)) == [0]
    stored = pydicom.dcmread(node.data / "instances" / info.series_uid / f"{ds.SOPInstanceUID}.dcm")
    assert stored.PixelData == ds.PixelData


@requires_dcmtk
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_answers_out_of_resources_and_keeps_serving(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    info = small_series(tmp_path / "ct", slices=2)

    def full(fd: int, data: bytes) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(InstanceStore, "_write", staticmethod(full))
    assert send(node, [info.paths[0]]) == [STATUS_OUT_OF_RESOURCES]
    assert node.stored() == []  # no temporary file left either
    assert node.series(info.series_uid) is None
    assert_serving(node)
    monkeypatch.undo()  # space freed: the sender's retry succeeds
    assert send(node, [info.paths[0]]) == [0]
    assert len(node.stored()) == 1


@requires_dcmtk
def test_instance_without_series_uid_cannot_be_understood(node: Node, tmp_path: Path) -> None:
    info = small_series(tmp_path / "ct", slices=2)
    run(["dcmodify", "-nb", "-ea", "(0020,000e)", str(info.paths[0])])
    statuses = send(node, list(info.paths), extra_args=("-R", "-nh"))
    assert statuses == [STATUS_CANNOT_UNDERSTAND, 0]  # the association goes on
    assert [p.stem for p in node.stored()] == [info.sop_uids[1]]
    row = node.series(info.series_uid)
    assert row is not None and row.instance_count == 1
    assert_serving(node)


@requires_dcmtk
def test_scp_from_config(tmp_path: Path) -> None:
    from dcmtk import free_port

    config_file = tmp_path / "segnode.toml"
    config_file.write_text(
        f'[node]\nae_title = "CFGNODE"\nbind = "{HOST}"\nport = {free_port()}\n[paths]\ndata = "state"\n'
    )
    config = load_config(config_file)
    with StorageSCP.from_config(config) as scp:
        assert scp.port == config.node.port and scp.running
        assert echoscu(scp.port, called_ae="CFGNODE", timeout=TOOL_TIMEOUT_S).ok
    assert not scp.running
    assert (tmp_path / "state" / "segnode.sqlite3").is_file()


# -- peers that misbehave (raw sockets) ----------------------------------------------------------------------------


def test_half_a_pdu_header_then_hang_up(node: Node) -> None:
    with socket.create_connection((HOST, node.port), timeout=EVENT_TIMEOUT_S) as sock:
        sock.sendall(b"\x01\x00\x00\x00")
    with socket.create_connection((HOST, node.port), timeout=EVENT_TIMEOUT_S) as sock:
        sock.sendall(b"garbage that is no PDU at all" * 10)
    assert_pynetdicom_store_works(node)


def test_peer_dropping_mid_transfer_leaves_the_server_serving(node: Node) -> None:
    with socket.create_connection((HOST, node.port), timeout=EVENT_TIMEOUT_S) as sock:
        sock.sendall(associate_rq(AE_TITLE, "DROPPER", syn.CT_IMAGE_STORAGE, str(ExplicitVRLittleEndian)))
        header = recv_exactly(sock, 6)
        assert header[:1] == b"\x02", header  # A-ASSOCIATE-AC
        recv_exactly(sock, struct.unpack(">I", header[2:6])[0])
        # A P-DATA-TF announcing 100 kB of which only the start of a command PDV arrives.
        pdv = struct.pack(">IBB", 1000, 1, 0x03) + b"\x00" * 40
        sock.sendall(struct.pack(">BBI", 0x04, 0, 100_000) + pdv)
    assert node.stored() == []
    assert_pynetdicom_store_works(node)


# -- pynetdicom peers: association end, aborts and concurrent associations -------------------------------------


def scu() -> AE:
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = EVENT_TIMEOUT_S
    ae.add_requested_context(
        syn.CT_IMAGE_STORAGE,
        [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian],
    )
    return ae


def assert_pynetdicom_store_works(node: Node) -> None:
    folder = node.data.parent / f"check-{len(node.stored())}"
    info = small_series(folder, slices=2)
    assoc = scu().associate(HOST, node.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(pydicom.dcmread(info.paths[0]))
        assert status.Status == 0
    finally:
        assoc.release()
    assert node.series(info.series_uid) is not None


def test_aborted_association_is_reported_without_a_hint(node: Node, tmp_path: Path) -> None:
    info = small_series(tmp_path / "ct", slices=2)
    assoc = scu().associate(HOST, node.port, ae_title=AE_TITLE)
    assert assoc.is_established
    assert assoc.send_c_store(pydicom.dcmread(info.paths[0])).Status == 0
    assoc.abort()
    end = node.next_end()
    assert end.aborted and end.instances == 1 and end.series_uids == {info.series_uid}
    row = node.series(info.series_uid)
    assert row is not None and row.hint_at is None  # the quiet period decides
    assert node.ends.empty()


def test_release_hints_only_series_no_other_association_is_sending(node: Node, tmp_path: Path) -> None:
    info = small_series(tmp_path / "ct", slices=2)
    first = scu().associate(HOST, node.port, ae_title=AE_TITLE)
    second = scu().associate(HOST, node.port, ae_title=AE_TITLE)
    try:
        assert first.is_established and second.is_established
        assert first.send_c_store(pydicom.dcmread(info.paths[0])).Status == 0
        assert second.send_c_store(pydicom.dcmread(info.paths[1])).Status == 0
        first.release()
        end = node.next_end()
        assert not end.aborted and end.series_uids == {info.series_uid} and end.finished_series == frozenset()
        row = node.series(info.series_uid)
        assert row is not None and row.hint_at is None
    finally:
        second.release()
    end = node.next_end()
    assert end.finished_series == {info.series_uid}
    row = node.series(info.series_uid)
    assert row is not None and row.hint_at is not None and row.instance_count == 2


def test_each_association_ends_once(node: Node, tmp_path: Path) -> None:
    info = small_series(tmp_path / "ct", slices=2)
    assoc = scu().associate(HOST, node.port, ae_title=AE_TITLE)
    assert assoc.send_c_store(pydicom.dcmread(info.paths[0])).Status == 0
    assoc.release()
    assert node.next_end().instances == 1
    node.scp.stop()  # joins the association threads: any second report would be queued by now
    assert node.ends.empty()


def test_stop_drains_then_aborts_associations_left_open(node: Node, tmp_path: Path) -> None:
    info = small_series(tmp_path / "ct", slices=2)
    assoc = scu().associate(HOST, node.port, ae_title=AE_TITLE)
    assert assoc.send_c_store(pydicom.dcmread(info.paths[0])).Status == 0
    node.scp.stop(drain_seconds=0.2)  # the SCU never releases
    end = node.next_end()
    assert end.aborted and end.instances == 1
    assert not node.scp.running
    assoc.abort()  # no-op if the SCP's abort already ended it
    row = node.series(info.series_uid)
    assert row is not None and row.instance_count == 1


# -- the one place statuses come from ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (StorageFullError("disk full"), STATUS_OUT_OF_RESOURCES),
        (StateUnavailableError("state database unavailable (database is locked)"), STATUS_OUT_OF_RESOURCES),
        (InvalidUIDError("SOP Instance UID '../x' is not a DICOM UID"), STATUS_CANNOT_UNDERSTAND),
        (UnreadableInstanceError("instance 1.2 has no SeriesInstanceUID"), STATUS_CANNOT_UNDERSTAND),
        (RuntimeError("a bug"), STATUS_PROCESSING_FAILURE),
    ],
)
def test_store_status_maps_each_failure(error: Exception, status: int) -> None:
    with store_status("C-STORE 1.2.3 from TEST") as outcome:
        raise error
    assert outcome.status == status
    response = outcome.response()
    assert not isinstance(response, int) and response.Status == status and len(response.ErrorComment) <= 64


def test_a_store_the_disk_guard_refuses_is_a700_logged_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="node.dicom.status")
    with store_status("C-STORE 1.2.3 from TEST") as outcome:
        raise DiskFullError("disk full: /data: 10.0 MiB free")
    response = outcome.response()
    assert not isinstance(response, int) and response.Status == STATUS_OUT_OF_RESOURCES
    assert response.ErrorComment == "out of resources, retry later"
    # The guard logs the disk filling, once; a line per refused instance would flood the log.
    (record,) = [r for r in caplog.records if r.name == "node.dicom.status"]
    assert record.levelno == logging.DEBUG and record.getMessage().endswith(
        "refused, out of resources: disk full: /data: 10.0 MiB free"
    )


def test_store_status_success_is_plain_zero() -> None:
    with store_status("C-STORE 1.2.3 from TEST") as outcome:
        pass
    assert outcome.response() == 0


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
@pytest.mark.parametrize("data", [b"", b"\xff" * 40, b"not dicom at all" * 20])
@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
)
def test_unparseable_bytes_are_an_input_error(data: bytes, syntax: str) -> None:
    with pytest.raises(InputError, match=r"instance 1\.2\.3"):
        read_identity(data, syntax, "1.2.3")
