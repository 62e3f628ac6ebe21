"""The QC step of the build: for every SEG the node builds, its QC picture and figures in ``data/qc``.

``data/qc/<SOPInstanceUID>.png`` (:func:`node.convert.qc.qc_figure`) and ``<SOPInstanceUID>.json``
(:func:`node.convert.qc.figures_json`) are drawn from the SEG file as written, read back from disk, over the
source pixels the export reads; with ``[qc] send = true`` also ``<SOPInstanceUID>.sc.dcm``, the picture as a
Secondary Capture image (:mod:`node.convert.qc_sc`) that the delivery sends along with the SEG to every DICOM
destination (:mod:`node.pipeline.deliver`).

A QC picture is a courtesy, never a condition: whatever goes wrong here is logged as one warning and the SEG goes
on as if QC were off. Patient name and ID appear in the picture only with ``[logging] include_phi``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from node.config import Config
from node.convert import write_dataset_atomically
from node.convert.qc_files import draw_written_seg, save_picture
from node.convert.qc_sc import qc_secondary_capture
from node.convert.series import SourceSeries

log = logging.getLogger(__name__)

#: Suffix of the Secondary Capture file next to a SEG's picture.
SC_SUFFIX = ".sc.dcm"


def qc_folder(config: Config) -> Path:
    """Where QC pictures, figures and Secondary Capture images are kept: ``<[paths] data>/qc``."""
    return config.paths.data / "qc"


def qc_image_path(config: Config, seg_sop_uid: str) -> Path:
    """The Secondary Capture file of a SEG (it exists only when ``[qc] send`` was on when the SEG was built)."""
    return qc_folder(config) / f"{seg_sop_uid}{SC_SUFFIX}"


def qc_paths(config: Config, seg_sop_uid: str) -> list[Path]:
    """Every file the QC step may write for a SEG: its picture, figures and Secondary Capture image."""
    folder = qc_folder(config)
    return [folder / f"{seg_sop_uid}.png", folder / f"{seg_sop_uid}.json", qc_image_path(config, seg_sop_uid)]


@dataclass(frozen=True)
class QcFiles:
    """What the QC step wrote for one SEG."""

    picture: Path
    figures: Path
    #: The Secondary Capture image, or None without ``[qc] send``.
    image: Path | None
    seconds: float


def write_qc(config: Config, seg_path: Path, series: SourceSeries) -> QcFiles | None:
    """Write the QC files of the SEG at ``seg_path`` (built on ``series``); None when QC is off or failed.

    Never raises: a picture that cannot be drawn must not hold up the SEG it would show.
    """
    if not config.qc.enabled:
        return None
    started = time.monotonic()
    try:
        return _write(config, seg_path, series, started)
    except Exception as exc:  # QC is best effort by design; the one line names the SEG and what went wrong
        # The exception itself, not its text: a library's message may quote a header value, and the log
        # formatter redacts what it can tell is foreign.
        log.warning("%s: no QC picture: %s", seg_path.stem, exc)
        log.debug("QC picture of %s failed", seg_path.name, exc_info=True)
        return None


def _write(config: Config, seg_path: Path, series: SourceSeries, started: float) -> QcFiles:
    # The SEG as a receiver gets it: a SEG that went wrong on its way to disk looks wrong in its own picture.
    include_phi = config.logging.include_phi
    seg, picture = draw_written_seg(seg_path, series, include_phi=include_phi)
    uid = str(seg.SOPInstanceUID)
    folder = qc_folder(config)
    image = None
    if config.qc.send:
        # Written before the picture: a picture in data/qc then means its image is there too (when asked for).
        image = qc_image_path(config, uid)
        pixels = np.asarray(picture.image, dtype=np.uint8)  # what the PNG holds, without decoding it again
        write_dataset_atomically(qc_secondary_capture(seg, pixels, include_phi=include_phi), image)
    figures, png_path = folder / f"{uid}.json", folder / f"{uid}.png"
    save_picture(seg, picture, png_path, figures)
    seconds = time.monotonic() - started
    log.info("SEG %s: QC picture %s (%.1f s)%s", uid, png_path.name, seconds, " and image to send" if image else "")
    return QcFiles(picture=png_path, figures=figures, image=image, seconds=seconds)
