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

from node.config import Config
from node.convert.seg import SegOptions
from node.state import State


@dataclass
class PipelineContext:
    """What the stages share: the configuration, the state, the clock and the stop flag."""

    config: Config
    options: SegOptions
    #: The node's one state; its stores give each thread a connection of its own.
    state: State
    clock: Callable[[], float] = time.time
    stopping: threading.Event = field(default_factory=threading.Event)

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
