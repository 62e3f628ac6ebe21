"""How source values become the grey levels of a QC picture: the window, and where it comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from node.convert.series import SourceSeries, functional_attribute
from node.errors import GeometryError

#: CT soft-tissue window (centre, width in HU) when the source states none.
SOFT_TISSUE = (40.0, 400.0)


@dataclass(frozen=True)
class Window:
    """How source values become grey levels, and why these values."""

    centre: float
    width: float
    source: str

    def grey(self, values: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        low = self.centre - self.width / 2
        scaled = (np.asarray(values, dtype=np.float64) - low) / self.width
        return np.asarray(np.rint(np.clip(scaled, 0.0, 1.0) * 255), dtype=np.uint8)

    def describe(self) -> str:
        return f"window C {self.centre:.4g} / W {self.width:.4g} ({self.source})"


def _first_number(value: Any) -> float | None:
    """The first value of a possibly multi-valued DS (a header may list several windows)."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _stated_window(series: SourceSeries) -> tuple[float | None, float | None]:
    header: Dataset = series.datasets[0]
    if series.frame_order is None:
        return _first_number(header.get("WindowCenter")), _first_number(header.get("WindowWidth"))
    frame = series.frame_order[0]
    found = []
    for attribute in ("WindowCenter", "WindowWidth"):
        try:
            found.append(_first_number(functional_attribute(header, frame, "FrameVOILUTSequence", attribute)))
        except GeometryError:
            found.append(None)
    return found[0], found[1]


def display_window(series: SourceSeries, pixels: npt.NDArray[Any]) -> Window:
    """CT: the source's own window (WindowCenter/WindowWidth), else soft tissue 40/400 HU. Anything else (MR):
    the 1st to 99th percentile of the pixel values, which no stated window of an MR series reliably beats."""
    modality = str(series.datasets[0].get("Modality", ""))
    if modality == "CT":
        centre, width = _stated_window(series)
        if centre is not None and width is not None and width > 0:
            return Window(centre, width, "from the source")
        return Window(*SOFT_TISSUE, "soft-tissue default")
    # Every 4th voxel along each axis is plenty for percentiles and keeps a large series cheap.
    sample = np.asarray(pixels[::4, ::4, ::4] if pixels.shape[0] > 4 else pixels[:, ::4, ::4], dtype=np.float64)
    low, high = (float(v) for v in np.percentile(sample, [1.0, 99.0]))
    if high <= low:
        high = low + 1.0
    return Window((low + high) / 2, high - low, "percentiles 1-99")
