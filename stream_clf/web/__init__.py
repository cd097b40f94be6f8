"""The worker's web endpoints, served by Faust's own web server (aiohttp).

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

__all__ = ["Readiness", "add_pages"]

_ASSETS = {
    "uplot.iife.min.js": "application/javascript",
    "uplot.min.css": "text/css",
}


def add_pages(app: faust.App, metrics: WorkerMetrics, readiness: Readiness) -> None:
    """Register the endpoints on ``app``'s web server."""
    files = resources.files(__name__)
    page = files.joinpath("dashboard.html").read_bytes()
    assets = {name: files.joinpath(name).read_bytes() for name in _ASSETS}

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

    @app.page("/dashboard")
    async def dashboard(view: View, request: Request) -> Response:
        return view.bytes(page, content_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.page("/dashboard/stats.json")
    async def stats(view: View, request: Request) -> Response:
        return view.json(metrics.snapshot())

    for name, content_type in _ASSETS.items():

        async def asset(view: View, request: Request, name: str = name, content_type: str = content_type) -> Response:
            return view.bytes(assets[name], content_type=content_type)

        app.page(f"/dashboard/{name}", name=f"dashboard-{name}")(asset)
