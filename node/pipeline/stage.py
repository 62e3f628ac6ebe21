"""What every stage of the pipeline is: a ``step()`` that does what is due now and says how much it did.

The service runs each stage in a loop on its own thread; tests drive all of them in turn until nothing is due
(:meth:`node.service.Node.run_until_idle`). Stages talk only through the state and the file system, so a stage
that stops leaves a state the next start resumes. Each stage records a heartbeat at every step, for the
watchdog and the health endpoint.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from node.config import Config
from node.convert.seg import SegOptions
from node.state import State


class PipelineEvents(Protocol):
    """What the stages report as it happens, for the service's metrics (the pipeline never imports the service).

    Called from the stage threads, after the state change they report was committed; must return quickly.
    """

    def series_completed(self) -> None:
        """A received series went quiet and is complete."""

    def series_failed(self) -> None:
        """A complete series could not be exported (its reason is in the state)."""

    def seg_built(self, seconds: float) -> None:
        """A SEG was built and queued for delivery; ``seconds``: match, build, verify and write."""

    def build_failed(self) -> None:
        """An inbox item failed for good (moved to ``failed/`` with its reason)."""

    def seg_sent(self, destination: str, end_to_end_seconds: float | None) -> None:
        """``destination`` acknowledged a SEG; ``end_to_end_seconds``: since its series' last instance arrived
        (None when the series is not known, e.g. a job re-opened after its series was removed)."""

    def send_failed(self, destination: str) -> None:
        """A send to ``destination`` failed for good."""

    def send_retry(self, destination: str) -> None:
        """A send to ``destination`` failed in a way that may pass; it is tried again later."""


class NoEvents:
    """Events that go nowhere: the default, for stages run without a service (tools, tests)."""

    def series_completed(self) -> None:
        return None

    def series_failed(self) -> None:
        return None

    def seg_built(self, seconds: float) -> None:
        return None

    def build_failed(self) -> None:
        return None

    def seg_sent(self, destination: str, end_to_end_seconds: float | None) -> None:
        return None

    def send_failed(self, destination: str) -> None:
        return None

    def send_retry(self, destination: str) -> None:
        return None


@dataclass
class PipelineContext:
    """What the stages share: the configuration, the state, the clock, the stop flag and where events go."""

    config: Config
    options: SegOptions
    #: The node's one state; its stores give each thread a connection of its own.
    state: State
    clock: Callable[[], float] = time.time
    stopping: threading.Event = field(default_factory=threading.Event)
    events: PipelineEvents = field(default_factory=NoEvents)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def settings(self) -> tuple[Config, SegOptions]:
        """The configuration and the SEG options as one reload left them (never one old, one new)."""
        with self._lock:
            return self.config, self.options

    def replace_settings(self, config: Config, options: SegOptions) -> None:
        """A reload's new configuration and SEG options, for the stages' next steps."""
        with self._lock:
            self.config, self.options = config, options

    @property
    def segs(self) -> Path:
        """Where built SEGs wait for delivery."""
        return self.config.paths.data / "segs"


class Stage(ABC):
    """One step of the pipeline, in flow order: completion, export, intake, build, delivery.

    Work a stage takes from the state is claimed for this node, so two nodes on one state never both do it.
    """

    #: Short name for logs, threads and heartbeats.
    name: str = "stage"

    def __init__(self, context: PipelineContext) -> None:
        self.context = context
        self.state = context.state
        self.last_beat = time.monotonic()

    def beat(self) -> None:
        """Record that the stage is alive and stepping."""
        self.last_beat = time.monotonic()

    @abstractmethod
    def step(self) -> int:
        """Do what is due now; return how many things were done (0: nothing was due)."""

    def busy(self) -> bool:
        """Whether work is on its way that no step can do yet (an inbox item still settling, a command running)."""
        return False

    def idle(self, stopping: threading.Event, seconds: float) -> None:
        """Wait for more work after a step that found none."""
        stopping.wait(seconds)

    def close(self) -> None:
        """Release what the stage holds beyond the state (threads, executors); most hold nothing."""
        return None
