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
web server here is a small thread with ``/metrics``, ``/healthz`` and ``/readyz`` (no dashboard).
"""

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from stream_clf.classifier import Classifier, Prediction
from stream_clf.errors import BrokerError, EventError, Reason
from stream_clf.events import Source, TextEvent
from stream_clf.metrics import CONTENT_TYPE, WorkerMetrics
from stream_clf.processing import InFlight, Routing, count_outcomes
from stream_clf.settings import WorkerSettings
from stream_clf.topics import client_logger
from stream_clf.web.health import Readiness

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
    _serve(settings.web_host, settings.web_port, metrics, readiness)
    routing = Routing(settings.output, settings.dlq, bundle.name, bundle.version, settings.top_k)
    producer.init_transactions(30)
    log.info("event=transactions_ready transactional_id=%s-%s", settings.group, settings.instance)
    consumer.subscribe(list(settings.input))
    try:
        while not stop.is_set():
            messages = consumer.consume(settings.max_batch, settings.max_wait_ms / 1000 or 0.01)
            batch = [_in_flight(message, settings.max_event_bytes) for message in messages if _usable(message)]
            assigned = len(consumer.assignment())
            metrics.assigned.set(assigned)
            if not batch:
                continue
            for record in batch:
                metrics.consumed(record.source.topic)
            answers = _classify(classifier, batch, metrics)
            _commit(producer, consumer, [routing.record(record, answers.get(id(record))) for record in batch])
            count_outcomes(metrics, batch, answers)
    finally:
        consumer.close()


def _serve(host: str, port: int, metrics: WorkerMetrics, readiness: Readiness) -> None:
    """``/metrics``, ``/healthz`` and ``/readyz`` from a thread (no Faust web server in this mode)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, metrics.exposition(), CONTENT_TYPE)
            elif self.path == "/healthz":
                self._answer(200, b'{"status":"alive"}')
            elif self.path == "/readyz":
                reasons = readiness.check()
                body = {"status": "not ready", "reasons": reasons} if reasons else {"status": "ready"}
                self._answer(503 if reasons else 200, orjson.dumps(body))
            else:
                self._answer(404, b'{"status":"not found"}')

        def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:  # probes every few seconds are not news
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()
    log.info("event=web_listening host=%s port=%d", host, port)


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


def _classify(
    classifier: Classifier, batch: list[InFlight], metrics: WorkerMetrics
) -> dict[int, Prediction | EventError]:
    events = [record for record in batch if isinstance(record.outcome, TextEvent)]
    texts = [record.outcome.text for record in events if isinstance(record.outcome, TextEvent)]
    for record, planned in zip(events, _isolated(classifier.plan, texts), strict=True):
        if isinstance(planned, EventError):
            record.outcome = planned
        else:
            record.plan = planned
    planned_records = [record for record in batch if record.plan is not None]
    plans = [record.plan for record in planned_records if record.plan is not None]
    started = time.monotonic()
    answers = _isolated(classifier.infer, plans)
    if plans:
        metrics.batch(
            events=len(batch),
            tokens=sum(text_plan.tokens for text_plan in plans),
            padded=classifier.padded_tokens(plans),
            seconds=time.monotonic() - started,
            waits=[started - record.received for record in batch],
        )
    return dict(zip(map(id, planned_records), answers, strict=True))


def _isolated(function: Callable[[list[Any]], list[Any]], items: list[Any]) -> list[Any]:
    """``function`` over ``items``; if that fails, item by item, so one bad item fails alone."""
    if not items:
        return []
    try:
        return function(items)
    except Exception as error:  # ONNX Runtime and tokenizers raise their own types
        log.warning("event=batch_failed stage=%s size=%d error=%r", function.__name__, len(items), str(error)[:300])
    results: list[Any] = []
    for item in items:
        try:
            results.extend(function([item]))
        except Exception as error:  # as above
            results.append(EventError(Reason.INFERENCE_ERROR, f"{type(error).__name__}: {error}"[:300]))
    return results


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
