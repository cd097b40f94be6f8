"""The worker's Prometheus metrics, and the live snapshot its dashboard page polls.

Names follow Prometheus conventions: the ``stream_clf_`` prefix, base units (seconds, tokens,
events), ``_total`` for counters. Each worker keeps its own registry, so two workers in one test
process do not share counts. Counters only ever grow; rates, ratios and percentiles are computed by
whoever reads them (Prometheus, Grafana, or the dashboard's script).
"""

import time
from collections import deque
from collections.abc import Iterable, Mapping

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from stream_clf.errors import Reason

__all__ = ["CONTENT_TYPE", "LAG_INTERVAL_SECONDS", "STAGE_STATES", "SWAP_OUTCOMES", "StageClock", "WorkerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_EVENTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKENS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
_CONFIDENCE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
# The dashboard's latency percentiles cover the last this many seconds of results.
RECENT_SECONDS = 30.0
# How often consumer lag per partition is measured.
LAG_INTERVAL_SECONDS = 2.0
SWAP_OUTCOMES = ("applied", "refused")
# Where a stage's time goes: working, waiting for input, or waiting for room (or an answer) downstream.
STAGE_STATES = ("busy", "starved", "blocked")
# The *_created series (a timestamp per counter) only double what /metrics prints.
disable_created_metrics()


class WorkerMetrics:
    """Every metric the worker exports, with one method per thing that happens to it."""

    def __init__(self, *, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        self.max_batch = max_batch
        r = self.registry
        self.events_in = Counter(
            "stream_clf_events_consumed", "Events read from the input topics", ["topic"], registry=r
        )
        self.results_out = Counter("stream_clf_results", "Results published to the output topic", registry=r)
        self.dead_letters = Counter(
            "stream_clf_dead_letters", "Events published to the dead-letter topic, by reason", ["reason"], registry=r
        )
        for reason in Reason:  # every reason is a series from the start, at 0
            self.dead_letters.labels(reason=reason.value)
        self.refitted_records = Counter(
            "stream_clf_refitted_records",
            "Records published in a smaller form because their topic refused them whole: role result or review"
            " without meta (form bare), dead letters cut to the head of their value (form head)",
            ["role", "form"],
            registry=r,
        )
        self.dropped_records = Counter(
            "stream_clf_dropped_records",
            "Records left out because no form of them fits their topic (each one also a log line), by role",
            ["role"],
            registry=r,
        )
        self.transaction_aborts = Counter(
            "stream_clf_transaction_aborts",
            "Exactly-once transactions aborted, by cause: record (a record was refused; the batch is then"
            " committed event by event) or the broker's error",
            ["cause"],
            registry=r,
        )
        self.control_skipped = Counter(
            "stream_clf_control_records_skipped",
            "Control-topic records skipped as malformed (each one also a log line), by kind: swap, status, other",
            ["kind"],
            registry=r,
        )
        self.batch_events = Histogram("stream_clf_batch_events", "Events per micro-batch", buckets=_EVENTS, registry=r)
        self.batch_tokens = Histogram(
            "stream_clf_batch_tokens", "Tokens per micro-batch (before padding)", buckets=_TOKENS, registry=r
        )
        self.tokens = Counter("stream_clf_tokens", "Tokens the model read, without padding", registry=r)
        self.padded_tokens = Counter(
            "stream_clf_padded_tokens", "Tokens the model computed, padding included", registry=r
        )
        self.tokenize_seconds = Histogram(
            "stream_clf_tokenize_seconds", "Time to tokenize one chunk of events", buckets=_SECONDS, registry=r
        )
        self.queue_seconds = Histogram(
            "stream_clf_queue_wait_seconds",
            "Time from an event's arrival in the worker to the start of its batch's inference",
            buckets=_SECONDS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "stream_clf_inference_seconds", "Time to classify one micro-batch", buckets=_SECONDS, registry=r
        )
        self.latency_seconds = Histogram(
            "stream_clf_event_latency_seconds",
            "Time from an event's Kafka timestamp to its result's delivery",
            buckets=_SECONDS,
            registry=r,
        )
        self.lag = Gauge(
            "stream_clf_consumer_lag_events",
            "Events not yet processed, per partition",
            ["topic", "partition"],
            registry=r,
        )
        self.predictions = Counter(
            "stream_clf_predictions", "Results by label and model version", ["model_version", "label"], registry=r
        )
        self.confidence = Histogram(
            "stream_clf_confidence",
            "Score of the predicted label, by model version",
            ["model_version"],
            buckets=_CONFIDENCE,
            registry=r,
        )
        self.model_info = Gauge(
            "stream_clf_model_info",
            "The models in service (always 1): role default, route (of a topic), canary or shadow",
            ["model", "version", "precision", "role", "topic"],
            registry=r,
        )
        self.models: list[dict[str, str]] = []
        self.swaps = Counter(
            "stream_clf_model_swaps", "Model swaps asked for, by outcome: applied or refused", ["outcome"], registry=r
        )
        for outcome in SWAP_OUTCOMES:
            self.swaps.labels(outcome=outcome)
        self.swap_seconds = Histogram(
            "stream_clf_model_swap_seconds",
            "Time from a swap's request to its model serving: load, check and warm-up beside the old one",
            buckets=_SECONDS,
            registry=r,
        )
        self.shadow_comparisons = Counter(
            "stream_clf_shadow_comparisons",
            "Events answered by the live and the shadow model, by both labels",
            ["live_label", "shadow_label", "agree"],
            registry=r,
        )
        self.shadow_seconds = Counter(
            "stream_clf_shadow_seconds", "Time spent tokenizing and classifying for the shadow model", registry=r
        )
        self.abstentions = Counter(
            "stream_clf_abstentions",
            "Results below --min-confidence (published, marked, and copied for review)",
            ["model_version", "label"],
            registry=r,
        )
        self.assignments = Counter(
            "stream_clf_partition_assignments", "Partition assignments received (each rebalance adds one)", registry=r
        )
        self._last_swap: dict[str, object] | None = None
        self.up = Gauge("stream_clf_up", "1 while the worker runs", registry=r)
        self.up.set(1)
        self.assigned = Gauge("stream_clf_assigned_partitions", "Input partitions assigned to this worker", registry=r)
        self.stage_seconds = Counter(
            "stream_clf_stage_seconds",
            "Time each stage of the worker spent busy, starved (waiting for input) or blocked (waiting"
            " downstream); the inference lanes count only busy time, summed over lanes",
            ["stage", "state"],
            registry=r,
        )
        self.lanes = Gauge("stream_clf_inference_lanes", "ONNX Runtime calls that run at once", registry=r)
        self._lane_busy = self.stage_seconds.labels(stage="lanes", state="busy")
        # Each event touches a few labelled series: their children are looked up once (labels() per
        # event cost the event loop more than the rest of the metrics together).
        self._consumed: dict[str, Counter] = {}
        self._predicted: dict[tuple[str, str], Counter] = {}
        self._confidences: dict[str, Histogram] = {}
        self._compared: dict[tuple[str, str], Counter] = {}
        self._lag_partitions: set[tuple[str, str]] = set()
        self._recent_latency: deque[tuple[float, float]] = deque(maxlen=20_000)
        self._recent_batches: deque[int] = deque(maxlen=50)

    def stage(self, name: str) -> "StageClock":
        """A clock for one stage (a task or a thread that takes its turn in the pipeline)."""
        return StageClock(self.stage_seconds, name)

    def lane_busy(self, seconds: float) -> None:
        """One ONNX Runtime call (feeds built and run) took ``seconds`` in a lane."""
        self._lane_busy.inc(seconds)

    def consumed(self, topic: str) -> None:
        counter = self._consumed.get(topic)
        if counter is None:
            counter = self._consumed[topic] = self.events_in.labels(topic=topic)
        counter.inc()

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

    def in_service(self, models: Iterable[tuple[str, str, str, str, str]]) -> None:
        """The models now in service, as (role, topic, name, version, precision); the others are dropped."""
        self.model_info.clear()
        self.models = []
        for role, topic, name, version, precision in models:
            self.model_info.labels(model=name, version=version, precision=precision, role=role, topic=topic).set(1)
            self.models.append({"role": role, "topic": topic, "name": name, "version": version, "precision": precision})

    def swapped(self, outcome: str, seconds: float, **details: object) -> None:
        """A swap was applied or refused, ``seconds`` after it was asked for."""
        self.swaps.labels(outcome=outcome).inc()
        if outcome == "applied":
            self.swap_seconds.observe(seconds)
        self._last_swap = {"outcome": outcome, "seconds": seconds, "time": time.time(), **details}

    def result(self, version: str, label: str, score: float, latency: float | None) -> None:
        """One result of model ``version`` delivered; ``latency`` from the event's Kafka timestamp."""
        self.results_out.inc()
        predicted = self._predicted.get((version, label))
        if predicted is None:
            predicted = self._predicted[version, label] = self.predictions.labels(model_version=version, label=label)
        predicted.inc()
        confidence = self._confidences.get(version)
        if confidence is None:
            confidence = self._confidences[version] = self.confidence.labels(model_version=version)
        confidence.observe(score)
        if latency is not None:
            self.latency_seconds.observe(latency)
            now = time.monotonic()
            recent = self._recent_latency
            recent.append((now, latency))
            # Only the last RECENT_SECONDS are read: older ones go, so the window's memory follows
            # the rate instead of growing to maxlen over a slow first quarter of an hour.
            while recent[0][0] < now - RECENT_SECONDS:
                recent.popleft()

    def dead_letter(self, reason: str) -> None:
        self.dead_letters.labels(reason=reason).inc()

    def refitted(self, role: str, form: str) -> None:
        """A record went out in a smaller ``form`` than whole, to fit its topic."""
        self.refitted_records.labels(role=role, form=form).inc()

    def dropped(self, role: str) -> None:
        """A record was left out: no form of it fits its topic."""
        self.dropped_records.labels(role=role).inc()

    def abstained(self, version: str, label: str) -> None:
        self.abstentions.labels(model_version=version, label=label).inc()

    def shadow_compared(self, live: str, shadow: str) -> None:
        """The live model answered ``live`` and the shadow model ``shadow`` for one delivered result."""
        compared = self._compared.get((live, shadow))
        if compared is None:
            compared = self._compared[live, shadow] = self.shadow_comparisons.labels(
                live_label=live, shadow_label=shadow, agree=str(live == shadow).lower()
            )
        compared.inc()

    def partitions(self, lag: Mapping[tuple[str, int], int]) -> None:
        """The assigned partitions and the lag of each; partitions no longer assigned are dropped."""
        self.assigned.set(len(lag))
        current = {(topic, str(partition)) for topic, partition in lag}
        for topic, partition in self._lag_partitions - current:
            self.lag.remove(topic, partition)
        for (topic, partition), events in lag.items():
            self.lag.labels(topic=topic, partition=str(partition)).set(events)
        self._lag_partitions = current

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, object]:
        """What the dashboard shows: counter totals, recent latency percentiles, batch fill, lag.

        Safe beside a thread that records: the recent windows are copied (atomically) before reading.
        """
        cutoff = time.monotonic() - RECENT_SECONDS
        recent = [latency for at, latency in tuple(self._recent_latency) if at >= cutoff]
        batches = tuple(self._recent_batches)
        percentiles = (
            dict(zip(("p50", "p95", "p99"), (float(v) for v in np.percentile(recent, [50, 95, 99])), strict=True))
            if recent
            else {"p50": None, "p95": None, "p99": None}
        )
        fill = sum(batches) / (len(batches) * self.max_batch) if batches else None
        models = list(self.models)
        return {
            "time": time.time(),
            "model": next((model for model in models if model["role"] == "default"), None),
            "models": models,
            "events_in": _total(self.events_in),
            "results_out": _total(self.results_out),
            "dead_letters": _by_label(self.dead_letters, "reason"),
            "labels": _by_label(self.predictions, "label"),
            "versions": _by_label(self.predictions, "model_version"),
            "swaps": {**_by_label(self.swaps, "outcome"), "last": self._last_swap},
            "shadow": self._shadow_snapshot(),
            "abstentions": _by_label(self.abstentions, "label"),
            "latency": percentiles,
            "batch_fill": fill,
            "padding": _padding(self.tokens, self.padded_tokens),
            "lag": {
                f"{topic}[{partition}]": _gauge_value(self.lag, topic, partition)
                for topic, partition in sorted(self._lag_partitions)
            },
            "assigned_partitions": len(self._lag_partitions),
        }

    def _shadow_snapshot(self) -> dict[str, object] | None:
        """Agreement of the live and shadow models, label by label, and the shadow's share of inference."""
        table: dict[str, dict[str, float]] = {}
        for sample in _samples(self.shadow_comparisons):
            table.setdefault(sample.labels["live_label"], {})[sample.labels["shadow_label"]] = sample.value
        compared = sum(sum(row.values()) for row in table.values())
        if not compared:
            return None
        agreed = sum(row.get(label, 0.0) for label, row in table.items())
        inference = _histogram_sum(self.inference_seconds)
        shadow = _total(self.shadow_seconds)
        return {
            "compared": compared,
            "agreement": agreed / compared,
            "table": table,
            "cost": shadow / inference if inference else None,
        }


class StageClock:
    """Where one stage's time goes. Each :meth:`enter` closes the span since the last one under the
    state the stage was in; one call per change of state keeps it cheap enough for a per-event loop."""

    def __init__(self, counter: Counter, stage: str) -> None:
        self._counters = {state: counter.labels(stage=stage, state=state) for state in STAGE_STATES}
        self._state = "starved"
        self._since = time.perf_counter()

    def enter(self, state: str) -> None:
        now = time.perf_counter()
        self._counters[self._state].inc(now - self._since)
        self._state, self._since = state, now

    def add(self, state: str, seconds: float) -> None:
        """Count ``seconds`` in ``state`` (for work measured elsewhere, such as in a thread)."""
        self._counters[state].inc(seconds)


def _samples(metric: Counter | Gauge) -> list:
    return [sample for family in metric.collect() for sample in family.samples if not sample.name.endswith("_created")]


def _total(counter: Counter) -> float:
    return sum(sample.value for sample in _samples(counter))


def _by_label(counter: Counter, label: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for sample in _samples(counter):
        totals[sample.labels[label]] = totals.get(sample.labels[label], 0.0) + sample.value
    return totals


def _gauge_value(gauge: Gauge, topic: str, partition: str) -> float:
    return next(
        (s.value for s in _samples(gauge) if s.labels == {"topic": topic, "partition": partition}),
        0.0,
    )


def _histogram_sum(histogram: Histogram) -> float:
    return sum(sample.value for sample in _samples(histogram) if sample.name.endswith("_sum"))


def _padding(tokens: Counter, padded: Counter) -> float | None:
    computed = _total(padded)
    return 1 - _total(tokens) / computed if computed else None
