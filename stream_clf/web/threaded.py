"""The worker's web endpoints from a thread of the standard library's HTTP server.

The exactly-once mode runs no Faust app, hence no aiohttp server; this serves the same paths
(``/metrics``, ``/healthz``, ``/readyz``, ``/dashboard`` and its data and assets) from a daemon
thread. Handlers read only thread-safe state: the metrics registry and the readiness check.
"""

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from stream_clf.metrics import CONTENT_TYPE, WorkerMetrics
from stream_clf.web import static_pages
from stream_clf.web.health import Readiness

__all__ = ["serve_in_thread"]

log = logging.getLogger(__name__)
JSON = "application/json"


def serve_in_thread(host: str, port: int, metrics: WorkerMetrics, readiness: Readiness) -> ThreadingHTTPServer:
    """Start serving on ``host:port`` from a daemon thread; the server is returned for shutting down."""
    pages = static_pages()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, metrics.exposition(), CONTENT_TYPE)
            elif self.path == "/healthz":
                self._answer(200, b'{"status":"alive"}', JSON)
            elif self.path == "/readyz":
                reasons = readiness.check()
                body = {"status": "not ready", "reasons": reasons} if reasons else {"status": "ready"}
                self._answer(503 if reasons else 200, orjson.dumps(body), JSON)
            elif self.path == "/dashboard/stats.json":
                self._answer(200, orjson.dumps(metrics.snapshot()), JSON)
            elif self.path in pages:
                self._answer(200, *pages[self.path])
            else:
                self._answer(404, b'{"status":"not found"}', JSON)

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:  # probes every few seconds are not news
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()
    log.info("event=web_listening host=%s port=%d", host, port)
    return server
