"""Pixel values of a source series: every plane decoded and rescaled, in the series' plane order.

The NIfTI export (:mod:`node.pipeline.export`) and the QC pictures (:mod:`node.convert.qc`) read the same values,
so a picture shows the grey levels the segmentation tool was given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.pixels.processing import apply_rescale

from node.convert.series import SourceSeries, functional_attribute
from node.errors import GeometryError, InputError

__all__ = ["read_volume"]


def read_volume(series: SourceSeries) -> npt.NDArray[Any]:
    """Pixel values of the series as (slice, row, col), sorted along the normal, rescaled (e.g. to HU).

    Raises :class:`~node.errors.InputError` when the pixel data cannot be decoded or does not fit the headers.
    """
    slices: list[npt.NDArray[Any]] = []
    try:
        if series.frame_order is not None:
            ds = pydicom.dcmread(series.paths[0])
            frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
            if len(frames) <= max(series.frame_order):
                raise ValueError(f"{len(frames)} frames of pixel data for {int(ds.NumberOfFrames)} frames")
            return np.stack([_frame_rescale(ds, f, frames[f]) for f in series.frame_order])
        for path in series.paths:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
            slices.append(np.asarray(apply_rescale(pixels, ds)) if "RescaleSlope" in ds else pixels)
        shapes = {s.shape for s in slices}
        if len(shapes) > 1 or shapes != {series.grid.shape[1:]}:
            raise ValueError(f"pixel arrays of shape {sorted(shapes)} where the headers say {series.grid.shape[1:]}")
    # RuntimeError covers pydicom's "no installed plugin decodes this transfer syntax" (a subclass of it); the
    # others are what pydicom raises on pixel attributes that do not describe the data (Bits Allocated, ...).
    except (ValueError, RuntimeError, AttributeError, KeyError, TypeError, IndexError, OSError) as exc:
        raise InputError(
            f"series {series.series_uid}: pixel data cannot be decoded ({' '.join(str(exc).split())[:200]})"
        ) from exc
    return np.stack(slices)


def _frame_rescale(ds: pydicom.Dataset, frame: int, pixels: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """One frame of an Enhanced object rescaled by its Pixel Value Transformation (per frame or shared)."""
    try:
        slope = float(functional_attribute(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = float(functional_attribute(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept"))
    except (GeometryError, TypeError, ValueError):
        return pixels
    if slope == 1 and intercept == 0:
        return pixels
    return np.asarray(pixels * slope + intercept, dtype=np.float64)
