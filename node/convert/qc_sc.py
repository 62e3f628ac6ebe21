"""A SEG's QC picture as a Secondary Capture image, so that a PACS that cannot show SEG still shows the result.

Pure: the SEG as written and its QC picture (RGB pixels) in, a highdicom :class:`~highdicom.sc.SCImage` out. The
image joins the SEG's study (patient and study attributes copied from the SEG, which copied them from its source)
in a series of its own, and references the SEG it shows and the source images the SEG was built on.

UIDs are derived like the SEG's own (:func:`node.convert.seg.deterministic_uids`): the series from the SEG's SOP
Instance UID, so every picture of one SEG lands in one series; the instance also from the pixels, so a resend
after a crash is recognisably the same object, while a different picture (another ``include_phi``) is another.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import node
from node.convert.planes import integer_value
from node.convert.source_header import TYPE2_FROM_SOURCE

__all__ = ["QC_SERIES_DESCRIPTION", "SECONDARY_CAPTURE_STORAGE", "png_pixels", "qc_sc_uids", "qc_secondary_capture"]

SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
QC_SERIES_DESCRIPTION = "segnode QC"
#: The QC series sorts after the SEG's (which is the source's Series Number + 1000).
SERIES_NUMBER_OFFSET = 1000


def png_pixels(png: bytes) -> npt.NDArray[np.uint8]:
    """The picture's pixels as (row, col, RGB) bytes; an alpha channel or palette is flattened to RGB."""
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _rgb(pixels: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    array = np.asarray(pixels)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"QC picture pixels must be (row, col, 3) uint8, not {array.shape} {array.dtype}")
    return np.ascontiguousarray(array)


def qc_sc_uids(seg: Dataset, pixels: npt.NDArray[np.uint8]) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the QC image of ``seg`` showing ``pixels``."""
    seg_uid = str(seg.SOPInstanceUID)
    digest = hashlib.sha256(np.ascontiguousarray(pixels).data).hexdigest()
    series = generate_uid(entropy_srcs=[seg_uid, "qc-secondary-capture", "series"])
    instance = generate_uid(entropy_srcs=[seg_uid, "qc-secondary-capture", digest, "instance"])
    return series, instance


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _references(sc: Dataset, seg: Dataset) -> None:
    """Source Instance (the SEG), Source Image (the SEG's sources) and, listing both, the Referenced Series
    Sequence of the Common Instance Reference module, which must name every instance referenced."""
    sc.SourceInstanceSequence = DicomSequence([_reference(str(seg.SOPClassUID), str(seg.SOPInstanceUID))])
    series_items = []
    sources = []
    for referenced in seg.get("ReferencedSeriesSequence") or []:
        instances = [
            _reference(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
            for i in referenced.get("ReferencedInstanceSequence") or []
        ]
        sources += [_reference(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in instances]
        item = Dataset()
        item.SeriesInstanceUID = str(referenced.SeriesInstanceUID)
        item.ReferencedInstanceSequence = DicomSequence(instances)
        series_items.append(item)
    own = Dataset()
    own.SeriesInstanceUID = str(seg.SeriesInstanceUID)
    own.ReferencedInstanceSequence = DicomSequence([_reference(str(seg.SOPClassUID), str(seg.SOPInstanceUID))])
    series_items.append(own)
    if sources:
        sc.SourceImageSequence = DicomSequence(sources)
    sc.ReferencedSeriesSequence = DicomSequence(series_items)
    sc.DerivationDescription = f"QC picture of DICOM SEG {seg.SOPInstanceUID}, drawn from its own frames"[:1024]


def qc_secondary_capture(seg: Dataset, picture: npt.NDArray[np.uint8], *, include_phi: bool = False) -> hd.sc.SCImage:
    """The Secondary Capture image (RGB, Explicit VR Little Endian) of ``seg``'s QC picture.

    ``picture``: its pixels as (row, col, RGB) bytes, ``np.asarray`` of the drawn image (the PNG holds the same
    pixels; :func:`png_pixels` reads them back). ``include_phi``: whether the picture was drawn with the patient's
    name and ID (then Burned In Annotation says so).
    """
    pixels = _rgb(picture)
    series_uid, sop_uid = qc_sc_uids(seg, pixels)
    seg_number = integer_value(seg.get("SeriesNumber"))
    series_number = min((seg_number or 0) + SERIES_NUMBER_OFFSET, 2**31 - 1)
    patient: dict[str, Any] = {keyword: seg.get(keyword) for keyword in TYPE2_FROM_SOURCE}
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=str(seg.StudyInstanceUID),
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="segnode",
        # Any valid pair: highdicom demands one for a patient image; it is emptied below.
        patient_orientation=("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=QC_SERIES_DESCRIPTION,
        manufacturer_model_name="segnode",
        software_versions=node.__version__,
        specific_character_set=seg.get("SpecificCharacterSet"),
        patient_id=patient["PatientID"],
        patient_name=patient["PatientName"],
        patient_birth_date=patient["PatientBirthDate"],
        patient_sex=patient["PatientSex"] or None,
        accession_number=patient["AccessionNumber"],
        study_id=patient["StudyID"],
        study_date=patient["StudyDate"],
        study_time=patient["StudyTime"],
        referring_physician_name=patient["ReferringPhysicianName"],
    )
    # The panels face different ways (each carries its own letters), so no one Patient Orientation is true of
    # the image; the attribute is Type 2C and may be empty.
    sc.PatientOrientation = []
    # Type 2C whenever the body part may be paired: the SEG's (if it says) else empty, which is "unknown".
    sc.Laterality = seg.get("Laterality", "")
    sc.BurnedInAnnotation = "YES" if include_phi else "NO"
    sc.LossyImageCompression = "00"
    _references(sc, seg)
    return sc
