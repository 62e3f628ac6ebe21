"""The status page in a real browser: Debian's headless Chromium, driven through its chromedriver by Selenium,
loads GET / after an end-to-end run (storescu pushes a series, a label map lands in the inbox, the SEG is
delivered to a folder) and the test reads the DOM as the browser built it. A screenshot is kept."""

from __future__ import annotations

import base64
import gzip
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import synthetic as syn
from dcmtk import free_port, storescu
from http_client import http_get
from nodes import folder_destination, start_node, wait_for, write_config
from peers import HOST
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from synthetic import nib

from node.service.node import Node
from node.state.model import JobState

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
#: What the synthetic series says of its patient (tests/synthetic.py); none of it may reach the page.
PATIENT = ("Synthetic^Phantom", "Synthetic Phantom", "SYN-0001")
#: Flags that work as root in a container without a display, GPU or network to spare.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed (scripts/test.sh installs it)"),
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None, reason="chromium/chromedriver not installed (scripts/test.sh does)"
    ),
]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a profile of its own; quit (browser and driver) whatever the test did."""
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    # The Debian driver of the same build: Selenium's own manager would try to download one.
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    config = write_config(
        tmp_path / "node",
        free_port(),
        folder_destination(),
        receive_processes=1,
        sections={"http": {"port": free_port()}},
    )
    running = start_node(config)
    try:
        yield running
    finally:
        running.stop()


def drop_label_map(inbox: Path, series: syn.SeriesInfo, export_nifti: Path) -> syn.Phantom:
    """The phantom's labels on the export's grid, named after the series, renamed into the inbox when written."""
    phantom = syn.Phantom.fitting(series.grid)
    reference: Any = nib.load(export_nifti)
    labels = syn.labels_on_nifti_grid(reference, phantom, snap=series.grid).astype(np.uint8)
    name = f"{series.series_uid}.nii.gz"
    partial = inbox / f"{name}.part"
    partial.write_bytes(gzip.compress(nib.Nifti1Image(labels, reference.affine, reference.header).to_bytes()))
    syn.write_labels_json(inbox / f"{series.series_uid}.json", phantom.names)
    partial.rename(inbox / name)
    return phantom


def test_the_status_page_in_chromium_after_an_end_to_end_run(
    tmp_path: Path, node: Node, browser: webdriver.Chrome
) -> None:
    grid = syn.GridSpec.oblique(rows=24, cols=32, slices=10, row_spacing=1.1, col_spacing=0.8, slice_step=2.0)
    series = syn.write_series(grid, tmp_path / "dicom")
    data = node.paths.data
    assert storescu(node.port, series.paths, called_ae="SEGNODE").ok
    wait_for("the export", (data / "export" / f"{series.series_uid}.json").exists)
    phantom = drop_label_map(data / "inbox", series, data / "export" / f"{series.series_uid}.nii.gz")

    def sent() -> str | None:
        jobs = node.state.jobs.list_jobs()
        return jobs[0].seg_sop_uid if jobs and jobs[0].state is JobState.SENT else None

    seg_uid = wait_for("the SEG delivered to the folder destination", sent)
    assert isinstance(seg_uid, str) and len(list((data / "outgoing").iterdir())) == 1
    # The build stage draws the picture after queueing the sends: it may land a moment after the job is sent.
    wait_for("the QC picture", (data / "qc" / f"{seg_uid}.png").is_file)
    wait_for("the QC figures", (data / "qc" / f"{seg_uid}.json").is_file)

    browser.get(f"http://{HOST}:{node.http_port}/")
    wait_for("the thumbnail to load", lambda: browser.execute_script(LOADED))
    dom = browser.execute_script(READ_DOM)
    assert dom["title"].startswith("segnode SEGNODE")
    (job,) = dom["jobs"]
    assert (job["state"], job["matched"]) == ("sent", "name") and seg_uid in job["text"]
    assert "out: ok" in job["text"]
    assert seg_uid in dom["body"]
    assert dom["thumbnails"] == [{"src": f"/qc/{seg_uid}.png", "width": dom["thumbnails"][0]["width"]}]
    assert dom["thumbnails"][0]["width"] > 0  # the browser decoded the picture
    assert dom["linked"] == [f"/qc/{seg_uid}.png"]  # the thumbnail opens the full picture
    assert sorted(dom["segments"]) == sorted(phantom.names.values())
    assert series.series_uid in dom["series"]
    assert not [name for name in PATIENT if name in browser.page_source or name in dom["body"]]
    full = http_get(node.http_port, dom["linked"][0])
    assert full.status == 200 and full.body.startswith(b"\x89PNG")

    # The whole page, not just the window (Chromium's DevTools protocol; Selenium's own shot is the viewport).
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    screenshot = tmp_path / "status_page.png"
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000
    print(f"status page screenshot: {screenshot}")


#: Whether every thumbnail has been fetched and decoded.
LOADED = """
const images = [...document.querySelectorAll('img.qc-thumb')];
return images.length > 0 && images.every(img => img.complete && img.naturalWidth > 0);
"""

#: What the test reads of the page, as the browser built it.
READ_DOM = """
const texts = selector => [...document.querySelectorAll(selector)].map(e => e.textContent.trim());
return {
  title: document.title,
  body: document.body.innerText,
  jobs: [...document.querySelectorAll('tr.job')].map(row => ({
    state: row.dataset.state, matched: row.querySelector('.matched-by').textContent, text: row.innerText})),
  thumbnails: [...document.querySelectorAll('img.qc-thumb')].map(
    img => ({src: img.getAttribute('src'), width: img.naturalWidth})),
  linked: [...document.querySelectorAll('a > img.qc-thumb')].map(img => img.parentElement.getAttribute('href')),
  segments: texts('table.segments tr td:nth-child(2)'),
  series: texts('tr.series td:first-child').join(' '),
};
"""
