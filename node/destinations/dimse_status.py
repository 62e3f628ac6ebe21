"""How a DICOM peer's answer to C-STORE is classified, and how SOP classes are named in reasons.

A C-STORE response status (DICOM PS3.4 Annex B.2.3 and PS3.7 Annex C):

======================  =============================================================  ========
status                  meaning                                                        outcome
======================  =============================================================  ========
0x0000                  Success                                                        SENT
0xB000                  Warning: coercion of data elements                             SENT
0xB006                  Warning: elements discarded                                    SENT
0xB007                  Warning: data set does not match SOP class                     SENT
other 0xBxxx, 0x0001    Warning (other)                                                SENT
0x0111                  Duplicate SOP instance: the peer already holds it              SENT
0xA7xx                  Refused: out of resources                                      RETRY
0x0213                  Refused: resource limitation                                   RETRY
0x0110                  Processing failure (peer-side fault, may pass)                 RETRY
0xFE00                  Cancel                                                         RETRY
0xA9xx                  Error: data set does not match SOP class                       FAILED
0xCxxx                  Error: cannot understand                                       FAILED
0x0122                  Refused: SOP class not supported                               FAILED
0x0124                  Refused: not authorized                                        FAILED
any other failure                                                                      FAILED
======================  =============================================================  ========

Outside the status: a presentation context the peer rejects is FAILED ("destination does not accept ...");
no connection, a rejected or aborted association, a timeout or no response is RETRY. If the association drops
mid-batch, files already acknowledged stay as they were and the rest are RETRY.
"""

from __future__ import annotations

from pydicom.uid import UID

from node.destinations.results import Outcome

VERIFICATION = "1.2.840.10008.1.1"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
#: Storage SOP classes newer than pydicom's UID dictionary, so that reasons name them instead of a bare UID.
_EXTRA_SOP_CLASS_NAMES = {
    LABEL_MAP_SEGMENTATION_STORAGE: "Label Map Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.8": "Height Map Segmentation Storage",
}


def sop_class_name(uid: str) -> str:
    """The SOP class's name for messages, e.g. ``Segmentation Storage``; the UID itself if unknown.

    >>> sop_class_name("1.2.840.10008.5.1.4.1.1.66.7")
    'Label Map Segmentation Storage'
    """
    if uid in _EXTRA_SOP_CLASS_NAMES:
        return _EXTRA_SOP_CLASS_NAMES[uid]
    return str(UID(uid).name)


def classify_status(status: int) -> tuple[Outcome, str]:
    """The outcome of one C-STORE response status and a short phrase for the reason (see the module's table).

    >>> classify_status(0xA700)
    (<Outcome.RETRY: 'retry'>, 'out of resources (0xA700)')
    >>> classify_status(0xB007)[0].value
    'sent'
    """
    code = f"0x{status:04X}"
    if status == 0x0000:
        return Outcome.SENT, "stored"
    if status == 0xB000:
        return Outcome.SENT, f"stored with a warning: data elements coerced ({code})"
    if status == 0xB006:
        return Outcome.SENT, f"stored with a warning: elements discarded ({code})"
    if status == 0xB007:
        return Outcome.SENT, f"stored with a warning: data set does not match SOP class ({code})"
    if status & 0xF000 == 0xB000 or status in (0x0001, 0x0107, 0x0116):
        return Outcome.SENT, f"stored with a warning ({code})"
    if status == 0x0111:
        return Outcome.SENT, f"the destination already holds this instance ({code})"
    if status & 0xFF00 == 0xA700:
        return Outcome.RETRY, f"out of resources ({code})"
    if status == 0x0213:
        return Outcome.RETRY, f"resource limitation ({code})"
    if status == 0x0110:
        return Outcome.RETRY, f"processing failure ({code})"
    if status == 0xFE00:
        return Outcome.RETRY, f"cancelled ({code})"
    if status & 0xFF00 == 0xA900:
        return Outcome.FAILED, f"data set does not match SOP class ({code})"
    if status & 0xF000 == 0xC000:
        return Outcome.FAILED, f"cannot understand the data set ({code})"
    if status == 0x0122:
        return Outcome.FAILED, f"SOP class not supported ({code})"
    if status == 0x0124:
        return Outcome.FAILED, f"not authorized ({code})"
    return Outcome.FAILED, f"failure status {code}"
