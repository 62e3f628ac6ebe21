"""GET /healthz: whether the node is doing its job right now, each part checked at the time of the request.

Healthy (200) when the DICOM listener is up, the state database takes a write, the disk is within its [disk]
limits and every stage is running and stepped within ``[node] stall_seconds``; 503 otherwise, with every
problem named. The JSON body says the same for a person or a monitor; the oldest unfinished job's age is
reported but never makes the node unhealthy (a backlog is not a fault).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from node.errors import SegnodeError, error_line
from node.service.http import JSON, Request, Response
from node.state import State

log = logging.getLogger(__name__)


class DiskReading(Protocol):
    """One reading of the data disk (:class:`node.diskspace.DiskSpace`)."""

    @property
    def room(self) -> bool: ...
    @property
    def free_bytes(self) -> int: ...
    @property
    def reason(self) -> str: ...


@runtime_checkable
class WriteCheck(Protocol):
    """A state back end that can prove it takes a write without changing anything."""

    def check_writable(self) -> None:
        """Raise the back end's SegnodeError when a write would fail now."""


@dataclass(frozen=True)
class StageHealth:
    """One stage: seconds since its last heartbeat, whether its thread runs, whether it is stalled."""

    name: str
    seconds_since_beat: float
    running: bool
    stalled: bool

    @property
    def ok(self) -> bool:
        return self.running and not self.stalled


@dataclass(frozen=True)
class Health:
    """What /healthz answers."""

    listening: bool
    #: None when the database takes a write, else why not.
    database_problem: str | None
    disk: DiskReading
    reserve_bytes: int
    oldest_pending_job_seconds: float | None
    stages: tuple[StageHealth, ...]

    @property
    def problems(self) -> list[str]:
        """One line per thing that is wrong; empty when healthy."""
        found = [] if self.listening else ["the DICOM listener is not running"]
        if self.database_problem is not None:
            found.append(f"state database not writable: {self.database_problem}")
        if not self.disk.room:
            found.append(f"disk: {self.disk.reason}")
        if not self.stages:
            found.append("no pipeline stage is running")
        for stage in self.stages:
            if not stage.running:
                found.append(f"stage {stage.name} has stopped")
            elif stage.stalled:
                found.append(f"stage {stage.name} stalled: no heartbeat for {stage.seconds_since_beat:.0f} s")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "unhealthy",
            "problems": self.problems,
            "listening": self.listening,
            "database": {"writable": self.database_problem is None, "problem": self.database_problem},
            "disk": {
                "ok": self.disk.room,
                "free_bytes": self.disk.free_bytes,
                "reserve_bytes": self.reserve_bytes,
                "reason": self.disk.reason or None,
            },
            "oldest_pending_job_seconds": self.oldest_pending_job_seconds,
            "stages": {
                s.name: {
                    "seconds_since_heartbeat": round(s.seconds_since_beat, 3),
                    "running": s.running,
                    "stalled": s.stalled,
                }
                for s in self.stages
            },
        }


def database_problem(state: State) -> str | None:
    """Why the state database would refuse a write now, or None; a back end without a write check is trusted."""
    backend = state.backend
    if not isinstance(backend, WriteCheck):
        return None
    try:
        backend.check_writable()
    except SegnodeError as exc:
        return error_line(exc)
    return None


def oldest_pending_seconds(state: State, now: float) -> float | None:
    """Age of the oldest job not yet sent or failed; None when there is none or the state cannot say."""
    try:
        oldest = state.jobs.oldest_unfinished_at()
    except SegnodeError as exc:
        log.debug("healthz: jobs unreadable: %s", error_line(exc))
        return None
    return None if oldest is None else max(0.0, now - oldest)


def stage_health(beats: Mapping[str, float], stopped: Collection[str], stall_seconds: float) -> tuple[StageHealth, ...]:
    """Each stage from its seconds since the last heartbeat; ``stopped`` names those whose thread ended."""
    return tuple(
        StageHealth(name, seconds, running=name not in stopped, stalled=seconds > stall_seconds)
        for name, seconds in beats.items()
    )


def health_route(check: Callable[[], Health]) -> Callable[[Request], Response]:
    """GET /healthz from ``check``: 200 and the JSON when healthy, 503 and the JSON otherwise."""

    def route(_request: Request) -> Response:
        health = check()
        body = json.dumps(health.as_json(), indent=2).encode() + b"\n"
        return Response(200 if health.ok else 503, body, JSON)

    return route
