"""The QC picture of a SEG file as written, and its two files (the PNG and the per-segment figures JSON).

``segnode convert --qc`` and the node's build stage both go through here: the SEG is read back from disk, so
the picture shows what a receiver gets.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from node.convert.pixels import read_volume
from node.convert.qc import QcPicture, figures_json, qc_figure
from node.convert.series import SourceSeries
from node.durable import atomic_write_bytes


def draw_written_seg(seg_path: Path, series: SourceSeries, *, include_phi: bool = False) -> tuple[Dataset, QcPicture]:
    """The SEG at ``seg_path`` read back, and its picture over ``series`` (the series it was built on)."""
    seg = pydicom.dcmread(seg_path)
    return seg, qc_figure(seg, series, read_volume(series), include_phi=include_phi)


def save_picture(seg: Dataset, picture: QcPicture, png_path: Path, figures_path: Path) -> None:
    """Write the figures, then the picture, each atomically: a picture on disk means its figures are too."""
    atomic_write_bytes(figures_path, figures_json(seg, picture.figures).encode("utf-8"))
    atomic_write_bytes(png_path, picture.png())
