"""DICOM Part 10 framing of received data sets and a fast walk of their headers, on the raw bytes.

A C-STORE data set arrives encoded in the negotiated transfer syntax. To keep it as a DICOM file the node puts
the preamble and the File Meta Information in front of it; to file it, the node needs only its Study and Series
Instance UIDs. Both are done here with :mod:`struct`: pydicom's general encoder and parser cost more CPU per
instance than the rest of the receive path together (bench/bench_ingest.py), and on the association threads
CPU time is throughput, because of the GIL.

The walk covers the three uncompressed encodings (which encapsulated transfer syntaxes share for everything
but pixel data), sequences of undefined length, UN of undefined length (PS3.5 6.2.2) and deflate. Whatever it
cannot read it hands to pydicom, which is lenient with the encoding mistakes some modalities make.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from node.errors import InputError
from node.logs import redact
from node.state.instances import check_uid

#: The 128-byte preamble and the ``DICM`` prefix of every Part 10 file.
PREAMBLE = b"\x00" * 128 + b"DICM"

_STUDY_UID = 0x0020000D
_SERIES_UID = 0x0020000E
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
# VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


class HeaderError(ValueError):
    """The data set's encoding could not be walked (truncated, or not what the transfer syntax says)."""


def _element_bytes(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _uid_value(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\x00" if len(value) % 2 else value


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The preamble, ``DICM`` and File Meta Information (explicit VR little endian) for a received data set.

    Byte for byte what pynetdicom's ``Event.encoded_dataset()`` writes in front of the data set, without the
    cost of building and encoding a pydicom dataset.

    >>> meta = file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1")
    >>> meta[128:132], len(meta) % 2
    (b'DICM', 0)
    """
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    elements = b"".join(
        (
            _element_bytes(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element_bytes(0x0002, 0x0002, b"UI", _uid_value(sop_class_uid)),
            _element_bytes(0x0002, 0x0003, b"UI", _uid_value(sop_instance_uid)),
            _element_bytes(0x0002, 0x0010, b"UI", _uid_value(transfer_syntax)),
            _element_bytes(0x0002, 0x0012, b"UI", _uid_value(PYNETDICOM_IMPLEMENTATION_UID)),
            _element_bytes(0x0002, 0x0013, b"SH", version + b" " * (len(version) % 2)),
        )
    )
    group_length = _element_bytes(0x0002, 0x0000, b"UL", struct.pack("<I", len(elements)))
    return PREAMBLE + group_length + elements


class _Walker:
    """Reads element headers of one encoding; positions are byte offsets into ``data``."""

    def __init__(self, data: bytes | memoryview, *, explicit: bool, little_endian: bool) -> None:
        self.data = data
        self.explicit = explicit
        endian = "<" if little_endian else ">"
        self.tag = struct.Struct(endian + "HH")
        self.u16 = struct.Struct(endian + "H")
        self.u32 = struct.Struct(endian + "I")

    def header(self, pos: int) -> tuple[int, bytes, int, int]:
        """(tag, VR or b"", value length, value position) of the element at ``pos``."""
        group, element = self.tag.unpack_from(self.data, pos)
        tag = group << 16 | element
        if group == 0xFFFE or not self.explicit:  # items and delimiters carry no VR in any encoding
            return tag, b"", self.u32.unpack_from(self.data, pos + 4)[0], pos + 8
        vr = bytes(self.data[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            return tag, vr, self.u32.unpack_from(self.data, pos + 8)[0], pos + 12
        return tag, vr, self.u16.unpack_from(self.data, pos + 6)[0], pos + 8

    def skip_value(self, pos: int, vr: bytes, length: int) -> int:
        """The position after a value that starts at ``pos``."""
        if length != _UNDEFINED:
            return pos + length
        if vr == b"UN":
            # An undefined-length UN is a sequence encoded in implicit VR little endian (PS3.5 6.2.2).
            return _Walker(self.data, explicit=False, little_endian=True).skip_sequence(pos)
        return self.skip_sequence(pos)

    def skip_sequence(self, pos: int) -> int:
        while True:
            tag, _, length, pos = self.header(pos)
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise HeaderError(f"expected an item at byte {pos - 8}, found tag {tag:08X}")
            pos = self.skip_item(pos) if length == _UNDEFINED else pos + length

    def skip_item(self, pos: int) -> int:
        while True:
            tag, vr, length, pos = self.header(pos)
            if tag == _ITEM_END:
                return pos
            pos = self.skip_value(pos, vr, length)

    def identity(self) -> dict[int, str]:
        """Study and Series Instance UID values found at the top level, stopping after group 0020's UIDs."""
        found: dict[int, str] = {}
        pos, end = 0, len(self.data)
        while pos < end and len(found) < 2:
            tag, vr, length, pos = self.header(pos)
            if tag > _SERIES_UID:
                break
            if tag in (_STUDY_UID, _SERIES_UID):
                if length == _UNDEFINED or pos + length > end:
                    raise HeaderError(f"the value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the data set")
                found[tag] = bytes(self.data[pos : pos + length]).decode("latin-1").strip("\x00 ")
            pos = self.skip_value(pos, vr, length)
        return found


def _encoding(transfer_syntax: str) -> tuple[bool, bool]:
    """(explicit VR, little endian) of the data set (encapsulated syntaxes are explicit VR little endian)."""
    if transfer_syntax == ImplicitVRLittleEndian:
        return False, True
    return True, transfer_syntax != ExplicitVRBigEndian


def read_identity_uids(dataset: bytes | memoryview, transfer_syntax: str) -> tuple[str | None, str | None]:
    """(SeriesInstanceUID, StudyInstanceUID) of an encoded data set (no file meta), None where absent.

    Reads no further than group 0020; pixel data is neither read nor decoded.

    Raises
    ------
    HeaderError, and whatever pydicom raises for a data set it cannot parse either
        The header is malformed.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        dataset = zlib.decompress(dataset, -zlib.MAX_WBITS)
    explicit, little_endian = _encoding(transfer_syntax)
    try:
        found = _Walker(dataset, explicit=explicit, little_endian=little_endian).identity()
    except (struct.error, HeaderError, RecursionError):
        found = {}
    if _SERIES_UID in found and _STUDY_UID in found:
        return found[_SERIES_UID] or None, found[_STUDY_UID] or None
    # Missing, or not walkable: let pydicom try, leniently, for the definitive answer and its reason.
    header = _read_with_pydicom(dataset, explicit=explicit, little_endian=little_endian)
    series, study = header.get("SeriesInstanceUID"), header.get("StudyInstanceUID")
    return (str(series) if series else None), (str(study) if study else None)


def _read_with_pydicom(dataset: bytes | memoryview, *, explicit: bool, little_endian: bool) -> Dataset:
    def past_identity(tag: int, _vr: str | None, _length: int) -> bool:
        return tag > _SERIES_UID

    return read_dataset(
        BytesIO(dataset),
        is_implicit_VR=not explicit,
        is_little_endian=little_endian,
        stop_when=past_identity,
        specific_tags=[_STUDY_UID, _SERIES_UID],
    )


class UnreadableInstanceError(InputError):
    """A received instance whose header cannot be parsed or lacks a UID the node needs."""


def read_identity(dataset: bytes | memoryview, transfer_syntax: str, sop_uid: str) -> tuple[str, str]:
    """The (SeriesInstanceUID, StudyInstanceUID) of a received data set (encoded, without file meta).

    Only the header up to group 0020 is walked (:func:`node.dicom.part10.read_identity_uids`); pixel data is neither
    read nor decoded.
    """
    try:
        series, study = read_identity_uids(dataset, transfer_syntax)
    # A malformed stream surfaces as any of these, depending on where the parser trips.
    except (
        InvalidDicomError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        IndexError,
        OverflowError,
        RecursionError,
        struct.error,
        zlib.error,
    ) as exc:
        # Reason first: the start of the message becomes the peer's 64-character Error Comment.
        # pydicom's message may quote header values, which may be patient data.
        detail = redact(" ".join(str(exc).split()))
        raise UnreadableInstanceError(
            f"header cannot be parsed ({type(exc).__name__}: {detail}) in instance "
            f"{sop_uid}; the sender must send valid DICOM"
        ) from exc
    if not series:
        raise UnreadableInstanceError(f"no SeriesInstanceUID in instance {sop_uid}; the sender must add it")
    if not study:
        raise UnreadableInstanceError(f"no StudyInstanceUID in instance {sop_uid}; the sender must add it")
    return check_uid(series, "Series Instance UID"), check_uid(study, "Study Instance UID")
