"""What the status page shows, gathered from the state, the health check and the node's folders.

The pure functions (:func:`health_view`, :func:`series_view`, :func:`job_view`, :func:`qc_view`) turn rows and
documents into a plain view model; :func:`gather` does the reading (state, export sidecars, QC figures) and
calls them. Nothing here renders HTML (:mod:`.status_page` does), so the
model is tested without a browser.

No patient attributes are read, so none can be shown. Job and send reasons are segnode's own text, except after
"unexpected error", where a library's message follows and may quote a header value: that is redacted like the
log does, unless ``[logging] include_phi``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node.errors import SegnodeError, error_line
from node.logs import redact_unexpected
from node.service.health import Health
from node.service.warnings_buffer import WarningLine
from node.state import State
from node.state.model import JobRow, SeriesRow, SeriesState

log = logging.getLogger(__name__)

#: Rows of each table: what fits on a screen and renders in milliseconds every refresh.
RECENT_ROWS = 20


@dataclass(frozen=True)
class StageView:
    name: str
    seconds_since_beat: float
    status: str


@dataclass(frozen=True)
class HealthView:
    ok: bool
    problems: tuple[str, ...]
    listening: bool
    database: str
    disk_free: str
    disk_reserve: str
    oldest_pending: str
    stages: tuple[StageView, ...]


@dataclass(frozen=True)
class SeriesView:
    series_uid: str
    state: str
    instances: int
    stacks: int
    description: str
    modality: str
    #: "version 3, 12 s ago", "not yet", or the reason it failed.
    export: str
    last_received: str


@dataclass(frozen=True)
class SendView:
    destination: str
    state: str
    attempts: int
    reason: str


@dataclass(frozen=True)
class SegmentView:
    number: int
    name: str
    color: str
    volume_ml: str
    centroid_mm: str


@dataclass(frozen=True)
class QcView:
    """A SEG's QC picture (``picture``/``figures``: URL paths below /qc/, or None when not written yet)."""

    seg_sop_uid: str
    picture: str | None
    figures: str | None
    segments: tuple[SegmentView, ...] = ()


@dataclass(frozen=True)
class JobView:
    id: int
    item: str
    state: str
    matched_by: str
    series_uid: str
    seg_sop_uid: str
    reason: str
    updated: str
    sends: tuple[SendView, ...]
    qc: QcView | None


@dataclass(frozen=True)
class WarningView:
    time: str
    level: str
    line: str


@dataclass(frozen=True)
class StatusView:
    """Everything the page shows."""

    title: str
    generated: str
    refresh_seconds: int
    health: HealthView
    series_counts: Mapping[str, int]
    job_counts: Mapping[str, int]
    series: tuple[SeriesView, ...]
    jobs: tuple[JobView, ...]
    warnings: tuple[WarningView, ...]
    #: A part of the state that could not be read right now (the page still shows the rest).
    unavailable: tuple[str, ...] = field(default=())


def utc_time(seconds: float) -> str:
    """``2026-01-01 12:00:00Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(seconds: float | None) -> str:
    """A duration the way a person reads it at a glance.

    >>> age(None), age(4.2), age(125), age(7300), age(200000)
    ('-', '4 s', '2 min', '2 h', '2 d')
    """
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def size_text(count: int) -> str:
    """A byte count in binary units.

    >>> size_text(0), size_text(1536), size_text(5 * 1024**3)
    ('0 B', '1.5 KiB', '5.0 GiB')
    """
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def volume_text(millilitres: float) -> str:
    """Millilitres to the 0.001 mL the figures are rounded to when small, to 0.01 mL otherwise.

    >>> volume_text(0.0), volume_text(0.04), volume_text(1234.5678)
    ('0.000', '0.040', '1234.57')
    """
    return f"{millilitres:.3f}" if millilitres < 1 else f"{millilitres:.2f}"


def safe_reason(reason: str | None, include_phi: bool) -> str:
    """A stored reason for the page: a library's text after "unexpected error" has its quotes redacted."""
    if not reason:
        return ""
    return reason if include_phi else redact_unexpected(reason)


def health_view(health: Health) -> HealthView:
    stages = tuple(
        StageView(
            s.name, round(s.seconds_since_beat, 1), "stopped" if not s.running else "stalled" if s.stalled else "ok"
        )
        for s in health.stages
    )
    return HealthView(
        ok=health.ok,
        problems=tuple(health.problems),
        listening=health.listening,
        database=health.database_problem or "writable",
        disk_free=size_text(health.disk.free_bytes),
        disk_reserve=size_text(health.reserve_bytes),
        oldest_pending=age(health.oldest_pending_job_seconds),
        stages=stages,
    )


def series_view(
    row: SeriesRow, sidecars: Sequence[Mapping[str, Any]], now: float, *, include_phi: bool = False
) -> SeriesView:
    """One series row with its export sidecars (main stack first; empty before export).

    The series description is free text a scanner may fill with anything (PS3.15's basic confidentiality
    profile removes it), so, as in the QC pictures, it is shown only with ``include_phi``.
    """
    main = sidecars[0] if sidecars else {}
    if row.state is SeriesState.FAILED:
        export = safe_reason(row.reason, include_phi) or "failed"
    elif row.export_version is not None:
        export = f"version {row.export_version}, {main.get('exported_at', '?')}"
    else:
        export = "not yet"
    stack = main.get("stack")
    stacks = int(stack.get("count", len(sidecars))) if isinstance(stack, dict) else len(sidecars)
    return SeriesView(
        series_uid=row.series_uid,
        state=row.state.value,
        instances=row.instance_count,
        stacks=stacks,
        description=str(main.get("SeriesDescription", "")) if include_phi else "",
        modality=str(main.get("Modality", "")),
        export=export,
        last_received=age(now - row.last_received_at),
    )


def segment_view(document: Mapping[str, Any]) -> SegmentView:
    """One segment of a QC figures document (:func:`node.convert.qc_figures.figures_json`)."""
    rgb = document.get("color_rgb") or [128, 128, 128]
    centroid = document.get("centroid_mm_lps")
    return SegmentView(
        number=int(document.get("number", 0)),
        name=str(document.get("name", "")),
        color="#{:02x}{:02x}{:02x}".format(*(max(0, min(255, int(c))) for c in rgb[:3])),
        volume_ml=volume_text(float(document.get("volume_ml", 0.0))),
        centroid_mm="-" if not centroid else ", ".join(f"{float(v):.1f}" for v in centroid),
    )


def qc_view(seg_sop_uid: str, *, has_picture: bool, figures: Mapping[str, Any] | None) -> QcView:
    segments = tuple(segment_view(s) for s in (figures or {}).get("segments", []) if isinstance(s, dict))
    return QcView(
        seg_sop_uid=seg_sop_uid,
        picture=f"/qc/{seg_sop_uid}.png" if has_picture else None,
        figures=f"/qc/{seg_sop_uid}.json" if figures is not None else None,
        segments=segments,
    )


def job_view(row: JobRow, *, qc: QcView | None, now: float, include_phi: bool = False) -> JobView:
    return JobView(
        id=row.id,
        item=row.inbox_path.name,
        state=row.state.value,
        matched_by=row.matched_by or ("-" if row.series_uid is None else "not recorded"),
        series_uid=row.series_uid or "",
        seg_sop_uid=row.seg_sop_uid or "",
        reason=safe_reason(row.reason, include_phi),
        updated=age(now - row.updated_at),
        sends=tuple(
            SendView(s.destination, s.state.value, s.attempts, safe_reason(s.reason, include_phi)) for s in row.sends
        ),
        qc=qc,
    )


def warning_view(line: WarningLine) -> WarningView:
    return WarningView(utc_time(line.created), line.level, line.line)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing, half-written or not an object (the page shows the rest)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def export_sidecars(export: Path, series_uid: str) -> list[dict[str, Any]]:
    """The export sidecars of a series, main stack first."""
    found = [read_json(export / f"{series_uid}.json")]
    found += [read_json(p) for p in sorted(export.glob(f"{series_uid}_stack*.json"))]
    return [d for d in found if d is not None]


def read_qc(qc_folder: Path, seg_sop_uid: str) -> QcView:
    return qc_view(
        seg_sop_uid,
        has_picture=(qc_folder / f"{seg_sop_uid}.png").is_file(),
        figures=read_json(qc_folder / f"{seg_sop_uid}.json"),
    )


@dataclass(frozen=True)
class Folders:
    export: Path
    processed: Path
    qc: Path


def gather(
    state: State,
    health: Health,
    folders: Folders,
    *,
    title: str,
    now: float,
    warnings: Sequence[WarningLine] = (),
    include_phi: bool = False,
    refresh_seconds: int = 10,
    rows: int = RECENT_ROWS,
) -> StatusView:
    """The whole page's model; a state that cannot be read now leaves its tables empty and says so."""
    unavailable: list[str] = []
    series: list[SeriesView] = []
    jobs: list[JobView] = []
    series_counts: dict[str, int] = {}
    job_counts: dict[str, int] = {}
    try:
        series_counts = {k.value: v for k, v in state.series.counts().items()}
        series = [
            series_view(row, export_sidecars(folders.export, row.series_uid), now, include_phi=include_phi)
            for row in state.series.list_series(limit=rows)
        ]
    except SegnodeError as exc:
        unavailable.append(f"series: {error_line(exc)}")
    try:
        job_counts = {k.value: v for k, v in state.jobs.counts().items()}
        job_rows = state.jobs.list_jobs(limit=rows)
        jobs = [
            job_view(
                row,
                qc=read_qc(folders.qc, row.seg_sop_uid) if row.seg_sop_uid else None,
                now=now,
                include_phi=include_phi,
            )
            for row in job_rows
        ]
    except SegnodeError as exc:
        unavailable.append(f"jobs: {error_line(exc)}")
    return StatusView(
        title=title,
        generated=utc_time(now),
        refresh_seconds=refresh_seconds,
        health=health_view(health),
        series_counts=series_counts,
        job_counts=job_counts,
        series=tuple(series),
        jobs=tuple(jobs),
        warnings=tuple(warning_view(w) for w in warnings),
        unavailable=tuple(unavailable),
    )
