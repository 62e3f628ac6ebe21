"""Asking a node's HTTP endpoint (/healthz, /metrics) as a monitor would: urllib, and Prometheus' own text parser."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from peers import HOST
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(port: int, path: str, *, method: str = "GET", host: str = HOST) -> HttpAnswer:
    """One request; an error status is an answer like any other (never raises for it)."""
    request = urllib.request.Request(f"http://{host}:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return HttpAnswer(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return HttpAnswer(exc.code, dict(exc.headers.items()), exc.read())


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics, parsed: ``{(sample name, sorted labels): value}``."""
    answer = http_get(port, "/metrics")
    assert answer.status == 200, answer.body[:500]
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """One sample's value; KeyError naming the samples of that name when it is missing."""
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        known = [k for k in samples if k[0] == name]
        raise KeyError(f"{key} not in /metrics; samples named {name}: {known}")
    return samples[key]
