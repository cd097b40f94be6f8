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

The stages overlap as far as a transaction allows: while batch N's transaction commits on the main
thread (round trips to the transaction coordinator), batch N+1 is tokenized and classified in a
thread, and at most :data:`INFERENCES_IN_FLIGHT` batches are read but not committed. Each batch
commits the offsets just past its own records (not the consumer's position, which is already past
the next batch). When a transaction aborts, the batches read after it are dropped with it and the
consumer rewinds to the committed offsets. Before the consumer gives partitions up in a rebalance,
every batch in flight is committed (from the revoke callback), so a rebalance never finds work in
flight; partitions *lost* (the session expired) drop it instead: their transaction could only fail.
The loop measures lag and publishes its state; the web server reads that state from its own thread.

No record can hold the group in a loop of aborts. Records are checked against their topics' limits
before they are produced (:mod:`~stream_clf.worker.routing`), and one the broker refuses anyway
(a limit changed under a running worker) aborts its transaction with every record of its produce
request; that batch is then committed event by event, each event in a transaction of its own, so
that the one refused is found and published in its next smaller form (in the end a dead letter)
while the others commit as they were. Other aborts are read again after a back-off that doubles
from :data:`BACKOFF_FIRST_SECONDS` to :data:`BACKOFF_MOST_SECONDS`, are counted in
``stream_clf_transaction_aborts_total``, and after :data:`ABORT_LIMIT` in a row with none
committed between them the worker stops with one line naming the cause.
"""

import enum
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from stream_clf.errors import BrokerError
from stream_clf.kafka.connection import Connection
from stream_clf.kafka.limits import RECORD_ERRORS, Refusal
from stream_clf.ops.health import ConsumerState
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.settings import WorkerSettings
from stream_clf.worker.core import BatchStep, ProcessedBatch
from stream_clf.worker.lag import PartitionLag
from stream_clf.worker.models import ModelSet
from stream_clf.worker.pipeline import INFERENCES_IN_FLIGHT
from stream_clf.worker.publisher import PRODUCER_SETTINGS, Refit, produce
from stream_clf.worker.records import JSON_EVENTS, InFlight, OutRecord
from stream_clf.worker.schema_wait import SchemaWait

__all__ = ["ABORT_LIMIT", "Commit", "Transaction", "TransactionalLoop", "commit_batch", "run_exactly_once"]

log = logging.getLogger(__name__)
TRANSACTION_TIMEOUT_SECONDS = 60.0
# Aborts in a row (none committed between them) before the worker stops: with the back-off below,
# about 35 s of trying.
ABORT_LIMIT = 8
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MOST_SECONDS = 10.0
# librdkafka's assignors for each rebalance protocol (its default is range,roundrobin: eager).
ASSIGNORS = {"eager": "range,roundrobin", "cooperative": "cooperative-sticky"}
# Tries of one event's own transaction that abort for a reason other than its records (the first
# after a refused record can fail on the producer's epoch bump) before the batch is read again.
EVENT_ATTEMPTS = 3
# librdkafka (2.10 to 2.16 at least) can leave send_offsets_to_transaction waiting, past its timeout,
# for a group coordinator on a broker that was killed and dropped from the metadata: the request is
# looked at again only when one of the producer's connections goes up or down (librdkafka issues
# 5456 and 5511). Closing connections idle this long makes one go down while the call waits, and it
# finds the coordinator anew; a connection in use is never idle this long.
IDLE_CONNECTION_MS = 10_000
# A record's delivery report after an abort: not refused by the broker, only dropped with the rest.
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


class Commit(enum.Enum):
    """How a micro-batch's transaction ended."""

    COMMITTED = "committed"
    ABORTED = "aborted"  # nothing of it is visible


@dataclass
class Transaction:
    """One transaction: how it ended, the records it published (a record librdkafka refused at once
    replaced by its smaller form), and, when it aborted, why and which records the broker refused."""

    outcome: Commit
    records: list[OutRecord]
    error: KafkaError | None = None
    refused: dict[int, KafkaError] = field(default_factory=dict)

    @property
    def record_refused(self) -> bool:
        """Whether the broker refused one of its records for the record itself (too large, say)."""
        return any(error.code() in RECORD_ERRORS for error in self.refused.values())


def run_exactly_once(
    settings: WorkerSettings,
    connection: Connection,
    step: BatchStep,
    metrics: WorkerMetrics,
    state: ConsumerState,
    *,
    compression: str,
    producer_limits: dict[str, int],
    client_id: str,
    stop: threading.Event,
    schemas: SchemaWait,
) -> None:
    """Process until ``stop`` is set; the batch in flight is finished and committed first.

    ``producer_limits`` keep the producer inside the published topics' limits; ``client_id`` names
    the consumer in its group (so ``stream-clf swap`` knows the running workers); ``schemas`` decodes
    the events, fetching their schemas first where they are registry-framed.
    """
    consumer = _consumer(settings, connection, client_id)
    producer = _producer(settings, connection, compression, producer_limits)
    loop = TransactionalLoop(
        step,
        producer,
        consumer,
        metrics,
        state,
        max_event_bytes=settings.delivery.max_event_bytes,
        pause=stop.wait,
        schemas=schemas,
    )
    # Half of --max-buffered-bytes for the batches read and not committed; the rest is librdkafka's.
    held_bytes = settings.delivery.max_buffered_bytes // 2
    consumer.subscribe(
        list(settings.topics.input),
        on_assign=lambda *_: metrics.assignments.inc(),
        on_revoke=lambda _, partitions: loop.settle_all(partitions),
        on_lost=lambda _, partitions: loop.lose(partitions),
    )
    lag = PartitionLag(consumer)
    try:
        while not stop.is_set():
            if loop.held_bytes >= held_bytes:  # the batches in flight fill the budget: commit them first
                loop.settle(keep=0)
            state.polled()
            messages = loop.consume(
                settings.batching.max_batch, settings.batching.max_wait_ms / 1000 or 0.01, held_bytes - loop.held_bytes
            )
            state.assigned = len(consumer.assignment())
            lag.report(metrics, state)
            # With a batch just handed to the classifier, the one before it commits meanwhile.
            loop.settle(keep=1 if loop.submit(messages) else 0)
        loop.settle(keep=0)
    finally:
        loop.drop()  # empty unless the loop failed: then what is in flight is read again
        consumer.close()


def _consumer(settings: WorkerSettings, connection: Connection, client_id: str) -> Consumer:
    delivery = settings.delivery
    membership = {"group.instance.id": delivery.instance} if delivery.static_membership else {}
    return connection.consumer(
        {
            "group.id": delivery.group,
            "partition.assignment.strategy": ASSIGNORS[delivery.rebalance],
            **membership,
            "enable.auto.commit": False,
            "isolation.level": delivery.isolation,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": delivery.session_timeout_ms,
            "client.id": client_id,
            # librdkafka prefetches up to this much (and fetches this much at once): its share of
            # --max-buffered-bytes, the other half being the batches read and not committed.
            "queued.max.messages.kbytes": max(1024, delivery.max_buffered_bytes // 4 // 1024),
            "fetch.max.bytes": max(1 << 20, min(52_428_800, delivery.max_buffered_bytes // 4)),
        },
    )


def _producer(settings: WorkerSettings, connection: Connection, compression: str, limits: dict[str, int]) -> Producer:
    """The transactional producer, its transactions initialized (fencing an older one of the same id)."""
    delivery = settings.delivery
    producer = connection.producer(
        {
            "transactional.id": delivery.transactional_id,
            "transaction.timeout.ms": int(TRANSACTION_TIMEOUT_SECONDS * 1000),
            "connections.max.idle.ms": IDLE_CONNECTION_MS,
            "compression.type": compression,
            **limits,
            **PRODUCER_SETTINGS,
        },
    )
    producer.init_transactions(30)
    log.info("event=transactions_ready transactional_id=%s", delivery.transactional_id)
    return producer


@dataclass(frozen=True)
class _Read:
    """A batch read but not committed: its events, their classification under way, and the offsets
    just past its records."""

    batch: list[InFlight]
    classified: Future[ProcessedBatch]
    offsets: list[TopicPartition]


class TransactionalLoop:
    """Batches classified in a thread, each committed in a transaction with its offsets, in read order."""

    def __init__(
        self,
        step: BatchStep,
        producer: Producer,
        consumer: Consumer,
        metrics: WorkerMetrics,
        state: ConsumerState,
        *,
        max_event_bytes: int,
        classifying: Executor | None = None,
        pause: Callable[[float], object] = time.sleep,
        schemas: SchemaWait | None = None,
    ) -> None:
        self._step = step
        self._producer = producer
        self._consumer = consumer
        self._metrics = metrics
        self._state = state
        self._max_event_bytes = max_event_bytes
        self._classifying = classifying or ThreadPoolExecutor(INFERENCES_IN_FLIGHT, thread_name_prefix="classify")
        self._read: deque[_Read] = deque()
        self._clocks = {stage: metrics.stage(stage) for stage in ("consume", "classify", "commit")}
        self._pause = pause
        self._schemas = schemas
        self._aborts = 0  # in a row, none committed since
        self.held_bytes = 0
        self._carried: list[Message] = []  # consumed, not yet in a batch (it had no room)
        self.generation = 0  # how many times partitions were revoked or lost

    @property
    def _refit(self) -> Refit:
        return self._step.routing.instead

    def consume(self, most: int, timeout: float, room: int | None = None) -> list[Message]:
        """Up to ``most`` records, waiting up to ``timeout`` seconds for the first, and no more than fit in
        ``room`` bytes (at least one): those that do not wait, consumed, for the next call."""
        started = time.perf_counter()
        messages = self._carried or self._consumer.consume(most, timeout)
        self._clocks["consume"].add("starved", time.perf_counter() - started)
        taken, size = 0, 0
        for message in messages:
            # What its record will weigh: key, value, and a decoded text about as long as the value.
            size += len(message.key() or b"") + 2 * len(message.value() or b"")
            if taken and room is not None and size > room:
                break
            taken += 1
        self._carried = messages[taken:]
        return messages[:taken]

    def submit(self, messages: Sequence[Message]) -> bool:
        """Start classifying the consumed ``messages``; False when none held an event."""
        messages = [message for message in messages if _usable(message)]
        if self._schemas is not None and not self._await_schemas(messages):
            return False
        decoder = self._schemas.decoder if self._schemas is not None else JSON_EVENTS
        started = time.perf_counter()
        batch = [InFlight.unacked(message, self._max_event_bytes, decoder) for message in messages]
        for record in batch:
            self._metrics.consumed(record.source.topic)
        if batch:
            # The models are taken here, in read order: a swap falls between two batches.
            classified = self._classifying.submit(self._classify, batch, self._step.models.current)
            self._read.append(_Read(batch, classified, _next_offsets(batch)))
            self._hold(batch, 1)
        self._clocks["consume"].add("busy", time.perf_counter() - started)
        return bool(batch)

    def _await_schemas(self, messages: Sequence[Message]) -> bool:
        """Fetch the schemas ``messages`` need. While the registry does not answer, nothing is held in a
        transaction (the batches in flight commit first) and the consumer, its partitions paused, keeps
        polling so that it stays in its group. False when its partitions moved meanwhile: the messages
        are dropped, to be read again from the committed offsets by whoever owns them now."""
        assert self._schemas is not None
        missing = self._schemas.missing((message.value(), message.headers()) for message in messages)
        if not missing:
            return True
        generation = self.generation
        paused: list[TopicPartition] = []

        def pause(seconds: float) -> None:
            if not paused:
                self.settle(keep=0)
                paused.extend(self._consumer.assignment())
                self._consumer.pause(paused)
            self._state.polled()
            self._consumer.consume(1, seconds)  # paused: it returns nothing, and serves the group's callbacks

        self._schemas.fetch(missing, pause)
        if paused and generation == self.generation:
            self._consumer.resume(paused)
        return generation == self.generation

    def _hold(self, batch: Sequence[InFlight], sign: int) -> None:
        self.held_bytes += sign * sum(record.weight for record in batch)
        self._state.waiting(held=sum(len(read.batch) for read in self._read))

    def _classify(self, batch: list[InFlight], models: ModelSet) -> ProcessedBatch:
        started = time.perf_counter()
        processed = self._step(batch, models)
        self._clocks["classify"].add("busy", time.perf_counter() - started)
        return processed

    def settle(self, keep: int) -> list[Commit]:
        """Commit the oldest batches, in read order, until at most ``keep`` are in flight."""
        outcomes = []
        while len(self._read) > keep:
            read = self._read[0]
            started = time.perf_counter()
            processed = read.classified.result()
            classified = time.perf_counter()
            transaction = commit_batch(self._producer, self._consumer, processed.records, read.offsets, self._refit)
            if transaction.record_refused:
                self._metrics.transaction_aborts.labels(cause="record").inc()
                transaction = self._commit_each(read, processed)
            self._clocks["commit"].add("starved", classified - started)  # waiting for the classifier
            self._clocks["commit"].add("busy", time.perf_counter() - classified)
            outcomes.append(transaction.outcome)
            if transaction.outcome is Commit.ABORTED:  # read again from the committed offsets, with what followed
                self._aborted(transaction.error)
                break
            self._aborts = 0
            self._read.popleft()
            self._hold(read.batch, -1)
            processed.count(self._metrics, transaction.records)
            for record in read.batch:
                self._state.processed(record.source.topic, record.source.partition, record.source.offset)
        return outcomes

    def settle_all(self, revoked: Sequence[TopicPartition]) -> None:
        """Before the ``revoked`` partitions go: commit every batch in flight, and forget what is consumed
        of them beyond it (their next owner reads it from the commits). Partitions kept (a cooperative
        rebalance moves only some) keep what was consumed of them: their position is past it."""
        self.settle(keep=0)
        going = {(tp.topic, tp.partition) for tp in revoked}
        self._carried = [message for message in self._carried if (message.topic(), message.partition()) not in going]
        self.generation += 1

    def lose(self, lost: Sequence[TopicPartition]) -> None:
        """The ``lost`` partitions were taken away (the session expired): what is in flight cannot commit
        now. Drop it all, and read the partitions kept again from their committed offsets."""
        self.drop()
        going = {(tp.topic, tp.partition) for tp in lost}
        kept = [tp for tp in self._consumer.assignment() if (tp.topic, tp.partition) not in going]
        if kept:
            _rewind(self._consumer, kept)

    def _commit_each(self, read: _Read, processed: ProcessedBatch) -> Transaction:
        """Commit ``read``'s events one by one, each with its own offset in a transaction of its own; a
        record the broker refuses is replaced by its next smaller form until one is taken. Returns the
        last transaction: aborted when one event's kept failing for another reason (those before it
        are committed, and counted)."""
        records: dict[int, list[OutRecord]] = {id(event): [] for event in read.batch}
        for record in processed.records:
            if record.event is not None:
                records[id(record.event)].append(record)
        transaction = Transaction(Commit.COMMITTED, [])
        for event in read.batch:
            offsets = [TopicPartition(event.source.topic, event.source.partition, event.source.offset + 1)]
            mine, attempts = records[id(event)], 0
            while True:
                transaction = commit_batch(self._producer, self._consumer, mine, offsets, self._refit)
                if transaction.outcome is Commit.COMMITTED:
                    break
                if not transaction.record_refused:
                    attempts += 1
                    if attempts >= EVENT_ATTEMPTS:
                        return transaction
                    continue
                mine = [
                    smaller
                    for index, record in enumerate(transaction.records)
                    if (smaller := self._smaller(record, transaction.refused.get(index))) is not None
                ]
            processed.count(self._metrics, transaction.records)
            self._state.processed(event.source.topic, event.source.partition, event.source.offset)
        # Counted event by event above: the batch's own count has nothing left to count.
        return Transaction(Commit.COMMITTED, [])

    def _smaller(self, record: OutRecord, refused: KafkaError | None) -> OutRecord | None:
        """``record`` as it was (not refused), or its next smaller form (the broker refused it)."""
        if refused is None:
            return record
        return self._refit(record, Refusal.of(record.topic, refused))

    def _aborted(self, error: KafkaError | None) -> None:
        """A transaction aborted for a cause other than one of its records: count it, give up past the
        bound, else wait (longer each time in a row) and read everything in flight again."""
        self._aborts += 1
        cause = error.name() if error is not None else "unknown"
        self._metrics.transaction_aborts.labels(cause=cause).inc()
        if self._aborts >= ABORT_LIMIT:
            raise BrokerError(
                f"{self._aborts} transactions in a row aborted, none committed between them; the last:"
                f" {error.str() if error is not None else 'unknown'}"
            )
        self._pause(min(BACKOFF_MOST_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (self._aborts - 1)))
        self.drop()
        _rewind(self._consumer)

    def drop(self) -> None:
        """Forget every batch in flight (once its classification ends), and what was consumed for the
        next: it will be read again."""
        self._carried = []
        self.generation += 1
        while self._read:
            read = self._read.popleft()
            read.classified.exception()
            self._hold(read.batch, -1)

    def process(self, messages: Sequence[Message]) -> Commit | None:
        """Classify and commit the consumed ``messages`` at once; None when none held an event."""
        if not self.submit(messages):
            return None
        return self.settle(keep=0)[-1]


def _next_offsets(batch: Sequence[InFlight]) -> list[TopicPartition]:
    """Per partition, the offset just past the batch's last record: what its transaction commits."""
    last: dict[tuple[str, int], int] = {}
    for record in batch:
        key = (record.source.topic, record.source.partition)
        last[key] = max(last.get(key, -1), record.source.offset)
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]


def _usable(message: Message) -> bool:
    error = message.error()
    if error is None:
        return True
    if error.code() == KafkaError._PARTITION_EOF:
        return False
    if error.fatal():
        raise BrokerError(f"the consumer failed for good: {error.str()}")
    if error.code() == KafkaError.INCONSISTENT_GROUP_PROTOCOL:  # asking again cannot help while they run
        raise BrokerError(
            "the group's members rebalance with the other protocol (--rebalance eager or cooperative): this"
            " worker cannot join them; move a whole group at once (stop every member, then start them with"
            " the new setting)"
        )
    log.warning("event=consume_error error=%r", error.str())
    return False


def commit_batch(
    producer: Producer,
    consumer: Consumer,
    records: Sequence[OutRecord],
    offsets: Sequence[TopicPartition],
    refit: Refit | None = None,
) -> Transaction:
    """Publish ``records`` and ``offsets`` (the group's next offsets) in one transaction, or abort it.

    A record librdkafka refuses at once is replaced by ``refit``'s smaller form. Raises
    :class:`BrokerError` when the transaction failed for good (the producer was fenced by a newer
    instance, say): the worker must stop.
    """
    sent: list[OutRecord] = []
    refused: dict[int, KafkaError] = {}
    try:
        producer.begin_transaction()
        for record in records:
            handed = produce(producer, record, functools.partial(_note_refusal, refused, len(sent)), refit)
            if handed is not None:
                sent.append(handed)
        producer.send_offsets_to_transaction(list(offsets), consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(TRANSACTION_TIMEOUT_SECONDS)
    except KafkaException as failure:
        error = failure.args[0]
        if not error.txn_requires_abort():
            raise BrokerError(f"a transaction failed for good: {error.str()}") from None
        error = _abort_cause(producer, error)  # before the abort, which forgets it
        producer.abort_transaction(TRANSACTION_TIMEOUT_SECONDS)
        producer.poll(0)  # the records' delivery reports: which the broker refused
        log.warning("event=transaction_aborted error=%r", error.str())
        return Transaction(Commit.ABORTED, sent, error, refused)
    return Transaction(Commit.COMMITTED, sent)


def _abort_cause(producer: Producer, error: KafkaError) -> KafkaError:
    """Why the transaction must abort: ``error``, unless it only says that the transaction was in
    the wrong state. That is how the offsets' call fails when librdkafka found the transaction
    failed in the meantime (a record's partition refused, say: an authorization), and it names no
    cause. Then the transaction's own error, which librdkafka gives to the next call that needs a
    healthy transaction: ``begin_transaction``, which cannot begin one before the abort."""
    if error.code() != KafkaError._STATE:
        return error
    try:
        producer.begin_transaction()
    except KafkaException as failure:
        own: KafkaError = failure.args[0]
        return own if own.txn_requires_abort() else error
    return error  # nothing had failed it: the abort that follows ends the transaction just begun


def _note_refusal(refused: dict[int, KafkaError], index: int, error: KafkaError | None, _message: Message) -> None:
    if error is not None and error.code() not in _PURGED:
        refused[index] = error


def _rewind(consumer: Consumer, partitions: Sequence[TopicPartition] | None = None) -> None:
    """Seek ``partitions`` (all assigned) back to the committed offsets, so what was dropped is read again."""
    for tp in consumer.committed(partitions or consumer.assignment(), timeout=30):
        consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
