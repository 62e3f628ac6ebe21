"""Upper-layer PDUs written and read by hand (PS3.8 9.3), so that tests of the SCP do not trust pynetdicom."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


def _item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def associate_rq(
    called: str, calling: str, abstract_syntax: str = VERIFICATION, transfer_syntax: str = IMPLICIT_VR_LITTLE_ENDIAN
) -> bytes:
    """A minimal A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    context = (
        struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x30, abstract_syntax.encode()) + _item(0x40, transfer_syntax.encode())
    )
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.8.498.1")
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + _item(0x20, context)
        + _item(0x50, user)
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


@dataclass(frozen=True)
class Answer:
    """The first PDU the acceptor sent back: its type, and for an A-ASSOCIATE-RJ its three fields (PS3.8 9.3.4)."""

    pdu_type: int
    body: bytes

    @property
    def rejection(self) -> tuple[int, int, int]:
        assert self.pdu_type == ASSOCIATE_RJ, f"PDU type {self.pdu_type:#04x}, not an A-ASSOCIATE-RJ"
        return self.body[1], self.body[2], self.body[3]


def read_answer(sock: socket.socket) -> Answer:
    header = recv_exactly(sock, 6)
    assert len(header) == 6, f"the connection closed after {len(header)} bytes"
    body = recv_exactly(sock, struct.unpack(">I", header[2:6])[0])
    return Answer(header[0], body)


def request(host: str, port: int, called: str, calling: str, *, timeout: float = 20.0) -> Answer:
    """Send an A-ASSOCIATE-RQ for Verification and return the answer (the connection is then closed)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(associate_rq(called, calling))
        return read_answer(sock)
