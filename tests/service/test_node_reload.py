"""SIGHUP reload of a running node: new destinations, access lists and labels apply, open associations go on,
and a bad file keeps the configuration already running, saying why."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import synthetic as syn
from dcmtk import echoscu, free_port, storescu
from nodes import Burst, folder_destination, run_node_process, wait_for, write_config
from synthetic import nib

from node.errors import ConfigError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed (scripts/test.sh installs it)"),
]

GRID = syn.GridSpec.axial(rows=16, cols=16, slices=6, row_spacing=1.0, col_spacing=1.0, slice_step=2.0)


def write(folder: Path, port: int, destinations: str, **node: Any) -> Path:
    sections = {"node": node, "disk": {"reserve_mb": 0, "max_usage_percent": 100.0}}
    return write_config(folder, port, destinations, receive_processes=1, sections=sections)


def second_folder() -> str:
    return '[[destinations]]\nname = "second"\nfolder = "data/second"\n'


def echo_ok(port: int, calling_ae: str) -> bool:
    return echoscu(port, called_ae="SEGNODE", calling_ae=calling_ae, timeout=10).ok


def test_reload_applies_access_lists_and_destinations_and_keeps_the_old_file_when_the_new_one_is_bad(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write(tmp_path / "node", port, folder_destination(), allowed_calling_aets=["GOOD"])
    node = Burst(config)
    try:
        assert echo_ok(port, "GOOD") and not echo_ok(port, "OTHER")

        write(tmp_path / "node", port, folder_destination() + second_folder(), allowed_calling_aets=["OTHER"])
        node.node.reload()
        assert echo_ok(port, "OTHER") and not echo_ok(port, "GOOD")

        series = syn.write_series(GRID, tmp_path / "dicom")
        assert storescu(port, series.paths, called_ae="SEGNODE", calling_ae="OTHER").ok
        node.run(later=5.0)
        exported = nib.load(node.data / "export" / f"{series.series_uid}.nii.gz")
        labels = syn.labels_on_nifti_grid(exported, syn.Phantom.fitting(GRID), snap=GRID).astype(np.uint8)
        staged = tmp_path / f"{series.series_uid}.nii.gz"
        nib.save(nib.Nifti1Image(labels, exported.affine, exported.header), staged)
        shutil.move(staged, node.data / "inbox" / staged.name)
        wait_for("the SEG", lambda: node.run(later=1.0) or list((node.data / "second").glob("*.dcm")))
        first = sorted(p.name for p in (node.data / "outgoing").glob("*.dcm"))
        second = sorted(p.name for p in (node.data / "second").glob("*.dcm"))
        assert first and first == second  # the destination added by the reload got the SEG too

        (tmp_path / "node" / "node.toml").write_text("[node]\nmax_associations = 0\n")
        with pytest.raises(ConfigError, match=r"\[node\] max_associations.*expected a number from 1 to 1000"):
            node.node.reload()
        assert echo_ok(port, "OTHER") and not echo_ok(port, "GOOD")  # the running configuration stays
        assert [d.name for d in node.node.context.config.destinations] == ["out", "second"]
    finally:
        node.stop()


def test_sighup_keeps_open_associations_and_a_bad_reload_keeps_the_node_running(tmp_path: Path) -> None:
    port = free_port()
    config = write(tmp_path / "node", port, folder_destination(), allowed_calling_aets=["GOOD"])
    log = tmp_path / "node.log"
    process = run_node_process(config, log)
    try:
        wait_for("the node to answer GOOD", lambda: echo_ok(port, "GOOD"))
        series = syn.write_series(GRID, tmp_path / "dicom")
        files = series.paths * 40  # one association long enough to be open across the reload
        result: list[Any] = []
        sender = threading.Thread(
            target=lambda: result.append(storescu(port, files, called_ae="SEGNODE", calling_ae="GOOD", timeout=120))
        )
        sender.start()
        wait_for("the association to be storing", lambda: "stored" in log.read_text(errors="replace"))
        write(tmp_path / "node", port, folder_destination(), allowed_calling_aets=["OTHER"])
        process.send_signal(signal.SIGHUP)
        wait_for("the reload", lambda: "reloaded" in log.read_text(errors="replace"))
        sender.join(180)
        assert result and result[0].ok, result[0].output[-2000:] if result else "storescu did not finish"
        assert set(result[0].statuses()) == {0}  # every C-STORE of the open association succeeded
        assert echo_ok(port, "OTHER") and not echo_ok(port, "GOOD")

        (tmp_path / "node" / "node.toml").write_text("[node]\nport = 'eleven'\n")
        process.send_signal(signal.SIGHUP)
        wait_for("the refused reload", lambda: "reload failed, the running configuration stays" in log.read_text())
        assert "[node] port: expected an integer" in log.read_text()
        assert process.poll() is None and echo_ok(port, "OTHER")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
