"""What every stage of the pipeline is: a ``step()`` that does what is due now and says how much it did.

The service runs each stage in a loop on its own thread; tests drive all of them in turn until nothing is due
(:meth:`node.service.Node.run_until_idle`). Stages talk only through the state and the file system, so a stage
that stops leaves a state the next start resumes. Each stage records a heartbeat at every step, for the
watchdog and the health endpoint.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from node.config import Config
from node.convert.seg import SegOptions
from node.state import sqlite as db


@dataclass
class PipelineContext:
    """What the stages share: the configuration, the clock, the stop flag and how to reach the state."""

    config: Config
    options: SegOptions
    clock: Callable[[], float] = time.time
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def segs(self) -> Path:
        """Where built SEGs wait for delivery."""
        return self.config.paths.data / "segs"

    def connect(self) -> sqlite3.Connection:
        # A stage's connection is used by one thread at a time: its own loop, or run_until_idle's caller.
        return db.connect(self.config.paths.database, check_same_thread=False)


class Stage(ABC):
    """One step of the pipeline, in flow order: completion, export, intake, build, delivery.

    Each stage has its own connection to the state, used by one thread at a time.
    """

    #: Short name for logs, threads and heartbeats.
    name: str = "stage"

    def __init__(self, context: PipelineContext) -> None:
        self.context = context
        self.conn = context.connect()
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
        """Release what the stage holds (its database connection)."""
        self.conn.close()
