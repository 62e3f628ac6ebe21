"""The node's Prometheus metrics (GET /metrics), in a registry of its own: tests run several nodes in one process.

Three sources: the pipeline's events (:class:`Metrics` is the stages' :class:`~node.pipeline.stage.PipelineEvents`),
the receivers' shared counters (read at scrape time by :class:`ReceiverCollector`, so counts made in receiver
processes survive their restarts: the shared memory lives in the node's process), and the state and the disk,
also read at scrape time (:class:`StateCollector`), so a gauge is never stale.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from node.dicom.access import RejectionKind
from node.dicom.counters import REFUSAL_KINDS, ReceiverSnapshot
from node.errors import SegnodeError, error_line
from node.service.http import Request, Response
from node.state import State

log = logging.getLogger(__name__)

#: Matching, building, verifying and writing one SEG: seconds for a small series, minutes for a large label map.
BUILD_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: Last instance received to SEG acknowledged: includes the quiet period and the segmentation tool's run.
END_TO_END_BUCKETS = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)

#: Association rejection reasons and C-STORE refusals always exported, so a rate of 0 is a series, not a gap.
REJECTION_REASONS = tuple(kind.value for kind in RejectionKind)
REFUSAL_STATUSES = REFUSAL_KINDS


def _by_key(known: Sequence[str], counts: Mapping[str, int]) -> list[tuple[str, int]]:
    return [(key, counts.get(key, 0)) for key in (*known, *sorted(set(counts) - set(known)))]


class ReceiverCollector(Collector):
    """The receivers' counters, read from ``snapshot`` at every scrape."""

    def __init__(self, snapshot: Callable[[], ReceiverSnapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self.snapshot()
        except Exception as exc:  # a scrape without the receivers' counts beats no scrape
            log.warning("metrics: receiver counters unreadable: %s", error_line(exc))
            return
        yield CounterMetricFamily(
            "segnode_instances_received", "Instances stored and acknowledged.", value=counts.instances_received
        )
        yield CounterMetricFamily(
            "segnode_received_bytes", "Bytes of instances stored and acknowledged.", value=counts.bytes_received
        )
        yield CounterMetricFamily(
            "segnode_associations_accepted", "Associations accepted.", value=counts.associations_accepted
        )
        rejected = CounterMetricFamily("segnode_associations_rejected", "Associations rejected.", labels=["reason"])
        for reason, value in _by_key(REJECTION_REASONS, counts.associations_rejected):
            rejected.add_metric([reason], value)
        yield rejected
        refused = CounterMetricFamily(
            "segnode_stores_refused", "C-STOREs answered with a failure status.", labels=["status"]
        )
        for status, value in _by_key(REFUSAL_STATUSES, counts.stores_refused):
            refused.add_metric([status], value)
        yield refused
        yield GaugeMetricFamily(
            "segnode_open_associations", "Associations open now, over every receiver.", value=counts.open_associations
        )


class StateCollector(Collector):
    """Jobs and series by state, free disk bytes and stage heartbeats, read at every scrape."""

    def __init__(
        self,
        state: State,
        *,
        disk_free_bytes: Callable[[], int | None],
        heartbeats: Callable[[], Mapping[str, float]],
    ) -> None:
        self.state = state
        self.disk_free_bytes = disk_free_bytes
        self.heartbeats = heartbeats

    def collect(self) -> Iterator[Metric]:
        try:
            jobs, series = self.state.jobs.counts(), self.state.series.counts()
        except SegnodeError as exc:  # a busy or closed database: the other metrics still answer
            log.warning("metrics: state unreadable: %s", error_line(exc))
        else:
            by_job_state = GaugeMetricFamily("segnode_jobs", "Jobs by state, now.", labels=["state"])
            for job_state, count in jobs.items():
                by_job_state.add_metric([job_state.value], count)
            yield by_job_state
            by_series_state = GaugeMetricFamily("segnode_series", "Received series by state, now.", labels=["state"])
            for series_state, count in series.items():
                by_series_state.add_metric([series_state.value], count)
            yield by_series_state
        free = self.disk_free_bytes()
        if free is not None:
            yield GaugeMetricFamily("segnode_disk_free_bytes", "Free bytes on the data folder's disk.", value=free)
        beats = GaugeMetricFamily(
            "segnode_stage_heartbeat_age_seconds", "Seconds since each stage last stepped.", labels=["stage"]
        )
        for stage, seconds in self.heartbeats().items():
            beats.add_metric([stage], seconds)
        yield beats


class Metrics:
    """The node's metrics and the pipeline's events sink (:class:`~node.pipeline.stage.PipelineEvents`).

    Parameters
    ----------
    destinations
        Names of the configured destinations: their per-destination series start at 0 rather than appearing
        with their first event.
    """

    def __init__(self, destinations: Sequence[str] = ()) -> None:
        # The *_created series would double the page and nothing reads them; prometheus_client only offers a
        # process-wide switch, and this process is the node.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        registry = self.registry
        self._series_completed = Counter(
            "segnode_series_completed", "Received series that went quiet and were complete.", registry=registry
        )
        self._series_failed = Counter(
            "segnode_series_failed", "Complete series that could not be exported.", registry=registry
        )
        self._segs_built = Counter("segnode_segs_built", "SEGs built and queued for delivery.", registry=registry)
        self._builds_failed = Counter(
            "segnode_builds_failed", "Inbox items that failed for good (moved to failed/).", registry=registry
        )
        self._segs_sent = Counter(
            "segnode_segs_sent", "SEGs acknowledged by a destination.", ["destination"], registry=registry
        )
        self._sends_failed = Counter(
            "segnode_sends_failed", "Sends of a SEG that failed for good.", ["destination"], registry=registry
        )
        self._send_retries = Counter(
            "segnode_send_retries",
            "Sends that failed in a way that may pass, to be tried again.",
            ["destination"],
            registry=registry,
        )
        self._build_seconds = Histogram(
            "segnode_build_seconds",
            "Time to match, build, verify and write one SEG.",
            buckets=BUILD_BUCKETS,
            registry=registry,
        )
        self._end_to_end_seconds = Histogram(
            "segnode_end_to_end_seconds",
            "From the last instance of a series received to its SEG acknowledged by a destination.",
            ["destination"],
            buckets=END_TO_END_BUCKETS,
            registry=registry,
        )
        for name in destinations:
            for family in (self._segs_sent, self._sends_failed, self._send_retries, self._end_to_end_seconds):
                family.labels(name)

    def watch_receivers(self, snapshot: Callable[[], ReceiverSnapshot]) -> None:
        """Export the receivers' counters, read from ``snapshot`` at every scrape."""
        self.registry.register(ReceiverCollector(snapshot))

    def watch_state(
        self,
        state: State,
        *,
        disk_free_bytes: Callable[[], int | None],
        heartbeats: Callable[[], Mapping[str, float]],
    ) -> None:
        """Export jobs and series by state, free disk and heartbeats, read at every scrape."""
        self.registry.register(StateCollector(state, disk_free_bytes=disk_free_bytes, heartbeats=heartbeats))

    def render(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.registry)

    def route(self, _request: Request) -> Response:
        """GET /metrics."""
        return Response(200, self.render(), CONTENT_TYPE_LATEST)

    # The pipeline's events (PipelineEvents).

    def series_completed(self) -> None:
        self._series_completed.inc()

    def series_failed(self) -> None:
        self._series_failed.inc()

    def seg_built(self, seconds: float) -> None:
        self._segs_built.inc()
        self._build_seconds.observe(seconds)

    def build_failed(self) -> None:
        self._builds_failed.inc()

    def seg_sent(self, destination: str, end_to_end_seconds: float | None) -> None:
        self._segs_sent.labels(destination).inc()
        if end_to_end_seconds is not None:
            self._end_to_end_seconds.labels(destination).observe(end_to_end_seconds)

    def send_failed(self, destination: str) -> None:
        self._sends_failed.labels(destination).inc()

    def send_retry(self, destination: str) -> None:
        self._send_retries.labels(destination).inc()
