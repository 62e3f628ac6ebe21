"""What a DICOM UID looks like (PS3.5 9.1): one definition for every place that checks one.

>>> is_uid("1.2.840.10008.1.1"), is_uid("1.02.3"), is_uid("1.02.3", strict=False), is_uid("../etc")
(True, False, True, False)
"""

from __future__ import annotations

import re

#: The longest UID DICOM allows.
UID_MAX_CHARS = 64
#: Digits and dots, components without leading zeros.
_STRICT = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
#: Some senders write components with leading zeros; such UIDs are still safe as file names and keys.
_LENIENT = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_uid(text: str, *, strict: bool = True) -> bool:
    """Whether ``text`` (exactly, no padding) is a DICOM UID; ``strict=False`` tolerates leading zeros."""
    pattern = _STRICT if strict else _LENIENT
    return len(text) <= UID_MAX_CHARS and pattern.fullmatch(text) is not None
