"""docs/conformance.md is true: its tables against what the node accepts, proposes and answers, with real peers.

The tables the statement marks ``<!-- conformance: NAME -->`` are parsed out of the markdown and compared with the
code (the SCP's supported contexts, the configuration's defaults) and with the network: pynetdicom and DCMTK
requestors negotiate with a running SCP, the SEGs ``segnode convert`` builds are sent by the node's own SCU to an
SCP that records what it was offered, and the association rejections are read off a running ``segnode run``.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pydicom
import pytest
import synthetic as syn
from dcmtk import ToolResult, association_args, echoscu, free_port, requires_dcmtk, run_tool, storescu, storescu_config
from nodes import folder_destination, run_node_process, wait_for, write_config
from peers import stop_process
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from tls_certs import make_pki

from node.config import Config
from node.config.sections import NodeConfig, PathsConfig, TlsConfig
from node.destinations import create
from node.destinations.dimse import DicomDestination
from node.dicom.scp import StorageSCP
from node.dicom.tls import client_context, server_context
from node.state.instances import InstanceStore

DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
UID_PATTERN = re.compile(r"\b1\.2\.840\.10008(?:\.\d+)+\b")
HOST = "127.0.0.1"
TIMEOUT = 10.0
GRID = syn.GridSpec.axial(rows=8, cols=10, slices=4, row_spacing=1.0, col_spacing=1.0, slice_step=2.0)

Row = dict[str, str]


def conformance_tables(text: str) -> dict[str, list[Row]]:
    """Every table marked ``<!-- conformance: NAME -->``: its rows as {column header: cell text}.

    >>> conformance_tables("<!-- conformance: t -->\\n| A | B |\\n| --- | --- |\\n| 1 | 2 |\\n\\nafter")
    {'t': [{'A': '1', 'B': '2'}]}
    """
    tables: dict[str, list[Row]] = {}
    lines = text.splitlines()
    for index, line in enumerate(lines):
        marker = re.fullmatch(r"<!-- conformance: ([\w-]+) -->", line.strip())
        if marker is None:
            continue
        body = []
        for row in lines[index + 1 :]:
            if not row.startswith("|"):
                break
            body.append([cell.strip() for cell in row.strip().strip("|").split("|")])
        header, rows = body[0], body[2:]
        tables[marker.group(1)] = [dict(zip(header, cells, strict=True)) for cells in rows]
    return tables


@pytest.fixture(scope="module")
def tables() -> dict[str, list[Row]]:
    return conformance_tables(DOC.read_text())


def uids(cell: str) -> list[str]:
    """The DICOM UIDs in a table cell, in order."""
    return UID_PATTERN.findall(cell)


def column(table: Sequence[Row], name: str) -> list[str]:
    return [row[name] for row in table]


def number(cell: str) -> int:
    """The leading number of a cell such as ``1 (rejected-permanent)``."""
    match = re.match(r"\s*(\d+)", cell)
    assert match is not None, f"no number in {cell!r}"
    return int(match.group(1))


def supported_contexts(scp: StorageSCP) -> dict[str, list[str]]:
    """What the SCP accepts: {abstract syntax: transfer syntaxes}, from the AE it serves with."""
    ae: Any = scp._application_entity()
    return {str(cx.abstract_syntax): [str(ts) for ts in cx.transfer_syntax] for cx in ae.supported_contexts}


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[StorageSCP]:
    data = tmp_path / "data"
    server = StorageSCP(InstanceStore(data), data / "segnode.sqlite3", ae_title="SEGNODE", bind=HOST, port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- the tables against the code ---------------------------------------------------------------------------------


def test_every_marked_table_is_found(tables: dict[str, list[Row]]) -> None:
    expected = {
        "scp-storage-sop-classes",
        "scp-verification",
        "scp-transfer-syntaxes",
        "node-policy-keys",
        "association-rejections",
        "scp-store-statuses",
        "scu-storage",
        "scu-verification",
        "tls-keys",
        "seg-types",
    }
    assert expected <= set(tables), f"missing: {sorted(expected - set(tables))}"
    assert all(tables[name] for name in expected)


def test_storage_sop_classes_are_those_the_scp_supports(tables: dict[str, list[Row]], tmp_path: Path) -> None:
    rows = tables["scp-storage-sop-classes"]
    documented = column(rows, "SOP Class UID")
    assert len(documented) == len(set(documented)), "a SOP class is listed twice"
    accepted = supported_contexts(StorageSCP(InstanceStore(tmp_path), tmp_path / "db.sqlite3", port=0))
    storage = set(accepted) - {VERIFICATION}
    assert set(documented) == storage, (
        f"accepted but not documented: {sorted(storage - set(documented))}; "
        f"documented but not accepted: {sorted(set(documented) - storage)}"
    )
    for row in rows:
        known = UID(row["SOP Class UID"]).name
        if known != row["SOP Class UID"]:  # pydicom knows its name: the statement must use it
            assert row["SOP Class"] == known, row
        assert row["SOP Class"]


def test_storage_transfer_syntaxes_are_those_of_every_storage_class(
    tables: dict[str, list[Row]], tmp_path: Path
) -> None:
    documented = column(tables["scp-transfer-syntaxes"], "Transfer Syntax UID")
    for row in tables["scp-transfer-syntaxes"]:
        assert row["Transfer Syntax"] == UID(row["Transfer Syntax UID"]).name, row
    accepted = supported_contexts(StorageSCP(InstanceStore(tmp_path), tmp_path / "db.sqlite3", port=0))
    differing = {sop: ts for sop, ts in accepted.items() if sop != VERIFICATION and set(ts) != set(documented)}
    assert not differing, f"SOP classes accepted in other transfer syntaxes than documented: {differing}"


def test_verification_scp_row_is_what_the_scp_supports(tables: dict[str, list[Row]], tmp_path: Path) -> None:
    (row,) = tables["scp-verification"]
    accepted = supported_contexts(StorageSCP(InstanceStore(tmp_path), tmp_path / "db.sqlite3", port=0))
    assert row["SOP Class UID"] == VERIFICATION
    assert uids(row["Transfer Syntaxes accepted"]) == accepted[VERIFICATION]


def _default(config_class: type[Any], key: str) -> Any:
    (field,) = [f for f in fields(config_class) if f.name == key]
    return field.default


def _documented_value(cell: str, default: Any) -> Any:
    if isinstance(default, bool):
        return {"true": True, "false": False}[cell]
    if isinstance(default, tuple):
        return tuple(re.findall(r'"([^"]*)"', cell))
    if isinstance(default, int | float):
        return type(default)(cell)
    if default is None:
        return None if cell == "" else cell
    return cell


@pytest.mark.parametrize(("table", "config_class"), [("node-policy-keys", NodeConfig), ("tls-keys", TlsConfig)])
def test_documented_defaults_are_the_configuration_defaults(
    tables: dict[str, list[Row]], table: str, config_class: type[Any]
) -> None:
    for row in tables[table]:
        default = _default(config_class, row["Key"])
        assert _documented_value(row["Default"], default) == default, row


def test_the_scp_serves_with_the_documented_pdu_and_timeouts(tables: dict[str, list[Row]], tmp_path: Path) -> None:
    """The [node] keys of the statement reach the AE the SCP serves with (values other than the defaults)."""
    node = NodeConfig(max_pdu=65536, acse_timeout=31.0, dimse_timeout=61.0, network_timeout=62.0)
    config = Config(node=node, paths=PathsConfig(data=tmp_path, inbox=tmp_path / "inbox", export=tmp_path / "export"))
    ae: Any = StorageSCP.from_config(config)._application_entity()
    keys = column(tables["node-policy-keys"], "Key")
    assert {"max_pdu", "acse_timeout", "dimse_timeout", "network_timeout"} <= set(keys)
    assert (ae.maximum_pdu_size, ae.acse_timeout, ae.dimse_timeout, ae.network_timeout) == (65536, 31.0, 61.0, 62.0)


def test_tls_contexts_are_tls_1_2_or_later_and_verify_peers(tables: dict[str, list[Row]], tmp_path: Path) -> None:
    keys = column(tables["tls-keys"], "Key")
    assert {"require_client_certificate", "ca_certificates"} <= set(keys)
    pki = make_pki(tmp_path / "pki")
    tls = TlsConfig(
        port=2762,
        certificate=pki.server_certificate,
        private_key=pki.server_key,
        ca_certificates=pki.ca,
        require_client_certificate=True,
    )
    server, client = server_context(tls), client_context(tls)
    assert server.minimum_version == client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    optional = server_context(dataclasses.replace(tls, require_client_certificate=False))
    assert optional.verify_mode == ssl.CERT_OPTIONAL


def test_store_statuses_are_the_scps(tables: dict[str, list[Row]]) -> None:
    from node.dicom import status

    documented = {int(code, 16) for code in column(tables["scp-store-statuses"], "Status")}
    produced = {
        status.STATUS_SUCCESS,
        status.STATUS_OUT_OF_RESOURCES,
        status.STATUS_CANNOT_UNDERSTAND,
        status.STATUS_PROCESSING_FAILURE,
    }
    assert documented == produced


# --- negotiation with a running SCP ------------------------------------------------------------------------------


def _negotiate(port: int, contexts: Sequence[tuple[str, str]], *, calling_ae: str = "CONFTEST") -> set[tuple[str, str]]:
    """Propose ``contexts`` (one transfer syntax each) to the SCP; the ones it accepted."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    for abstract_syntax, transfer_syntax in contexts:
        ae.add_requested_context(abstract_syntax, transfer_syntax)
    assoc = ae.associate(HOST, port, ae_title="SEGNODE")
    if not assoc.is_established:
        # Accepted without a single usable context: pynetdicom aborts at once.
        answer = assoc.acceptor.primitive
        assert answer is not None and answer.result == 0x00, "the association was not accepted"
        return set()
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
    assoc.release()
    return accepted


def test_every_documented_storage_class_is_accepted_on_the_network(
    tables: dict[str, list[Row]], scp: StorageSCP
) -> None:
    documented = column(tables["scp-storage-sop-classes"], "SOP Class UID")
    for start in range(0, len(documented), 128):
        wanted = [(sop, ExplicitVRLittleEndian) for sop in documented[start : start + 128]]
        assert _negotiate(scp.port, wanted) == set(wanted)


def test_every_documented_transfer_syntax_is_accepted_and_no_other(
    tables: dict[str, list[Row]], scp: StorageSCP
) -> None:
    documented = column(tables["scp-transfer-syntaxes"], "Transfer Syntax UID")
    not_documented = ["1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.92"]  # HTJ2K Lossless, JPEG 2000 Part 2
    assert not set(not_documented) & set(documented)
    offered = [(CT_IMAGE_STORAGE, ts) for ts in [*documented, *not_documented]]
    offered.append(("1.2.840.10008.5.1.4.1.2.1.1", ExplicitVRLittleEndian))  # Patient Root Q/R FIND: not storage
    assert _negotiate(scp.port, offered) == {(CT_IMAGE_STORAGE, ts) for ts in documented}


def test_c_echo_works_in_each_documented_transfer_syntax(tables: dict[str, list[Row]], scp: StorageSCP) -> None:
    (row,) = tables["scp-verification"]
    documented = uids(row["Transfer Syntaxes accepted"])
    for transfer_syntax in documented:
        ae = AE(ae_title="CONFTEST")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
        ae.add_requested_context(VERIFICATION, transfer_syntax)
        assoc = ae.associate(HOST, scp.port, ae_title="SEGNODE")
        assert assoc.is_established, transfer_syntax
        try:
            assert int(assoc.send_c_echo().Status) == 0x0000, transfer_syntax
        finally:
            assoc.release()
    assert "1.2.840.10008.1.2.1.99" not in documented  # so this one must be refused:
    assert _negotiate(scp.port, [(VERIFICATION, "1.2.840.10008.1.2.1.99")]) == set()


def test_the_first_documented_transfer_syntax_a_context_proposes_is_accepted(
    tables: dict[str, list[Row]], scp: StorageSCP
) -> None:
    documented = column(tables["scp-transfer-syntaxes"], "Transfer Syntax UID")
    for start in range(len(documented)):
        preferred = documented[start]
        ae = AE(ae_title="CONFTEST")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
        ae.add_requested_context(CT_IMAGE_STORAGE, list(reversed(documented[start:])))
        assoc = ae.associate(HOST, scp.port, ae_title="SEGNODE")
        assert assoc.is_established
        try:
            assert [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts] == [preferred]
        finally:
            assoc.release()


@requires_dcmtk
def test_dcmtk_echoscu_is_answered(tables: dict[str, list[Row]], scp: StorageSCP) -> None:
    (row,) = tables["scp-verification"]
    assert ImplicitVRLittleEndian in uids(row["Transfer Syntaxes accepted"])
    # -pts 1: echoscu proposes Implicit VR Little Endian only.
    result = echoscu(scp.port, called_ae="SEGNODE", timeout=TIMEOUT)
    assert result.ok, result.output
    result = run_echoscu_with(scp.port, ["-pts", "1"])
    assert result.ok, result.output


def run_echoscu_with(port: int, options: Sequence[str]) -> ToolResult:
    return run_tool(
        ["echoscu", *options, *association_args("ECHOSCU", "SEGNODE", TIMEOUT), HOST, str(port)], timeout=TIMEOUT + 5
    )


@requires_dcmtk
@pytest.mark.parametrize(
    "transfer_syntax",
    ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"],
)
def test_dcmtk_storescu_stores_in_documented_transfer_syntaxes(
    tables: dict[str, list[Row]], scp: StorageSCP, tmp_path: Path, transfer_syntax: str
) -> None:
    """storescu, offering only ``transfer_syntax``, converts an uncompressed CT to it; the node keeps it so."""
    assert transfer_syntax in column(tables["scp-transfer-syntaxes"], "Transfer Syntax UID")
    series = syn.write_series(GRID, tmp_path / "ct")
    options = storescu_config(tmp_path, CT_IMAGE_STORAGE, [transfer_syntax])
    result = storescu(scp.port, series.paths[:1], called_ae="SEGNODE", extra_args=options, timeout=TIMEOUT)
    assert result.ok and result.statuses() == [0x0000], result.output
    stored = wait_for("the stored instance", lambda: list(scp.store.root.rglob("*.dcm")))
    assert isinstance(stored, list) and len(stored) == 1
    assert pydicom.dcmread(stored[0]).file_meta.TransferSyntaxUID == transfer_syntax


# --- what the SCU proposes ---------------------------------------------------------------------------------------


@dataclass
class RecordingSCP:
    """A pynetdicom SCP accepting everything, recording the presentation contexts each requestor proposed."""

    port: int
    proposed: list[list[tuple[str, tuple[str, ...]]]]
    server: Any

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def recording_scp() -> Iterator[RecordingSCP]:
    proposed: list[list[tuple[str, tuple[str, ...]]]] = []
    lock = threading.Lock()

    def on_requested(event: Any) -> None:
        contexts = [
            (str(cx.abstract_syntax), tuple(str(ts) for ts in cx.transfer_syntax))
            for cx in event.assoc.requestor.requested_contexts
        ]
        with lock:
            proposed.append(contexts)

    ae = AE(ae_title="RECORDER")
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_supported_context(VERIFICATION)
    port = free_port()
    server = ae.start_server(
        (HOST, port),
        block=False,
        evt_handlers=[(evt.EVT_REQUESTED, on_requested), (evt.EVT_C_STORE, lambda event: 0x0000)],
    )
    recorder = RecordingSCP(port, proposed, server)
    try:
        yield recorder
    finally:
        recorder.stop()


@pytest.fixture(scope="module")
def built_segs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One SEG of each [seg] type, built by ``segnode convert`` as the node builds them."""
    from node.cli import main

    root = tmp_path_factory.mktemp("conformance-segs")
    series = syn.write_series(GRID, root / "dicom")
    reference = (syn.export_grid_affine(GRID), syn.export_grid_shape(GRID))
    nifti = syn.label_nifti_on_grid(reference, syn.Phantom.fitting(GRID), root / "seg.nii.gz", snap=GRID)
    segs = {}
    for seg_type in ("binary", "fractional", "labelmap"):
        out = root / f"{seg_type}.dcm"
        args = ["--dicom", str(series.folder), "--nifti", str(nifti), "--out", str(out), "--type", seg_type]
        code = main(["convert", *args])
        assert code == 0 and out.is_file(), seg_type
        segs[seg_type] = out
    return segs


def test_seg_types_are_what_convert_builds(tables: dict[str, list[Row]], built_segs: dict[str, Path]) -> None:
    rows = tables["seg-types"]
    assert {row["[seg] type"].split()[0] for row in rows} == set(built_segs)
    for row in rows:
        seg = pydicom.dcmread(built_segs[row["[seg] type"].split()[0]])
        assert seg.SegmentationType == row["Segmentation Type (0062,0001)"], row
        assert seg.SOPClassUID == row["SOP Class UID"], row


@pytest.fixture(scope="module")
def sent_objects(built_segs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per row of the ``scu-storage`` table, by its "Object sent" cell: the SEGs, and the QC image the
    node's QC step (``[qc] send = true``) makes of the binary one."""
    from node.config.sections import QcConfig
    from node.convert.series import load_series
    from node.pipeline.qc import write_qc

    objects = {f"SEG, [seg] type = {seg_type}": path for seg_type, path in built_segs.items()}
    data = tmp_path_factory.mktemp("conformance-qc")
    config = Config(paths=PathsConfig(data=data), qc=QcConfig(enabled=True, send=True))
    source = load_series(built_segs["binary"].parent / "dicom")
    written = write_qc(config, built_segs["binary"], source)
    assert written is not None and written.image is not None
    objects["QC image, [qc] send = true"] = written.image
    return objects


def _scu(port: int) -> Any:
    peer = DicomDestination(name="recorder", ae_title="RECORDER", host=HOST, port=port)
    return create(peer, calling_ae="SEGNODE", timeout=TIMEOUT)


def test_the_scu_proposes_the_documented_contexts_for_each_object_it_sends(
    tables: dict[str, list[Row]], sent_objects: dict[str, Path], recording_scp: RecordingSCP
) -> None:
    scu = _scu(recording_scp.port)
    rows = tables["scu-storage"]
    assert {row["Object sent"] for row in rows} == set(sent_objects)
    for row in rows:
        recording_scp.proposed.clear()
        path = sent_objects[row["Object sent"]]
        results = scu.send([path])
        assert [r.outcome.value for r in results] == ["sent"], results
        (proposed,) = recording_scp.proposed
        expected = [(row["SOP Class UID"], (ts,)) for ts in uids(row["Transfer Syntaxes proposed (one context each)"])]
        assert proposed == expected, row
        assert pydicom.dcmread(path).SOPClassUID == row["SOP Class UID"]


def test_the_scu_proposes_the_documented_verification_context(
    tables: dict[str, list[Row]], recording_scp: RecordingSCP
) -> None:
    (row,) = tables["scu-verification"]
    assert _scu(recording_scp.port).check() is None
    (proposed,) = recording_scp.proposed
    assert proposed == [(VERIFICATION, tuple(uids(row["Transfer Syntaxes proposed (one context)"])))]


# --- association rejections of a running node --------------------------------------------------------------------


def _reasons(tables: dict[str, list[Row]]) -> dict[str, tuple[int, int, int]]:
    """The rejection table by its config key: {"require_called_aet": (result, source, reason), ...}."""
    return {
        row["Key"]: (number(row["Result"]), number(row["Source"]), number(row["Reason/Diag."]))
        for row in tables["association-rejections"]
    }


def _rejection(port: int, *, calling_ae: str, called_ae: str, source: str = HOST) -> tuple[int, int, int] | None:
    """(result, source, reason) of the node's A-ASSOCIATE-RJ, or None when it accepted (then released)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(HOST, port, ae_title=called_ae, bind_address=(source, 0))
    if assoc.is_established:
        assoc.release()
        return None
    answer: Any = assoc.acceptor.primitive
    assert assoc.is_rejected and answer is not None, "neither accepted nor rejected"
    return int(answer.result), int(answer.result_source), int(answer.diagnostic)


def _answers(port: int) -> bool:
    """Whether something accepts TCP connections on ``port`` (the node's receivers are up)."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


@contextmanager
def running_node(folder: Path, sections: dict[str, dict[str, Any]]) -> Iterator[int]:
    """``segnode run`` (2 receiver processes) with ``sections`` added to its config; yields its port."""
    port = free_port()
    config = write_config(folder, port, folder_destination(), sections=sections)
    process = run_node_process(config, folder / "node.log")
    try:
        wait_for("the node to listen", lambda: _answers(port))
        yield port
    finally:
        stop_process(process)


def test_policy_rejections_carry_the_documented_values(tables: dict[str, list[Row]], tmp_path: Path) -> None:
    expected = _reasons(tables)
    assert set(expected) == {
        "allowed_sources",
        "allowed_calling_aets",
        "require_called_aet",
        "reserve_mb",
        "max_associations",
    }
    node = {
        "allowed_calling_aets": ["ALLOWED"],
        "allowed_sources": ["127.0.0.1/32"],
        "require_called_aet": True,
        "max_associations": 1,
    }
    with running_node(tmp_path, {"node": node}) as port:
        assert _rejection(port, calling_ae="ALLOWED", called_ae="SEGNODE") is None
        assert _rejection(port, calling_ae="ALLOWED", called_ae="OTHER") == expected["require_called_aet"]
        assert _rejection(port, calling_ae="STRANGER", called_ae="SEGNODE") == expected["allowed_calling_aets"]
        # Linux routes all of 127.0.0.0/8 to loopback: a peer at 127.0.0.2 is not in allowed_sources.
        from_elsewhere = _rejection(port, calling_ae="ALLOWED", called_ae="SEGNODE", source="127.0.0.2")
        assert from_elsewhere == expected["allowed_sources"]
        ae = AE(ae_title="ALLOWED")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
        ae.add_requested_context(VERIFICATION)
        held = ae.associate(HOST, port, ae_title="SEGNODE")
        assert held.is_established
        try:
            # The limit is the node's, over both receiver processes: try more than once, whichever process accepts.
            for _ in range(4):
                assert _rejection(port, calling_ae="ALLOWED", called_ae="SEGNODE") == expected["max_associations"]
        finally:
            held.release()


def test_a_full_disk_rejection_carries_the_documented_values(tables: dict[str, list[Row]], tmp_path: Path) -> None:
    (row,) = [r for r in tables["association-rejections"] if r["Key"] == "reserve_mb"]
    assert "[disk]" in row["Reason"]
    # A reserve larger than any disk: the node is "full" from the start.
    with running_node(tmp_path, {"disk": {"reserve_mb": 1 << 30}}) as port:
        rejection = wait_for("a rejection", lambda: _rejection(port, calling_ae="ANYONE", called_ae="SEGNODE"))
        assert rejection == _reasons(tables)["reserve_mb"]
