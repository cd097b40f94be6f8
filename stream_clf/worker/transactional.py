"""Exactly-once: consume, classify and publish each micro-batch in one Kafka transaction.

Faust's own ``exactly_once`` mode commits an output record in the transaction of the *output*
partition's number, which is only right when every output is co-partitioned with its input; here
results follow the input's key, so this mode uses librdkafka's transactional producer directly
(KIP-447): per micro-batch, ``begin_transaction``, the records, ``send_offsets_to_transaction`` with
the consumer's group metadata, ``commit_transaction``. Results and their input offsets commit
together or not at all; a consumer reading the output with ``isolation.level=read_committed`` sees
exactly one result per event, across crashes. The transactional id is stable per group and
``--instance``, so a restarted worker fences its dead predecessor and aborts its open transaction at
once instead of waiting for the transaction timeout.

The loop is synchronous: a batch is tokenized, classified, published and committed before the next
is read, so a rebalance never finds work in flight. It trades the pipeline's overlap for that. The
loop measures lag and publishes its state; the web server reads that state from its own thread.
"""

import enum
import logging
import threading
import time
from collections.abc import Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from stream_clf.errors import BrokerError
from stream_clf.kafka import clients
from stream_clf.ops.health import ConsumerState
from stream_clf.ops.metrics import LAG_INTERVAL_SECONDS, WorkerMetrics
from stream_clf.settings import WorkerSettings
from stream_clf.worker.core import BatchStep, InFlight, OutRecord
from stream_clf.worker.events import Source
from stream_clf.worker.publisher import PRODUCER_SETTINGS

__all__ = ["Commit", "TransactionalLoop", "commit_batch", "run_exactly_once"]

log = logging.getLogger(__name__)
TRANSACTION_TIMEOUT_SECONDS = 60.0


class Commit(enum.Enum):
    """How a micro-batch's transaction ended."""

    COMMITTED = "committed"
    ABORTED = "aborted"  # nothing of it is visible; the consumer was rewound to read it again


def run_exactly_once(
    settings: WorkerSettings,
    step: BatchStep,
    metrics: WorkerMetrics,
    state: ConsumerState,
    *,
    compression: str,
    max_record_bytes: int,
    stop: threading.Event,
) -> None:
    """Process until ``stop`` is set; the batch in flight is finished and committed first."""
    consumer = clients.consumer(
        settings.brokers,
        settings.security,
        {
            "group.id": settings.group,
            "enable.auto.commit": False,
            "isolation.level": settings.isolation,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
        },
    )
    producer = clients.producer(
        settings.brokers,
        settings.security,
        {
            "transactional.id": f"{settings.group}-{settings.instance}",
            "transaction.timeout.ms": int(TRANSACTION_TIMEOUT_SECONDS * 1000),
            "message.max.bytes": max_record_bytes,
            "compression.type": compression,
            **PRODUCER_SETTINGS,
        },
    )
    producer.init_transactions(30)
    log.info("event=transactions_ready transactional_id=%s-%s", settings.group, settings.instance)
    consumer.subscribe(list(settings.input))
    loop = TransactionalLoop(step, producer, consumer, metrics, state, max_event_bytes=settings.max_event_bytes)
    lag = _Lag(consumer)
    measured = 0.0
    try:
        while not stop.is_set():
            state.polled()
            messages = consumer.consume(settings.max_batch, settings.max_wait_ms / 1000 or 0.01)
            state.assigned = len(consumer.assignment())
            if time.monotonic() - measured >= LAG_INTERVAL_SECONDS:
                metrics.partitions(lag.measure())
                measured = time.monotonic()
            loop.process(messages)
    finally:
        consumer.close()


class TransactionalLoop:
    """One micro-batch at a time: the batch step, then its records and offsets in one transaction."""

    def __init__(
        self,
        step: BatchStep,
        producer: Producer,
        consumer: Consumer,
        metrics: WorkerMetrics,
        state: ConsumerState,
        *,
        max_event_bytes: int,
    ) -> None:
        self._step = step
        self._producer = producer
        self._consumer = consumer
        self._metrics = metrics
        self._state = state
        self._max_event_bytes = max_event_bytes

    def process(self, messages: Sequence[Message]) -> Commit | None:
        """Classify and commit the consumed ``messages``; None when none held an event."""
        batch = [_in_flight(message, self._max_event_bytes) for message in messages if _usable(message)]
        if not batch:
            return None
        for record in batch:
            self._metrics.consumed(record.source.topic)
        processed = self._step(batch)
        outcome = commit_batch(self._producer, self._consumer, processed.records)
        if outcome is Commit.COMMITTED:  # an aborted batch is read and counted again
            processed.count(self._metrics)
            for record in batch:
                self._state.processed(record.source.topic, record.source.partition, record.source.offset)
        return outcome


class _Lag:
    """Events behind the end of each assigned partition, without waiting on the broker in the loop.

    The end is the high watermark the last fetch carried; the done mark is the consumer's position,
    or, for a partition nothing was read from yet, its committed offset (asked once per assignment).
    """

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self._committed: dict[tuple[str, int], int] = {}

    def measure(self) -> dict[tuple[str, int], int]:
        positions = self._consumer.position(self._consumer.assignment())
        keys = {(tp.topic, tp.partition) for tp in positions}
        self._committed = {key: offset for key, offset in self._committed.items() if key in keys}
        unread = [tp for tp in positions if tp.offset < 0 and (tp.topic, tp.partition) not in self._committed]
        if unread:
            for tp in self._consumer.committed(unread, timeout=5):
                self._committed[tp.topic, tp.partition] = tp.offset
        lag = {}
        for tp in positions:
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:  # not fetched yet
                low, high = self._consumer.get_watermark_offsets(tp, timeout=5)
            done = tp.offset if tp.offset >= 0 else self._committed[tp.topic, tp.partition]
            lag[tp.topic, tp.partition] = max(0, high - (done if done >= 0 else low))
        return lag


def _usable(message: Message) -> bool:
    error = message.error()
    if error is None:
        return True
    if error.code() == KafkaError._PARTITION_EOF:
        return False
    if error.fatal():
        raise BrokerError(f"the consumer failed for good: {error.str()}")
    log.warning("event=consume_error error=%r", error.str())
    return False


def _in_flight(message: Message, max_bytes: int) -> InFlight:
    _, timestamp = message.timestamp()
    source = Source(message.topic(), message.partition(), message.offset())
    return InFlight.decode(
        source, message.key(), message.value(), _no_ack, max_bytes, timestamp=timestamp / 1000 if timestamp else None
    )


async def _no_ack() -> None:
    """Offsets commit inside the transaction, not through acks."""


def commit_batch(producer: Producer, consumer: Consumer, records: Sequence[OutRecord]) -> Commit:
    """Publish ``records`` and the consumer's positions in one transaction; on an abort, rewind.

    Raises :class:`BrokerError` when the transaction failed for good (the producer was fenced by a
    newer instance, say): the worker must stop.
    """
    try:
        producer.begin_transaction()
        for record in records:
            _produce(producer, record)
        positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
        producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(TRANSACTION_TIMEOUT_SECONDS)
    except KafkaException as failure:
        error = failure.args[0]
        if not error.txn_requires_abort():
            raise BrokerError(f"a transaction failed for good: {error.str()}") from None
        log.warning("event=transaction_aborted error=%r", error.str())
        producer.abort_transaction(TRANSACTION_TIMEOUT_SECONDS)
        _rewind(consumer)
        return Commit.ABORTED
    return Commit.COMMITTED


def _produce(producer: Producer, record: OutRecord) -> None:
    while True:
        try:
            producer.produce(record.topic, key=record.key, value=record.value, headers=record.headers)
            return
        except BufferError:  # the local queue is full: let deliveries drain
            producer.poll(0.1)


def _rewind(consumer: Consumer) -> None:
    """Seek back to the committed offsets, so an aborted batch is read again."""
    for tp in consumer.committed(consumer.assignment(), timeout=30):
        consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
