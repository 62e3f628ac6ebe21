"""The one place where a C-STORE failure becomes a DICOM status (cf. pynetdicom's ``attempt``).

A full disk (or a locked/full database) is ``0xA700`` Out of Resources, so the sender retries later (logged at
debug when the ``[disk]`` guard refused it: the guard logs the disk filling once); an instance
that cannot be parsed or lacks usable UIDs is ``0xC000`` Cannot Understand, with a one-line reason logged and sent
as Error Comment; anything unexpected is ``0x0110`` Processing Failure, logged with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pydicom.dataset import Dataset

from node.diskspace import DiskFullError
from node.errors import InputError, TransientError

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES_COMMENT = "out of resources, retry later"


@dataclass
class StoreOutcome:
    """The status a C-STORE handler returns; :func:`store_status` sets it when the handler fails."""

    status: int = STATUS_SUCCESS
    comment: str = ""

    def response(self) -> int | Dataset:
        if not self.comment:
            return self.status
        reply = Dataset()
        reply.Status = self.status
        # LO: at most 64 characters, no backslash or control characters.
        reply.ErrorComment = "".join(c if c.isprintable() and c != "\\" else " " for c in self.comment)[:64]
        return reply


@contextmanager
def store_status(what: str) -> Iterator[StoreOutcome]:
    """The one place where a C-STORE failure becomes a DICOM status (cf. pynetdicom's ``attempt``).

    Parameters
    ----------
    what
        Names the instance and peer in the log line (no patient data).
    """
    outcome = StoreOutcome()
    try:
        yield outcome
    except DiskFullError as exc:
        # The [disk] guard: it logs the disk filling (and emptying) once; a line per refused instance is noise.
        log.debug("%s: refused, out of resources: %s", what, exc)
        outcome.status, outcome.comment = STATUS_OUT_OF_RESOURCES, OUT_OF_RESOURCES_COMMENT
    except TransientError as exc:
        # Disk or quota full, database locked or full: nothing wrong with the instance, so ask for a retry.
        log.error("%s: refused, out of resources: %s", what, exc)
        outcome.status, outcome.comment = STATUS_OUT_OF_RESOURCES, OUT_OF_RESOURCES_COMMENT
    except InputError as exc:
        log.warning("%s: refused, cannot understand: %s", what, exc)
        outcome.status, outcome.comment = STATUS_CANNOT_UNDERSTAND, str(exc)
    except Exception:
        log.exception("%s: processing failure", what)
        outcome.status, outcome.comment = STATUS_PROCESSING_FAILURE, "processing failure, see the node's log"
