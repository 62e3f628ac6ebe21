"""Known anatomy: SNOMED CT codes, laterality and display colours of the structures segmentation tools name.

``node/data/anatomy.json`` holds every TotalSegmentator ``total`` class (plus aliases other tools use);
:func:`known_structure` finds a row by name. :func:`segment_specs` turns label values and their
:class:`~node.convert.label_tables.LabelEntry` into :class:`SegmentSpec`: codes the table gives win, else the
known structure's, else a generic anatomical code and a palette colour, so every label becomes a valid segment.
"""

from __future__ import annotations

import colorsys
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources

from pydicom.sr.coding import Code

from node.convert.label_tables import RGB, LabelEntry, rgb_tuple
from node.errors import LabelError

#: CID 7150 "Anatomical Structure": the category of every known structure, and the generic fallback.
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
#: A label nothing tells us about is still an anatomical structure as far as the SEG can say; using the same
#: concept as type claims nothing more specific, which is what DICOM-aware viewers show as "unknown anatomy".
GENERIC_CATEGORY = ANATOMICAL_STRUCTURE
GENERIC_TYPE = ANATOMICAL_STRUCTURE
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")
#: Spellings that other tools use for the same token as TotalSegmentator.
_TOKEN_SYNONYMS = {"vertebra": "vertebrae", "clavicle": "clavicula"}


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
class KnownStructure:
    """One row of the known-anatomy table."""

    key: str
    category: Code
    type: Code
    modifier: Code | None
    color: RGB
    region: Code | None = None
    region_modifier: Code | None = None


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
            key=key,
            category=categories[row["category"]],
            type=_code(row["type"]),
            modifier=modifier(row.get("modifier")),
            color=rgb_tuple(row["color"]),
            region=_code(row["region"]) if "region" in row else None,
            region_modifier=modifier(row.get("region_modifier")),
        )
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
        specs.append(
            SegmentSpec(
                label=label,
                name=name,
                category=category,
                type=type_,
                modifier=modifier,
                color=color or palette_color(label),
                description=entry.description if entry is not None else None,
                region=region,
                region_modifier=region_modifier,
            )
        )
    return specs
