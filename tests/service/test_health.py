"""GET /healthz (node/service/health.py): 200 while the node does its job, 503 naming what stopped it.

Every condition is real: a stage thread that ended or stepped too long ago, a [disk] reserve above the disk's
free space, the database locked by another writer, the DICOM listener stopped. Only a stage's ``step`` is
replaced, our own seam, to make it end or hang.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dcmtk import free_port
from http_client import HttpAnswer, http_get
from nodes import Burst, folder_destination, start_node, wait_for, write_config

from node.diskspace import MIB
from node.service.node import Node

pytestmark = pytest.mark.skipif(
    shutil.which("storescu") is None, reason="DCMTK not installed (scripts/test.sh installs it)"
)

STAGES = {"completion", "export", "intake", "build", "deliver", "retention"}


def config(tmp_path: Path, **sections: dict[str, Any]) -> Path:
    return write_config(
        tmp_path / "node",
        free_port(),
        folder_destination(),
        receive_processes=1,
        sections={"http": {"port": free_port()}, **sections},
    )


@pytest.fixture
def burst(tmp_path: Path) -> Iterator[Callable[..., Burst]]:
    started: list[Burst] = []

    def start(**sections: dict[str, Any]) -> Burst:
        started.append(Burst(config(tmp_path, **sections)))
        return started[-1]

    yield start
    for node in started:
        node.stop()


def healthz(node: Node) -> HttpAnswer:
    return http_get(node.http_port, "/healthz")


def status_is(node: Node, status: int) -> Callable[[], HttpAnswer | None]:
    def check() -> HttpAnswer | None:
        answer = healthz(node)
        return answer if answer.status == status else None

    return check


def test_a_running_node_is_healthy_and_says_so_part_by_part(tmp_path: Path, running: list[Node]) -> None:
    node = start_node(config(tmp_path))
    running.append(node)
    answer = wait_for("/healthz 200", status_is(node, 200))
    assert isinstance(answer, HttpAnswer) and answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert body["status"] == "ok" and body["problems"] == []
    assert body["listening"] is True
    assert body["database"] == {"writable": True, "problem": None}
    assert body["disk"]["ok"] is True and body["disk"]["free_bytes"] > 0
    assert body["disk"]["reserve_bytes"] == 1024 * MIB  # the [disk] default
    assert body["oldest_pending_job_seconds"] is None
    assert set(body["stages"]) == STAGES
    assert all(s["running"] and not s["stalled"] for s in body["stages"].values())
    assert http_get(node.http_port, "/healthz", method="HEAD").status == 200


def test_a_stage_whose_thread_ended_makes_the_node_unhealthy(
    tmp_path: Path, running: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start_node(config(tmp_path))
    running.append(node)
    wait_for("/healthz 200", status_is(node, 200))
    (deliver,) = [s for s in node.stages if s.name == "deliver"]

    def broken() -> int:
        raise RuntimeError("a bug the stage does not handle")

    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    monkeypatch.setattr(deliver, "step", broken)
    answer = wait_for("/healthz 503", status_is(node, 503))
    assert isinstance(answer, HttpAnswer)
    assert len(died) == 1 and isinstance(died[0], RuntimeError)
    body = answer.json()
    assert body["status"] == "unhealthy" and body["problems"] == ["stage deliver has stopped"]
    assert body["stages"]["deliver"]["running"] is False and body["stages"]["build"]["running"] is True


def test_a_stage_stepping_past_stall_seconds_is_stalled_until_it_beats_again(
    tmp_path: Path, running: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start_node(config(tmp_path, node={"stall_seconds": 1.0}))
    running.append(node)
    wait_for("/healthz 200", status_is(node, 200))
    (build,) = [s for s in node.stages if s.name == "build"]
    release = threading.Event()
    real_step = build.step

    def hanging() -> int:
        release.wait(60)
        return real_step()

    monkeypatch.setattr(build, "step", hanging)
    try:
        answer = wait_for("/healthz 503 with build stalled", status_is(node, 503))
        assert isinstance(answer, HttpAnswer)
        body = answer.json()
        assert body["stages"]["build"]["stalled"] is True and body["stages"]["build"]["running"] is True
        assert any(p.startswith("stage build stalled: no heartbeat for") for p in body["problems"])
    finally:
        release.set()
    monkeypatch.setattr(build, "step", real_step)
    wait_for("/healthz 200 once build beats again", status_is(node, 200))


def test_the_disk_reserve_crossed_makes_the_node_unhealthy(tmp_path: Path, burst: Callable[..., Burst]) -> None:
    free_mib = shutil.disk_usage(tmp_path).free // MIB
    node = burst(disk={"reserve_mb": free_mib + 1024}).node
    answer = healthz(node)
    assert answer.status == 503
    body = answer.json()
    assert body["disk"]["ok"] is False and body["disk"]["reserve_bytes"] == (free_mib + 1024) * MIB
    assert body["disk"]["free_bytes"] < body["disk"]["reserve_bytes"]
    (problem,) = body["problems"]
    assert problem.startswith("disk: ") and "below the [disk] reserve" in problem


def test_a_database_locked_by_another_writer_is_not_writable(tmp_path: Path, burst: Callable[..., Burst]) -> None:
    node = burst().node
    assert healthz(node).status == 200
    other = sqlite3.connect(node.paths.database, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        answer = healthz(node)
    finally:
        other.close()
    assert answer.status == 503
    body = answer.json()
    assert body["database"]["writable"] is False and "database is locked" in body["database"]["problem"]
    assert healthz(node).status == 200


def test_a_stopped_listener_makes_the_node_unhealthy(tmp_path: Path, burst: Callable[..., Burst]) -> None:
    node = burst().node
    assert healthz(node).json()["listening"] is True
    assert node.scp is not None
    node.scp.stop()
    answer = healthz(node)
    assert answer.status == 503 and answer.json()["problems"] == ["the DICOM listener is not running"]


def test_a_pool_of_receiver_processes_is_listening_while_every_receiver_lives(
    tmp_path: Path, running: list[Node]
) -> None:
    path = write_config(
        tmp_path / "node",
        free_port(),
        folder_destination(),
        receive_processes=2,
        sections={"http": {"port": free_port()}},
    )
    node = start_node(path)
    running.append(node)
    assert healthz(node).json()["listening"] is True
    assert node.receivers is not None
    node.receivers.stop()
    assert healthz(node).json()["listening"] is False


def test_the_oldest_unfinished_job_is_reported_but_a_backlog_is_no_fault(
    tmp_path: Path, burst: Callable[..., Burst]
) -> None:
    node = burst().node
    item = tmp_path / "waiting.nii.gz"
    item.write_bytes(b"not yet looked at")
    node.state.jobs.create(item, "file", now=node.context.clock() - 100.0)
    answer = healthz(node)
    assert answer.status == 200 and answer.json()["oldest_pending_job_seconds"] >= 100.0
