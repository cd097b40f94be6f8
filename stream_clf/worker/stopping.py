"""How the worker is asked to end, and how long it has.

SIGTERM or SIGINT stops it cleanly (exit 0) after the batches in flight are delivered and
committed; a loop that fails for good ends it with one ``event=worker_failed`` line and exit 1.
Either way, a stop that has not finished within :data:`STOP_DEADLINE_SECONDS` ends the process at
once (exit 1): nothing acked is lost, and the next worker re-reads whatever was not committed.
"""

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable

__all__ = ["STOP_DEADLINE_SECONDS", "Stop", "watch_signals"]

log = logging.getLogger(__name__)

# Within Kubernetes' default termination grace (30 s) and far above a clean stop (a batch or two).
STOP_DEADLINE_SECONDS = 25.0


class Stop:
    """How the worker is asked to end: by a signal (exit 0) or a failure (exit 1), with a deadline."""

    def __init__(self) -> None:
        self.exit_code = 0
        self._request: Callable[[], None] = lambda: None
        self._deadline: threading.Timer | None = None

    def on_request(self, request: Callable[[], None]) -> None:
        """What the running loop does to begin a clean stop."""
        self._request = request

    def signalled(self, signum: int) -> None:
        log.info("event=stop_requested signal=%s", signal.Signals(signum).name)
        self._begin()

    def fail(self, reason: str) -> None:
        """End the worker because its loop failed for good: one line, exit code 1."""
        log.error("event=worker_failed reason=%r", reason)
        self.exit_code = 1
        self._begin()

    def _begin(self) -> None:
        if self._deadline is None:
            self._deadline = threading.Timer(STOP_DEADLINE_SECONDS, self._expire)
            self._deadline.daemon = True
            self._deadline.start()
        self._request()

    def _expire(self) -> None:
        log.error(
            "event=stop_timeout seconds=%.0f: the worker did not stop in time; exiting now", STOP_DEADLINE_SECONDS
        )
        logging.shutdown()
        os._exit(1)


def watch_signals(stop: Stop) -> None:
    """Act on SIGTERM and SIGINT from a thread of their own.

    A Python signal handler runs only when the main thread comes back to the interpreter, and the
    exactly-once loop's main thread can sit inside librdkafka for a minute (a transaction commit to
    a broker that stopped answering). The C-level handler writes the signal's number to the wakeup
    socket at once; this thread reads it and starts the stop, and its deadline.
    """
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)  # the watcher acts; the handler only lets the byte be written

    def watch() -> None:
        with reader, writer:  # held open for as long as the process runs
            while received := reader.recv(1):
                stop.signalled(received[0])

    threading.Thread(target=watch, name="signals", daemon=True).start()
