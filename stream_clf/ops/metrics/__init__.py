"""The worker's Prometheus metrics, one area per module, and the live snapshot its dashboard page polls.

Names follow Prometheus conventions: the ``stream_clf_`` prefix, base units (seconds, tokens,
events), ``_total`` for counters. Counters only ever grow; rates, ratios and percentiles are
computed by whoever reads them (Prometheus, Grafana, or the dashboard's script).
"""

from stream_clf.ops.metrics.models import SWAP_OUTCOMES
from stream_clf.ops.metrics.partitions import LAG_INTERVAL_SECONDS
from stream_clf.ops.metrics.stages import STAGE_STATES, StageClock
from stream_clf.ops.metrics.worker import CONTENT_TYPE, WorkerMetrics

__all__ = ["CONTENT_TYPE", "LAG_INTERVAL_SECONDS", "STAGE_STATES", "SWAP_OUTCOMES", "StageClock", "WorkerMetrics"]
