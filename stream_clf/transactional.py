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
web endpoints (the same as the Faust path's) are served from a thread; the loop measures lag.
"""

import logging
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from stream_clf.classifier import Classifier
from stream_clf.errors import BrokerError
from stream_clf.events import Source
from stream_clf.metrics import LAG_INTERVAL_SECONDS, WorkerMetrics
from stream_clf.processing import InFlight, Routing, classify_planned, count_outcomes, plan_events
from stream_clf.settings import WorkerSettings
from stream_clf.topics import client_logger
from stream_clf.web.health import Readiness
from stream_clf.web.threaded import serve_in_thread

__all__ = ["run_exactly_once"]

log = logging.getLogger(__name__)
TRANSACTION_TIMEOUT_SECONDS = 60.0


def run_exactly_once(
    settings: WorkerSettings, classifier: Classifier, *, max_record_bytes: int, stop: threading.Event
) -> None:
    """Process until ``stop`` is set; the batch in flight is finished and committed first."""
    security = settings.security.librdkafka()
    common = {"bootstrap.servers": ",".join(settings.brokers), "logger": client_logger, **security}
    consumer = Consumer(
        common
        | {
            "group.id": settings.group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.session_timeout_ms,
        }
    )
    producer = Producer(
        common
        | {
            "transactional.id": f"{settings.group}-{settings.instance}",
            "transaction.timeout.ms": int(TRANSACTION_TIMEOUT_SECONDS * 1000),
            "message.max.bytes": max_record_bytes,
            "linger.ms": 5,
        }
    )
    bundle = classifier.bundle
    metrics = WorkerMetrics(
        model=bundle.name, version=bundle.version, precision=bundle.precision, max_batch=settings.max_batch
    )
    assigned = 0  # read by the web thread: the consumer itself blocks other threads while it polls
    readiness = Readiness(settings.brokers, lambda: assigned, security=settings.security)
    server = serve_in_thread(settings.web_host, settings.web_port, metrics, readiness)
    lag = _Lag(consumer)
    routing = Routing(settings.output, settings.dlq, bundle.name, bundle.version, settings.top_k)
    producer.init_transactions(30)
    log.info("event=transactions_ready transactional_id=%s-%s", settings.group, settings.instance)
    consumer.subscribe(list(settings.input))
    measured = 0.0
    try:
        while not stop.is_set():
            messages = consumer.consume(settings.max_batch, settings.max_wait_ms / 1000 or 0.01)
            batch = [_in_flight(message, settings.max_event_bytes) for message in messages if _usable(message)]
            assigned = len(consumer.assignment())
            if time.monotonic() - measured >= LAG_INTERVAL_SECONDS:
                metrics.partitions(lag.measure())
                measured = time.monotonic()
            if not batch:
                continue
            for record in batch:
                metrics.consumed(record.source.topic)
            plan_events(classifier, batch, metrics)
            answers = classify_planned(classifier, batch, metrics)
            _commit(producer, consumer, [routing.record(record, answers.get(id(record))) for record in batch])
            count_outcomes(metrics, batch, answers)
    finally:
        consumer.close()
        server.shutdown()


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


def _commit(producer: Producer, consumer: Consumer, records: list[tuple]) -> None:
    """Publish ``records`` and the consumer's positions in one transaction; on failure, rewind."""
    try:
        producer.begin_transaction()
        for topic, key, value, headers in records:
            _produce(producer, topic, key, value, headers)
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


def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes | None, headers: list) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers)
            return
        except BufferError:  # the local queue is full: let deliveries drain
            producer.poll(0.1)


def _rewind(consumer: Consumer) -> None:
    """Seek back to the committed offsets, so an aborted batch is read again."""
    for tp in consumer.committed(consumer.assignment(), timeout=30):
        consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
