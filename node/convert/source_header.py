"""A source header made fit to be copied into a DICOM SEG, and a one-line notice for each change made to it.

highdicom's ``Segmentation`` copies, element by element, the root attributes of the modules that the source's
own IOD lists under the Patient and Study entities (Patient, Clinical Trial Subject, General Study, Patient
Study, Clinical Trial Study) and of the Specimen module, from ``source_images[0]``. It also reads a few
attributes itself: Specific Character Set, the Type 2 patient and study attributes, Frame of Reference, Lossy
Image Compression and the equipment attributes of its Contributing Equipment item. Real headers carry values
that make highdicom raise (an empty Specific Character Set, ``***`` as a date) or that it copies as they are
into a SEG that validators reject (empty sequences, sequence items without their Type 1 content, overlong
strings, values outside a closed set).

:func:`clean_source_header` repairs exactly the attributes that reach the SEG and leaves every other one as
it is: the geometry highdicom reads (positions, orientation, spacing, frames) is never touched, so a repair
cannot move a segmentation. Private and retired attributes are dropped everywhere: a derived object has no
use for them. Notices quote no values of patient attributes, so that they can be logged.

The module tables (which attribute is Type 1, 2 or 3 where) are highdicom's own, from
``highdicom._standard_utils``: they are the tables highdicom copies by, and highdicom is pinned to 0.28.
"""

from __future__ import annotations

import copy
import logging
from functools import lru_cache
from typing import Any

from highdicom._standard_utils import (
    AttributeTypeValues,
    construct_module_tree,
    get_iod_module_map,
    get_sop_class_iod_map,
)
from pydicom.datadict import dictionary_is_retired, dictionary_VM, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from node.convert.character_set import repair_character_set
from node.convert.header_values import check_value
from node.errors import InputError

log = logging.getLogger(__name__)

#: UIDs a SEG needs to reference its source; without any of them there is no SEG to build.
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")

#: Type 2 attributes highdicom reads as attributes of the source (``src_img.PatientID``): they must exist.
TYPE2_FROM_SOURCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)

#: Attributes highdicom reads outside the copied modules, with the type they have where they land in the SEG:
#: Frame of Reference, the Contributing Equipment item (which highdicom silently drops when one of them is
#: invalid) and General Image.
_ALSO_READ = {
    "PositionReferenceIndicator": "2",
    "Manufacturer": "2",
    "ManufacturerModelName": "3",
    "SoftwareVersions": "3",
    "DeviceSerialNumber": "3",
    "InstitutionName": "3",
    "InstitutionalDepartmentName": "3",
    "InstitutionAddress": "3",
    "StationName": "3",
    "AcquisitionDateTime": "3",
    "AcquisitionDate": "3",
    "AcquisitionTime": "3",
    "LossyImageCompression": "3",
    "LossyImageCompressionRatio": "3",
    "LossyImageCompressionMethod": "3",
}

#: Modules whose values are patient data: notices name these attributes but never quote their values.
_PATIENT_MODULES = frozenset({"patient", "clinical-trial-subject", "patient-study"})

#: Closed sets (DICOM enumerated values) of copied attributes; validators reject anything else.
_ENUMERATED = {
    "PatientSex": ("M", "F", "O"),
    "PatientIdentityRemoved": ("YES", "NO"),
    "QualityControlSubject": ("YES", "NO"),
    "PatientSexNeutered": ("ALTERED", "UNALTERED"),
    "LossyImageCompression": ("00", "01"),
}

#: Type 1C pairs of a module of which one must be present (the condition of each names the other).
_ONE_OF_REQUIRED = {"clinical-trial-subject": ("ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID")}

#: De-identification Method written when a de-identified source does not name one.
_UNKNOWN_DEIDENTIFICATION = "unknown (not given by the source)"

#: Maximum characters per value of the string VRs that have one (PN: per component group).

#: A node of highdicom's module tree: ``{"type": AttributeTypeValues, "attributes": {keyword: node}}``.
Schema = dict[str, Any]
_OPTIONAL: Schema = {"type": AttributeTypeValues.OPTIONAL}


def clean_source_header(header: Dataset, series_uid: str) -> tuple[Dataset, list[str]]:
    """A copy of ``header`` that highdicom turns into a valid SEG, and one notice per change made to it.

    The input is never changed. Raises :class:`~node.errors.InputError` when a UID the SEG must reference is
    absent, empty or not a UID, or when highdicom does not know the source's SOP class (it could not copy
    the patient and study modules). Notices are not deduplicated: every instance of a series repeats them.
    """
    cleaned = copy.deepcopy(header)
    for keyword in REQUIRED_UIDS:
        value = str(cleaned.get(keyword) or "").strip()
        if not value:
            raise InputError(f"source series {series_uid} lacks {keyword}; cannot reference it from a SEG")
        if not UID(value).is_valid:
            raise InputError(
                f"source series {series_uid}: {keyword} {value!r} is not a valid DICOM UID;"
                " cannot reference it from a SEG"
            )
    sop_class = UID(str(cleaned.SOPClassUID).strip())
    if not sop_class.name.endswith("Image Storage"):
        # A SEG segments images: its frames reference image planes (an RT Structure Set has none).
        raise InputError(
            f"source series {series_uid}: SOP class {sop_class} ({sop_class.name}) is not an image;"
            " a SEG can only be built on images"
        )
    modules = _copied_modules(str(cleaned.SOPClassUID))
    if modules is None:
        raise InputError(
            f"source series {series_uid}: SOP class {cleaned.SOPClassUID} is not one highdicom"
            " knows; cannot build a SEG from it"
        )
    notices: list[str] = []
    # This walk reads, and so decodes, every element under the source's own character set before it may change.
    removed = _remove_private_and_retired(cleaned)
    _complete_deidentification(cleaned, notices)
    schema: dict[str, Schema] = {k: {"type": AttributeTypeValues(t)} for k, t in _ALSO_READ.items()}
    patient: set[str] = set()
    for key, _, tree in modules:
        schema.update(tree["attributes"])
        if key in _PATIENT_MODULES:
            patient.update(tree["attributes"])
    for keyword, node in schema.items():
        if keyword in cleaned and keyword not in REQUIRED_UIDS:
            _clean_element(cleaned, keyword, node, keyword, keyword in patient, notices)
    _complete_modules(cleaned, modules, notices)
    for keyword in TYPE2_FROM_SOURCE:
        if keyword not in cleaned or cleaned[keyword].value is None:
            setattr(cleaned, keyword, "")
    repair_character_set(cleaned, [cleaned[k] for k in schema if k in cleaned], notices)
    if removed:
        # Every vendor writes private attributes: leaving them out is by design, not a repair to report.
        log.debug("source header: %s attributes left out of the SEG", " and ".join(sorted(removed)))
    return cleaned, notices


@lru_cache(maxsize=32)
def _copied_modules(sop_class_uid: str) -> tuple[tuple[str, str, Schema], ...] | None:
    """(key, usage, tree) of each module highdicom copies from a source of this SOP class; None: unknown class."""
    iod = get_sop_class_iod_map().get(sop_class_uid)
    if iod is None:
        return None
    return tuple(
        (m["key"], m["usage"], construct_module_tree(m["key"]))
        for m in get_iod_module_map()[iod]
        if m["ie"] in ("Patient", "Study") or m["key"] == "specimen"
    )


def _remove_private_and_retired(ds: Dataset) -> set[str]:
    """Delete private and retired elements at every depth; which of the two kinds were found."""
    found: set[str] = set()
    for tag in list(ds.keys()):
        kind = "private" if tag.is_private else "retired" if _is_retired(tag) else None
        if kind is not None:
            del ds[tag]
            found.add(kind)
        elif ds[tag].VR == "SQ":
            for item in ds[tag].value:
                found |= _remove_private_and_retired(item)
    return found


def _is_retired(tag: int) -> bool:
    try:
        return bool(dictionary_is_retired(tag))
    except KeyError:  # not in the dictionary: only group lengths (gggg,0000), all retired, are public and unknown
        return tag & 0xFFFF == 0


def _type_of(node: Schema) -> str:
    return str(node["type"].value)


def _is_empty(ds: Dataset, keyword: str) -> bool:
    """Absent, or present without a value (no text, no items)."""
    if keyword not in ds:
        return True
    value = ds[keyword].value
    if value is None:
        return True
    try:
        return len(value) == 0
    except TypeError:  # numbers
        return False


def _clean_element(
    ds: Dataset, keyword: str, node: Schema, where: str, private_value: bool, notices: list[str]
) -> None:
    """Repair one element of ``ds`` in place: valid values stay, repairable ones are fixed, others go.

    An invalid value leaves a Type 2 attribute empty and removes any other one (a Type 1 attribute that goes
    makes its item or module incomplete, which the callers handle).
    """
    element = ds[keyword]
    if element.VR == "SQ":
        _clean_sequence(ds, keyword, node, where, private_value, notices)
        return
    if _is_empty(ds, keyword):
        if _type_of(node) in ("1", "1C"):  # these may be absent, never empty
            del ds[keyword]
            notices.append(
                f"source header: {where} is empty but may not be (Type {_type_of(node)}); left out of the SEG"
            )
        return
    if isinstance(element.value, bytes):
        return
    values = list(element.value) if isinstance(element.value, MultiValue) else [element.value]
    if len(values) > 1 and dictionary_VM(element.tag) == "1":
        # A backslash in a single-valued text splits it; the SEG may carry one value only.
        notices.append(f"source header: {where} has {len(values)} values where one is allowed; the first is kept")
        values = values[:1]
        ds[keyword] = DataElement(element.tag, element.VR, values[0])
        element = ds[keyword]
    repaired: list[Any] = []
    for value in values:
        fixed, reason = check_value(element.VR, str(value))
        if fixed is not None and keyword in _ENUMERATED and fixed not in _ENUMERATED[keyword]:
            fixed, reason = None, f"is not one of {', '.join(_ENUMERATED[keyword])}"
        quoted = _quoted(str(value), element.VR, private_value)
        if fixed is None:
            if _type_of(node) in ("2", "2C"):
                ds[keyword] = DataElement(element.tag, element.VR, None)
                notices.append(f"source header: {where}{quoted} {reason}; left empty in the SEG")
            else:
                del ds[keyword]
                notices.append(f"source header: {where}{quoted} {reason}; left out of the SEG")
            return
        if reason:
            new = _quoted(fixed, element.VR, private_value)
            notices.append(
                f"source header: {where}{quoted} {reason}; "
                + (f"written{new} in the SEG" if new else "repaired in the SEG")
            )
            repaired.append(fixed)
        else:
            repaired.append(value)
    if any(r is not v for r, v in zip(repaired, values, strict=True)):
        ds[keyword] = DataElement(element.tag, element.VR, repaired if len(repaired) > 1 else repaired[0])


def _quoted(value: str, vr: str, private_value: bool) -> str:
    """' 'value'' for a notice, or '' for patient data, person names and values too long to read in one line."""
    return "" if private_value or vr == "PN" or len(value) > 32 else f" {value!r}"


def _clean_sequence(
    ds: Dataset, keyword: str, node: Schema, where: str, private_value: bool, notices: list[str]
) -> None:
    """Clean each item; drop items left empty or without their Type 1 content, then the sequence if empty.

    An empty sequence stays only where it is Type 2: anywhere else validators read it as a missing Type 1
    item or as an empty Type 3 attribute with no meaning.
    """
    children: dict[str, Schema] = node.get("attributes", {})
    items = ds[keyword].value
    had_items = len(items) > 0
    kept = []
    for number, item in enumerate(items, start=1):
        label = f"{where} item {number}"
        for tag in list(item.keys()):
            child = item[tag].keyword
            if child:
                _clean_element(item, child, children.get(child, _OPTIONAL), f"{label} {child}", private_value, notices)
        missing = _missing_type1(item, children)
        if len(item) == 0:
            notices.append(f"source header: {label} is empty; item left out of the SEG")
        elif missing:
            notices.append(f"source header: {label} lacks {missing}; item left out of the SEG")
        else:
            kept.append(item)
    if len(kept) < len(items):
        ds[keyword].value = kept
    if not kept and _type_of(node) not in ("2", "2C"):
        del ds[keyword]
        if not had_items:
            notices.append(f"source header: {where} has no items; left out of the SEG")


def _missing_type1(item: Dataset, children: dict[str, Schema]) -> str:
    """The first Type 1 attribute an item lacks ('' when complete), the Code Sequence Macro's 1C rules included."""
    for child, node in children.items():
        if _type_of(node) == "1" and _is_empty(item, child):
            return child
    if "CodeMeaning" in children and _is_empty(item, "URNCodeValue"):  # a coded entry: a value and a scheme
        if _is_empty(item, "CodeValue") and _is_empty(item, "LongCodeValue"):
            return "CodeValue"
        if _is_empty(item, "CodingSchemeDesignator"):
            return "CodingSchemeDesignator"
    return ""


def _complete_modules(ds: Dataset, modules: tuple[tuple[str, str, Schema], ...], notices: list[str]) -> None:
    """Make each copied module that is present whole: Type 2 attributes added empty, or the module left out.

    Validators check a module once any of its attributes is there; an optional module present in part (one
    clinical-trial attribute, say) makes the SEG invalid. Mandatory modules are always present.
    """
    mandatory = {k for _, usage, tree in modules if usage == "M" for k in tree["attributes"]}
    for key, usage, tree in modules:
        attributes: dict[str, Schema] = tree["attributes"]
        present = [k for k in attributes if k in ds and k not in mandatory]
        if usage != "M" and not present:
            continue
        missing = next((k for k, node in attributes.items() if _type_of(node) == "1" and _is_empty(ds, k)), None)
        one_of = _ONE_OF_REQUIRED.get(key, ())
        if missing is None and one_of and all(_is_empty(ds, k) for k in one_of):
            missing = " or ".join(one_of)
        if usage != "M" and missing is not None:
            for keyword in present:
                del ds[keyword]
            name = " ".join(part.capitalize() for part in key.split("-"))
            notices.append(
                f"source header: {name} module lacks {missing} (Type 1); its attributes are left out of the SEG"
            )
            continue
        for keyword, node in attributes.items():
            if _type_of(node) == "2" and keyword not in ds:
                vr = dictionary_VR(keyword)
                ds[keyword] = DataElement(keyword, vr, [] if vr == "SQ" else None)


def _complete_deidentification(ds: Dataset, notices: list[str]) -> None:
    """Say the method is unknown when a de-identified source does not say it (the SEG must, Type 1C).

    Anonymisers often write Patient Identity Removed YES with an empty De-identification Method. Keeping the
    flag and stating that the method is unknown is true; dropping the flag would hide that the data is
    de-identified.
    """
    if (
        str(ds.get("PatientIdentityRemoved", "")).upper() == "YES"
        and _is_empty(ds, "DeidentificationMethod")
        and _is_empty(ds, "DeidentificationMethodCodeSequence")
    ):
        ds.DeidentificationMethod = _UNKNOWN_DEIDENTIFICATION
        notices.append(
            "source header: PatientIdentityRemoved is YES but no DeidentificationMethod is given;"
            f" written {_UNKNOWN_DEIDENTIFICATION!r} in the SEG"
        )
