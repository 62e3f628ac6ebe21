"""Label tables: what the user and the segmentation tool say about each label value.

Sources, each read by one function here: a JSON label table (``--labels``, a ``<stem>.json`` sidecar, the site's
default table) in the simple form or as dcmqi metadata (``segmentAttributes``), the SeriesInstanceUID a sidecar
names, and the label names TotalSegmentator embeds in its NIfTI header. What they say becomes a
:class:`LabelEntry`; :mod:`node.convert.anatomy` fills in what they leave out.
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# DICOM's SNOMED RT -> SNOMED CT table; private in name, but it is what pydicom's own Code.__eq__ uses.
from pydicom.sr._snomed_dict import mapping as _SNOMED_MAPPING
from pydicom.sr.coding import Code

from node.convert.uids import is_uid
from node.errors import LabelError

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]

_HEX_COLOUR = re.compile(r"^#([0-9a-fA-F]{6})$")
_SIDECAR_UID_KEYS = ("series_instance_uid", "SeriesInstanceUID")
_SIMPLE_ENTRY_KEYS = {
    "name",
    "color",
    "colour",
    "description",
    "category",
    "type",
    "modifier",
    "region",
    "region_modifier",
}


@dataclass(frozen=True)
class LabelEntry:
    """What a label table says about one label value; anything it leaves out is ``None``."""

    name: str
    color: RGB | None = None
    category: Code | None = None
    type: Code | None = None
    #: Usually laterality (SCT 7771000 Left / 24028007 Right).
    modifier: Code | None = None
    description: str | None = None
    #: Anatomic region, for types that are not anatomy themselves (a cyst *of the kidney*).
    region: Code | None = None
    region_modifier: Code | None = None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key '{key}' appears twice")
        result[key] = value
    return result


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LabelError(f"{path.name}: not UTF-8 text ({exc.reason}); save the label table as UTF-8 JSON") from exc
    except OSError as exc:
        raise LabelError(f"{path.name}: cannot be read ({exc.strerror or exc}); check the path") from exc
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise LabelError(
            f"{path.name}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); fix the label table"
        ) from exc
    except ValueError as exc:
        raise LabelError(f"{path.name}: {exc}; each key may appear once") from exc


def _is_sidecar(data: Mapping[str, Any]) -> bool:
    return any(key in data for key in (*_SIDECAR_UID_KEYS, "labels"))


def read_label_table(path: Path) -> dict[int, LabelEntry]:
    """Label names, colours and codes from a JSON label table.

    Accepted forms: ``{"1": "liver"}``; ``{"1": {"name": "liver", "color": [r, g, b]}}`` (``colour`` and
    ``"#rrggbb"`` too); a list of names (labels 1, 2, ...); a dcmqi metadata JSON (``segmentAttributes``);
    a segnode sidecar ``{"series_instance_uid": ..., "labels": <any of the above>}``, whose other keys are
    ignored (a sidecar without ``labels`` yields ``{}``).

    Raises
    ------
    LabelError
        One line naming the file and what is wrong with it.
    """
    data = _load_json(path)
    if isinstance(data, dict) and "segmentAttributes" in data:
        return _from_dcmqi(path, data)
    if isinstance(data, dict) and _is_sidecar(data):
        stray = sorted(key for key in data if re.fullmatch(r"\s*[0-9]+\s*", key))
        if stray:
            raise LabelError(
                f"{path.name}: label key(s) {', '.join(stray)} sit beside the series UID; put the"
                ' label table under "labels"'
            )
        labels = data.get("labels")
        if labels is None:
            return {}
        if isinstance(labels, dict) and "segmentAttributes" in labels:
            return _from_dcmqi(path, labels)
        return _from_simple(path, labels)
    return _from_simple(path, data)


def read_sidecar_series_uid(path: Path) -> str | None:
    """The SeriesInstanceUID a sidecar names (key ``series_instance_uid`` or ``SeriesInstanceUID``), if any."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise LabelError(f"{path.name}: a sidecar must be a JSON object, not a {_json_type(data)}")
    for key in _SIDECAR_UID_KEYS:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not is_uid(value.strip(), strict=False):
            raise LabelError(
                f"{path.name}: '{key}' is not a DICOM UID ({value!r}); use digits and dots, at most 64 characters"
            )
        return value.strip()
    return None


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _label_key(path: Path, key: Any) -> int | None:
    """The label value of a table key; None for 0 (background, which tables often list and we ignore)."""
    text = str(key).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise LabelError(
            f"{path.name}: label key {key!r} is not a non-negative integer; key the table by label"
            ' value, e.g. {"1": "liver"}'
        )
    value = int(text)
    return value if value > 0 else None


def _put(path: Path, table: dict[int, LabelEntry], label: int, entry: LabelEntry) -> None:
    if label in table:
        raise LabelError(f"{path.name}: label {label} is described twice; keep one entry per label")
    table[label] = entry


def _from_simple(path: Path, data: Any) -> dict[int, LabelEntry]:
    if isinstance(data, list):
        items: Iterable[tuple[Any, Any]] = ((str(i), v) for i, v in enumerate(data, start=1))
    elif isinstance(data, dict):
        items = data.items()
    else:
        raise LabelError(f"{path.name}: expected a JSON object mapping label values to names, got a {_json_type(data)}")
    table: dict[int, LabelEntry] = {}
    for key, value in items:
        label = _label_key(path, key)
        if label is None:
            continue
        _put(path, table, label, _simple_entry(path, label, value))
    return table


def _simple_entry(path: Path, label: int, value: Any) -> LabelEntry:
    if isinstance(value, str):
        return LabelEntry(name=_name(path, label, value))
    if not isinstance(value, dict):
        raise LabelError(
            f'{path.name}: label {label} must be a name or an object with "name", got a {_json_type(value)}'
        )
    unknown = sorted(set(value) - _SIMPLE_ENTRY_KEYS)
    if unknown:
        raise LabelError(
            f"{path.name}: label {label} has unknown key(s) {', '.join(unknown)}; allowed:"
            f" {', '.join(sorted(_SIMPLE_ENTRY_KEYS))}"
        )
    if "color" in value and "colour" in value:
        raise LabelError(f'{path.name}: label {label} gives both "color" and "colour"; keep one')
    colour = value.get("color", value.get("colour"))
    where = f"label {label}"
    return LabelEntry(
        name=_name(path, label, value.get("name")),
        color=_colour(path, where, colour) if colour is not None else None,
        category=_optional_code(path, where, "category", value.get("category")),
        type=_optional_code(path, where, "type", value.get("type")),
        modifier=_optional_code(path, where, "modifier", value.get("modifier")),
        description=_optional_text(path, where, "description", value.get("description")),
        region=_optional_code(path, where, "region", value.get("region")),
        region_modifier=_optional_code(path, where, "region_modifier", value.get("region_modifier")),
    )


def _name(path: Path, label: int, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LabelError(f"{path.name}: label {label} has no name (need a non-empty string)")
    return value.strip()


def _optional_text(path: Path, where: str, key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise LabelError(f'{path.name}: {where} "{key}" must be a string, got a {_json_type(value)}')
    return value.strip() or None


def rgb_tuple(value: Any) -> RGB:
    return int(value[0]), int(value[1]), int(value[2])


def _colour(path: Path, where: str, value: Any) -> RGB:
    if isinstance(value, str):
        match = _HEX_COLOUR.match(value.strip())
        if match is None:
            raise LabelError(f'{path.name}: {where} colour {value!r} is not "#rrggbb" or [r, g, b]')
        digits = match.group(1)
        return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)
    if (
        not isinstance(value, list)
        or len(value) != 3
        or any(isinstance(c, bool) or not isinstance(c, int | float) for c in value)
    ):
        raise LabelError(f"{path.name}: {where} colour {value!r} is not [r, g, b] with three numbers 0-255")
    if any(not float(c).is_integer() or not 0 <= c <= 255 for c in value):
        raise LabelError(f"{path.name}: {where} colour {value!r} is out of range; use whole numbers 0-255")
    return rgb_tuple(value)


def _optional_code(path: Path, where: str, key: str, value: Any) -> Code | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise LabelError(
            f"{path.name}: {where} {key} must be an object with CodeValue, CodingSchemeDesignator"
            f" and CodeMeaning, got a {_json_type(value)}"
        )
    parts = []
    for field_name in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning"):
        part = value.get(field_name)
        if not isinstance(part, str | int) or isinstance(part, bool) or not str(part).strip():
            raise LabelError(
                f"{path.name}: {where} {key} lacks {field_name}; give CodeValue, CodingSchemeDesignator and CodeMeaning"
            )
        parts.append(str(part).strip())
    code_value, scheme, meaning = parts
    if scheme == "SRT":
        # SNOMED RT identifiers are retired in DICOM; the standard's mapping gives their SNOMED CT concept.
        mapped = _SNOMED_MAPPING["SRT"].get(code_value)
        if mapped is not None:
            return Code(value=mapped, scheme_designator="SCT", meaning=meaning)
        log.warning(
            "%s: %s %s uses retired SNOMED RT code %s with no SNOMED CT mapping; kept as given",
            path.name,
            where,
            key,
            code_value,
        )
    return Code(value=code_value, scheme_designator=scheme, meaning=meaning)


def _from_dcmqi(path: Path, data: Mapping[str, Any]) -> dict[int, LabelEntry]:
    groups = data.get("segmentAttributes")
    if not isinstance(groups, list):
        raise LabelError(
            f'{path.name}: "segmentAttributes" must be a list (of lists) of segments, got a {_json_type(groups)}'
        )
    # dcmqi nests one list per input file; segnode reads one label map, so all entries share one label space.
    flat: list[Any] = []
    for group in groups:
        flat.extend(group if isinstance(group, list) else [group])
    table: dict[int, LabelEntry] = {}
    for position, item in enumerate(flat, start=1):
        if not isinstance(item, dict):
            raise LabelError(
                f'{path.name}: segment {position} in "segmentAttributes" must be an object, got a {_json_type(item)}'
            )
        raw_label = item.get("labelID")
        if isinstance(raw_label, bool) or not isinstance(raw_label, int | str):
            raise LabelError(f'{path.name}: segment {position} in "segmentAttributes" has no integer labelID')
        label = _label_key(path, raw_label)
        if label is None:
            raise LabelError(f"{path.name}: segment {position} has labelID 0, which is background; use 1 or more")
        where = f"labelID {label}"
        colour = item.get("recommendedDisplayRGBValue")
        # dcmqi itself labels a segment by its SegmentDescription when SegmentLabel is absent.
        name = item.get("SegmentLabel") or item.get("SegmentDescription")
        entry = LabelEntry(
            name=name.strip() if isinstance(name, str) and name.strip() else f"Segment {label}",
            color=_colour(path, where, colour) if colour is not None else None,
            category=_optional_code(
                path, where, "SegmentedPropertyCategoryCodeSequence", item.get("SegmentedPropertyCategoryCodeSequence")
            ),
            type=_optional_code(
                path, where, "SegmentedPropertyTypeCodeSequence", item.get("SegmentedPropertyTypeCodeSequence")
            ),
            modifier=_optional_code(
                path,
                where,
                "SegmentedPropertyTypeModifierCodeSequence",
                item.get("SegmentedPropertyTypeModifierCodeSequence"),
            ),
            description=_optional_text(path, where, "SegmentDescription", item.get("SegmentDescription")),
            region=_optional_code(path, where, "AnatomicRegionSequence", item.get("AnatomicRegionSequence")),
            region_modifier=_optional_code(
                path, where, "AnatomicRegionModifierSequence", item.get("AnatomicRegionModifierSequence")
            ),
        )
        _put(path, table, label, entry)
    return table


def names_from_nifti_header(header: Any) -> dict[int, str]:
    """Label names embedded in a NIfTI header extension, as TotalSegmentator writes them; ``{}`` if none.

    TotalSegmentator (``nifti_ext_header.add_label_map_to_nifti``) appends a ``Nifti1Extension`` with code 0
    whose content is Caret/Workbench-style XML: ``<CaretExtension>…<VolumeInformation><LabelTable>`` holding
    ``<Label Key="5" Red=… Green=… Blue=… Alpha="1"><![CDATA[liver]]></Label>`` per label. Connectome Workbench
    label volumes (code 30) use the same table. Its colours are a fixed cycle of 12, so only names are taken.
    """
    extensions = getattr(header, "extensions", None) or []
    names: dict[int, str] = {}
    for extension in extensions:
        # nibabel >= 5.3 exposes the raw bytes as ``content``; older versions return them from get_content().
        raw = getattr(extension, "content", None)
        if not isinstance(raw, bytes):
            raw = extension.get_content()
        if not isinstance(raw, bytes):
            continue  # a decoded extension (DICOM, AFNI) is not a label table
        raw = raw.rstrip(b"\x00 \t\r\n")
        if b"<LabelTable" not in raw:
            continue
        if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
            # Entity expansion is the XML bomb vector; label tables never need it.
            log.warning("NIfTI header label table declares a DTD; ignored")
            continue
        try:
            root = ElementTree.fromstring(raw)
        except ElementTree.ParseError as exc:
            log.warning("NIfTI header label table is not well-formed XML (%s); label names ignored", exc)
            continue
        for element in root.iter("Label"):
            key = (element.get("Key") or "").strip()
            name = (element.text or "").strip()
            if re.fullmatch(r"[0-9]+", key) and int(key) > 0 and name:
                names.setdefault(int(key), name)
    return names
