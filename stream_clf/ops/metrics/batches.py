"""Micro-batches: their size and tokens, the time to tokenize and classify them, and each event's latency."""

import time
from collections import deque
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram

from stream_clf.ops.metrics.common import EVENTS, SECONDS, TOKENS, total

__all__ = ["RECENT_SECONDS", "BatchMetrics"]

# The dashboard's latency percentiles cover the last this many seconds of results.
RECENT_SECONDS = 30.0


class BatchMetrics:
    """What each micro-batch cost, and how long its events waited."""

    def _register_batches(self, r: CollectorRegistry) -> None:
        self.batch_events = Histogram("stream_clf_batch_events", "Events per micro-batch", buckets=EVENTS, registry=r)
        self.batch_tokens = Histogram(
            "stream_clf_batch_tokens", "Tokens per micro-batch (before padding)", buckets=TOKENS, registry=r
        )
        self.tokens = Counter("stream_clf_tokens", "Tokens the model read, without padding", registry=r)
        self.padded_tokens = Counter(
            "stream_clf_padded_tokens", "Tokens the model computed, padding included", registry=r
        )
        self.tokenize_seconds = Histogram(
            "stream_clf_tokenize_seconds", "Time to tokenize one chunk of events", buckets=SECONDS, registry=r
        )
        self.queue_seconds = Histogram(
            "stream_clf_queue_wait_seconds",
            "Time from an event's arrival in the worker to the start of its batch's inference",
            buckets=SECONDS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "stream_clf_inference_seconds", "Time to classify one micro-batch", buckets=SECONDS, registry=r
        )
        self.latency_seconds = Histogram(
            "stream_clf_event_latency_seconds",
            "Time from an event's Kafka timestamp to its result's delivery",
            buckets=SECONDS,
            registry=r,
        )
        self._recent_latency: deque[tuple[float, float]] = deque(maxlen=20_000)
        self._recent_batches: deque[int] = deque(maxlen=50)

    def batch(self, events: int, tokens: int, padded: int, seconds: float, waits: Iterable[float]) -> None:
        """One micro-batch classified: its size, tokens, padding, inference time and queue waits."""
        self.batch_events.observe(events)
        self.batch_tokens.observe(tokens)
        self.tokens.inc(tokens)
        self.padded_tokens.inc(padded)
        self.inference_seconds.observe(seconds)
        for wait in waits:
            self.queue_seconds.observe(wait)
        self._recent_batches.append(events)

    def delivered_after(self, latency: float) -> None:
        """A result was delivered ``latency`` seconds after its event's Kafka timestamp."""
        self.latency_seconds.observe(latency)
        now = time.monotonic()
        recent = self._recent_latency
        recent.append((now, latency))
        # Only the last RECENT_SECONDS are read: older ones go, so the window's memory follows the
        # rate instead of growing to maxlen over a slow first quarter of an hour.
        while recent[0][0] < now - RECENT_SECONDS:
            recent.popleft()

    def recent_latencies(self) -> list[float]:
        """The latencies of the last :data:`RECENT_SECONDS` (copied atomically: safe beside a recording thread)."""
        cutoff = time.monotonic() - RECENT_SECONDS
        return [latency for at, latency in tuple(self._recent_latency) if at >= cutoff]

    def batch_fill(self, max_batch: int) -> float | None:
        """How full the recent micro-batches were, against ``max_batch``."""
        batches = tuple(self._recent_batches)
        return sum(batches) / (len(batches) * max_batch) if batches else None

    def padding(self) -> float | None:
        """The share of computed tokens that were padding."""
        computed = total(self.padded_tokens)
        return 1 - total(self.tokens) / computed if computed else None
