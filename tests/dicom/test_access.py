"""node/dicom/access.py: the pure decision behind each A-ASSOCIATE-RJ (PS3.8 7.1.1.9, 9.3.4)."""

from __future__ import annotations

import pytest

from node.config import NodeConfig
from node.dicom.access import AccessPolicy, Rejection, RejectionKind, RejectResult, RejectSource, peer_address


@pytest.mark.parametrize(
    ("rejection", "triple", "kind"),
    [
        (Rejection.source_address("10.0.0.1"), (1, 1, 1), "source"),
        (Rejection.calling_aet("X"), (1, 1, 3), "calling_aet"),
        (Rejection.called_aet("X", "SEGNODE"), (1, 1, 7), "called_aet"),
        (Rejection.limit(4), (2, 3, 2), "limit"),
        (Rejection.disk("/data: 3 MiB free"), (2, 3, 1), "disk"),
    ],
)
def test_each_rejection_has_the_ps3_8_fields(rejection: Rejection, triple: tuple[int, int, int], kind: str) -> None:
    assert (int(rejection.result), int(rejection.source), rejection.reason) == triple
    assert rejection.kind == RejectionKind(kind)
    assert rejection.why


def test_transient_means_the_node_and_permanent_means_the_peer() -> None:
    assert Rejection.limit(1).result is RejectResult.TRANSIENT
    assert Rejection.disk("full").source is RejectSource.SERVICE_PROVIDER_PRESENTATION
    assert Rejection.calling_aet("X").result is RejectResult.PERMANENT


def test_an_empty_policy_admits_anyone() -> None:
    policy = AccessPolicy("SEGNODE", require_called_aet=False)
    assert policy.check("203.0.113.9", "ANY", "THING") is None
    assert policy.check("not an address", "ANY", "THING") is None  # no source list: the address is not looked at


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("10.20.30.40", True),
        ("::ffff:10.20.30.40", True),  # an IPv4 peer on a dual-stack socket
        ("11.0.0.1", False),
        ("fd12:3456::1", True),
        ("fe80::1", False),
        ("2001:db8::5", True),
        ("2001:db8::6", False),
        ("::ffff:192.0.2.1", False),
        ("", False),
        ("localhost", False),  # the socket reports addresses; a name is never allowed
    ],
)
def test_sources_match_ipv4_and_ipv6_blocks(address: str, allowed: bool) -> None:
    policy = AccessPolicy("SEGNODE", allowed_sources=["10.0.0.0/8", "fd00::/8", "2001:db8::5"])
    rejection = policy.check(address, "PACS", "SEGNODE")
    assert (rejection is None) == allowed
    if rejection is not None:
        assert rejection.kind is RejectionKind.SOURCE and address in rejection.why


def test_a_mapped_block_in_the_config_matches_ipv4_peers() -> None:
    policy = AccessPolicy("SEGNODE", allowed_sources=["::ffff:192.168.0.0/120"])
    assert policy.source_allowed("192.168.0.77") and policy.source_allowed("::ffff:192.168.0.77")
    assert not policy.source_allowed("192.168.1.1")


def test_ae_titles_compare_without_padding_and_with_case() -> None:
    policy = AccessPolicy("SEGNODE", allowed_calling_aets=["PACS "])
    assert policy.check("10.0.0.1", "  PACS", "SEGNODE  ") is None
    calling = policy.check("10.0.0.1", "pacs", "SEGNODE")
    assert calling is not None and calling.kind is RejectionKind.CALLING_AET and "'pacs'" in calling.why
    called = policy.check("10.0.0.1", "PACS", "segnode")
    assert called is not None and called.kind is RejectionKind.CALLED_AET


def test_the_source_is_checked_before_the_titles() -> None:
    policy = AccessPolicy("SEGNODE", allowed_calling_aets=["PACS"], allowed_sources=["10.0.0.0/8"])
    rejection = policy.check("192.0.2.1", "STRANGER", "ELSEWHERE")
    assert rejection is not None and rejection.kind is RejectionKind.SOURCE


def test_from_config_takes_the_node_section() -> None:
    node = NodeConfig(
        ae_title="NODE1", allowed_calling_aets=("CT1",), allowed_sources=("127.0.0.1",), require_called_aet=True
    )
    policy = AccessPolicy.from_config(node)
    assert policy.check("127.0.0.1", "CT1", "NODE1") is None
    assert policy.check("::ffff:127.0.0.1", "CT1", "NODE1") is None
    assert policy.check("127.0.0.2", "CT1", "NODE1") is not None
    assert policy.check("127.0.0.1", "CT1", "SEGNODE") is not None
    assert AccessPolicy.from_config(NodeConfig()).check("192.0.2.1", "ANY", "SEGNODE") is None


def test_peer_address_normalises_what_sockets_report() -> None:
    assert str(peer_address("::ffff:127.0.0.1")) == "127.0.0.1"
    assert peer_address(" 10.0.0.1 ") is not None
    assert peer_address("300.1.1.1") is None
