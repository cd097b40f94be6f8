"""What each of the worker's web paths answers, written once for every delivery guarantee.

- ``/metrics``: Prometheus text format.
- ``/healthz``: 200 while the worker's loop consumes (liveness); 503 with the reason once it stalled.
- ``/readyz``: 200 when partitions are assigned, the loop consumes and the broker answers;
  otherwise 503 with the reasons, as JSON (readiness). The model is loaded before the server starts.
- ``/dashboard``: a live page, no build step and nothing from a CDN; ``/dashboard/stats.json`` is
  the snapshot it polls, ``/dashboard/fleet.json`` the group's members as the brokers tell them.
"""

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

from stream_clf.ops.health import Readiness
from stream_clf.ops.metrics import CONTENT_TYPE, WorkerMetrics

__all__ = ["Answer", "Routes"]

JSON = "application/json"
_STATIC = {
    "/dashboard": ("dashboard.html", "text/html"),
    "/dashboard/uplot.iife.min.js": ("uplot.iife.min.js", "application/javascript"),
    "/dashboard/uplot.min.css": ("uplot.min.css", "text/css"),
}


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, body and content type."""

    status: int
    body: bytes
    content_type: str = JSON


class Routes:
    """The answer to each path, from the worker's metrics and readiness."""

    def __init__(
        self, metrics: WorkerMetrics, readiness: Readiness, fleet: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._fleet = fleet
        files = resources.files(__package__)
        self._static = {path: (files.joinpath(name).read_bytes(), kind) for path, (name, kind) in _STATIC.items()}
        self._handlers = {
            "/metrics": self._metrics_page,
            "/healthz": self._liveness,
            "/readyz": self._readiness_page,
            "/dashboard/stats.json": self._stats,
            "/dashboard/fleet.json": self._fleet_page,
        }

    def answer(self, path: str) -> Answer:
        """The answer to a GET of ``path`` (any query string ignored)."""
        path = path.split("?", 1)[0]
        if path in self._static:
            return Answer(200, *self._static[path])
        handler = self._handlers.get(path)
        return handler() if handler else Answer(404, b'{"status":"not found"}')

    def _metrics_page(self) -> Answer:
        return Answer(200, self._metrics.exposition(), CONTENT_TYPE)

    def _liveness(self) -> Answer:
        stalled = self._readiness.liveness()
        if stalled is not None:
            return Answer(503, orjson.dumps({"status": "stalled", "reason": stalled}))
        return Answer(200, b'{"status":"alive"}')

    def _readiness_page(self) -> Answer:
        reasons = self._readiness.reasons()
        if reasons:
            return Answer(503, orjson.dumps({"status": "not ready", "reasons": reasons}))
        return Answer(200, b'{"status":"ready"}')

    def _stats(self) -> Answer:
        return Answer(200, orjson.dumps(self._metrics.snapshot()))

    def _fleet_page(self) -> Answer:
        if self._fleet is None:
            return Answer(200, b'{"members":[],"error":"no fleet view"}')
        return Answer(200, orjson.dumps(self._fleet()))
