"""Liveness and readiness, from the state the consuming loop publishes and a broker check of its own.

The loop (Faust's agent or the exactly-once loop) writes a :class:`ConsumerState`; the web thread
only reads it. Neither check ever calls the loop's Kafka clients, which block other threads while
they poll.
"""

import threading
import time
from collections.abc import Sequence

from stream_clf.kafka.clients import admin_client
from stream_clf.kafka.security import PLAINTEXT, KafkaSecurity

__all__ = ["STALL_SECONDS", "ConsumerState", "Readiness"]

# How long a broker check is trusted; probes arrive every few seconds from Kubernetes and Docker.
CHECK_TTL_SECONDS = 5.0
BROKER_TIMEOUT_SECONDS = 2.0
# A loop that has neither fetched nor finished a batch for this long has stopped consuming. Far
# above a slow batch (the fault tests run 12 s ones) and a rebalance.
STALL_SECONDS = 120.0


class ConsumerState:
    """What the consuming loop publishes: assigned partitions, progress, the offsets processed."""

    def __init__(self) -> None:
        self.assigned = 0
        self._last_activity = time.monotonic()
        self._offsets: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def polled(self) -> None:
        """The loop asked its consumer for records (whether or not any came)."""
        self._last_activity = time.monotonic()

    def processed(self, topic: str, partition: int, offset: int) -> None:
        """The event at ``offset`` is done: its record is delivered or committed."""
        self._last_activity = time.monotonic()
        with self._lock:
            self._offsets[topic, partition] = offset + 1

    def offsets(self) -> dict[tuple[str, int], int]:
        """Per input partition, the offset after the last event processed."""
        with self._lock:
            return dict(self._offsets)

    def stalled_for(self) -> float:
        """Seconds since the loop last fetched or finished an event."""
        return time.monotonic() - self._last_activity


class Readiness:
    """Answers whether the worker is alive and can do its job now, and if not, why."""

    def __init__(
        self,
        brokers: Sequence[str],
        state: ConsumerState,
        *,
        security: KafkaSecurity = PLAINTEXT,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self._admin = admin_client(brokers, security)
        self._state = state
        self._stall_seconds = stall_seconds
        self._broker_checked = 0.0
        self._broker_error: str | None = "not checked yet"
        self._lock = threading.Lock()

    def liveness(self) -> str | None:
        """Why the worker is not alive: its loop stopped consuming though the broker answers. None while
        it is alive; a broker outage alone is no reason (restarting the worker would not end it)."""
        stalled = self._state.stalled_for()
        if stalled > self._stall_seconds and self._broker() is None:
            return f"consumer stalled: nothing fetched or processed for {stalled:.0f}s"
        return None

    def reasons(self) -> list[str]:
        """Why the worker is not ready; empty when it is. Blocks up to the broker timeout."""
        reasons = []
        stalled = self.liveness()
        if stalled is not None:
            reasons.append(stalled)
        if self._state.assigned == 0:
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
