"""What bench_load.py checks after a load: storescu's own account of each association, and every stored byte.

A storescu run with ``-v`` prints one ``Received Store Response`` line per instance it sent and, when the
association was refused, the A-ASSOCIATE-RJ's result, source and reason (:func:`read_storescu_log`). What was sent
is fingerprinted once (:func:`fingerprints`): the SHA-256 of each file's data set, the bytes after its file meta,
which a receiver that stores "as sent" must keep identical. :func:`check_stored` compares a receiver's files
against those fingerprints, so a lost, duplicated or altered instance is named.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom.dsutils import split_dataset

#: storescu -v, once per C-STORE response: ``I: Received Store Response (Success)``.
_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")
#: DCMTK's A-ASSOCIATE-RJ report: ``Result: Rejected Transient, Source: Service Provider (...)`` then ``Reason: ...``.
_REJECTED = re.compile(r"Result:\s*(Rejected \w+),\s*Source:\s*(.+?)\s*$", re.MULTILINE)
_REASON = re.compile(r"Reason:\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class StorescuAccount:
    """One storescu association as its log tells it."""

    log: Path
    returncode: int
    #: How many C-STORE responses of each kind: {"Success": 200} (DCMTK's wording of the status).
    responses: dict[str, int]
    #: (result, source, reason) in DCMTK's words when the association was rejected, else None.
    rejection: tuple[str, str, str] | None

    @property
    def acknowledged(self) -> int:
        """Instances the receiver answered with success (or a warning: stored all the same)."""
        return sum(n for status, n in self.responses.items() if status == "Success" or status.startswith("Warning"))

    @property
    def refused(self) -> int:
        """Instances answered with a failure status."""
        return sum(self.responses.values()) - self.acknowledged

    @property
    def transient_rejection(self) -> bool:
        return self.rejection is not None and self.rejection[0] == "Rejected Transient"


def read_storescu_log(log: Path, returncode: int) -> StorescuAccount:
    text = log.read_text(errors="replace")
    responses: dict[str, int] = {}
    for status in _RESPONSE.findall(text):
        key = status.split(":")[0].strip() if status.startswith(("Warning", "Error", "Refused", "Failure")) else status
        responses[key] = responses.get(key, 0) + 1
    rejection = None
    rejected = _REJECTED.search(text)
    if rejected is not None:
        reason = _REASON.search(text, rejected.end())
        rejection = (rejected.group(1), rejected.group(2), reason.group(1) if reason else "?")
    return StorescuAccount(log, returncode, responses, rejection)


def dataset_digest(path: Path) -> tuple[str, str]:
    """(SOP Instance UID from the file meta, SHA-256 of the data set after the file meta) of a Part 10 file."""
    meta = read_file_meta_info(path)
    _, offset = split_dataset(path)
    with path.open("rb") as handle:
        handle.seek(offset)
        digest = hashlib.sha256(handle.read()).hexdigest()
    return str(meta.MediaStorageSOPInstanceUID), digest


def fingerprints(files: Iterable[Path]) -> dict[str, str]:
    """{SOP Instance UID: data set digest} of the files to send."""
    return dict(dataset_digest(path) for path in files)


@dataclass
class StoredCheck:
    """A receiver's files against what was sent."""

    expected: int
    stored: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.unexpected or self.unreadable)

    def describe(self) -> str:
        parts = [f"{self.stored} of {self.expected} stored intact"]
        for name, items in (
            ("missing", self.missing),
            ("corrupt", self.corrupt),
            ("not sent", self.unexpected),
            ("unreadable", self.unreadable),
        ):
            if items:
                parts.append(f"{len(items)} {name} (e.g. {items[0]})")
        return ", ".join(parts)


def check_stored(files: Iterable[Path], sent: Mapping[str, str]) -> StoredCheck:
    """Compare the files a receiver holds with ``sent`` ({SOP Instance UID: digest}); a second copy is corrupt."""
    check = StoredCheck(expected=len(sent))
    seen: set[str] = set()
    for path in files:
        try:
            sop_uid, digest = dataset_digest(path)
        except (InvalidDicomError, OSError, AttributeError, ValueError):
            check.unreadable.append(path)
            continue
        if sop_uid not in sent:
            check.unexpected.append(sop_uid)
        elif sent[sop_uid] != digest or sop_uid in seen:
            check.corrupt.append(sop_uid)
        else:
            check.stored += 1
        seen.add(sop_uid)
    check.missing = sorted(set(sent) - seen)
    return check
