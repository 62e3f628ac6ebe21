"""node/part10.py: the struct-built file meta and the fast header walk, against pydicom, pynetdicom and DCMTK."""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import pydicom
import pytest
from dcmtk import requires_dcmtk
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from node.dicom import part10
from node.dicom.part10 import HeaderError, file_meta, read_identity_uids

STUDY = "1.2.826.0.1.3680043.8.498.11"
SERIES = "1.2.826.0.1.3680043.8.498.222"  # odd length: padded with a NUL
ENCODINGS = [  # (transfer syntax, implicit VR, little endian)
    (ImplicitVRLittleEndian, True, True),
    (ExplicitVRLittleEndian, False, True),
    (ExplicitVRBigEndian, False, False),
]


@pytest.mark.parametrize("sop_uid", ["1.2.3.4", "1.2.3.45", "1.2.840.113619.2.55.3.604688119.969.1268071029.320"])
@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        JPEG2000,
        RLELossless,
    ],
)
def test_file_meta_is_what_pynetdicom_writes(sop_uid: str, syntax: str) -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    meta = create_file_meta(sop_class_uid=UID(ct), sop_instance_uid=UID(sop_uid), transfer_syntax=UID(syntax))
    expected = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
    assert file_meta(ct, sop_uid, syntax) == expected


def test_file_meta_reads_back_with_pydicom(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    ds = _dataset()
    path.write_bytes(
        file_meta("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", ExplicitVRLittleEndian)
        + _encode(ds, implicit=False, little_endian=True)
    )
    read = pydicom.dcmread(path)
    assert read.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert read.file_meta.MediaStorageSOPInstanceUID == "1.2.3.45"
    assert read.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert read.SeriesInstanceUID == SERIES and read.PatientName == "Doe^Jane"


def _dataset(*, undefined_lengths: bool = False) -> Dataset:
    """A header with what comes before group 0020 in real CTs: nested sequences, private data, and after it more."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Modality = "CT"
    reference = Dataset()
    reference.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    reference.ReferencedSOPInstanceUID = "1.2.3.4.5"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121311", "DCM", "Localizer"
    reference.PurposeOfReferenceCodeSequence = Sequence([code])
    ds.ReferencedImageSequence = Sequence([reference, Dataset(), reference])  # an empty item too
    ds.PatientName = "Doe^Jane"
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "OB", b"\x01\x02" * 9)
    ds.SliceThickness = "1.25"
    exposure = Dataset()
    exposure.KVP = "120"
    ds.CTExposureSequence = Sequence([exposure])
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.InstanceNumber = 7
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = 16
    ds.PixelData = b"\x00\x01" * 4
    if undefined_lengths:
        for element in ds.iterall():
            if element.VR == "SQ":
                element.is_undefined_length = True
                for item in element.value:
                    item.is_undefined_length_sequence_item = True
    return ds


def _encode(ds: Dataset, *, implicit: bool, little_endian: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little_endian
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def _fast_walk_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fallback(*_args: object, **_kwargs: object) -> Dataset:
        raise AssertionError("the fast walk gave up and fell back to pydicom")

    monkeypatch.setattr(part10, "_read_with_pydicom", no_fallback)


@pytest.mark.parametrize("undefined", [False, True], ids=["defined-lengths", "undefined-lengths"])
@pytest.mark.parametrize(("syntax", "implicit", "little_endian"), ENCODINGS)
def test_walk_finds_the_uids_past_sequences_and_private_data(
    monkeypatch: pytest.MonkeyPatch, syntax: str, implicit: bool, little_endian: bool, undefined: bool
) -> None:
    _fast_walk_only(monkeypatch)
    data = _encode(_dataset(undefined_lengths=undefined), implicit=implicit, little_endian=little_endian)
    if undefined:
        assert b"\xff\xff\xff\xff" in data  # the encoding under test really has undefined lengths
    assert read_identity_uids(data, syntax) == (SERIES, STUDY)
    assert read_identity_uids(memoryview(data), syntax) == (SERIES, STUDY)


def test_walk_reads_deflated_data_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    _fast_walk_only(monkeypatch)
    raw = _encode(_dataset(undefined_lengths=True), implicit=False, little_endian=True)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    assert read_identity_uids(deflate.compress(raw) + deflate.flush(), DeflatedExplicitVRLittleEndian) == (
        SERIES,
        STUDY,
    )


def test_walk_skips_an_undefined_length_un_as_implicit_little_endian(monkeypatch: pytest.MonkeyPatch) -> None:
    # PS3.5 6.2.2: a sequence whose VR the sender did not know travels as UN of undefined length, and its
    # content is implicit VR little endian whatever the transfer syntax.
    _fast_walk_only(monkeypatch)
    item = struct.pack("<HHI", 0x0008, 0x1150, 6) + b"1.2.3\x00"  # implicit VR inside
    un_value = (
        struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + item
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    un = struct.pack("<HH2s2xI", 0x0011, 0x1010, b"UN", 0xFFFFFFFF) + un_value
    head = _encode(_dataset(), implicit=False, little_endian=True)
    split = head.index(struct.pack("<HH", 0x0018, 0x0050))  # before SliceThickness, in group order
    data = head[:split] + un + head[split:]
    assert read_identity_uids(data, ExplicitVRLittleEndian) == (SERIES, STUDY)


@pytest.mark.parametrize(("declared", "implicit"), [(ExplicitVRLittleEndian, True), (ImplicitVRLittleEndian, False)])
@pytest.mark.filterwarnings("ignore:Expected:UserWarning")
def test_a_data_set_in_the_wrong_vr_encoding_still_reads(declared: str, implicit: bool) -> None:
    # Some senders negotiate one syntax and encode in another; pydicom's reader copes, so the node does too.
    data = _encode(_dataset(), implicit=implicit, little_endian=True)
    assert read_identity_uids(data, declared) == (SERIES, STUDY)


def test_missing_uids_are_none() -> None:
    ds = _dataset()
    del ds.SeriesInstanceUID
    ds.StudyInstanceUID = ""
    assert read_identity_uids(_encode(ds, implicit=False, little_endian=True), ExplicitVRLittleEndian) == (None, None)


def test_a_value_running_past_the_end_is_a_header_error() -> None:
    data = _encode(_dataset(), implicit=False, little_endian=True)
    cut = data.index(SERIES.encode()) + 4
    walker = part10._Walker(data[:cut], explicit=True, little_endian=True)
    with pytest.raises(HeaderError, match=r"\(0020,000E\) runs past"):
        walker.identity()


@requires_dcmtk
@pytest.mark.parametrize(
    "options",
    [["+te", "+e"], ["+te", "-e"], ["+ti", "+e"], ["+ti", "-e"], ["+tb", "-e"]],
    ids=[
        "explicit-le-defined",
        "explicit-le-undefined",
        "implicit-defined",
        "implicit-undefined",
        "explicit-be-undefined",
    ],
)
def test_walk_agrees_with_pydicom_on_files_dcmtk_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: list[str]
) -> None:
    source = tmp_path / "in.dcm"
    ds = _dataset(undefined_lengths=True)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = "1.2.3.99"
    ds.save_as(source, enforce_file_format=True)
    converted = tmp_path / "out.dcm"
    subprocess.run(["dcmconv", *options, str(source), str(converted)], check=True, capture_output=True, timeout=60)
    with pydicom.dcmread(converted) as read:
        syntax = str(read.file_meta.TransferSyntaxUID)
        expected = (read.SeriesInstanceUID, read.StudyInstanceUID)
        meta_length = 132 + 12 + read.file_meta.FileMetaInformationGroupLength
    _fast_walk_only(monkeypatch)
    assert read_identity_uids(converted.read_bytes()[meta_length:], syntax) == expected == (SERIES, STUDY)
