"""Events behind the end of each input partition, as the exactly-once loop measures them.

A measurement is a report for the dashboards and readiness, never a reason to stop: a partition
whose end or committed offset the brokers cannot give now (its leader moving, a broker that does not
answer) keeps the lag last measured and is measured again on the next round.
"""

import logging
import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream_clf.ops.health import ConsumerState
from stream_clf.ops.metrics import LAG_INTERVAL_SECONDS, WorkerMetrics

__all__ = ["PartitionLag"]

log = logging.getLogger(__name__)
# How long one round may wait on the brokers for an end or a committed offset not known yet.
ASK_TIMEOUT_SECONDS = 5.0

Key = tuple[str, int]


class PartitionLag:
    """The lag of each partition assigned to ``consumer``, without waiting on the broker in the loop.

    The end is the high watermark the last fetch carried; the done mark is the offset after the last
    event this worker committed, or the group's committed offset as it was when the partition was
    assigned (asked once per assignment), whichever is further. Not the consumer's position: what was
    read and is still being classified is not done, and a worker stuck on it must show its lag.
    """

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self._committed: dict[Key, int] = {}
        self._last: dict[Key, int] = {}
        self._failing: dict[Key, str] = {}
        self._measured = 0.0

    def report(self, metrics: WorkerMetrics, state: ConsumerState) -> None:
        """Tell the metrics and readiness the lag, at most once per ``LAG_INTERVAL_SECONDS``."""
        if time.monotonic() - self._measured >= LAG_INTERVAL_SECONDS:
            behind = self.measure(state.offsets())
            metrics.partitions(behind)
            state.waiting(lag=behind)
            self._measured = time.monotonic()

    def measure(self, done: Mapping[Key, int]) -> dict[Key, int]:
        """Each assigned partition's lag, given ``done``: the offset after the last event committed.

        A partition the brokers cannot answer for now keeps its last lag, or is left out until its
        first measurement; each such partition is logged once until it is measured again.
        """
        assigned = self._consumer.assignment()
        keys = {(tp.topic, tp.partition) for tp in assigned}
        self._committed = {key: offset for key, offset in self._committed.items() if key in keys}
        self._last = {key: behind for key, behind in self._last.items() if key in keys}
        self._failing = {key: reason for key, reason in self._failing.items() if key in keys}
        self._ask_committed([tp for tp in assigned if (tp.topic, tp.partition) not in self._committed])
        lag = {}
        for tp in assigned:
            key = (tp.topic, tp.partition)
            behind = self._behind(tp, done.get(key, -1))
            if behind is not None:
                self._last[key] = behind
                self._failing.pop(key, None)
            if key in self._last:
                lag[key] = self._last[key]
        return lag

    def _ask_committed(self, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        try:
            answered = self._consumer.committed(partitions, timeout=ASK_TIMEOUT_SECONDS)
        except KafkaException as error:  # asked again on the next round
            for tp in partitions:
                self._unmeasured((tp.topic, tp.partition), error.args[0].str())
            return
        for tp in answered:
            if tp.error is None:
                self._committed[tp.topic, tp.partition] = tp.offset
            else:
                self._unmeasured((tp.topic, tp.partition), tp.error.str())

    def _behind(self, tp: TopicPartition, done: int) -> int | None:
        """The partition's lag, or None where the brokers cannot tell it now."""
        key = (tp.topic, tp.partition)
        if key not in self._committed:  # said when it was asked for
            return None
        try:
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:  # not fetched yet
                low, high = self._consumer.get_watermark_offsets(tp, timeout=ASK_TIMEOUT_SECONDS)
        except KafkaException as error:  # the leader moves, say: asked again on the next round
            self._unmeasured(key, error.args[0].str())
            return None
        finished = max(done, self._committed[key])
        return max(0, high - (finished if finished >= 0 else low))

    def _unmeasured(self, key: Key, reason: str) -> None:
        if self._failing.get(key) != reason:
            log.warning("event=lag_not_measured topic=%s partition=%d error=%r", key[0], key[1], reason)
        self._failing[key] = reason
