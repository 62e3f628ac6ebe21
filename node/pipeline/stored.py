"""A received series as the pipeline reads it back: its stored instances' headers, split into stacks."""

from __future__ import annotations

import logging

from node.convert.series import SourceSeries, read_header, stacks_from_headers
from node.state import SeriesIndex

log = logging.getLogger(__name__)


def stored_stacks(index: SeriesIndex, series_uid: str) -> list[SourceSeries]:
    """Every stack of a stored series, main stack first; unreadable files are left out with a warning."""
    paths = index.instances(series_uid)
    headers = [read_header(p) for p in paths]
    readable = [(h, p) for h, p in zip(headers, paths, strict=True) if h is not None]
    if len(readable) < len(paths):
        log.warning("series %s: %d stored file(s) unreadable, ignored", series_uid, len(paths) - len(readable))
    return stacks_from_headers([h for h, _ in readable], [p for _, p in readable])
