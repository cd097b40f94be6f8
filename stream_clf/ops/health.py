"""Liveness and readiness, from the state the consuming loop publishes and a broker check of its own.

The loop (Faust's agent or the exactly-once loop) writes a :class:`ConsumerState`; the web thread
only reads it. Neither check ever calls the loop's Kafka clients, which block other threads while
they poll.

Liveness is progress: the worker is stalled when events are waiting (lag, or read and not yet
finished) and none has finished for ``stall_seconds``, or when its loop has not even asked for
records that long; and when a thread it cannot serve without (the control-topic follower) died.
A broker outage is not a stall: restarting the worker would not end it.
"""

import threading
import time
from collections.abc import Callable, Mapping, Sequence

from stream_clf.kafka.connection import Connection

__all__ = ["REGISTRY_WAIT_SECONDS", "STALL_SECONDS", "ConsumerState", "Readiness"]

# How long a broker check is trusted; probes arrive every few seconds from Kubernetes and Docker.
CHECK_TTL_SECONDS = 5.0
BROKER_TIMEOUT_SECONDS = 2.0
# Events waiting and none finished for this long (or no fetch at all): the worker is stalled. Far
# above a slow batch (the fault tests run 12 s ones; 64 reviews of 512 tokens on BERT-base take
# about 10 s on 2 cores) and a rebalance.
STALL_SECONDS = 120.0
# Events waiting for the Schema Registry (it does not answer) count as waiting, not as a stall, this long:
# a restart would not bring the registry back; past it, one may (a stale address, a broken connection pool).
REGISTRY_WAIT_SECONDS = 900.0


class ConsumerState:
    """What the consuming loop publishes: assigned partitions, progress, the offsets processed, the
    events waiting (behind the end of the partitions, or read and not finished)."""

    def __init__(self) -> None:
        self.assigned = 0
        now = time.monotonic()
        self._polled = now
        self._progressed = now  # the last event finished, or the last moment nothing was waiting
        self._offsets: dict[tuple[str, int], int] = {}
        self._lag = 0
        self._held = 0
        self._registry: tuple[str, float] | None = None  # why events wait for the registry, since when
        self._lock = threading.Lock()

    def polled(self) -> None:
        """The loop asked its consumer for records (whether or not any came)."""
        self._polled = time.monotonic()

    def processed(self, topic: str, partition: int, offset: int) -> None:
        """The event at ``offset`` is done: its record is delivered or committed."""
        with self._lock:
            self._offsets[topic, partition] = offset + 1
            self._progressed = time.monotonic()

    def offsets(self) -> dict[tuple[str, int], int]:
        """Per input partition, the offset after the last event processed."""
        with self._lock:
            return dict(self._offsets)

    def waiting(self, *, lag: Mapping[tuple[str, int], int] | None = None, held: int | None = None) -> None:
        """Events not finished: ``lag`` per assigned partition (measured every few seconds), and ``held``
        (read and in flight). Either may be given alone."""
        with self._lock:
            waited = bool(self._lag or self._held)
            if lag is not None:
                self._lag = sum(lag.values())
            if held is not None:
                self._held = held
            if not waited:  # nothing was waiting until now: the clock of a stall starts here
                self._progressed = time.monotonic()

    def wait_for_registry(self, reason: str | None) -> None:
        """Events wait for the Schema Registry, which does not answer (``reason``), or no longer (None)."""
        now = time.monotonic()
        with self._lock:
            if reason is None:
                if self._registry is not None:  # the wait was no stall: the clocks start again
                    self._registry, self._progressed, self._polled = None, now, now
            else:
                self._registry = (reason, self._registry[1] if self._registry else now)

    @property
    def registry_waiting(self) -> str | None:
        """Why events wait for the Schema Registry, or None."""
        registry = self._registry
        return None if registry is None else registry[0]

    def stalled_for(self) -> float:
        """Seconds the loop has made no progress: since it last fetched, or, while events wait, since
        it last finished one (0 while nothing waits, and while events wait for the Schema Registry, up
        to :data:`REGISTRY_WAIT_SECONDS`)."""
        now = time.monotonic()
        with self._lock:
            if self._registry is not None:
                waited = now - self._registry[1]
                return 0.0 if waited <= REGISTRY_WAIT_SECONDS else waited
            waiting = self._lag or self._held
            idle = now - self._progressed if waiting else 0.0
        return max(now - self._polled, idle)


class Readiness:
    """Answers whether the worker is alive and can do its job now, and if not, why."""

    def __init__(
        self,
        connection: Connection,
        state: ConsumerState,
        *,
        stall_seconds: float = STALL_SECONDS,
        vital: Sequence[Callable[[], str | None]] = (),
    ) -> None:
        self._admin = connection.admin()
        self._state = state
        self._stall_seconds = stall_seconds
        self._vital = vital
        self._broker_checked = 0.0
        self._broker_error: str | None = "not checked yet"
        self._lock = threading.Lock()

    def liveness(self) -> str | None:
        """Why the worker is not alive: a thread it needs died, or its loop made no progress though the
        broker answers. None while it is alive; a broker outage alone is no reason (restarting the worker
        would not end it)."""
        for check in self._vital:
            failure = check()
            if failure is not None:
                return failure
        stalled = self._state.stalled_for()
        if stalled > self._stall_seconds and self._broker() is None:
            return f"consumer stalled: events waiting and none finished (or nothing fetched) for {stalled:.0f}s"
        return None

    def reasons(self) -> list[str]:
        """Why the worker is not ready; empty when it is. Blocks up to the broker timeout."""
        reasons = []
        stalled = self.liveness()
        if stalled is not None:
            reasons.append(stalled)
        if self._state.assigned == 0:
            reasons.append("no partitions assigned")
        registry = self._state.registry_waiting
        if registry is not None:
            reasons.append(f"events wait for the Schema Registry: {registry}")
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
