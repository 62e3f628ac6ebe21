"""The ``dicom`` destination kind: a DICOM peer (a PACS) that SEGs are C-STOREd to.

Its ``[[destinations]]`` block is :class:`DicomDestination`; the destination made from it is
:class:`~node.destinations.dimse_scu.StoreSCU` (``send`` is C-STORE, ``check`` is C-ECHO), loaded only when the
first one is created, so that reading a configuration does not import pynetdicom. Answers are classified in
:mod:`node.destinations.dimse_status`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from node import destinations
from node.checks import ae_title_problem, checked, host_problem, port_problem
from node.destinations.results import Outcome, SendResult, backoff_delay

__all__ = ["DicomDestination", "Outcome", "SendResult", "backoff_delay", "echo", "send_files"]


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

    def describe(self) -> str:
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port})"


def create_store_scu(config: DicomDestination, *, calling_ae: str, timeout: float) -> destinations.Destination:
    """The factory of the ``dicom`` kind."""
    from node.destinations.dimse_scu import StoreSCU  # pynetdicom loads with the first DICOM destination

    return StoreSCU(config, calling_ae=calling_ae, timeout=timeout)


destinations.register(DicomDestination.kind, create_store_scu, DicomDestination)


# -- compatibility: the calls made before destinations were created through the registry ------------------------


def send_files(dest: destinations.DestinationConfig, paths: Sequence[Path], *, calling_ae: str = "SEGNODE",
               timeout: float = 30) -> list[SendResult]:
    """Deprecated: ``destinations.create(dest, calling_ae=..., timeout=...).send(paths)``, for any kind."""
    return destinations.create(dest, calling_ae=calling_ae, timeout=timeout).send(paths)


def echo(dest: DicomDestination, *, calling_ae: str = "SEGNODE", timeout: float = 30) -> str | None:
    """Deprecated: ``destinations.create(dest, calling_ae=..., timeout=...).check()``, for any kind."""
    return destinations.create(dest, calling_ae=calling_ae, timeout=timeout).check()
