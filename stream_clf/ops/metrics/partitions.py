"""The consumer: partitions assigned, rebalances, and the lag of each partition."""

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from stream_clf.ops.metrics.common import gauge_value

__all__ = ["LAG_INTERVAL_SECONDS", "PartitionMetrics"]

# How often consumer lag per partition is measured.
LAG_INTERVAL_SECONDS = 2.0


class PartitionMetrics:
    """What this worker holds of its group's input partitions, and how far behind each is."""

    def _register_partitions(self, r: CollectorRegistry) -> None:
        self.lag = Gauge(
            "stream_clf_consumer_lag_events",
            "Events not yet processed, per partition",
            ["topic", "partition"],
            registry=r,
        )
        self.assignments = Counter(
            "stream_clf_partition_assignments", "Partition assignments received (each rebalance adds one)", registry=r
        )
        self.up = Gauge("stream_clf_up", "1 while the worker runs", registry=r)
        self.up.set(1)
        self.assigned = Gauge("stream_clf_assigned_partitions", "Input partitions assigned to this worker", registry=r)
        self._lag_partitions: set[tuple[str, str]] = set()

    def partitions(self, lag: Mapping[tuple[str, int], int]) -> None:
        """The assigned partitions and the lag of each; partitions no longer assigned are dropped."""
        self.assigned.set(len(lag))
        current = {(topic, str(partition)) for topic, partition in lag}
        for topic, partition in self._lag_partitions - current:
            self.lag.remove(topic, partition)
        for (topic, partition), events in lag.items():
            self.lag.labels(topic=topic, partition=str(partition)).set(events)
        self._lag_partitions = current

    def lag_by_partition(self) -> dict[str, float]:
        """Each assigned partition's lag, as ``topic[partition]``."""
        return {
            f"{topic}[{partition}]": gauge_value(self.lag, topic, partition)
            for topic, partition in sorted(self._lag_partitions)
        }
