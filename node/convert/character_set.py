"""The Specific Character Set a SEG can be written in, from the one its source declared (or failed to)."""

from __future__ import annotations

import re
from functools import lru_cache

from highdicom.enum import SpecificCharacterSetValues
from highdicom.valuerep import _check_specific_character_set
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue


def repair_character_set(ds: Dataset, copied: list[DataElement], notices: list[str]) -> None:
    """Make Specific Character Set one highdicom accepts and pydicom can encode the copied text with.

    Empty means the default repertoire: the attribute goes. Spelling variants ('ISO-IR 100', 'ISO_IR100')
    and a lone code-extension term are mapped to the defined term. Anything else goes too when all copied
    text is ASCII, and becomes ISO_IR 192 (UTF-8, which encodes any text pydicom decoded) when it is not.
    """
    present = "SpecificCharacterSet" in ds
    raw = ds.get("SpecificCharacterSet") or ""
    terms = [str(t).strip() for t in (raw if isinstance(raw, MultiValue) else [raw])]
    shown = "\\".join(terms)
    if not any(terms):
        if present:
            del ds.SpecificCharacterSet
        if not all(is_ascii(element) for element in copied):
            # Text outside the default repertoire and no character set to read it by: write what pydicom decoded
            # in UTF-8, which holds any of it, rather than bytes no reader can interpret.
            ds.SpecificCharacterSet = "ISO_IR 192"
            notices.append(
                "source header: text outside the default repertoire without a SpecificCharacterSet;"
                " the SEG is written in 'ISO_IR 192' (UTF-8)"
            )
        elif present:
            notices.append("source header: SpecificCharacterSet is empty; left out of the SEG (default repertoire)")
        return
    mapped = _mapped_character_set(terms)
    if mapped == terms:
        return
    if mapped is None:
        if all(is_ascii(element) for element in copied):
            del ds.SpecificCharacterSet
            notices.append(
                f"source header: SpecificCharacterSet {shown!r} is not a character set highdicom"
                " accepts; left out of the SEG (the copied text is ASCII)"
            )
        else:
            ds.SpecificCharacterSet = "ISO_IR 192"
            notices.append(
                f"source header: SpecificCharacterSet {shown!r} is not a character set highdicom"
                " accepts; the SEG is written in 'ISO_IR 192' (UTF-8)"
            )
    elif not mapped:
        del ds.SpecificCharacterSet
        notices.append(
            f"source header: SpecificCharacterSet {shown!r} names the default repertoire; left out of the SEG"
        )
    else:
        ds.SpecificCharacterSet = mapped if len(mapped) > 1 else mapped[0]
        written = "\\".join(mapped)
        notices.append(
            f"source header: SpecificCharacterSet {shown!r} is not a defined term; written {written!r} in the SEG"
        )


@lru_cache(maxsize=1)
def _defined_terms() -> dict[str, str]:
    """Defined terms by their letters and digits only ('ISOIR100' -> 'ISO_IR 100'), plus plain 'UTF-8'."""
    terms = {re.sub(r"[^A-Z0-9]", "", e.value): e.value for e in SpecificCharacterSetValues}
    terms.update({"UTF8": "ISO_IR 192", "ISOIR6": "ISO_IR 6"})
    return terms


def _mapped_character_set(terms: list[str]) -> list[str] | None:
    """The terms as highdicom accepts them ([] for the default repertoire), or None when there is no such thing."""
    defined = _defined_terms()
    mapped = [defined.get(re.sub(r"[^A-Z0-9]", "", t.upper())) for t in terms]
    if len(mapped) > 1 and not terms[0]:
        mapped[0] = "ISO 2022 IR 6"  # an empty first value of several is the default repertoire, extended
    if any(m is None for m in mapped):
        return None
    result = [m for m in mapped if m is not None]
    if len(result) == 1 and result[0].startswith("ISO 2022 IR "):  # a lone code extension extends nothing
        result = [result[0].replace("ISO 2022 IR ", "ISO_IR ")]
    if result == ["ISO_IR 6"]:
        return []
    try:
        _check_specific_character_set(result if len(result) > 1 else result[0])
    except ValueError:
        return None
    return result


def is_ascii(element: DataElement) -> bool:
    """Whether no text in the element (and its items, at any depth) needs more than ASCII."""
    if element.VR == "SQ":
        return all(is_ascii(child) for item in element.value for child in item)
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    return all(str(v).isascii() for v in values if isinstance(v, str) or element.VR == "PN")
