"""GET /metrics (node/service/metrics.py), parsed with Prometheus' own parser, moved by real peers.

DCMTK's storescu sends the series; the node runs in burst mode (tests/nodes.py), so what a scrape shows after
``run`` is what the pipeline did. One test delivers to Orthanc as the PACS, with the stages on their threads.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import synthetic as syn
from dcmtk import free_port, storescu
from http_client import sample, scrape
from nodes import Burst, dicom_destination, folder_destination, start_node, wait_for, write_config
from orthanc import OrthancServer, orthanc_binary
from synthetic import nib

from node.service.metrics import Metrics

pytestmark = pytest.mark.skipif(
    shutil.which("storescu") is None, reason="DCMTK not installed (scripts/test.sh installs it)"
)

#: Moves a burst node's clock past every series' quiet period.
QUIET = 3600.0


@pytest.fixture
def series(tmp_path: Path) -> syn.SeriesInfo:
    grid = syn.GridSpec.oblique(rows=12, cols=16, slices=6, row_spacing=1.1, col_spacing=0.8, slice_step=2.0)
    return syn.write_series(grid, tmp_path / "dicom", instance_numbers="shuffled")


@pytest.fixture
def burst(tmp_path: Path) -> Iterator[Callable[..., Burst]]:
    started: list[Burst] = []

    def start(destinations: str = "", **sections: dict[str, object]) -> Burst:
        config = write_config(
            tmp_path / f"node{len(started)}",
            free_port(),
            destinations or folder_destination(),
            sections={"http": {"port": free_port()}, **sections},
        )
        started.append(Burst(config))
        return started[-1]

    yield start
    for node in started:
        node.stop()


def label_map(data: Path, series: syn.SeriesInfo) -> bytes:
    export = nib.load(data / "export" / f"{series.series_uid}.nii.gz")
    labels = syn.labels_on_nifti_grid(export, syn.Phantom.fitting(series.grid), snap=series.grid).astype(np.uint8)
    return gzip.compress(nib.Nifti1Image(labels, export.affine, export.header).to_bytes())


def drop(inbox: Path, name: str, data: bytes) -> None:
    partial = inbox / f"{name}.part"
    partial.write_bytes(data)
    partial.rename(inbox / name)


def test_receiving_a_series_counts_instances_bytes_and_associations(
    burst: Callable[..., Burst], series: syn.SeriesInfo
) -> None:
    node = burst()
    port = node.node.http_port
    before = scrape(port)
    assert sample(before, "segnode_instances_received_total") == 0
    assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
    assert not storescu(node.port, series.paths[:1], called_ae="SOMEONE").ok  # [node] require_called_aet
    after = scrape(port)
    assert sample(after, "segnode_instances_received_total") == len(series.paths)
    pixels = series.grid.rows * series.grid.cols * 2 * len(series.paths)
    assert sample(after, "segnode_received_bytes_total") > pixels
    assert sample(after, "segnode_associations_accepted_total") == 1
    assert sample(after, "segnode_associations_rejected_total", reason="called_aet") == 1
    assert sample(after, "segnode_associations_rejected_total", reason="disk") == 0
    assert sample(after, "segnode_stores_refused_total", status="out_of_resources") == 0
    assert sample(after, "segnode_open_associations") == 0


def test_a_series_made_into_a_seg_and_sent_moves_the_pipeline_metrics(
    burst: Callable[..., Burst], series: syn.SeriesInfo
) -> None:
    node = burst()
    port = node.node.http_port
    assert sample(scrape(port), "segnode_segs_sent_total", destination="out") == 0  # known before any send
    assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
    node.run(later=QUIET)
    exported = scrape(port)
    assert sample(exported, "segnode_series_completed_total") == 1
    assert sample(exported, "segnode_series", state="exported") == 1
    assert sample(exported, "segnode_segs_built_total") == 0
    drop(node.data / "inbox", f"{series.series_uid}.nii.gz", label_map(node.data, series))
    node.run()
    sent = scrape(port)
    assert sample(sent, "segnode_segs_built_total") == 1
    assert sample(sent, "segnode_build_seconds_count") == 1
    assert sample(sent, "segnode_segs_sent_total", destination="out") == 1
    assert sample(sent, "segnode_jobs", state="sent") == 1 and sample(sent, "segnode_jobs", state="pending") == 0
    assert sample(sent, "segnode_end_to_end_seconds_count", destination="out") == 1
    # Measured on the node's clock from the series' last instance, so it includes the quiet period moved past.
    assert sample(sent, "segnode_end_to_end_seconds_sum", destination="out") >= QUIET
    assert sample(sent, "segnode_sends_failed_total", destination="out") == 0
    assert sample(sent, "segnode_disk_free_bytes") > 0
    assert {"completion", "export", "intake", "build", "deliver", "retention"} == {
        dict(labels)["stage"] for name, labels in sent if name == "segnode_stage_heartbeat_age_seconds"
    }


def test_a_destination_that_is_down_counts_retries_then_the_failure(
    burst: Callable[..., Burst], series: syn.SeriesInfo
) -> None:
    closed = free_port()  # nothing listens there
    down = f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {closed}\n'
    node = burst(down, send={"max_attempts": 2, "backoff_initial": 1.0, "backoff_max": 1.0, "timeout": 2})
    port = node.node.http_port
    assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
    node.run(later=QUIET)
    drop(node.data / "inbox", f"{series.series_uid}.nii.gz", label_map(node.data, series))
    node.run()
    first = scrape(port)
    assert sample(first, "segnode_segs_built_total") == 1
    assert sample(first, "segnode_send_retries_total", destination="pacs") == 1
    assert sample(first, "segnode_sends_failed_total", destination="pacs") == 0
    node.run(later=10.0)  # the second and last attempt is due
    second = scrape(port)
    assert sample(second, "segnode_send_retries_total", destination="pacs") == 1
    assert sample(second, "segnode_sends_failed_total", destination="pacs") == 1
    assert sample(second, "segnode_segs_sent_total", destination="pacs") == 0
    assert sample(second, "segnode_jobs", state="failed") == 1


def test_each_node_has_its_own_registry() -> None:
    first, second = Metrics(["out"]), Metrics(["out"])
    first.seg_sent("out", 12.0)
    first.series_failed()
    assert b'segnode_segs_sent_total{destination="out"} 1.0' in first.render()
    assert b'segnode_segs_sent_total{destination="out"} 0.0' in second.render()
    assert b"segnode_series_failed_total 0.0" in second.render()


def test_unreadable_receiver_counters_leave_the_other_metrics() -> None:
    metrics = Metrics()

    def gone() -> object:
        raise OSError("shared memory gone")

    metrics.watch_receivers(gone)  # type: ignore[arg-type]
    page = metrics.render()
    assert b"segnode_segs_built_total 0.0" in page and b"segnode_instances_received" not in page


@pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed (scripts/test.sh installs it)")
def test_a_seg_acknowledged_by_orthanc_is_counted_as_sent(tmp_path: Path, series: syn.SeriesInfo) -> None:
    with OrthancServer(tmp_path) as orthanc:
        http_port = free_port()
        config = write_config(
            tmp_path / "node", free_port(), dicom_destination(orthanc), sections={"http": {"port": http_port}}
        )
        node = start_node(config)
        try:
            assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
            data = node.paths.data
            wait_for("the export", (data / "export" / f"{series.series_uid}.json").exists)
            drop(data / "inbox", f"{series.series_uid}.nii.gz", label_map(data, series))
            wait_for(
                "the SEG counted as sent to the PACS",
                lambda: sample(scrape(http_port), "segnode_segs_sent_total", destination="pacs") == 1,
            )
            assert len(orthanc.find_seg_instances()) == 1
            samples = scrape(http_port)
            assert sample(samples, "segnode_end_to_end_seconds_count", destination="pacs") == 1
            assert sample(samples, "segnode_send_retries_total", destination="pacs") == 0
        finally:
            node.stop()
