"""Segment metadata for DICOM SEG: names, SNOMED CT codes, colours and the label tables that carry them.

A label value becomes a :class:`SegmentSpec` from, in order of preference: a label table the user gave
(``--labels``, a ``<stem>.json`` sidecar, a dcmqi metadata JSON), the names TotalSegmentator embeds in its
NIfTI header, and the known-anatomy table ``node/data/anatomy.json`` (every TotalSegmentator ``total`` class
with SNOMED CT codes, laterality and a display colour). What no source knows gets a generic anatomical code
and a palette colour, so every label still becomes a valid segment.
"""

from __future__ import annotations

import colorsys
import functools
import json
import logging
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import highdicom as hd

# DICOM's SNOMED RT -> SNOMED CT table; private in name, but it is what pydicom's own Code.__eq__ uses.
from pydicom.sr._snomed_dict import mapping as _SNOMED_MAPPING
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

import node
from node.errors import LabelError

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]

#: CID 7150 "Anatomical Structure": the category of every known structure, and the generic fallback.
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
#: A label nothing tells us about is still an anatomical structure as far as the SEG can say; using the same
#: concept as type claims nothing more specific, which is what DICOM-aware viewers show as "unknown anatomy".
GENERIC_CATEGORY = ANATOMICAL_STRUCTURE
GENERIC_TYPE = ANATOMICAL_STRUCTURE
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")

#: DICOM limits: SegmentLabel is LO (64 chars), SegmentDescription is ST (1024 chars).
_LO_MAX = 64
_ST_MAX = 1024
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_HEX_COLOUR = re.compile(r"^#([0-9a-fA-F]{6})$")
#: Spellings that other tools use for the same token as TotalSegmentator.
_TOKEN_SYNONYMS = {"vertebra": "vertebrae", "clavicle": "clavicula"}
_SIDECAR_UID_KEYS = ("series_instance_uid", "SeriesInstanceUID")
_SIMPLE_ENTRY_KEYS = {"name", "color", "colour", "description", "category", "type", "modifier", "region",
                      "region_modifier"}


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


@dataclass(frozen=True)
class SegmentSpec:
    """Everything needed for one highdicom ``SegmentDescription``."""

    label: int
    name: str
    category: Code
    type: Code
    modifier: Code | None
    #: Recommended display colour, RGB 0-255 (always filled: known colour, else a palette colour).
    color: RGB
    description: str | None = None
    region: Code | None = None
    region_modifier: Code | None = None

    def __post_init__(self) -> None:
        if len(self.color) != 3 or any(not 0 <= c <= 255 for c in self.color):
            raise ValueError(f"segment {self.label} '{self.name}': colour {self.color} is not RGB 0-255")


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm a SEG names as its source (AlgorithmIdentificationSequence)."""

    name: str = "segnode"
    version: str = node.__version__
    #: CID 7162 algorithm family; segmentations from AI tools are the common case.
    family: Code = field(default_factory=lambda: codes.cid7162.ArtificialIntelligence)
    source: str | None = None

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        """The highdicom sequence for this algorithm."""
        return hd.AlgorithmIdentificationSequence(name=self.name[:_LO_MAX], family=self.family,
                                                  version=self.version[:_LO_MAX], source=self.source)


@dataclass(frozen=True)
class KnownStructure:
    """One row of the known-anatomy table."""

    key: str
    category: Code
    type: Code
    modifier: Code | None
    color: RGB
    region: Code | None = None
    region_modifier: Code | None = None


# -- known anatomy --------------------------------------------------------------------------------------------


def normalise_name(name: str) -> str:
    """A structure name as the known-anatomy table spells its keys.

    >>> normalise_name("  Kidney-Left ")
    'kidney_left'
    >>> normalise_name("Vertebra L1")
    'vertebrae_l1'
    """
    text = re.sub(r"[\s\-./,]+", "_", name.strip().lower())
    tokens = [_TOKEN_SYNONYMS.get(t, t) for t in text.split("_") if t]
    return "_".join(tokens)


def _token_bag(normalised: str) -> tuple[str, ...]:
    # Word order varies between tools ("left kidney", "kidney_left"); the multiset of words does not.
    return tuple(sorted(normalised.split("_")))


@dataclass(frozen=True)
class _Anatomy:
    structures: dict[str, KnownStructure]
    aliases: dict[str, str]
    bags: dict[tuple[str, ...], str]


def _code(pair: list[str]) -> Code:
    return Code(value=pair[0], scheme_designator="SCT", meaning=pair[1])


@functools.cache
def _anatomy() -> _Anatomy:
    """The known-anatomy table, read once from the package data."""
    text = resources.files("node").joinpath("data/anatomy.json").read_text(encoding="utf-8")
    data = json.loads(text)
    categories = {key: _code(pair) for key, pair in data["categories"].items()}
    laterality = {key: _code(pair) for key, pair in data["laterality"].items()}

    def modifier(value: str | list[str] | None) -> Code | None:
        if value is None:
            return None
        return laterality[value] if isinstance(value, str) else _code(value)

    structures: dict[str, KnownStructure] = {}
    for key, row in data["structures"].items():
        structures[normalise_name(key)] = KnownStructure(
            key=key, category=categories[row["category"]], type=_code(row["type"]),
            modifier=modifier(row.get("modifier")), color=_rgb_tuple(row["color"]),
            region=_code(row["region"]) if "region" in row else None,
            region_modifier=modifier(row.get("region_modifier")))
    aliases = {normalise_name(alias): normalise_name(target) for alias, target in data["aliases"].items()}
    bags: dict[tuple[str, ...], str] = {}
    ambiguous: set[tuple[str, ...]] = set()
    for key in structures:
        bag = _token_bag(key)
        if bag in bags:
            ambiguous.add(bag)
        bags[bag] = key
    for bag in ambiguous:
        del bags[bag]
    return _Anatomy(structures=structures, aliases=aliases, bags=bags)


def known_structure(name: str) -> KnownStructure | None:
    """The known-anatomy row for ``name`` (case, spaces, hyphens and word order do not matter), or None."""
    anatomy = _anatomy()
    key = normalise_name(name)
    if not key:
        return None
    key = anatomy.aliases.get(key, key)
    if key in anatomy.structures:
        return anatomy.structures[key]
    by_bag = anatomy.bags.get(_token_bag(key))
    return anatomy.structures[by_bag] if by_bag is not None else None


def known_structure_names() -> list[str]:
    """The names the known-anatomy table holds, as written there (TotalSegmentator spelling)."""
    return [s.key for s in _anatomy().structures.values()]


def anatomy_for_name(name: str) -> tuple[Code, Code, Code | None, RGB | None] | None:
    """(category, type, modifier, colour) of a known structure, or None if the name is not known."""
    known = known_structure(name)
    if known is None:
        return None
    return known.category, known.type, known.modifier, known.color


def palette_color(label: int) -> RGB:
    """A deterministic colour for ``label``: golden-ratio hue steps keep neighbouring labels apart.

    >>> palette_color(1) == palette_color(1) != palette_color(2)
    True
    """
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


# -- segment specs --------------------------------------------------------------------------------------------


def segment_specs(labels: Iterable[int], table: Mapping[int, LabelEntry] | None = None) -> list[SegmentSpec]:
    """One :class:`SegmentSpec` per label value, in the order given (duplicates dropped).

    Name from ``table``, else ``"Segment N"``. Codes from ``table`` when it gives a type (dcmqi JSON), else
    from the known-anatomy table by name, else the generic anatomical code. Colour from ``table``, else the
    known structure's colour, else :func:`palette_color`.
    """
    table = table or {}
    specs: list[SegmentSpec] = []
    seen: set[int] = set()
    for raw in labels:
        label = int(raw)
        if label < 1:
            raise LabelError(f"label value {label} cannot be a segment (0 is background, negatives are invalid)")
        if label in seen:
            continue
        seen.add(label)
        entry = table.get(label)
        name = entry.name.strip() if entry is not None and entry.name.strip() else f"Segment {label}"
        known = known_structure(entry.name) if entry is not None else None
        if entry is not None and entry.type is not None:
            category, type_, modifier = entry.category or GENERIC_CATEGORY, entry.type, entry.modifier
            region, region_modifier = entry.region, entry.region_modifier
        elif known is not None:
            category, type_, modifier = known.category, known.type, known.modifier
            region, region_modifier = known.region, known.region_modifier
        else:
            category, type_, modifier, region, region_modifier = GENERIC_CATEGORY, GENERIC_TYPE, None, None, None
        color = (entry.color if entry is not None else None) or (known.color if known else None)
        specs.append(SegmentSpec(label=label, name=name, category=category, type=type_, modifier=modifier,
                                 color=color or palette_color(label),
                                 description=entry.description if entry is not None else None,
                                 region=region, region_modifier=region_modifier))
    return specs


def _dicom_text(text: str, limit: int) -> str:
    # LO/ST forbid control characters and (LO) the backslash, which DICOM reads as a value separator.
    cleaned = "".join(" " if ord(ch) < 32 or ch == "\x7f" else ch for ch in text).replace("\\", "/")
    return cleaned.strip()[:limit]


def segment_description(spec: SegmentSpec, number: int, algorithm: AlgorithmInfo) -> hd.seg.SegmentDescription:
    """The highdicom segment description of ``spec`` as segment ``number`` (1-based) of an automatic SEG."""
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=_dicom_text(spec.name, _LO_MAX) or f"Segment {spec.label}",
        segmented_property_category=spec.category,
        segmented_property_type=spec.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm.identification(),
        anatomic_regions=[spec.region] if spec.region is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(*spec.color),
    )
    # highdicom has no parameter for modifiers; DICOM nests them in the item they modify.
    if spec.modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(spec.modifier)]
    if spec.region is not None and spec.region_modifier is not None:
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
            hd.sr.CodedConcept.from_code(spec.region_modifier)]
    if spec.description:
        description.SegmentDescription = _dicom_text(spec.description, _ST_MAX)
    return description


# -- label tables ---------------------------------------------------------------------------------------------


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
        raise LabelError(f"{path.name}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno});"
                         " fix the label table") from exc
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
            raise LabelError(f"{path.name}: label key(s) {', '.join(stray)} sit beside the series UID; put the"
                             " label table under \"labels\"")
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
        if not isinstance(value, str) or not _UID.match(value.strip()) or len(value.strip()) > 64:
            raise LabelError(f"{path.name}: '{key}' is not a DICOM UID ({value!r}); use digits and dots, at most"
                             " 64 characters")
        return value.strip()
    return None


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _label_key(path: Path, key: Any) -> int | None:
    """The label value of a table key; None for 0 (background, which tables often list and we ignore)."""
    text = str(key).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise LabelError(f"{path.name}: label key {key!r} is not a non-negative integer; key the table by label"
                         " value, e.g. {\"1\": \"liver\"}")
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
        raise LabelError(f"{path.name}: expected a JSON object mapping label values to names, got a"
                         f" {_json_type(data)}")
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
        raise LabelError(f"{path.name}: label {label} must be a name or an object with \"name\", got a"
                         f" {_json_type(value)}")
    unknown = sorted(set(value) - _SIMPLE_ENTRY_KEYS)
    if unknown:
        raise LabelError(f"{path.name}: label {label} has unknown key(s) {', '.join(unknown)}; allowed:"
                         f" {', '.join(sorted(_SIMPLE_ENTRY_KEYS))}")
    if "color" in value and "colour" in value:
        raise LabelError(f"{path.name}: label {label} gives both \"color\" and \"colour\"; keep one")
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
        raise LabelError(f"{path.name}: {where} \"{key}\" must be a string, got a {_json_type(value)}")
    return value.strip() or None


def _rgb_tuple(value: Any) -> RGB:
    return int(value[0]), int(value[1]), int(value[2])


def _colour(path: Path, where: str, value: Any) -> RGB:
    if isinstance(value, str):
        match = _HEX_COLOUR.match(value.strip())
        if match is None:
            raise LabelError(f"{path.name}: {where} colour {value!r} is not \"#rrggbb\" or [r, g, b]")
        digits = match.group(1)
        return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)
    if (not isinstance(value, list) or len(value) != 3
            or any(isinstance(c, bool) or not isinstance(c, int | float) for c in value)):
        raise LabelError(f"{path.name}: {where} colour {value!r} is not [r, g, b] with three numbers 0-255")
    if any(not float(c).is_integer() or not 0 <= c <= 255 for c in value):
        raise LabelError(f"{path.name}: {where} colour {value!r} is out of range; use whole numbers 0-255")
    return _rgb_tuple(value)


def _optional_code(path: Path, where: str, key: str, value: Any) -> Code | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise LabelError(f"{path.name}: {where} {key} must be an object with CodeValue, CodingSchemeDesignator"
                         f" and CodeMeaning, got a {_json_type(value)}")
    parts = []
    for field_name in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning"):
        part = value.get(field_name)
        if not isinstance(part, str | int) or isinstance(part, bool) or not str(part).strip():
            raise LabelError(f"{path.name}: {where} {key} lacks {field_name}; give CodeValue,"
                             " CodingSchemeDesignator and CodeMeaning")
        parts.append(str(part).strip())
    code_value, scheme, meaning = parts
    if scheme == "SRT":
        # SNOMED RT identifiers are retired in DICOM; the standard's mapping gives their SNOMED CT concept.
        mapped = _SNOMED_MAPPING["SRT"].get(code_value)
        if mapped is not None:
            return Code(value=mapped, scheme_designator="SCT", meaning=meaning)
        log.warning("%s: %s %s uses retired SNOMED RT code %s with no SNOMED CT mapping; kept as given",
                    path.name, where, key, code_value)
    return Code(value=code_value, scheme_designator=scheme, meaning=meaning)


def _from_dcmqi(path: Path, data: Mapping[str, Any]) -> dict[int, LabelEntry]:
    groups = data.get("segmentAttributes")
    if not isinstance(groups, list):
        raise LabelError(f"{path.name}: \"segmentAttributes\" must be a list (of lists) of segments, got a"
                         f" {_json_type(groups)}")
    # dcmqi nests one list per input file; segnode reads one label map, so all entries share one label space.
    flat: list[Any] = []
    for group in groups:
        flat.extend(group if isinstance(group, list) else [group])
    table: dict[int, LabelEntry] = {}
    for position, item in enumerate(flat, start=1):
        if not isinstance(item, dict):
            raise LabelError(f"{path.name}: segment {position} in \"segmentAttributes\" must be an object, got a"
                             f" {_json_type(item)}")
        raw_label = item.get("labelID")
        if isinstance(raw_label, bool) or not isinstance(raw_label, int | str):
            raise LabelError(f"{path.name}: segment {position} in \"segmentAttributes\" has no integer labelID")
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
            category=_optional_code(path, where, "SegmentedPropertyCategoryCodeSequence",
                                    item.get("SegmentedPropertyCategoryCodeSequence")),
            type=_optional_code(path, where, "SegmentedPropertyTypeCodeSequence",
                                item.get("SegmentedPropertyTypeCodeSequence")),
            modifier=_optional_code(path, where, "SegmentedPropertyTypeModifierCodeSequence",
                                    item.get("SegmentedPropertyTypeModifierCodeSequence")),
            description=_optional_text(path, where, "SegmentDescription", item.get("SegmentDescription")),
            region=_optional_code(path, where, "AnatomicRegionSequence", item.get("AnatomicRegionSequence")),
            region_modifier=_optional_code(path, where, "AnatomicRegionModifierSequence",
                                           item.get("AnatomicRegionModifierSequence")),
        )
        _put(path, table, label, entry)
    return table


# -- names embedded in NIfTI headers --------------------------------------------------------------------------


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
