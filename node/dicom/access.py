"""Who may associate: the pure decision behind every A-ASSOCIATE-RJ the node sends (PS3.8 7.1.1.9, 9.3.4).

:class:`AccessPolicy` answers, from the peer's address and the two AE titles of an A-ASSOCIATE-RQ, ``None`` (go on)
or the :class:`Rejection` to send. The node's own load (too many associations, a full disk) is not policy; its two
rejections are built here too, so that every result/source/reason triple is written down in one place:

============================  ==================  ==================================  ================================
why                           result              source                              reason
============================  ==================  ==================================  ================================
source address not allowed    rejected-permanent  DICOM UL service-user               1 no-reason-given
calling AE not recognised     rejected-permanent  DICOM UL service-user               3 calling-AE-title-not-recognized
called AE not recognised      rejected-permanent  DICOM UL service-user               7 called-AE-title-not-recognized
too many associations         rejected-transient  service-provider (presentation)     2 local-limit-exceeded
disk full                     rejected-transient  service-provider (presentation)     1 temporary-congestion
============================  ==================  ==================================  ================================
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.config.sections import NodeConfig

__all__ = ["AccessPolicy", "RejectReason", "RejectResult", "RejectSource", "Rejection", "RejectionKind"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ Result (PS3.8 9.3.4): may the same request succeed later?"""

    PERMANENT = 1
    TRANSIENT = 2


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ Source (PS3.8 9.3.4): which layer said no."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


class RejectReason:
    """A-ASSOCIATE-RJ Reason/Diag. values (PS3.8 9.3.4). Not an enum: the meaning of a value depends on the
    source, so 1 is both "no reason given" and "temporary congestion"."""

    NO_REASON_GIVEN = 1  # service-user
    CALLING_AE_NOT_RECOGNIZED = 3  # service-user
    CALLED_AE_NOT_RECOGNIZED = 7  # service-user
    TEMPORARY_CONGESTION = 1  # service-provider (presentation)
    LOCAL_LIMIT_EXCEEDED = 2  # service-provider (presentation)


class RejectionKind(StrEnum):
    """Why, as counted in :class:`node.dicom.counters.ReceiverSnapshot` ``associations_rejected``."""

    CALLING_AET = "calling_aet"
    CALLED_AET = "called_aet"
    SOURCE = "source"
    LIMIT = "limit"
    DISK = "disk"


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ to send: the three PDU fields, the counter it goes to and a line for the log."""

    result: RejectResult
    source: RejectSource
    reason: int
    kind: RejectionKind
    why: str

    @classmethod
    def calling_aet(cls, calling_aet: str) -> Rejection:
        why = f"calling AE title {calling_aet!r} is not in [node] allowed_calling_aets"
        return cls(
            RejectResult.PERMANENT,
            RejectSource.SERVICE_USER,
            RejectReason.CALLING_AE_NOT_RECOGNIZED,
            RejectionKind.CALLING_AET,
            why,
        )

    @classmethod
    def called_aet(cls, called_aet: str, ae_title: str) -> Rejection:
        why = f"called AE title {called_aet!r} is not this node's {ae_title!r} ([node] require_called_aet)"
        return cls(
            RejectResult.PERMANENT,
            RejectSource.SERVICE_USER,
            RejectReason.CALLED_AE_NOT_RECOGNIZED,
            RejectionKind.CALLED_AET,
            why,
        )

    @classmethod
    def source_address(cls, address: str) -> Rejection:
        why = f"source address {address} is not in [node] allowed_sources"
        return cls(
            RejectResult.PERMANENT, RejectSource.SERVICE_USER, RejectReason.NO_REASON_GIVEN, RejectionKind.SOURCE, why
        )

    @classmethod
    def limit(cls, limit: int) -> Rejection:
        why = f"{limit} association(s) already open, the node's [node] max_associations"
        return cls(
            RejectResult.TRANSIENT,
            RejectSource.SERVICE_PROVIDER_PRESENTATION,
            RejectReason.LOCAL_LIMIT_EXCEEDED,
            RejectionKind.LIMIT,
            why,
        )

    @classmethod
    def disk(cls, reason: str) -> Rejection:
        return cls(
            RejectResult.TRANSIENT,
            RejectSource.SERVICE_PROVIDER_PRESENTATION,
            RejectReason.TEMPORARY_CONGESTION,
            RejectionKind.DISK,
            f"disk full: {reason}",
        )


def peer_address(address: str) -> IPAddress | None:
    """The peer's IP address as the policy compares it; an IPv4-mapped IPv6 address is its IPv4 address.

    >>> peer_address("::ffff:10.1.2.3"), peer_address("fd00::1"), peer_address("fe80::1%eth0"), peer_address("x")
    (IPv4Address('10.1.2.3'), IPv6Address('fd00::1'), IPv6Address('fe80::1%eth0'), None)
    """
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _network(text: str) -> IPNetwork:
    network = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
        # A block written as ::ffff:10.0.0.0/104 means the IPv4 block, which is how peers are compared.
        mapped = network.network_address.ipv4_mapped
        return ipaddress.IPv4Network(f"{mapped}/{max(0, network.prefixlen - 96)}", strict=False)
    return network


class AccessPolicy:
    """Which peers may associate, by source address, calling AE title and called AE title.

    Parameters
    ----------
    ae_title
        The node's AE title, which the called AE title must match when ``require_called_aet``.
    allowed_calling_aets
        Calling AE titles allowed; empty: any. Compared without leading and trailing spaces (PS3.5 6.2: they
        are not significant), case-sensitively.
    allowed_sources
        IPv4/IPv6 addresses or CIDR blocks; empty: any. An IPv4 peer seen on an IPv6 socket (``::ffff:a.b.c.d``)
        matches IPv4 blocks.
    require_called_aet
        Reject a called AE title other than ``ae_title``.

    Examples
    --------
    >>> policy = AccessPolicy("SEGNODE", allowed_calling_aets=["PACS"], allowed_sources=["10.0.0.0/8", "fd00::/8"])
    >>> policy.check("10.1.2.3", "PACS", "SEGNODE") is None
    True
    >>> policy.check("::ffff:10.1.2.3", "PACS ", " SEGNODE") is None
    True
    >>> policy.check("192.168.1.5", "PACS", "SEGNODE").why
    'source address 192.168.1.5 is not in [node] allowed_sources'
    >>> rejection = policy.check("fd00::7", "MODALITY", "SEGNODE")
    >>> rejection.result, rejection.source, rejection.reason, rejection.kind.value
    (<RejectResult.PERMANENT: 1>, <RejectSource.SERVICE_USER: 1>, 3, 'calling_aet')
    >>> policy.check("10.0.0.1", "PACS", "OTHER").reason
    7
    >>> AccessPolicy("SEGNODE", require_called_aet=False).check("10.0.0.1", "ANYONE", "OTHER") is None
    True
    """

    def __init__(
        self,
        ae_title: str,
        *,
        allowed_calling_aets: Iterable[str] = (),
        allowed_sources: Iterable[str] = (),
        require_called_aet: bool = True,
    ) -> None:
        self.ae_title = ae_title.strip()
        self.allowed_calling_aets = frozenset(aet.strip() for aet in allowed_calling_aets)
        # ValueError for a block that is no IP network: the config has checked them already.
        self.allowed_sources = tuple(_network(source) for source in allowed_sources)
        self.require_called_aet = require_called_aet

    @classmethod
    def from_config(cls, node: NodeConfig) -> AccessPolicy:
        """The policy of ``[node]``."""
        return cls(
            node.ae_title,
            allowed_calling_aets=node.allowed_calling_aets,
            allowed_sources=node.allowed_sources,
            require_called_aet=node.require_called_aet,
        )

    def source_allowed(self, address: str) -> bool:
        """Whether ``address`` (as the socket reports it) is in ``allowed_sources``; any when that is empty.

        >>> policy = AccessPolicy("N", allowed_sources=["127.0.0.1", "::ffff:192.168.0.0/112"])
        >>> [policy.source_allowed(a) for a in ("127.0.0.1", "::ffff:127.0.0.1", "::1", "192.168.3.4", "bogus")]
        [True, True, False, True, False]
        """
        if not self.allowed_sources:
            return True
        ip = peer_address(address)
        if ip is None:
            return False
        return any(ip.version == network.version and ip in network for network in self.allowed_sources)

    def check(self, address: str, calling_aet: str, called_aet: str) -> Rejection | None:
        """``None`` if the peer at ``address`` may associate as ``calling_aet`` with ``called_aet``, else why not.

        The source address is checked first: a peer that may not connect learns nothing about AE titles.
        """
        if not self.source_allowed(address):
            return Rejection.source_address(address)
        calling, called = calling_aet.strip(), called_aet.strip()
        if self.allowed_calling_aets and calling not in self.allowed_calling_aets:
            return Rejection.calling_aet(calling)
        if self.require_called_aet and called != self.ae_title:
            return Rejection.called_aet(called, self.ae_title)
        return None
