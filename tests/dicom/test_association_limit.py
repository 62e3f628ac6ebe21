"""[node] max_associations over every receiver process: a burst of DCMTK senders against a ReceiverPool."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import synthetic as syn
from dcmtk import HOST, association_args, dcmtk_env, echoscu, free_port
from nodes import folder_destination, wait_for, write_config

from node.config import load_config
from node.dicom.counters import ReceiverCounters
from node.dicom.receivers import ReceiverPool
from node.state import open_state

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed")

LIMIT = 4
SENDERS = 8
#: Each accepted sender sends its two instances this many times over, so that it holds its association for a few
#: seconds, while the other senders (started at the same moment) ask for theirs.
REPEAT = 150


def sender_command(calling_ae: str, port: int, files: tuple[Path, ...]) -> list[str]:
    """storescu sending ``files`` :data:`REPEAT` times over in one association."""
    options = ["-v", *association_args(calling_ae, "SEGNODE", 60), "--repeat", str(REPEAT)]
    return ["storescu", *options, HOST, str(port), *map(str, files)]


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[ReceiverPool]:
    sections: dict[str, dict[str, Any]] = {
        "node": {"max_associations": LIMIT},
        "disk": {"reserve_mb": 0, "max_usage_percent": 100.0},
    }
    config = load_config(write_config(tmp_path / "node", free_port(), folder_destination(), sections=sections))
    config.paths.data.mkdir(parents=True, exist_ok=True)
    receivers = ReceiverPool(config, 2, counters=ReceiverCounters())
    receivers.start()
    try:
        wait_for("the receivers to answer", lambda: echoscu(receivers.port, called_ae="SEGNODE").ok)
        yield receivers
    finally:
        receivers.stop()


def test_a_burst_gets_exactly_the_limit_and_the_surplus_is_rejected_as_transient(
    pool: ReceiverPool, tmp_path: Path
) -> None:
    series = [
        syn.write_series(syn.GridSpec.axial(rows=8, cols=8, slices=2), tmp_path / f"ct{k}") for k in range(SENDERS)
    ]
    logs = [tmp_path / f"storescu-{k}.log" for k in range(SENDERS)]
    base = pool.counters.snapshot()
    senders = [
        subprocess.Popen(
            sender_command(f"SENDER{k}", pool.port, info.paths),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=dcmtk_env(),
        )
        for k, (info, log) in enumerate(zip(series, logs, strict=True))
    ]
    try:
        codes = [sender.wait(120) for sender in senders]
    finally:
        for sender in senders:
            if sender.poll() is None:
                sender.kill()
    outputs = [log.read_text() for log in logs]
    accepted = [k for k, code in enumerate(codes) if code == 0]
    rejected = [k for k, code in enumerate(codes) if code != 0]
    assert len(accepted) == LIMIT, "\n".join(outputs)
    for k in rejected:
        assert "Association Rejected" in outputs[k] and "Rejected Transient" in outputs[k], outputs[k]
        assert "Local Limit Exceeded" in outputs[k], outputs[k]
    # Everything an accepted sender saw acknowledged is stored and indexed; a rejected one stored nothing.
    with open_state(pool.config.paths.data, pool.config.paths.database, node_id="test-reader") as state:
        for k, info in enumerate(series):
            stored = state.series.instances(info.series_uid)
            if k in accepted:
                assert sorted(p.stem for p in stored) == sorted(info.sop_uids)
            else:
                assert stored == []
    snapshot = pool.counters.snapshot()
    assert snapshot.associations_accepted - base.associations_accepted == LIMIT
    assert snapshot.associations_rejected["limit"] - base.associations_rejected["limit"] == SENDERS - LIMIT
    assert snapshot.instances_received - base.instances_received == LIMIT * 2 * REPEAT
    wait_for("every slot given back", lambda: pool.counters.snapshot().open_associations == 0, timeout=10)


def test_a_receiver_that_dies_with_open_associations_does_not_keep_their_slots(pool: ReceiverPool) -> None:
    holders = [
        subprocess.Popen(
            # Thousands of C-ECHOs in one association: it stays open until the sender is killed.
            ["echoscu", *association_args(f"HOLDER{k}", "SEGNODE", 60), "--repeat", "1000000", HOST, str(pool.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=dcmtk_env(),
        )
        for k in range(3)
    ]
    counters = pool.counters
    try:
        wait_for("three open associations", lambda: counters.snapshot().open_associations == 3)
        victim = max((1, 2), key=counters.open_in)  # a receiver holding at least one of them
        survivor = 3 - victim
        assert counters.open_in(victim) > 0
        os.kill(pool.pids[victim - 1], signal.SIGKILL)
        wait_for("the receiver to die", lambda: not pool._workers[victim].is_alive(), timeout=10)
        pool.check()
        assert counters.open_in(victim) == 0
        assert counters.snapshot().open_associations == counters.open_in(survivor)
    finally:
        for holder in holders:
            holder.kill()
            holder.wait(10)
    wait_for("every slot given back", lambda: counters.snapshot().open_associations == 0, timeout=20)
    assert echoscu(pool.port, called_ae="SEGNODE").ok
