"""DICOM TLS when sending (node/destinations/dimse_connect.py, dimse_scu.py) against DCMTK storescp with ``+tls``.

The PKI is a throw-away openssl CA (tests/tls_certs.py); storescp requires and verifies our client certificate
(its default ``-rc``), so a send that arrives also proves the node presented ``[tls] certificate``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
import synthetic as syn
from dcmtk import HOST, StoreSCP, association_args, requires_dcmtk, run_tool
from tls_certs import Pki, make_pki

from node.config.sections import TlsConfig
from node.destinations import Destination, Outcome, create, dimse_scu
from node.destinations.dimse import DicomDestination
from node.errors import ConfigError

pytestmark = requires_dcmtk

TIMEOUT = 5.0


class TlsStoreSCP(StoreSCP):
    """storescp speaking DICOM TLS with ``certificate``/``key``, verifying clients against ``client_ca``."""

    def __init__(self, folder: Path, pki: Pki, *, ae_title: str = "TLSPACS") -> None:
        self.pki = pki
        options = ("-v", "+xa", "-pm", "+tls", str(pki.server_key), str(pki.server_certificate), "+cf", str(pki.ca))
        super().__init__(folder, ae_title=ae_title, options=options)

    def ready(self) -> bool:
        # The plain echoscu of StoreSCP cannot talk to a TLS port: DCMTK's own echoscu over TLS can.
        pki = self.pki
        tls = ["+tls", str(pki.client_key), str(pki.client_certificate), "+cf", str(pki.ca)]
        args = ["echoscu", *tls, *association_args("ECHOSCU", self.ae_title, 2), HOST, str(self.port)]
        return run_tool(args, timeout=5).ok


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def segs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two SEGs (the kind of file the node sends), on a small synthetic CT."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    root = tmp_path_factory.mktemp("tls-segs")
    series = syn.write_series(syn.GridSpec.axial(rows=8, cols=8, slices=3), root / "ct")
    sources = [pydicom.dcmread(p) for p in series.paths]
    mask = np.zeros((3, 8, 8), dtype=np.uint8)
    mask[1, 2:5, 2:5] = 1
    paths = []
    for n in range(2):
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=mask,
            segmentation_type="BINARY",
            segment_descriptions=[
                hd.seg.SegmentDescription(
                    segment_number=1,
                    segment_label="liver",
                    segmented_property_category=codes.SCT.Organ,
                    segmented_property_type=codes.SCT.Liver,
                    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
                )
            ],
            series_instance_uid=generate_uid(),
            series_number=100 + n,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="segnode-test",
            manufacturer_model_name="test",
            software_versions="0",
            device_serial_number="0",
        )
        path = root / f"seg{n}.dcm"
        seg.save_as(path)
        paths.append(path)
    return paths


@pytest.fixture
def tls_pacs(tmp_path: Path, pki: Pki) -> Iterator[TlsStoreSCP]:
    pacs = TlsStoreSCP(tmp_path / "received", pki)
    pacs.start()
    try:
        yield pacs
    finally:
        pacs.stop()


def node_tls(pki: Pki, *, ca: Path | None = None, client: bool = True) -> TlsConfig:
    """The node's [tls] as a sender: the CA bundle it trusts and (optionally) its client certificate."""
    return TlsConfig(
        ca_certificates=ca or pki.ca,
        certificate=pki.client_certificate if client else None,
        private_key=pki.client_key if client else None,
    )


def destination(port: int, tls: TlsConfig | None, *, ae_title: str = "TLSPACS", secure: bool = True) -> Destination:
    block = DicomDestination(name="pacs", ae_title=ae_title, host="localhost", port=port, tls=secure)
    return create(block, calling_ae="SEGNODE", timeout=TIMEOUT, tls=tls)


def sop_uids(paths: Sequence[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_segs_reach_a_tls_storescp_and_c_echo_works(tls_pacs: TlsStoreSCP, pki: Pki, segs: list[Path]) -> None:
    pacs = destination(tls_pacs.port, node_tls(pki))
    assert "TLS" in pacs.describe()
    assert pacs.check() is None
    results = pacs.send(segs)
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT], [r.reason for r in results]
    assert [r.status for r in results] == [0x0000, 0x0000]
    assert sop_uids(tls_pacs.received()) == sop_uids(segs)


def test_the_ip_address_is_verified_like_a_host_name(tls_pacs: TlsStoreSCP, pki: Pki, segs: list[Path]) -> None:
    block = DicomDestination(name="pacs", ae_title="TLSPACS", host="127.0.0.1", port=tls_pacs.port, tls=True)
    results = create(block, calling_ae="SEGNODE", timeout=TIMEOUT, tls=node_tls(pki)).send(segs[:1])
    assert [r.outcome for r in results] == [Outcome.SENT], results[0].reason


def test_a_server_certificate_from_an_untrusted_ca_fails_with_a_clear_reason(
    tls_pacs: TlsStoreSCP, pki: Pki, segs: list[Path]
) -> None:
    # The node trusts only the stranger CA: the PACS's certificate (signed by the test CA) is not trusted.
    pacs = destination(tls_pacs.port, node_tls(pki, ca=pki.stranger_ca))
    results = pacs.send(segs)
    assert [r.outcome for r in results] == [Outcome.RETRY, Outcome.RETRY]
    reason = results[0].reason
    assert "\n" not in reason and "Traceback" not in reason
    assert reason.startswith("PACS pacs (TLSPACS@localhost:") and "TLS handshake failed" in reason, reason
    assert "certificate is not trusted" in reason and "ca_certificates" in reason, reason
    # OpenSSL's own words for a chain ending in a CA the node does not trust (storescp sends its CA along).
    assert "self-signed certificate in certificate chain" in reason or "local issuer" in reason, reason
    check = pacs.check()
    assert check is not None and "certificate is not trusted" in check, check
    assert tls_pacs.received() == []


def test_a_tls_destination_pointing_at_a_plain_storescp_fails_with_a_clear_reason(
    tmp_path: Path, pki: Pki, segs: list[Path]
) -> None:
    with StoreSCP(tmp_path / "plain", ae_title="PLAIN") as plain:
        pacs = destination(plain.port, node_tls(pki), ae_title="PLAIN")
        results = pacs.send(segs)
        check = pacs.check()
        received = plain.received()
    assert [r.outcome for r in results] == [Outcome.RETRY, Outcome.RETRY]
    reason = results[0].reason
    assert "\n" not in reason and reason.startswith("PACS pacs (PLAIN@localhost:"), reason
    assert "TLS handshake" in reason and "plain DICOM port" in reason, reason
    assert check is not None and "TLS handshake" in check, check
    assert received == []


def test_a_plain_destination_to_a_tls_port_is_retried_not_sent(tls_pacs: TlsStoreSCP, segs: list[Path]) -> None:
    pacs = destination(tls_pacs.port, None, secure=False)
    results = pacs.send(segs[:1])
    assert [r.outcome for r in results] == [Outcome.RETRY]
    assert (
        results[0].reason
        == f"PACS pacs (TLSPACS@localhost:{tls_pacs.port}) did not answer the association request within 5 s"
    )
    assert tls_pacs.received() == []


def test_without_a_client_certificate_a_pacs_that_requires_one_refuses(
    tls_pacs: TlsStoreSCP, pki: Pki, segs: list[Path]
) -> None:
    results = destination(tls_pacs.port, node_tls(pki, client=False)).send(segs[:1])
    assert [r.outcome for r in results] == [Outcome.RETRY]
    reason = results[0].reason
    assert "did not answer" in reason and "require a client certificate ([tls] certificate)" in reason, reason
    assert tls_pacs.received() == []


def test_a_tls_file_that_no_longer_loads_is_a_retry_naming_the_file(tmp_path: Path, pki: Pki, segs: list[Path]) -> None:
    broken = tmp_path / "ca.pem"
    broken.write_text("not a certificate\n")
    pacs = destination(1, node_tls(pki, ca=broken))
    results = pacs.send(segs[:1])
    assert [r.outcome for r in results] == [Outcome.RETRY]
    assert "[tls] ca_certificates" in results[0].reason and str(broken) in results[0].reason
    check = pacs.check()
    assert check is not None and str(broken) in check


def test_the_client_context_is_shared_until_a_tls_file_changes(tmp_path: Path, pki: Pki) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.read_bytes())
    first = dimse_scu.client_context_for(node_tls(pki, ca=ca))
    # An equal section (as a reload or the next batch's StoreSCU brings) gets the same context...
    assert dimse_scu.client_context_for(node_tls(pki, ca=ca)) is first
    ca.write_bytes(pki.ca.read_bytes() + b"\n")  # ...until a file is replaced in place
    renewed = dimse_scu.client_context_for(node_tls(pki, ca=ca))
    assert renewed is not first and dimse_scu.client_context_for(node_tls(pki, ca=ca)) is renewed


def test_a_tls_block_without_the_tls_section_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"tls = true needs the \[tls\] section"):
        destination(104, None)


def test_openssl_agrees_the_test_server_certificate_is_for_localhost(pki: Pki) -> None:
    # Guards the fixture the tests above rely on: a failure there must be the node's, not the PKI's.
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.ca), "-verify_hostname", "localhost", str(pki.server_certificate)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
