"""The ``dicom`` destination kind: a DICOM peer (a PACS) that SEGs are C-STOREd to.

Its ``[[destinations]]`` block is :class:`DicomDestination`; the destination made from it is
:class:`~node.destinations.dimse_scu.StoreSCU` (``send`` is C-STORE, ``check`` is C-ECHO), loaded only when the
first one is created, so that reading a configuration does not import pynetdicom. Answers are classified in
:mod:`node.destinations.dimse_status`. A block with ``tls = true`` connects with DICOM TLS (PS3.15 B.1), verifying
the PACS against the node's ``[tls] ca_certificates`` and host name (:mod:`node.destinations.dimse_connect`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from node import destinations
from node.checks import ae_title_problem, checked, host_problem, port_problem
from node.destinations.results import Outcome, SendResult, backoff_delay

if TYPE_CHECKING:
    from node.config.sections import TlsConfig

__all__ = ["DicomDestination", "Outcome", "SendResult", "backoff_delay"]


@dataclass(frozen=True)
class DicomDestination:
    """A ``[[destinations]]`` block with ``kind = "dicom"`` (the default when it has ae_title, host and port)."""

    kind: ClassVar[str] = "dicom"
    #: How messages about this kind's keys name it.
    title: ClassVar[str] = "DICOM"

    name: str
    #: The peer's AE title (the called AE title).
    ae_title: str = checked(check=ae_title_problem)
    host: str = checked(check=host_problem)
    port: int = checked(check=port_problem)
    #: Connect with DICOM TLS, verifying the server against ``[tls] ca_certificates``.
    tls: bool = False

    def describe(self) -> str:
        """``pacs (PACS@10.0.0.5:104, TLS)``: the block as the CLI, the StoreSCU and its send reasons name it."""
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port}{', TLS' if self.tls else ''})"


def create_store_scu(
    config: DicomDestination, *, calling_ae: str, timeout: float, tls: TlsConfig | None = None
) -> destinations.Destination:
    """The factory of the ``dicom`` kind; ``tls`` (the node's ``[tls]``) is what a ``tls = true`` block needs."""
    from node.destinations.dimse_scu import StoreSCU  # pynetdicom loads with the first DICOM destination

    return StoreSCU(config, calling_ae=calling_ae, timeout=timeout, tls=tls)


destinations.register(DicomDestination.kind, create_store_scu, DicomDestination)
