"""Every metric one worker exports, one area per module, and the snapshot its dashboard polls."""

import time

import numpy as np
from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest

from stream_clf.ops.metrics.batches import BatchMetrics
from stream_clf.ops.metrics.common import by_label, total
from stream_clf.ops.metrics.flow import FlowMetrics
from stream_clf.ops.metrics.models import ModelMetrics
from stream_clf.ops.metrics.partitions import PartitionMetrics
from stream_clf.ops.metrics.stages import StageMetrics
from stream_clf.ops.metrics.threads import ThreadCpu

__all__ = ["CONTENT_TYPE", "WorkerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The *_created series (a timestamp per counter) only double what /metrics prints.
disable_created_metrics()


class WorkerMetrics(FlowMetrics, BatchMetrics, ModelMetrics, PartitionMetrics, StageMetrics):
    """Every metric the worker exports, with one method per thing that happens to it. Each worker keeps
    its own registry, so two workers in one test process do not share counts."""

    def __init__(self, *, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        self.max_batch = max_batch
        self._register_flow(self.registry)
        self._register_batches(self.registry)
        self._register_models(self.registry)
        self._register_partitions(self.registry)
        self._register_stages(self.registry)
        self.registry.register(ThreadCpu())

    def result(self, version: str, label: str, score: float, latency: float | None) -> None:
        """One result of model ``version`` delivered; ``latency`` from the event's Kafka timestamp."""
        self.results_out.inc()
        self.predicted(version, label, score)
        if latency is not None:
            self.delivered_after(latency)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, object]:
        """What the dashboard shows: counter totals, recent latency percentiles, batch fill, lag.

        Safe beside a thread that records: the recent windows are copied (atomically) before reading.
        """
        recent = self.recent_latencies()
        percentiles = (
            dict(zip(("p50", "p95", "p99"), (float(v) for v in np.percentile(recent, [50, 95, 99])), strict=True))
            if recent
            else {"p50": None, "p95": None, "p99": None}
        )
        models = list(self.models)
        lag = self.lag_by_partition()
        return {
            "time": time.time(),
            "model": next((model for model in models if model["role"] == "default"), None),
            "models": models,
            "events_in": total(self.events_in),
            "results_out": total(self.results_out),
            "dead_letters": by_label(self.dead_letters, "reason"),
            "labels": by_label(self.predictions, "label"),
            "versions": by_label(self.predictions, "model_version"),
            "swaps": {**by_label(self.swaps, "outcome"), "last": self._last_swap},
            "shadow": self.shadow_agreement(self.inference_seconds),
            "abstentions": by_label(self.abstentions, "label"),
            "latency": percentiles,
            "batch_fill": self.batch_fill(self.max_batch),
            "padding": self.padding(),
            "lag": lag,
            "assigned_partitions": len(lag),
        }
