"""Source headers made fit for a SEG (node/source_header.py): each repair alone, then real SEGs through highdicom.

Unit tests mutate one synthetic header and check the cleaned copy and its notices. Integration tests write a
synthetic series whose files carry one problem, build a SEG with highdicom from the cleaned headers, write it
to disk and read it back, and require dciodvfy to find no error. The real corpus (``../shared/real-dicom``)
checks that real headers clean without an exception.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tarfile
import warnings
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import synthetic as syn
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes

from node.convert.source_header import REQUIRED_UIDS, TYPE2_FROM_SOURCE, clean_source_header
from node.errors import InputError

REAL_DICOM = Path(os.environ.get("SEGNODE_REAL_DICOM", Path(__file__).resolve().parents[3] / "shared" / "real-dicom"))
# The tests set invalid values on purpose; pydicom warns when they are assigned.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning"),
    pytest.mark.filterwarnings("ignore:The value length:UserWarning"),
    pytest.mark.filterwarnings("ignore:The PN component length:UserWarning"),
]
needs_dciodvfy = pytest.mark.skipif(not syn.have_tool("dciodvfy"), reason="dciodvfy (dicom3tools) not installed")
GRID = syn.GridSpec.axial(rows=16, cols=16, slices=3)


# -- helpers ------------------------------------------------------------------------------------------------------


@pytest.fixture
def series(tmp_path: Path) -> syn.SeriesInfo:
    return syn.write_series(GRID, tmp_path / "series")


@pytest.fixture
def header(series: syn.SeriesInfo) -> Dataset:
    """The first synthetic source header, without pixel data."""
    return pydicom.dcmread(series.paths[0], stop_before_pixels=True)


def clean(ds: Dataset) -> tuple[Dataset, list[str]]:
    return clean_source_header(ds, str(ds.SeriesInstanceUID))


def code_item(value: str | None = "12345", scheme: str | None = "SCT", meaning: str | None = "A procedure") -> Dataset:
    item = Dataset()
    for keyword, given in (("CodeValue", value), ("CodingSchemeDesignator", scheme), ("CodeMeaning", meaning)):
        if given is not None:
            setattr(item, keyword, given)
    return item


def build_seg(headers: list[Dataset], path: Path) -> Dataset:
    """A two-segment BINARY SEG over ``headers`` (one per slice), written to ``path`` and read back."""
    labels = np.zeros((len(headers), int(headers[0].Rows), int(headers[0].Columns)), dtype=np.uint8)
    labels[:, 2:6, 2:6] = 1
    labels[:, 8:12, 8:12] = 2
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, name, organ in ((1, "liver", codes.SCT.Liver), (2, "spleen", codes.SCT.Spleen))
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom on single-component person names: fine
        seg = hd.seg.Segmentation(
            source_images=headers,
            pixel_array=labels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=1007,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="segnode",
            manufacturer_model_name="segnode",
            software_versions="0",
            device_serial_number="0",
        )
    seg.save_as(path)
    return pydicom.dcmread(path)


def mutate_series(info: syn.SeriesInfo, change: Callable[[Dataset], None]) -> list[Dataset]:
    """Apply ``change`` to every file of the series on disk; the headers read back from the changed files."""
    for path in info.paths:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in info.paths]


# -- what _source_headers did: UIDs and Type 2 ------------------------------------------------------------------


@pytest.mark.parametrize("keyword", REQUIRED_UIDS)
@pytest.mark.parametrize("how", ["absent", "empty", "not a UID"])
def test_required_uid_problems_refuse_the_series(header: Dataset, keyword: str, how: str) -> None:
    if how == "absent":
        delattr(header, keyword)
    else:
        setattr(header, keyword, "" if how == "empty" else "1.2.03.abc")
    with warnings.catch_warnings(), pytest.raises(InputError, match=rf"source series 9\.8\.7.*{keyword}"):
        warnings.simplefilter("ignore", UserWarning)  # pydicom on the invalid UID
        clean_source_header(header, "9.8.7")


def test_unknown_sop_class_is_refused(header: Dataset) -> None:
    header.SOPClassUID = "1.2.3.4.5"
    with pytest.raises(InputError, match=re.escape("SOP class 1.2.3.4.5")):
        clean(header)


def test_absent_type2_attributes_are_present_and_empty(tmp_path: Path) -> None:
    info = syn.write_series(GRID, tmp_path / "series", omit_type2=True)
    cleaned, notices = clean(pydicom.dcmread(info.paths[0], stop_before_pixels=True))
    assert all(keyword in cleaned for keyword in TYPE2_FROM_SOURCE)
    assert all(cleaned[keyword].value in ("", None) for keyword in syn.TYPE2_OPTIONAL)
    assert notices == []


def test_a_valid_header_passes_unchanged(header: Dataset) -> None:
    cleaned, notices = clean(header)
    assert notices == []
    assert cleaned == header


def test_the_input_is_never_changed(header: Dataset) -> None:
    header.SpecificCharacterSet = ""
    header.StudyDate = "***"
    header.ProcedureCodeSequence = Sequence([code_item(value=None)])
    header.add_new(0x00091010, "LO", "private")
    before = copy.deepcopy(header)
    cleaned, notices = clean(header)
    assert notices
    assert header == before
    assert header.StudyDate == "***" and len(header.ProcedureCodeSequence) == 1 and 0x00091010 in header
    assert cleaned is not header


def test_geometry_is_never_touched(header: Dataset) -> None:
    header.ImagePositionPatient = ["1.23456789012345678", "2", "3"]  # overlong DS: not a copied attribute
    cleaned, _ = clean(header)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows"):
        assert cleaned[keyword].value == header[keyword].value, keyword


# -- Specific Character Set -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("", None),
        ("ISO_IR 6", None),
        ("ISO 2022 IR 6", None),
        ("ISO-IR 100", "ISO_IR 100"),
        ("iso_ir100", "ISO_IR 100"),
        ("ISO 2022 IR 100", "ISO_IR 100"),
        ("UTF-8", "ISO_IR 192"),
        (["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),
        ("NOT_A_CHARSET", None),
    ],
)
def test_character_set_is_repaired(header: Dataset, given: str | list[str], expected: str | list[str] | None) -> None:
    header.SpecificCharacterSet = given
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom on an unknown character set
        cleaned, notices = clean(header)
    if expected is None:
        assert "SpecificCharacterSet" not in cleaned
    else:
        value = cleaned.SpecificCharacterSet
        assert (list(value) if isinstance(value, pydicom.multival.MultiValue) else value) == expected
    assert len(notices) == 1 and "SpecificCharacterSet" in notices[0]


@pytest.mark.parametrize("term", ["ISO_IR 100", "ISO_IR 192", "GB18030"])
def test_valid_character_sets_are_kept(header: Dataset, term: str) -> None:
    header.SpecificCharacterSet = term
    cleaned, notices = clean(header)
    assert cleaned.SpecificCharacterSet == term and notices == []


def test_unknown_character_set_with_non_ascii_text_becomes_utf8(header: Dataset, tmp_path: Path) -> None:
    header.SpecificCharacterSet = "NOT_A_CHARSET"
    header.StudyDescription = "Étude synthétique"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cleaned, notices = clean(header)
    assert cleaned.SpecificCharacterSet == "ISO_IR 192"
    assert any("ISO_IR 192" in n for n in notices)
    seg = build_seg([cleaned], tmp_path / "seg.dcm")
    assert seg.SpecificCharacterSet == "ISO_IR 192" and seg.StudyDescription == "Étude synthétique"


# -- dates, times, closed sets, lengths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "given", "expected"),
    [
        ("StudyDate", "***", ""),
        ("StudyDate", "20230230", ""),
        ("StudyDate", "2023.01.02", "20230102"),
        ("StudyTime", "25:00", ""),
        ("StudyTime", "10:15:00", "101500"),
        ("StudyTime", "ab", ""),
        ("PatientBirthDate", "01/02/1970", ""),
        ("PatientBirthTime", "noon", None),  # Type 3: removed
        ("AcquisitionDateTime", "yesterday", None),
        ("LastMenstrualDate", "00000000", None),
    ],
)
def test_invalid_dates_and_times(header: Dataset, keyword: str, given: str, expected: str | None) -> None:
    setattr(header, keyword, given)
    cleaned, notices = clean(header)
    if expected is None:
        assert keyword not in cleaned
    else:
        assert cleaned[keyword].value in (expected, None) and str(cleaned[keyword].value or "") == expected
    assert len(notices) == 1 and keyword in notices[0]


def test_valid_dates_and_times_are_kept(header: Dataset) -> None:
    header.StudyTime = "101500.123456"
    header.AcquisitionDateTime = "20240102101500.5+0100"
    header.PatientBirthTime = "1015"
    cleaned, notices = clean(header)
    assert notices == []
    assert (cleaned.StudyTime, cleaned.AcquisitionDateTime, cleaned.PatientBirthTime) == (
        "101500.123456",
        "20240102101500.5+0100",
        "1015",
    )


def test_notices_quote_study_values_but_never_patient_values(header: Dataset) -> None:
    header.StudyDate = "***"
    header.PatientBirthDate = "1970-01-01"
    _, notices = clean(header)
    assert "source header: StudyDate '***' is not a DICOM date; left empty in the SEG" in notices
    assert "source header: PatientBirthDate is not a DICOM date; left empty in the SEG" in notices
    assert not any("1970" in n for n in notices)


@pytest.mark.parametrize(("given", "expected"), [("X", ""), ("MALE", ""), ("m", "M"), ("F", "F"), ("", "")])
def test_patient_sex_outside_m_f_o_is_left_empty(header: Dataset, given: str, expected: str) -> None:
    header.PatientSex = given
    cleaned, notices = clean(header)
    assert (cleaned.PatientSex or "") == expected
    assert bool(notices) == (given != expected)


def test_overlong_values_are_cut_to_their_vr(header: Dataset) -> None:
    header.StudyDescription = "d" * 80  # LO 64
    header.StudyID = "S" * 20  # SH 16
    header.ReferringPhysicianName = "R" * 70 + "^Given"  # PN: 64 per component group
    header.PatientWeight = "70.1234567890123456"  # DS 16
    cleaned, notices = clean(header)
    assert cleaned.StudyDescription == "d" * 64
    assert cleaned.StudyID == "S" * 16
    assert len(str(cleaned.ReferringPhysicianName)) == 64
    assert len(str(cleaned.PatientWeight)) <= 16 and abs(float(cleaned.PatientWeight) - 70.1234567890123) < 1e-9
    assert len(notices) == 4


def test_person_names_that_are_not_pn_are_left_empty(header: Dataset) -> None:
    header.PatientName = "A^B^C^D^E^F"  # six components
    cleaned, notices = clean(header)
    assert cleaned.PatientName == ""
    assert notices == [
        "source header: PatientName is not a person name (more than 3 groups or 5 components); left empty in the SEG"
    ]


def test_single_component_names_are_valid_and_kept(header: Dataset) -> None:
    header.PatientName = "JANCT000"
    cleaned, notices = clean(header)
    assert cleaned.PatientName == "JANCT000" and notices == []


def test_control_characters_are_removed(header: Dataset) -> None:
    header.StudyDescription = "Head\x07 CT"
    cleaned, notices = clean(header)
    assert cleaned.StudyDescription == "Head CT" and len(notices) == 1


# -- sequences ----------------------------------------------------------------------------------------------------


def test_empty_type3_sequences_are_removed(header: Dataset) -> None:
    header.ProcedureCodeSequence = Sequence([])
    header.ReferencedStudySequence = Sequence([Dataset()])
    cleaned, notices = clean(header)
    assert "ProcedureCodeSequence" not in cleaned and "ReferencedStudySequence" not in cleaned
    assert "source header: ProcedureCodeSequence has no items; left out of the SEG" in notices
    assert "source header: ReferencedStudySequence item 1 is empty; item left out of the SEG" in notices
    assert len(notices) == 2


def test_items_without_their_type1_content_are_removed(header: Dataset) -> None:
    header.ProcedureCodeSequence = Sequence([code_item(value=None), code_item(), code_item(meaning="")])
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # no ReferencedSOPInstanceUID
    header.ReferencedStudySequence = Sequence([study])
    cleaned, notices = clean(header)
    assert [item.CodeValue for item in cleaned.ProcedureCodeSequence] == ["12345"]
    assert "ReferencedStudySequence" not in cleaned
    assert "source header: ProcedureCodeSequence item 1 lacks CodeValue; item left out of the SEG" in notices
    assert (
        "source header: ReferencedStudySequence item 1 lacks ReferencedSOPInstanceUID; item left out of the SEG"
    ) in notices


def test_empty_sequences_nested_in_items_are_removed(header: Dataset) -> None:
    item = code_item()
    item.EquivalentCodeSequence = Sequence([])
    item.CodingSchemeVersion = ""  # Type 1C: may be absent, never empty
    header.ProcedureCodeSequence = Sequence([item])
    cleaned, notices = clean(header)
    kept = cleaned.ProcedureCodeSequence[0]
    assert "EquivalentCodeSequence" not in kept and "CodingSchemeVersion" not in kept and kept.CodeValue == "12345"
    assert len(notices) == 2


def test_values_inside_items_are_validated(header: Dataset) -> None:
    item = code_item()
    item.CodeMeaning = "m" * 70
    header.ProcedureCodeSequence = Sequence([item])
    cleaned, notices = clean(header)
    assert cleaned.ProcedureCodeSequence[0].CodeMeaning == "m" * 64
    assert notices == [
        "source header: ProcedureCodeSequence item 1 CodeMeaning is longer than 64 characters (LO); repaired in the SEG"
    ]


# -- private, retired, modules ------------------------------------------------------------------------------------


def test_private_and_retired_attributes_are_removed_at_every_depth(header: Dataset) -> None:
    header.private_block(0x0009, "SEGNODE TEST", create=True).add_new(0x01, "LO", "root private")
    header.OtherPatientIDs = "OLD-ID"  # (0010,1000), retired
    item = code_item()
    item.add_new(0x00111010, "LO", "nested private")
    header.ProcedureCodeSequence = Sequence([item])
    cleaned, notices = clean(header)
    assert not any(element.tag.is_private for element in cleaned.iterall())
    assert "OtherPatientIDs" not in cleaned and cleaned.ProcedureCodeSequence[0].CodeValue == "12345"
    assert notices == []  # by design, not a repair: logged at debug level only


def test_a_partial_optional_module_is_left_out(header: Dataset) -> None:
    header.ClinicalTrialProtocolName = "Protocol"  # without the Type 1 sponsor and protocol ID
    cleaned, notices = clean(header)
    assert "ClinicalTrialProtocolName" not in cleaned
    assert notices == [
        "source header: Clinical Trial Subject module lacks ClinicalTrialSponsorName (Type 1);"
        " its attributes are left out of the SEG"
    ]


def test_a_complete_optional_module_is_kept_with_its_type2_attributes(header: Dataset) -> None:
    header.ClinicalTrialSponsorName = "Sponsor"
    header.ClinicalTrialProtocolID = "P1"
    header.ClinicalTrialSubjectID = "S1"
    cleaned, notices = clean(header)
    assert notices == []
    assert cleaned.ClinicalTrialSponsorName == "Sponsor" and cleaned.ClinicalTrialSiteID in ("", None)


def test_de_identified_source_without_a_method_says_it_is_unknown(header: Dataset) -> None:
    header.PatientIdentityRemoved = "YES"
    header.DeidentificationMethod = ""
    cleaned, notices = clean(header)
    assert cleaned.PatientIdentityRemoved == "YES" and cleaned.DeidentificationMethod
    assert len(notices) == 1 and "DeidentificationMethod" in notices[0]


# -- integration: the cleaned headers give a valid SEG ------------------------------------------------------------


def _private(ds: Dataset) -> None:
    ds.private_block(0x0009, "SEGNODE TEST", create=True).add_new(0x01, "LO", "root private")
    item = code_item()
    item.add_new(0x00111010, "LO", "nested private")
    ds.ProcedureCodeSequence = Sequence([item])


def _no_private(seg: Dataset) -> bool:
    return not any(element.tag.is_private for element in seg.ProcedureCodeSequence[0])


KINDS: dict[str, tuple[Callable[[Dataset], None], Callable[[Dataset], bool]]] = {
    "empty-character-set": (
        lambda ds: setattr(ds, "SpecificCharacterSet", ""),
        lambda seg: "SpecificCharacterSet" not in seg,
    ),
    "study-date-stars": (lambda ds: setattr(ds, "StudyDate", "***"), lambda seg: seg.StudyDate == ""),
    "single-component-name": (
        lambda ds: setattr(ds, "PatientName", "JANCT000"),
        lambda seg: seg.PatientName == "JANCT000",
    ),
    "empty-procedure-code-sequence": (
        lambda ds: setattr(ds, "ProcedureCodeSequence", Sequence([])),
        lambda seg: "ProcedureCodeSequence" not in seg,
    ),
    "private-tags": (_private, _no_private),
    "retired-attribute": (
        lambda ds: setattr(ds, "OtherPatientIDs", "OLD-ID"),
        lambda seg: "OtherPatientIDs" not in seg,
    ),
    "overlong-lo": (lambda ds: setattr(ds, "StudyDescription", "d" * 80), lambda seg: seg.StudyDescription == "d" * 64),
    "invalid-patient-sex": (lambda ds: setattr(ds, "PatientSex", "X"), lambda seg: seg.PatientSex == ""),
}


@needs_dciodvfy
@pytest.mark.parametrize("kind", KINDS)
def test_seg_from_cleaned_headers_is_valid(series: syn.SeriesInfo, tmp_path: Path, kind: str) -> None:
    change, carries_repair = KINDS[kind]
    headers = mutate_series(series, change)
    cleaned = [clean(h)[0] for h in headers]
    seg = build_seg(cleaned, tmp_path / "seg.dcm")
    assert syn.run_dciodvfy(tmp_path / "seg.dcm") == []
    assert carries_repair(seg)
    assert seg.StudyInstanceUID == series.study_uid and seg.FrameOfReferenceUID == series.frame_of_reference_uid
    assert [str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence] == [series.series_uid]


def test_an_empty_character_set_is_what_breaks_highdicom(series: syn.SeriesInfo, tmp_path: Path) -> None:
    """The raw header really fails: the repair is needed, not cosmetic."""
    headers = mutate_series(series, lambda ds: setattr(ds, "SpecificCharacterSet", ""))
    with pytest.raises(ValueError, match="SpecificCharacterSetValues"):
        build_seg(headers, tmp_path / "seg.dcm")


# -- the real corpus ----------------------------------------------------------------------------------------------


def _real_cases() -> list[str]:
    if not (REAL_DICOM / "cases.json").is_file():
        return []
    return [str(entry["id"]) for entry in json.loads((REAL_DICOM / "cases.json").read_text(encoding="utf-8"))]


def _real_headers(case: str, into: Path) -> list[Dataset]:
    """Headers of every instance of one case (its DICOMDIR, which is no instance, left aside)."""
    archive = REAL_DICOM / f"{case}.tar.xz"
    if not archive.is_file():
        pytest.skip(f"real DICOM case {archive} is absent")
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(into, filter="data")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(into.rglob("*")) if p.is_file()]
    return [h for h in headers if "SOPClassUID" in h]


@pytest.mark.skipif(not REAL_DICOM.is_dir(), reason=f"real DICOM corpus folder {REAL_DICOM} is absent")
@pytest.mark.parametrize("case", _real_cases() or ["no-cases"])
def test_real_headers_clean_without_exception(case: str, tmp_path: Path) -> None:
    if case == "no-cases":
        pytest.skip(f"{REAL_DICOM} has no cases.json")
    headers = _real_headers(case, tmp_path)
    assert headers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for ds in headers:
            cleaned, notices = clean(ds)
            assert all(n.startswith("source header: ") for n in notices)
            for keyword in TYPE2_FROM_SOURCE:
                assert keyword in cleaned


@needs_dciodvfy
@pytest.mark.skipif(not REAL_DICOM.is_dir(), reason=f"real DICOM corpus folder {REAL_DICOM} is absent")
def test_real_ge_ct_with_empty_character_set_gives_a_valid_seg(tmp_path: Path) -> None:
    headers = _real_headers("ct_ge_3slice_implicit", tmp_path / "case")
    assert all(h.SpecificCharacterSet == "" for h in headers)  # what the case is here for
    headers.sort(key=lambda h: float(h.ImagePositionPatient[2]))
    results: list[tuple[Dataset, list[str]]] = [clean(h) for h in headers]
    assert all(
        "source header: SpecificCharacterSet is empty; left out of the SEG (default repertoire)" in n
        for _, n in results
    )
    seg = build_seg([c for c, _ in results], tmp_path / "seg.dcm")
    assert syn.run_dciodvfy(tmp_path / "seg.dcm") == []
    assert "SpecificCharacterSet" not in seg and seg.PatientID == headers[0].PatientID
