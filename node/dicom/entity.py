"""The node's pynetdicom application entity: what it accepts, and the network limits of ``[node]``.

Storage of every SOP class in the transfer syntaxes of :data:`TRANSFER_SYNTAXES`, and Verification. Admission
(AE titles, association limit) is not pynetdicom's business here: :mod:`node.dicom.admission` decides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.dicom.admission import disable_pynetdicom_admission

if TYPE_CHECKING:
    from node.config.sections import NodeConfig

__all__ = ["MAX_PDU_BYTES", "TRANSFER_SYNTAXES", "NetworkSettings", "application_entity"]

#: Transfer syntaxes accepted for storage; instances are stored exactly as sent, in the syntax the peer chose.
TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,  # 1.2.840.10008.1.2.4.50
    JPEGExtended12Bit,  # .51
    JPEGLossless,  # .57
    JPEGLosslessSV1,  # .70
    JPEGLSLossless,  # .80
    JPEGLSNearLossless,  # .81
    JPEG2000Lossless,  # .90
    JPEG2000,  # .91
    RLELossless,  # 1.2.840.10008.1.2.5
)

#: The largest PDU the node accepts unless ``[node] max_pdu`` says otherwise. Senders split a data set into PDUs
#: of at most this size, and pynetdicom's per-PDU decoding costs CPU: 1 MiB instead of its 16 KiB default cuts
#: the receiver's CPU per instance by a fifth (bench/bench_ingest.py) for 1 MiB of buffer per association.
MAX_PDU_BYTES = 1 << 20


@dataclass(frozen=True)
class NetworkSettings:
    """``[node] max_pdu`` (0: no limit) and the ACSE, DIMSE and network (idle) timeouts in seconds."""

    max_pdu: int = MAX_PDU_BYTES
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0

    @classmethod
    def from_config(cls, node: NodeConfig) -> NetworkSettings:
        return cls(node.max_pdu, node.acse_timeout, node.dimse_timeout, node.network_timeout)

    def apply(self, ae: Any) -> None:
        """Set on ``ae``: new associations get them (pynetdicom passes the timeouts to open ones too)."""
        ae.maximum_pdu_size = self.max_pdu
        ae.acse_timeout = self.acse_timeout
        ae.dimse_timeout = self.dimse_timeout
        ae.network_timeout = self.network_timeout


def application_entity(ae_title: str, network: NetworkSettings) -> Any:
    """A pynetdicom AE accepting storage and verification, admitting everyone (the gate decides)."""
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        # pynetdicom's standard handlers build a log message for every PDU and DIMSE message, logged or not;
        # with its logger at WARNING (node.logs) that is a tenth of the receiver's CPU for nothing.
        _config.LOG_HANDLER_LEVEL = "none"
    ae = AE(ae_title=ae_title)
    disable_pynetdicom_admission(ae)
    network.apply(ae)
    # supported_contexts has no 128-context limit (that applies to what a requestor proposes).
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, list(TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
    return ae
