"""Label tables, known anatomy, TotalSegmentator header names and segment descriptions (label_tables, anatomy)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import synthetic as syn
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from synthetic import nib

import node
from node.convert.anatomy import (
    GENERIC_CATEGORY,
    GENERIC_TYPE,
    LEFT,
    RIGHT,
    SegmentSpec,
    anatomy_for_name,
    known_structure,
    known_structure_names,
    palette_color,
    segment_specs,
)
from node.convert.label_tables import LabelEntry, names_from_nifti_header, read_label_table, read_sidecar_series_uid
from node.convert.seg import AlgorithmInfo, segment_description
from node.errors import InputError, LabelError

SERIES_UID = "1.2.826.0.1.3680043.8.498.12345"


def write_json(path: Path, content: Any) -> Path:
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def code_dict(value: str, scheme: str, meaning: str) -> dict[str, str]:
    return {"CodeValue": value, "CodingSchemeDesignator": scheme, "CodeMeaning": meaning}


def dcmqi_metadata() -> dict[str, Any]:
    """A dcmqi ``itkimage2segimage`` metadata JSON with two segments (one with laterality)."""
    return {
        "ContentCreatorName": "Reader1",
        "ClinicalTrialSeriesID": "Session1",
        "SeriesDescription": "Segmentation",
        "segmentAttributes": [
            [
                {
                    "labelID": 1,
                    "SegmentLabel": "Tumour",
                    "SegmentDescription": "enhancing part",
                    "SegmentAlgorithmType": "SEMIAUTOMATIC",
                    "SegmentedPropertyCategoryCodeSequence": code_dict(
                        "49755003", "SCT", "Morphologically Abnormal Structure"
                    ),
                    "SegmentedPropertyTypeCodeSequence": code_dict("108369006", "SCT", "Neoplasm"),
                    "AnatomicRegionSequence": code_dict("64033007", "SCT", "Kidney"),
                    "AnatomicRegionModifierSequence": code_dict("24028007", "SCT", "Right"),
                    "recommendedDisplayRGBValue": [255, 0, 200],
                },
                {
                    "labelID": 2,
                    "SegmentLabel": "Left kidney",
                    "SegmentedPropertyCategoryCodeSequence": code_dict("91723000", "SCT", "Anatomical Structure"),
                    "SegmentedPropertyTypeCodeSequence": code_dict("64033007", "SCT", "Kidney"),
                    "SegmentedPropertyTypeModifierCodeSequence": code_dict("7771000", "SCT", "Left"),
                },
            ]
        ],
    }


# -- label table formats ----------------------------------------------------------------------------------------


def test_plain_name_table(tmp_path: Path) -> None:
    table = read_label_table(write_json(tmp_path / "labels.json", {"1": "liver", "2": "spleen", "10": "aorta"}))
    assert table == {1: LabelEntry(name="liver"), 2: LabelEntry(name="spleen"), 10: LabelEntry(name="aorta")}


def test_object_table_with_colour_spellings(tmp_path: Path) -> None:
    content = {
        "1": {"name": "liver", "color": [10, 20, 30]},
        "2": {"name": "spleen", "colour": "#FF8000", "description": "whole organ"},
        "3": {"name": "  lesion  "},
        "0": "background",
    }
    table = read_label_table(write_json(tmp_path / "labels.json", content))
    assert table[1] == LabelEntry(name="liver", color=(10, 20, 30))
    assert table[2] == LabelEntry(name="spleen", color=(255, 128, 0), description="whole organ")
    assert table[3] == LabelEntry(name="lesion")
    assert 0 not in table, "background must not become a segment"


def test_object_table_with_codes(tmp_path: Path) -> None:
    content = {
        "4": {
            "name": "cyst",
            "category": code_dict("49755003", "SCT", "Morphologically Abnormal Structure"),
            "type": code_dict("367643001", "SCT", "Cyst"),
            "region": code_dict("64033007", "SCT", "Kidney"),
            "region_modifier": code_dict("7771000", "SCT", "Left"),
        }
    }
    entry = read_label_table(write_json(tmp_path / "labels.json", content))[4]
    assert entry.type == Code("367643001", "SCT", "Cyst")
    assert entry.region == Code("64033007", "SCT", "Kidney")
    assert entry.region_modifier == LEFT


def test_list_of_names_counts_from_one(tmp_path: Path) -> None:
    table = read_label_table(write_json(tmp_path / "labels.json", ["liver", "spleen"]))
    assert {k: v.name for k, v in table.items()} == {1: "liver", 2: "spleen"}


def test_dcmqi_metadata(tmp_path: Path) -> None:
    table = read_label_table(write_json(tmp_path / "meta.json", dcmqi_metadata()))
    assert sorted(table) == [1, 2]
    tumour, kidney = table[1], table[2]
    assert tumour.name == "Tumour"
    assert tumour.description == "enhancing part"
    assert tumour.category == Code("49755003", "SCT", "Morphologically Abnormal Structure")
    assert tumour.type == Code("108369006", "SCT", "Neoplasm")
    assert tumour.modifier is None
    assert tumour.region == Code("64033007", "SCT", "Kidney")
    assert tumour.region_modifier == RIGHT
    assert tumour.color == (255, 0, 200)
    assert kidney.modifier == LEFT
    assert kidney.color is None


def test_dcmqi_retired_snomed_rt_codes_become_snomed_ct(tmp_path: Path) -> None:
    meta = {
        "segmentAttributes": [
            [
                {
                    "labelID": 3,
                    "SegmentLabel": "Liver",
                    "SegmentedPropertyCategoryCodeSequence": code_dict("T-D0050", "SRT", "Tissue"),
                    "SegmentedPropertyTypeCodeSequence": code_dict("T-62000", "SRT", "Liver"),
                }
            ]
        ]
    }
    entry = read_label_table(write_json(tmp_path / "meta.json", meta))[3]
    # Code.__eq__ maps SRT itself, so compare the stored fields: the SEG must carry SCT.
    assert entry.category is not None and entry.type is not None
    assert (entry.category.value, entry.category.scheme_designator) == ("85756007", "SCT")
    assert (entry.type.value, entry.type.scheme_designator, entry.type.meaning) == ("10200004", "SCT", "Liver")


def test_sidecar_with_plain_labels(tmp_path: Path) -> None:
    path = write_json(tmp_path / "seg.json", {"series_instance_uid": SERIES_UID, "labels": {"1": "liver"}})
    assert read_label_table(path) == {1: LabelEntry(name="liver")}
    assert read_sidecar_series_uid(path) == SERIES_UID


def test_sidecar_with_dcmqi_labels_and_dicom_keyword(tmp_path: Path) -> None:
    path = write_json(tmp_path / "seg.json", {"SeriesInstanceUID": SERIES_UID, "labels": dcmqi_metadata()})
    table = read_label_table(path)
    assert table[2].modifier == LEFT
    assert read_sidecar_series_uid(path) == SERIES_UID


def test_sidecar_without_labels_and_with_other_keys(tmp_path: Path) -> None:
    # An export sidecar copied into the inbox names the series and carries geometry, but no labels.
    path = write_json(tmp_path / "seg.json", {"SeriesInstanceUID": SERIES_UID, "shape": [4, 4, 4], "Modality": "CT"})
    assert read_label_table(path) == {}
    assert read_sidecar_series_uid(path) == SERIES_UID


def test_sidecar_series_uid_absent_or_malformed(tmp_path: Path) -> None:
    assert read_sidecar_series_uid(write_json(tmp_path / "a.json", {"labels": {"1": "liver"}})) is None
    with pytest.raises(LabelError, match=r"b\.json: 'series_instance_uid' is not a DICOM UID"):
        read_sidecar_series_uid(write_json(tmp_path / "b.json", {"series_instance_uid": "1.2.abc"}))
    with pytest.raises(LabelError, match="must be a JSON object"):
        read_sidecar_series_uid(write_json(tmp_path / "c.json", ["1.2.3"]))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"liver": "1"}', "label key 'liver' is not a non-negative integer"),
        ('{"-1": "liver"}', "label key '-1' is not a non-negative integer"),
        ('{"1": "liver", "1": "spleen"}', "key '1' appears twice"),
        ('{"1": "liver", "01": "spleen"}', "label 1 is described twice"),
        ('{"1": {"name": "liver", "color": [0, 300, 0]}}', "out of range"),
        ('{"1": {"name": "liver", "color": [0, 0.5, 0]}}', "out of range"),
        ('{"1": {"name": "liver", "color": [0, 0]}}', "is not \\[r, g, b\\]"),
        ('{"1": {"name": "liver", "colour": "#12345"}}', 'is not "#rrggbb"'),
        ('{"1": {"name": "liver", "color": [1, 2, 3], "colour": [1, 2, 3]}}', "both"),
        ('{"1": {"name": "liver", "colr": [1, 2, 3]}}', "unknown key\\(s\\) colr"),
        ('{"1": {"color": [1, 2, 3]}}', "label 1 has no name"),
        ('{"1": ""}', "label 1 has no name"),
        ('{"1": 5}', "must be a name or an object"),
        ('"liver"', "expected a JSON object"),
        ('{"1": {"name": "x", "type": {"CodeValue": "1", "CodingSchemeDesignator": "SCT"}}}', "lacks CodeMeaning"),
        ('{"segmentAttributes": {"labelID": 1}}', "must be a list"),
        ('{"segmentAttributes": [[{"SegmentLabel": "liver"}]]}', "has no integer labelID"),
        ('{"segmentAttributes": [[{"labelID": 0}]]}', "labelID 0, which is background"),
        ('{"segmentAttributes": [[{"labelID": 1}], [{"labelID": 1}]]}', "label 1 is described twice"),
        ('{"segmentAttributes": [[{"labelID": 1, "recommendedDisplayRGBValue": [1, 2, 256]}]]}', "out of range"),
        ('{"series_instance_uid": "1.2.3", "labels": "liver"}', "expected a JSON object"),
        ('{"series_instance_uid": "1.2.3", "1": "liver"}', 'put the label table under "labels"'),
    ],
)
def test_malformed_tables_fail_with_one_line_naming_the_file(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad_labels.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LabelError, match=problem) as caught:
        read_label_table(path)
    message = str(caught.value)
    assert message.startswith("bad_labels.json: ")
    assert "\n" not in message
    assert isinstance(caught.value, InputError)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match=r"missing\.json: cannot be read"):
        read_label_table(tmp_path / "missing.json")
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"1": "Leber \xfc"}'.encode("latin-1"))
    with pytest.raises(LabelError, match=r"latin1\.json: not UTF-8"):
        read_label_table(latin1)


# -- TotalSegmentator NIfTI header names ----------------------------------------------------------------------


def add_totalsegmentator_label_table(image: nib.Nifti1Image, names: dict[int, str]) -> None:
    """Embed ``names`` the way TotalSegmentator's ``add_label_map_to_nifti`` does.

    It appends one ``Nifti1Extension`` with code 0 whose content is CaretExtension XML: a ``LabelTable`` of
    ``<Label Key=.. Red=.. Green=.. Blue=.. Alpha="1"><![CDATA[name]]></Label>`` lines (colours from a fixed
    cycle of 12, as fractions of 1), then ``StudyMetaDataLinkSet`` and ``VolumeType`` Label, padded with spaces.
    """
    cycle = [
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        (255, 255, 0),
        (255, 0, 255),
        (0, 255, 255),
        (255, 128, 0),
        (255, 0, 128),
        (128, 255, 128),
        (0, 128, 255),
        (128, 128, 128),
        (185, 170, 155),
    ]
    lines = []
    for key, name in names.items():
        red, green, blue = cycle[key % len(cycle)]
        lines.append(
            f'<Label Key="{key}" Red="{red / 255}" Green="{green / 255}" Blue="{blue / 255}" Alpha="1">'
            f"<![CDATA[{name}]]></Label>\n"
        )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  <Date><![CDATA[2013-07-14T05:45:09]]></Date>'
        '   <VolumeInformation Index="0">   <LabelTable>'
        + "\n"
        + "".join(lines)
        + "\n"
        + "  </LabelTable>  <StudyMetaDataLinkSet>  </StudyMetaDataLinkSet>  <VolumeType><![CDATA[Label]]>"
        "</VolumeType>   </VolumeInformation></CaretExtension>" + "\n              "
    )
    image.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml.encode("utf-8")))


def saved_and_loaded(image: nib.Nifti1Image, path: Path) -> nib.Nifti1Image:
    nib.save(image, path)
    loaded = nib.load(path)
    assert isinstance(loaded, nib.Nifti1Image)
    return loaded


def label_image() -> nib.Nifti1Image:
    return nib.Nifti1Image(np.zeros((4, 4, 3), dtype=np.uint8), np.diag([1.5, 1.5, 3.0, 1.0]))


def test_totalsegmentator_header_names(tmp_path: Path) -> None:
    names = {i: name for i, name in enumerate(syn.TOTALSEG_TOTAL, start=1)}
    names[118] = "odd <name> & more"  # CDATA keeps markup characters literal
    image = label_image()
    add_totalsegmentator_label_table(image, names)
    loaded = saved_and_loaded(image, tmp_path / "segmentations.nii.gz")
    assert names_from_nifti_header(loaded.header) == names


def test_totalsegmentator_header_single_label(tmp_path: Path) -> None:
    image = label_image()
    add_totalsegmentator_label_table(image, {1: "liver"})
    assert names_from_nifti_header(saved_and_loaded(image, tmp_path / "liver.nii.gz").header) == {1: "liver"}


def test_header_without_label_table(tmp_path: Path) -> None:
    plain = saved_and_loaded(label_image(), tmp_path / "plain.nii.gz")
    assert names_from_nifti_header(plain.header) == {}
    other = label_image()
    other.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"just a comment"))
    assert names_from_nifti_header(saved_and_loaded(other, tmp_path / "comment.nii.gz").header) == {}


@pytest.mark.parametrize(
    "xml",
    [
        b"<CaretExtension><LabelTable><Label Key='1'>liver</Label>",  # truncated
        b"<!DOCTYPE x [<!ENTITY a 'liver'>]><CaretExtension><LabelTable><Label Key='1'>&a;</Label></LabelTable>"
        b"</CaretExtension>",
    ],
)
def test_malformed_or_dtd_label_tables_are_ignored(tmp_path: Path, xml: bytes) -> None:
    image = label_image()
    image.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml))
    assert names_from_nifti_header(saved_and_loaded(image, tmp_path / "odd.nii.gz").header) == {}


# -- known anatomy --------------------------------------------------------------------------------------------


def test_total_task_has_117_classes() -> None:
    assert len(syn.TOTALSEG_TOTAL) == 117 == len(set(syn.TOTALSEG_TOTAL))


@pytest.mark.parametrize("name", syn.TOTALSEG_TOTAL)
def test_every_totalsegmentator_class_has_snomed_ct_codes(name: str) -> None:
    known = known_structure(name)
    assert known is not None, f"{name} is not in node/data/anatomy.json"
    assert known.key == name
    coded = [known.category, known.type, known.modifier, known.region, known.region_modifier]
    for code in (c for c in coded if c is not None):
        assert code.scheme_designator == "SCT"
        assert code.value.isdigit(), f"{name}: {code.value} is not a SNOMED CT concept id"
        assert code.meaning.strip()
    assert known.category in (
        Code("91723000", "SCT", "Anatomical Structure"),
        Code("49755003", "SCT", "Morphologically Abnormal Structure"),
    )
    assert all(0 <= c <= 255 for c in known.color)


def test_totalsegmentator_classes_have_distinct_codes() -> None:
    signatures: dict[tuple[str | None, ...], str] = {}
    for name in syn.TOTALSEG_TOTAL:
        k = known_structure(name)
        assert k is not None
        signature = tuple(c.value if c is not None else None for c in (k.type, k.modifier, k.region, k.region_modifier))
        assert signature not in signatures, f"{name} codes the same as {signatures.get(signature)}"
        signatures[signature] = name


@pytest.mark.parametrize("name", [n for n in syn.TOTALSEG_TOTAL if "_left" in n or "_right" in n])
def test_sided_structures_carry_their_laterality(name: str) -> None:
    known = known_structure(name)
    assert known is not None
    side = "left" if "_left" in name else "right"
    side_value = LEFT.value if side == "left" else RIGHT.value
    other_value = RIGHT.value if side == "left" else LEFT.value
    modifiers = {code.value for code in (known.modifier, known.region_modifier) if code is not None}
    # Laterality sits on the type, on the region (a cyst of the left kidney), or in a sided concept.
    assert side_value in modifiers or (not modifiers and side in known.type.meaning.lower())
    assert other_value not in modifiers


def test_left_and_right_kidney_codes() -> None:
    left, right = anatomy_for_name("kidney_left"), anatomy_for_name("kidney_right")
    assert left is not None and right is not None
    kidney = Code("64033007", "SCT", "Kidney")
    assert left[:3] == (GENERIC_CATEGORY, kidney, Code("7771000", "SCT", "Left"))
    assert right[:3] == (GENERIC_CATEGORY, kidney, Code("24028007", "SCT", "Right"))
    assert left[3] != right[3], "left and right should be told apart by colour too"
    spleen = anatomy_for_name("spleen")
    assert spleen is not None and spleen[2] is None


def test_kidney_cyst_is_abnormal_structure_in_the_kidney() -> None:
    cyst = known_structure("kidney_cyst_left")
    assert cyst is not None
    assert cyst.category == Code("49755003", "SCT", "Morphologically Abnormal Structure")
    assert cyst.type == Code("367643001", "SCT", "Cyst")
    assert (cyst.region, cyst.region_modifier, cyst.modifier) == (Code("64033007", "SCT", "Kidney"), LEFT, None)


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("Kidney Left", "kidney_left"),
        ("left kidney", "kidney_left"),
        ("KIDNEY-LEFT", "kidney_left"),
        ("  liver ", "liver"),
        ("vertebra_L1", "vertebrae_L1"),
        ("Vertebrae-l1", "vertebrae_L1"),
        ("left rib 3", "rib_left_3"),
        ("Gall Bladder", "gallbladder"),
        ("clavicle right", "clavicula_right"),
        ("IVC", "inferior_vena_cava"),
    ],
)
def test_lookup_normalises_spelling(spelling: str, key: str) -> None:
    known = known_structure(spelling)
    assert known is not None and known.key == key


def test_unknown_names_are_not_guessed() -> None:
    assert known_structure("mystery blob") is None
    assert known_structure("") is None
    assert known_structure("kidney") is not None and known_structure("kidney").key == "kidney"  # type: ignore[union-attr]
    assert anatomy_for_name("rib_left_13") is None


def test_known_names_are_all_sct_coded() -> None:
    names = known_structure_names()
    assert set(syn.TOTALSEG_TOTAL) <= set(names)
    for name in names:
        known = known_structure(name)
        assert known is not None and known.key == name, f"{name} does not find itself"
        assert known.type.scheme_designator == "SCT"


# -- segment specs ------------------------------------------------------------------------------------------


def test_specs_from_names_use_known_codes_and_colours() -> None:
    specs = segment_specs([5, 3], {5: LabelEntry("liver"), 3: LabelEntry("Kidney Left")})
    assert [s.label for s in specs] == [5, 3]
    liver, kidney = specs
    assert (liver.name, liver.type.value, liver.modifier) == ("liver", "10200004", None)
    assert liver.color == anatomy_for_name("liver")[3]  # type: ignore[index]
    assert kidney.name == "Kidney Left"
    assert (kidney.type.value, kidney.modifier) == ("64033007", LEFT)


def test_unknown_and_unnamed_labels_get_generic_code_and_palette() -> None:
    unknown, unnamed = segment_specs([7, 9], {7: LabelEntry("mystery blob")})
    assert (unknown.name, unknown.category, unknown.type, unknown.modifier) == (
        "mystery blob",
        GENERIC_CATEGORY,
        GENERIC_TYPE,
        None,
    )
    assert (GENERIC_CATEGORY.value, GENERIC_CATEGORY.meaning) == ("91723000", "Anatomical Structure")
    assert unknown.color == palette_color(7)
    assert unnamed.name == "Segment 9"
    assert unnamed.type == GENERIC_TYPE
    assert unnamed.color == palette_color(9) != palette_color(7)


def test_table_codes_and_colours_win_over_known_anatomy(tmp_path: Path) -> None:
    table = read_label_table(write_json(tmp_path / "meta.json", dcmqi_metadata()))
    table[3] = LabelEntry(name="liver", color=(1, 2, 3))
    tumour, kidney, liver = segment_specs([1, 2, 3], table)
    assert tumour.type == Code("108369006", "SCT", "Neoplasm")
    assert (tumour.region, tumour.region_modifier) == (Code("64033007", "SCT", "Kidney"), RIGHT)
    assert tumour.description == "enhancing part"
    assert tumour.color == (255, 0, 200)
    assert kidney.modifier == LEFT
    # dcmqi gave no colour: the known kidney colour fills in (the name "Left kidney" is known anatomy).
    assert kidney.color == anatomy_for_name("kidney_left")[3]  # type: ignore[index]
    assert liver.type.value == "10200004" and liver.color == (1, 2, 3)


def test_specs_reject_background_and_drop_duplicates() -> None:
    assert [s.label for s in segment_specs([2, 2, 1])] == [2, 1]
    with pytest.raises(LabelError, match="label value 0"):
        segment_specs([0, 1])


def test_palette_is_deterministic_and_valid() -> None:
    colours = [palette_color(label) for label in range(1, 200)]
    assert colours == [palette_color(label) for label in range(1, 200)]
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)
    assert len(set(colours[:20])) == 20


# -- highdicom segment descriptions -------------------------------------------------------------------------


def roundtrip(item: Dataset) -> Dataset:
    """Write a SegmentSequence holding ``item`` to bytes and read it back (highdicom's test habit)."""
    wrapper = Dataset()
    wrapper.SegmentSequence = [item]
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, wrapper, implicit_vr=False, little_endian=True)
    buffer.seek(0)
    read_back: Dataset = pydicom.dcmread(buffer, force=True).SegmentSequence[0]
    return read_back


def test_segment_description_from_spec() -> None:
    (spec,) = segment_specs([4], {4: LabelEntry("kidney_left", description="from the model")})
    algorithm = AlgorithmInfo(name="TotalSegmentator", version="2.4.0")
    description = segment_description(spec, 2, algorithm)
    assert isinstance(description, hd.seg.SegmentDescription)
    item = roundtrip(description)
    assert item.SegmentNumber == 2
    assert item.SegmentLabel == "kidney_left"
    assert item.SegmentDescription == "from the model"
    assert item.SegmentAlgorithmType == "AUTOMATIC"
    assert item.SegmentAlgorithmName == "TotalSegmentator"
    category = item.SegmentedPropertyCategoryCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("91723000", "SCT")
    property_type = item.SegmentedPropertyTypeCodeSequence[0]
    assert (property_type.CodeValue, property_type.CodingSchemeDesignator) == ("64033007", "SCT")
    modifier = property_type.SegmentedPropertyTypeModifierCodeSequence[0]
    assert (modifier.CodeValue, modifier.CodingSchemeDesignator, modifier.CodeMeaning) == ("7771000", "SCT", "Left")
    identification = item.SegmentationAlgorithmIdentificationSequence[0]
    assert (identification.AlgorithmName, identification.AlgorithmVersion) == ("TotalSegmentator", "2.4.0")
    family = identification.AlgorithmFamilyCodeSequence[0]
    assert family.CodeValue == codes.cid7162.ArtificialIntelligence.value
    lab = list(item.RecommendedDisplayCIELabValue)
    assert lab == list(hd.color.CIELabColor.from_rgb(*spec.color).value)
    back = hd.color.CIELabColor.from_dicom_value(tuple(lab)).to_rgb()
    assert all(abs(a - b) <= 1 for a, b in zip(back, spec.color, strict=True))
    assert "AnatomicRegionSequence" not in item


def test_segment_description_with_region_modifier() -> None:
    (spec,) = segment_specs([23], {23: LabelEntry("kidney_cyst_right")})
    item = roundtrip(segment_description(spec, 1, AlgorithmInfo()))
    assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert "SegmentedPropertyTypeModifierCodeSequence" not in item.SegmentedPropertyTypeCodeSequence[0]
    region = item.AnatomicRegionSequence[0]
    assert region.CodeValue == "64033007"
    assert region.AnatomicRegionModifierSequence[0].CodeValue == "24028007"
    identification = item.SegmentationAlgorithmIdentificationSequence[0]
    assert (identification.AlgorithmName, identification.AlgorithmVersion) == ("segnode", node.__version__)


def test_segment_label_fits_dicom_lo() -> None:
    spec = SegmentSpec(
        label=1,
        name="a\\b\tc " + "x" * 100,
        category=GENERIC_CATEGORY,
        type=GENERIC_TYPE,
        modifier=None,
        color=(0, 0, 0),
    )
    item = roundtrip(segment_description(spec, 1, AlgorithmInfo()))
    assert len(item.SegmentLabel) == 64
    assert item.SegmentLabel.startswith("a/b c x")


def test_segment_spec_rejects_bad_colour() -> None:
    with pytest.raises(ValueError, match="not RGB 0-255"):
        SegmentSpec(label=1, name="x", category=GENERIC_CATEGORY, type=GENERIC_TYPE, modifier=None, color=(0, 0, 256))


def test_descriptions_survive_a_segmentation_round_trip(tmp_path: Path) -> None:
    info = syn.write_series(syn.GridSpec.axial(rows=6, cols=6, slices=2), tmp_path / "ct")
    sources = [pydicom.dcmread(p) for p in info.paths]
    pixels = np.zeros((2, 6, 6), dtype=np.uint8)
    pixels[0, 1:3, 1:3] = 1
    pixels[1, 3:5, 3:5] = 2
    specs = segment_specs([1, 2], {1: LabelEntry("rib_left_3"), 2: LabelEntry("kidney_cyst_left")})
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(s, n, AlgorithmInfo()) for n, s in enumerate(specs, start=1)],
        series_instance_uid=hd.UID(),
        series_number=1001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="segnode",
        manufacturer_model_name="segnode",
        software_versions=node.__version__,
        device_serial_number="0",
    )
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    read = hd.seg.segread(path)
    first, second = read.SegmentSequence
    assert first.SegmentedPropertyTypeCodeSequence[0].CodeValue == "25888004"  # third rib
    assert (
        first.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"
    )
    assert second.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].CodeValue == "7771000"
    assert read.get_segment_description(2).segment_label == "kidney_cyst_left"
