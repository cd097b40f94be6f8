"""Readiness: the model is loaded, partitions are assigned, and the broker answers."""

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

from stream_clf.security import PLAINTEXT, KafkaSecurity
from stream_clf.topics import admin_client

__all__ = ["Readiness"]

# How long a broker check is trusted; probes arrive every few seconds from Kubernetes and Docker.
CHECK_TTL_SECONDS = 5.0
BROKER_TIMEOUT_SECONDS = 2.0


class Readiness:
    """Answers whether the worker can do its job now, and if not, why."""

    def __init__(
        self,
        brokers: Sequence[str],
        assigned: Callable[[], int],
        *,
        security: KafkaSecurity = PLAINTEXT,
        model_loaded: bool = True,
    ) -> None:
        self._admin = admin_client(brokers, security)
        self._assigned = assigned
        self._model_loaded = model_loaded
        self._broker_checked = 0.0
        self._broker_error: str | None = "not checked yet"
        self._lock = threading.Lock()

    async def reasons(self) -> list[str]:
        """Why the worker is not ready; empty when it is (the broker is asked off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.check)

    def check(self) -> list[str]:
        """:meth:`reasons`, blocking: for callers without an event loop."""
        reasons = []
        if not self._model_loaded:
            reasons.append("model not loaded")
        if self._assigned() == 0:
            reasons.append("no partitions assigned")
        broker = self._broker()
        if broker is not None:
            reasons.append(f"broker unreachable: {broker}")
        return reasons

    def _broker(self) -> str | None:
        with self._lock:
            if time.monotonic() - self._broker_checked > CHECK_TTL_SECONDS:
                self._broker_error = self._ask_broker()
                self._broker_checked = time.monotonic()
            return self._broker_error

    def _ask_broker(self) -> str | None:
        try:
            self._admin.list_topics(timeout=BROKER_TIMEOUT_SECONDS)
        except Exception as error:  # librdkafka's KafkaException, with its own message
            return str(error)
        return None
