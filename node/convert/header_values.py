"""Whether a header value is valid for its VR, and the repaired value when it can be repaired.

Dates and times must be real calendar values in DICOM form (old ACR-NEMA dotted forms are converted), strings fit
their VR's length, code strings are upper case, and control characters go.
"""

from __future__ import annotations

import datetime
import math
import re

from pydicom.valuerep import format_number_as_ds

from node.convert.uids import is_uid

_MAX_CHARS = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "PN": 64}

_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"([01]\d|2[0-3])([0-5]\d((60|[0-5]\d)(\.\d{1,6})?)?)?")
_DATE_TIME = re.compile(
    r"\d{4}((0[1-9]|1[0-2])(([0-2]\d|3[01])(([01]\d|2[0-3])([0-5]\d((60|[0-5]\d)"
    r"(\.\d{1,6})?)?)?)?)?)?([+-][01]\d[0-5]\d)?"
)
_AGE = re.compile(r"\d{3}[DWMY]")
_CODE = re.compile(r"[A-Z0-9 _]*")
_DECIMAL = re.compile(r"[+-]?(\d+|\d+\.\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1a\x1c-\x1f\x7f-\x9f]")  # all but TAB and ESC, C1 too
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f-\x9f]")  # ST, LT, UT also keep LF, FF, CR


def check_value(vr: str, value: str) -> tuple[str | None, str]:
    """(value to write or None when unusable, why it changed or '' when it did not) for one string value."""
    text = _TEXT_CONTROL.sub("", value) if vr in ("ST", "LT", "UT") else _CONTROL.sub("", value)
    reason = "holds control characters" if text != value else ""
    if vr == "DA":
        if re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", text):  # the ACR-NEMA form
            text, reason = text.replace(".", ""), "is an old-style date"
        if not _DATE.fullmatch(text) or not _is_calendar_date(text):
            return None, "is not a DICOM date"
    elif vr == "TM":
        if re.fullmatch(r"\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?", text):  # the ACR-NEMA form
            text, reason = text.replace(":", ""), "is an old-style time"
        if not _TIME.fullmatch(text):
            return None, "is not a DICOM time"
    elif vr == "DT":
        if not _DATE_TIME.fullmatch(text) or (len(text) >= 8 and not _is_calendar_date(text[:8])):
            return None, "is not a DICOM date-time"
    elif vr == "AS":
        if not _AGE.fullmatch(text):
            return None, "is not a DICOM age"
    elif vr == "UI":
        if not is_uid(text):
            return None, "is not a valid UID"
    elif vr == "DS":
        text = text.strip()
        if not _DECIMAL.fullmatch(text) or not math.isfinite(float(text)):
            return None, "is not a decimal number"
        if len(text) > 16:
            text, reason = format_number_as_ds(float(text)), "has more than 16 characters"
    elif vr == "IS":
        text = text.strip()
        if not _INTEGER.fullmatch(text) or not -(2**31) <= int(text) < 2**31:
            return None, "is not a 32-bit integer"
    elif vr == "CS":
        if text.upper() != text and _CODE.fullmatch(text.upper()):
            text, reason = text.upper(), "is not upper case"
        if not _CODE.fullmatch(text):
            return None, "holds characters a code string cannot"
    if vr == "PN":
        groups = text.split("=")
        if len(groups) > 3 or any(g.count("^") > 4 for g in groups):
            return None, "is not a person name (more than 3 groups or 5 components)"
        if any(len(g) > _MAX_CHARS["PN"] for g in groups):
            text, reason = "=".join(g[: _MAX_CHARS["PN"]] for g in groups), "has a group longer than 64 characters"
    elif vr in _MAX_CHARS and len(text) > _MAX_CHARS[vr]:
        text, reason = text[: _MAX_CHARS[vr]].rstrip(), f"is longer than {_MAX_CHARS[vr]} characters ({vr})"
    return text, reason


def _is_calendar_date(text: str) -> bool:
    try:
        datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return False
    return True
