"""The worker's web endpoints, served by Faust's own web server (aiohttp), or by
:mod:`stream_clf.web.threaded` in the exactly-once mode, which runs no Faust app.

- ``/metrics``: Prometheus text format.
- ``/healthz``: 200 while the process serves requests at all (liveness).
- ``/readyz``: 200 when the model is loaded, partitions are assigned and the broker answers;
  otherwise 503 with the reasons, as JSON (readiness).
- ``/dashboard``: a live page, no build step and nothing from a CDN; its chart library (uPlot,
  MIT, from npm) is vendored beside this file and served from here.
"""

from importlib import resources

import faust
from faust.web import Request, Response, View

from stream_clf.metrics import CONTENT_TYPE, WorkerMetrics
from stream_clf.web.health import Readiness

__all__ = ["Readiness", "add_pages", "static_pages"]

_STATIC = {
    "dashboard": ("dashboard.html", "text/html"),
    "dashboard/uplot.iife.min.js": ("uplot.iife.min.js", "application/javascript"),
    "dashboard/uplot.min.css": ("uplot.min.css", "text/css"),
}


def static_pages() -> dict[str, tuple[bytes, str]]:
    """The dashboard page and its assets by path (``/dashboard``...): body and content type."""
    files = resources.files(__name__)
    return {f"/{path}": (files.joinpath(name).read_bytes(), kind) for path, (name, kind) in _STATIC.items()}


def add_pages(app: faust.App, metrics: WorkerMetrics, readiness: Readiness) -> None:
    """Register the endpoints on ``app``'s web server."""

    @app.page("/metrics")
    async def prometheus(view: View, request: Request) -> Response:
        return view.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    @app.page("/healthz")
    async def healthz(view: View, request: Request) -> Response:
        return view.json({"status": "alive"})

    @app.page("/readyz")
    async def readyz(view: View, request: Request) -> Response:
        reasons = await readiness.reasons()
        if reasons:
            return view.json({"status": "not ready", "reasons": reasons}, status=503)
        return view.json({"status": "ready"})

    @app.page("/dashboard/stats.json")
    async def stats(view: View, request: Request) -> Response:
        return view.json(metrics.snapshot())

    for path, (body, content_type) in static_pages().items():

        async def static(view: View, request: Request, body: bytes = body, kind: str = content_type) -> Response:
            return view.bytes(body, content_type=kind, headers={"Cache-Control": "no-cache"})

        app.page(path, name=f"static-{path}")(static)
