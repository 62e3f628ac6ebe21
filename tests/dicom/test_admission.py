"""Who gets an association (node/dicom/admission.py with access.py and counters.py), against DCMTK, pynetdicom
SCUs and hand-written PDUs: the A-ASSOCIATE-RJ fields, the log line, the counters, nothing stored when rejected,
every path giving back its association slot, and the [disk] guard refusing associations and C-STOREs."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pydicom
import pytest
import synthetic as syn
from dcmtk import HOST, echoscu, free_port, requires_dcmtk, storescu
from nodes import folder_destination, wait_for, write_config
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from raw_pdu import ASSOCIATE_AC, associate_rq, read_answer, request

from node.config import Config, load_config
from node.dicom.access import AccessPolicy, Rejection
from node.dicom.counters import ReceiverCounters
from node.dicom.entity import NetworkSettings
from node.dicom.scp import STATUS_OUT_OF_RESOURCES, StorageSCP
from node.diskspace import MIB
from node.state import open_state
from node.state.instances import InstanceStore

AE_TITLE = "SEGNODE"
Overrides = Mapping[str, Mapping[str, Any]]


def node_config(folder: Path, sections: Overrides | None = None) -> Config:
    merged: dict[str, dict[str, Any]] = {"disk": {"reserve_mb": 0, "max_usage_percent": 100.0}}
    for name, keys in (sections or {}).items():
        merged.setdefault(name, {}).update(keys)
    return load_config(write_config(folder, free_port(), folder_destination(), receive_processes=1, sections=merged))


class Running:
    """An in-process SCP made from a config file, with counters of its own."""

    def __init__(self, folder: Path, sections: Overrides | None = None) -> None:
        self.folder = folder
        self.config = node_config(folder, sections)
        self.counters = ReceiverCounters(rows=1)
        self.scp = StorageSCP.from_config(self.config, counters=self.counters)
        self.scp.start()

    @property
    def port(self) -> int:
        return self.scp.port

    def stored(self) -> list[Path]:
        return sorted(p for p in (self.config.paths.data / "instances").rglob("*") if p.is_file())

    def indexed(self, series_uid: str) -> int:
        with open_state(self.config.paths.data, self.config.paths.database, node_id="test-reader") as state:
            row = state.series.get(series_uid)
        return 0 if row is None else row.instance_count

    def reconfigure(self, sections: Overrides) -> None:
        """Write the config again with ``sections`` and apply it, as a reload does."""
        self.config = node_config(self.folder, sections)
        self.scp.apply(self.config)

    def stop(self) -> None:
        self.scp.stop(drain_seconds=1.0)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    made: list[Running] = []

    def make(sections: Overrides | None = None) -> Running:
        made.append(Running(tmp_path / f"node{len(made)}", sections))
        return made[-1]

    yield make
    for node in made:
        node.stop()


def small_series(folder: Path, slices: int = 2) -> syn.SeriesInfo:
    return syn.write_series(syn.GridSpec.axial(rows=16, cols=16, slices=slices), folder)


def rejections(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "node.dicom.admission" and r.levelno == logging.WARNING]


def open_slots(node: Running) -> int:
    return node.counters.snapshot().open_associations


# -- access policy, end to end --------------------------------------------------------------------------------------


@requires_dcmtk
def test_a_calling_aet_not_allowed_is_rejected_and_stores_nothing(
    running: Callable[..., Running], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = running({"node": {"allowed_calling_aets": ["PACS", "CT1"]}})
    info = small_series(tmp_path / "ct")
    caplog.set_level(logging.WARNING, logger="node.dicom.admission")
    result = storescu(node.port, list(info.paths), called_ae=AE_TITLE, calling_ae="INTRUDER")
    assert not result.ok
    assert "Rejected Permanent, Source: Service User" in result.output
    assert "Calling AE Title Not Recognized" in result.output
    assert result.statuses() == []
    assert node.stored() == [] and node.indexed(info.series_uid) == 0
    (line,) = rejections(caplog)
    assert "127.0.0.1:" in line and "calling INTRUDER" in line and "called SEGNODE" in line
    assert "allowed_calling_aets" in line
    # An allowed title gets through, padded or not.
    assert storescu(node.port, list(info.paths), called_ae=AE_TITLE, calling_ae="CT1").statuses() == [0, 0]
    assert node.indexed(info.series_uid) == 2
    snapshot = node.counters.snapshot()
    assert snapshot.associations_rejected["calling_aet"] == 1 and snapshot.associations_accepted == 1
    assert snapshot.instances_received == 2 and snapshot.bytes_received > 0


@requires_dcmtk
def test_a_called_aet_other_than_ours_is_rejected_unless_not_required(
    running: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    node = running()
    caplog.set_level(logging.WARNING, logger="node.dicom.admission")
    result = echoscu(node.port, called_ae="NOT-US", calling_ae="PACS")
    assert not result.ok and "Called AE Title Not Recognized" in result.output
    (line,) = rejections(caplog)
    assert "calling PACS" in line and "called NOT-US" in line
    assert node.counters.snapshot().associations_rejected["called_aet"] == 1
    lenient = running({"node": {"require_called_aet": False}})
    assert echoscu(lenient.port, called_ae="NOT-US").ok


@pytest.mark.parametrize(
    ("sections", "calling", "called", "expected"),
    [
        ({"node": {"allowed_sources": ["10.0.0.0/8", "fd00::/8"]}}, "PACS", AE_TITLE, (1, 1, 1)),
        ({"node": {"allowed_calling_aets": ["PACS"]}}, "OTHER", AE_TITLE, (1, 1, 3)),
        ({}, "PACS", "ELSEWHERE", (1, 1, 7)),
    ],
    ids=["source", "calling-aet", "called-aet"],
)
def test_rejections_carry_the_ps3_8_result_source_and_reason(
    running: Callable[..., Running], sections: Overrides, calling: str, called: str, expected: tuple[int, int, int]
) -> None:
    node = running(sections)
    assert request(HOST, node.port, called, calling).rejection == expected
    assert open_slots(node) == 0


def test_allowed_sources_admit_loopback_in_either_notation(running: Callable[..., Running]) -> None:
    for sources in (["127.0.0.0/8"], ["::ffff:127.0.0.1"]):
        node = running({"node": {"allowed_sources": sources}})
        assert request(HOST, node.port, AE_TITLE, "PACS").pdu_type == ASSOCIATE_AC
    assert node.counters.snapshot().associations_accepted == 1


class FailingPolicy(AccessPolicy):
    """A policy that cannot decide: admission must fail closed, not leave it to pynetdicom (whose checks are off)."""

    def check(self, address: str, calling_aet: str, called_aet: str) -> Rejection | None:
        raise RuntimeError("policy exploded")


def test_an_admission_that_fails_rejects_transiently_and_takes_no_slot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    counters = ReceiverCounters(rows=1)
    policy = FailingPolicy(AE_TITLE)
    scp = StorageSCP(InstanceStore(data), data / "db.sqlite3", bind=HOST, port=0, counters=counters, access=policy)
    caplog.set_level(logging.DEBUG, logger="node.dicom.admission")
    with scp:
        assert request(HOST, scp.port, AE_TITLE, "ANYONE").rejection == (2, 3, 1)
    snapshot = counters.snapshot()
    assert snapshot.associations_accepted == 0 and snapshot.open_associations == 0
    errors = [r for r in caplog.records if r.name == "node.dicom.admission" and r.levelno == logging.ERROR]
    (line,) = [r.getMessage() for r in errors]
    assert line.startswith("admission failed for an association from 127.0.0.1:") and "rejecting it" in line
    assert line.endswith("RuntimeError: policy exploded") and errors[0].exc_info is None
    debug = [r for r in caplog.records if r.name == "node.dicom.admission" and r.levelno == logging.DEBUG]
    assert any(r.exc_info is not None for r in debug)  # the traceback, at debug only


# -- the association limit and its slots --------------------------------------------------------------------------


def scu(calling_ae: str = "PYSCU") -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(syn.CT_IMAGE_STORAGE, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae


def test_over_the_limit_is_rejected_transient_and_every_end_gives_the_slot_back(
    running: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    node = running({"node": {"max_associations": 1}})
    caplog.set_level(logging.WARNING, logger="node.dicom.admission")
    ends: dict[str, Callable[[Any], None]] = {
        "release": lambda assoc: assoc.release(),
        "abort": lambda assoc: assoc.abort(),
        "drop": lambda assoc: assoc.dul.socket.socket.close(),  # the peer vanishes without a PDU
    }
    for how, end in ends.items():
        held = scu().associate(HOST, node.port, ae_title=AE_TITLE)
        assert held.is_established, how
        assert open_slots(node) == 1
        assert request(HOST, node.port, AE_TITLE, "SECOND").rejection == (2, 3, 2), how
        end(held)
        wait_for(f"the slot back after {how}", lambda: open_slots(node) == 0, timeout=20)
        assert request(HOST, node.port, AE_TITLE, "THIRD").pdu_type == ASSOCIATE_AC, how
    snapshot = node.counters.snapshot()
    assert snapshot.associations_rejected["limit"] == 3 and snapshot.associations_accepted == 6
    assert all("max_associations" in line and "calling SECOND" in line for line in rejections(caplog))


def test_an_idle_association_times_out_and_gives_its_slot_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    counters = ReceiverCounters(rows=1)
    network = NetworkSettings(acse_timeout=1.0, network_timeout=1.0)
    scp = StorageSCP(InstanceStore(data), data / "db.sqlite3", bind=HOST, port=0, counters=counters, network=network)
    with scp:
        with socket.create_connection((HOST, scp.port), timeout=20) as sock:
            sock.sendall(associate_rq(AE_TITLE, "IDLER"))
            assert read_answer(sock).pdu_type == ASSOCIATE_AC
            assert counters.snapshot().open_associations == 1
            started = time.monotonic()
            # Then nothing: the network timeout aborts the association (A-ABORT, then the connection closes).
            while sock.recv(4096):
                pass
            assert time.monotonic() - started < 15
        wait_for("the slot back after the timeout", lambda: counters.snapshot().open_associations == 0, timeout=10)
        # A connection that never even sends its A-ASSOCIATE-RQ takes no slot, and is dropped after the ACSE timeout.
        with socket.create_connection((HOST, scp.port), timeout=20) as silent:
            assert silent.recv(4096) == b""
        assert counters.snapshot().open_associations == 0
        assert counters.snapshot().associations_accepted == 1


# -- the disk guard -------------------------------------------------------------------------------------------------


def beyond_free_space(folder: Path) -> int:
    """A [disk] reserve_mb larger than the free space on ``folder``'s disk: the guard reports it full."""
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize // MIB + 1024


@requires_dcmtk
def test_a_full_disk_rejects_associations_and_refuses_stores_until_space_returns(
    running: Callable[..., Running], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full = {"disk": {"reserve_mb": beyond_free_space(tmp_path)}}
    node = running(full)
    info = small_series(tmp_path / "ct", slices=3)
    caplog.set_level(logging.WARNING)
    rejected = storescu(node.port, list(info.paths), called_ae=AE_TITLE)
    assert not rejected.ok and "Rejected Transient" in rejected.output
    assert "Temporary Congestion" in rejected.output or "temporary-congestion" in rejected.output.lower()
    assert node.stored() == []
    assert any("disk full" in line and "reserve" in line for line in rejections(caplog))

    node.reconfigure({"disk": {"reserve_mb": 0}})  # space is back: associations are accepted again
    assoc = scu().associate(HOST, node.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        node.reconfigure(full)  # the disk fills while the association is open
        assert assoc.send_c_store(pydicom.dcmread(info.paths[0])).Status == STATUS_OUT_OF_RESOURCES
        assert node.stored() == [] and node.indexed(info.series_uid) == 0
        node.reconfigure({"disk": {"reserve_mb": 0}})
        assert assoc.send_c_store(pydicom.dcmread(info.paths[1])).Status == 0
    finally:
        assoc.release()
    assert storescu(node.port, [info.paths[2]], called_ae=AE_TITLE).statuses() == [0]
    assert node.indexed(info.series_uid) == 2 and len(node.stored()) == 2
    snapshot = node.counters.snapshot()
    assert snapshot.associations_rejected["disk"] == 1
    assert snapshot.stores_refused == {"out_of_resources": 1, "cannot_understand": 0, "processing_failure": 0}
    assert snapshot.instances_received == 2
    # The slot comes back when the association's thread ends, a moment after storescu has seen the release.
    wait_for("the last association's slot", lambda: node.counters.snapshot().open_associations == 0, timeout=10)
