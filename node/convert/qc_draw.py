"""Drawing a QC picture with Pillow: greyscale panels with coloured segments, edge letters, titles and a legend.

Pillow (maintained, typed) does the PNG encoding, text and shapes; the per-pixel work (windowing, fills,
outlines) is numpy on the panel arrays, so every panel pixel is still the one source voxel it was sampled from.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from node.convert.qc_planes import View

RGB = tuple[int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

#: How much of a segment's colour is mixed into the grey inside it: light enough to see the anatomy through.
FILL_ALPHA = 0.35
#: Outline width in panel pixels.
OUTLINE_PX = 2
MARGIN = 10
LINE_PX = 17
TITLE_PX = 18
BACKGROUND: RGB = (16, 16, 16)
TEXT: RGB = (235, 235, 235)
WARNING: RGB = (255, 110, 90)
LETTER: RGB = (255, 230, 80)
NO_SOURCE: RGB = (34, 30, 52)


@functools.cache
def font(size: int = 13) -> Font:
    """Pillow's bundled FreeType font (no system fonts needed); its bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):
        return ImageFont.load_default()


def _eroded(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Pixels whose four neighbours are all in ``mask`` (outside the panel counts as outside the mask)."""
    padded = np.pad(mask, 1, constant_values=False)
    return np.asarray(
        padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:],
        dtype=np.bool_,
    )


def outline(mask: npt.NDArray[np.bool_], width: int = OUTLINE_PX) -> npt.NDArray[np.bool_]:
    """The inner rim of ``mask``, ``width`` pixels wide (inside the mask, so it never covers a neighbour)."""
    core = mask
    for _ in range(width):
        core = _eroded(core)
    return np.asarray(mask & ~core, dtype=np.bool_)


def overlay(
    grey: npt.NDArray[np.uint8],
    layers: Sequence[tuple[RGB, npt.NDArray[np.bool_]]],
    outside: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.uint8]:
    """(h, w, 3) RGB: ``grey`` with each (colour, mask) layer as a light fill and a solid outline, in order;
    pixels ``outside`` the source get a tone of their own, so air inside the scan and no scan at all differ."""
    rgb = np.repeat(grey[..., None].astype(np.float64), 3, axis=-1)
    if outside is not None:
        rgb[outside] = NO_SOURCE
    for color, mask in layers:
        if not mask.any():
            continue
        tint = np.asarray(color, dtype=np.float64)
        rgb[mask] = (1 - FILL_ALPHA) * rgb[mask] + FILL_ALPHA * tint
        rgb[outline(mask)] = tint
    return np.asarray(np.rint(rgb), dtype=np.uint8)


@dataclass(frozen=True)
class Panel:
    """One panel to draw: its view, its pixels (h, w, 3) and a title."""

    view: View
    rgb: npt.NDArray[np.uint8]
    title: str


@dataclass(frozen=True)
class PlacedPanel:
    """Where a panel's image landed in the picture: its top-left pixel."""

    view: View
    title: str
    x: int
    y: int

    def pixel_of(self, point: npt.ArrayLike) -> tuple[int, int]:
        """Picture pixel (x, y) that shows the LPS point ``point`` (projected onto the panel's plane)."""
        px, py = self.view.pixel_of(point)
        return self.x + round(px), self.y + round(py)

    def contains(self, xy: tuple[int, int]) -> bool:
        return self.x <= xy[0] < self.x + self.view.width and self.y <= xy[1] < self.y + self.view.height


@dataclass(frozen=True)
class LegendEntry:
    color: RGB
    text: str
    warning: str = ""


def _letters(draw: ImageDraw.ImageDraw, placed: PlacedPanel) -> None:
    x, y, w, h = placed.x, placed.y, placed.view.width, placed.view.height
    spots = {
        "left": ((x + 3, y + h / 2), "lm"),
        "right": ((x + w - 3, y + h / 2), "rm"),
        "top": ((x + w / 2, y + 2), "mt"),
        "bottom": ((x + w / 2, y + h - 2), "mb"),
    }
    for edge, letters in placed.view.edge_letters().items():
        where, anchor = spots[edge]
        draw.text(where, letters, fill=LETTER, font=font(15), anchor=anchor, stroke_width=2, stroke_fill=(0, 0, 0))


def _row(
    draw: ImageDraw.ImageDraw, picture: Image.Image, panels: Sequence[Panel], top: int, box_px: int
) -> tuple[list[PlacedPanel], int]:
    """Draw one row of panels in boxes of ``box_px``; the placed panels and the row's bottom edge."""
    placed = []
    height = max((p.view.height for p in panels), default=0)
    for i, panel in enumerate(panels):
        left = MARGIN + i * (box_px + MARGIN)
        draw.text((left, top), panel.title, fill=TEXT, font=font())
        x = left + (box_px - panel.view.width) // 2
        y = top + TITLE_PX + (height - panel.view.height) // 2
        picture.paste(Image.fromarray(panel.rgb, mode="RGB"), (x, y))
        here = PlacedPanel(panel.view, panel.title, x, y)
        _letters(draw, here)
        placed.append(here)
    return placed, top + TITLE_PX + height + MARGIN


def compose(
    header: Sequence[str],
    rows: Sequence[tuple[Sequence[Panel], int]],
    legend: Sequence[LegendEntry],
    *,
    width: int,
    legend_column_px: int,
) -> tuple[Image.Image, list[PlacedPanel]]:
    """The picture: header lines, rows of (panels, box size), then the legend in as many columns as fit."""
    columns = max(1, (width - MARGIN) // (legend_column_px + MARGIN))
    legend_rows = -(-len(legend) // columns)
    panel_height = sum(TITLE_PX + max((p.view.height for p in panels), default=0) + MARGIN for panels, _ in rows)
    height = MARGIN + len(header) * LINE_PX + MARGIN + panel_height + legend_rows * LINE_PX + MARGIN
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    top = MARGIN
    for line in header:
        draw.text((MARGIN, top), line, fill=TEXT, font=font())
        top += LINE_PX
    top += MARGIN
    placed: list[PlacedPanel] = []
    for panels, box_px in rows:
        done, top = _row(draw, picture, panels, top, box_px)
        placed.extend(done)
    for i, entry in enumerate(legend):
        column, row = divmod(i, legend_rows)
        x, y = MARGIN + column * (legend_column_px + MARGIN), top + row * LINE_PX
        draw.rectangle((x, y + 2, x + 12, y + 14), fill=entry.color, outline=TEXT)
        draw.text((x + 18, y), entry.text, fill=TEXT, font=font())
        if entry.warning:
            shown = draw.textlength(entry.text, font=font())
            draw.text((x + 24 + shown, y), entry.warning, fill=WARNING, font=font())
    return picture, placed


def png_bytes(picture: Image.Image) -> bytes:
    """The picture as PNG (Pillow writes no timestamp, so one picture always gives the same bytes)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
