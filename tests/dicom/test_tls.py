"""The DICOM TLS listener ([tls] port) of the in-process SCP and of the receiver processes, with DCMTK as the peer."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydicom
import pytest
import synthetic as syn
from dcmtk import HOST, ToolResult, association_args, echoscu, free_port, run_tool, storescu
from nodes import folder_destination, wait_for, write_config
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from raw_pdu import request
from tls_certs import Pki, make_pki

from node.config import Config, load_config
from node.dicom.receivers import ReceiverPool
from node.dicom.scp import StorageSCP
from node.state import open_state

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed")

AE_TITLE = "SEGNODE"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(
    folder: Path, pki: Pki, *, receive_processes: int = 1, node: Mapping[str, Any] | None = None, **tls: Any
) -> Config:
    keys: dict[str, Any] = {
        "port": free_port(),
        "certificate": str(pki.server_certificate),
        "private_key": str(pki.server_key),
        "ca_certificates": str(pki.ca),
    }
    keys.update(tls)
    sections: Mapping[str, Mapping[str, Any]] = {
        "tls": keys,
        "disk": {"reserve_mb": 0, "max_usage_percent": 100.0},
        **({"node": node} if node else {}),
    }
    path = write_config(
        folder, free_port(), folder_destination(), receive_processes=receive_processes, sections=sections
    )
    return load_config(path)


def client(pki: Pki, who: str = "client") -> list[str]:
    """DCMTK options for a TLS client: with the client certificate, the stranger's, or anonymous; the server is
    verified against our CA in every case."""
    if who == "anonymous":
        identity = ["+tla"]
    elif who == "stranger":
        identity = ["+tls", str(pki.stranger_key), str(pki.stranger_certificate)]
    else:
        identity = ["+tls", str(pki.client_key), str(pki.client_certificate)]
    return [*identity, "+cf", str(pki.ca)]


def send(port: int, files: list[Path], options: list[str]) -> ToolResult:
    return storescu(port, files, called_ae=AE_TITLE, extra_args=("-R", *options), timeout=30)


def indexed(config: Config, series_uid: str) -> int:
    with open_state(config.paths.data, config.paths.database, node_id="test-reader") as state:
        row = state.series.get(series_uid)
    return 0 if row is None else row.instance_count


@pytest.fixture
def series(tmp_path: Path) -> syn.SeriesInfo:
    return syn.write_series(syn.GridSpec.axial(rows=16, cols=16, slices=2), tmp_path / "ct")


def test_a_tls_client_stores_and_a_plain_one_cannot_use_the_tls_port(
    tmp_path: Path, pki: Pki, series: syn.SeriesInfo
) -> None:
    config = tls_config(tmp_path / "node", pki)
    with StorageSCP.from_config(config) as scp:
        assert scp.tls_port == config.tls.port and scp.port == config.node.port
        result = send(scp.tls_port, list(series.paths), client(pki))
        assert result.statuses() == [0, 0], result.output[-2000:]
        assert indexed(config, series.series_uid) == 2
        plain = echoscu(scp.tls_port, called_ae=AE_TITLE, timeout=10)
        assert not plain.ok
        assert echoscu(scp.port, called_ae=AE_TITLE).ok  # the plain port serves as before
        assert scp.counters.snapshot().associations_accepted == 2


@pytest.mark.parametrize("who", ["anonymous", "stranger"])
def test_a_client_without_a_trusted_certificate_is_refused_when_one_is_required(
    tmp_path: Path, pki: Pki, series: syn.SeriesInfo, who: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = tls_config(tmp_path / "node", pki, require_client_certificate=True)
    with StorageSCP.from_config(config) as scp:
        refused = send(scp.tls_port, list(series.paths), client(pki, who))
        assert not refused.ok and refused.statuses() == []
        assert indexed(config, series.series_uid) == 0
        assert send(scp.tls_port, list(series.paths), client(pki)).statuses() == [0, 0]
    assert any("TLS handshake with 127.0.0.1" in r.getMessage() for r in caplog.records)


def test_without_plain_only_the_tls_port_listens(tmp_path: Path, pki: Pki, series: syn.SeriesInfo) -> None:
    config = tls_config(tmp_path / "node", pki, plain=False)
    with StorageSCP.from_config(config) as scp:
        assert scp.port == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, config.node.port), timeout=5).close()
        assert send(scp.tls_port, [series.paths[0]], client(pki)).statuses() == [0]


def test_a_source_not_allowed_is_refused_before_the_tls_handshake(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    config = tls_config(tmp_path / "node", pki, node={"allowed_sources": ["10.0.0.0/8"]})
    caplog.set_level(logging.WARNING)
    with StorageSCP.from_config(config) as scp:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
        with socket.create_connection((HOST, scp.tls_port), timeout=10) as raw:
            port = raw.getsockname()[1]
            # The server closes the connection without a ServerHello: the client's handshake fails.
            with pytest.raises((ssl.SSLError, ConnectionError)):
                context.wrap_socket(raw, server_hostname="localhost")
        assert request(HOST, scp.port, AE_TITLE, "PLAIN").rejection == (1, 1, 1)  # plain: the A-ASSOCIATE-RJ
        snapshot = scp.counters.snapshot()
    assert snapshot.associations_rejected["source"] == 2 and snapshot.associations_accepted == 0
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("node.dicom")]
    refused = [m for m in messages if m.startswith("refused TLS connection")]
    assert refused == [
        f"refused TLS connection from 127.0.0.1:{port} before the handshake: "
        "source address 127.0.0.1 is not in [node] allowed_sources"
    ]
    assert not any("TLS handshake with" in m for m in messages)


def test_stopping_does_not_wait_for_a_tls_handshake_in_progress(tmp_path: Path, pki: Pki) -> None:
    config = tls_config(tmp_path / "node", pki)
    scp = StorageSCP.from_config(config)
    assert scp.network.acse_timeout >= 10  # the handshake's time limit, far longer than the stop below
    scp.start()
    try:
        with socket.create_connection((HOST, scp.tls_port), timeout=10):  # connects, never says ClientHello
            time.sleep(0.5)  # accepted: its thread now waits in the handshake
            started = time.monotonic()
            scp.stop(drain_seconds=0.5)
            assert time.monotonic() - started < 5
    finally:
        scp.stop()


def tls_scu(pki: Pki) -> tuple[AE, ssl.SSLContext]:
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(syn.CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_certificate), str(pki.client_key))
    return ae, context


def test_apply_changes_the_tls_context_for_new_associations_only(
    tmp_path: Path, pki: Pki, series: syn.SeriesInfo
) -> None:
    config = tls_config(tmp_path / "node", pki, require_client_certificate=False)
    with StorageSCP.from_config(config) as scp:
        assert echoscu_tls(scp.tls_port, client(pki, "anonymous")).ok
        ae, context = tls_scu(pki)
        held = ae.associate(HOST, scp.tls_port, ae_title=AE_TITLE, tls_args=(context, "localhost"))
        assert held.is_established
        try:
            scp.apply(tls_config(tmp_path / "node", pki, port=config.tls.port, require_client_certificate=True))
            assert not echoscu_tls(scp.tls_port, client(pki, "anonymous")).ok
            assert echoscu_tls(scp.tls_port, client(pki)).ok
            assert held.send_c_store(pydicom.dcmread(series.paths[0])).Status == 0  # the open one goes on
        finally:
            held.release()
        assert indexed(config, series.series_uid) == 1


def echoscu_tls(port: int, options: list[str]) -> ToolResult:
    return run_tool(["echoscu", *association_args("ECHOSCU", AE_TITLE, 10), *options, HOST, str(port)], timeout=15)


def test_every_receiver_process_serves_the_tls_port(tmp_path: Path, pki: Pki) -> None:
    config = tls_config(tmp_path / "node", pki, receive_processes=2, require_client_certificate=True)
    config.paths.data.mkdir(parents=True, exist_ok=True)
    pool = ReceiverPool(config, 2)
    pool.start()
    try:
        assert pool.tls_port == config.tls.port
        wait_for("the receivers to answer over TLS", lambda: echoscu_tls(pool.tls_port, client(pki)).ok)
        grid = syn.GridSpec.axial(rows=16, cols=16, slices=2)
        infos = [syn.write_series(grid, tmp_path / f"ct{k}") for k in range(6)]
        for info in infos:  # six associations: both receivers take some (a receiver without TLS would fail one)
            assert send(pool.tls_port, list(info.paths), client(pki)).statuses() == [0, 0]
        assert not echoscu_tls(pool.tls_port, client(pki, "stranger")).ok
        assert echoscu(pool.port, called_ae=AE_TITLE).ok
        assert all(indexed(config, info.series_uid) == 2 for info in infos)
        assert pool.counters.snapshot().instances_received == 12
    finally:
        pool.stop()
