"""The worker's web server: a daemon thread of the standard library's HTTP server, in every mode.

It only carries :class:`~stream_clf.ops.web.routes.Routes`' answers. Being a thread of its own,
it answers while the loop is busy or blocked, and its handlers read only thread-safe state (the
metrics registry, the state the loop publishes, a broker check of its own).
"""

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from stream_clf.ops.web.routes import Routes

__all__ = ["serve_in_thread"]

log = logging.getLogger(__name__)


def serve_in_thread(host: str, port: int, routes: Routes) -> ThreadingHTTPServer:
    """Start serving on ``host:port`` from a daemon thread; the server is returned for shutting down."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer = routes.answer(self.path)
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, *_: object) -> None:  # probes every few seconds are not news
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()
    log.info("event=web_listening host=%s port=%d", host, port)
    return server
