"""``stream-clf replay``: relabel a range of a topic's history with a model, apart from the live group.

::

    --input T ─► [--from, --to) of every partition ─► batch step (the worker's) ─► --output T2
                 own consumer, partitions assigned:                               (dead letters:
                 no group joined, nothing committed                                --dlq)

The range is half-open: ``--from`` is the first record read, ``--to`` the first one not read. Each
bound is an offset (the same on every partition), a time (ISO 8601; a partition's bound is its
first record at or after that time), ``earliest`` or ``latest``; ``--to`` defaults to the end of
each partition when the replay starts, so records that arrive meanwhile are left to the live worker.
Only committed records are read. The replay ends, exit 0, once every partition reached its bound and
every result was acknowledged; each event in the range gets exactly one result or dead letter.
Events are read and results written as the worker's ``events`` settings say (``--input-format``,
``--output-format``, the Schema Registry): a schema not cached yet is fetched first, waiting out a
registry outage.
"""

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream_clf.errors import BrokerError
from stream_clf.kafka.connection import Connection
from stream_clf.kafka.limits import producer_limits, read_limits
from stream_clf.kafka.topics import ensure_topics
from stream_clf.ops.health import ConsumerState
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.worker.core import BatchStep
from stream_clf.worker.decoding import EventDecoder
from stream_clf.worker.models import ModelHolder, ModelSet, ServedModel
from stream_clf.worker.publisher import produce
from stream_clf.worker.records import InFlight, Role
from stream_clf.worker.routing import Routing
from stream_clf.worker.schema_wait import SchemaWait
from stream_clf.worker.wire_formats import ResultFormat

__all__ = ["Bound", "ReplayOptions", "ReplayReport", "parse_bound", "run_replay"]

_OFFSET = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Bound:
    """One end of a replay's range: an offset, a time (ms since the epoch), or a keyword."""

    offset: int | None = None
    time_ms: int | None = None
    keyword: str | None = None  # earliest, latest

    def __str__(self) -> str:
        if self.offset is not None:
            return str(self.offset)
        if self.time_ms is not None:
            return datetime.fromtimestamp(self.time_ms / 1000, UTC).isoformat()
        return self.keyword or "?"


def parse_bound(text: str) -> Bound:
    """``1200`` (an offset), ``2026-11-25T10:00:00Z`` (a time; UTC unless it says), ``earliest``, ``latest``."""
    value = text.strip()
    if value.lower() in ("earliest", "latest"):
        return Bound(keyword=value.lower())
    if _OFFSET.match(value):
        return Bound(offset=int(value))
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("expected an offset, an ISO 8601 time (2026-11-25T10:00:00Z), earliest or latest") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return Bound(time_ms=round(moment.timestamp() * 1000))


@dataclass(frozen=True)
class ReplayOptions:
    connection: Connection
    input: str
    output: str
    dlq: str
    start: Bound
    end: Bound | None = None  # the end of each partition when the replay starts
    max_batch: int = 64
    max_event_bytes: int = 1_048_576
    top_k: int = 0
    decoder: EventDecoder = field(default_factory=lambda: EventDecoder("json"))
    written: ResultFormat = field(default_factory=ResultFormat)


@dataclass
class ReplayReport:
    """What a replay read and wrote, per partition and in all."""

    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    results: int = 0
    dead_letters: int = 0
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return self.results + self.dead_letters


def run_replay(options: ReplayOptions, model: ServedModel, progress: Callable[[int, int], None]) -> ReplayReport:
    """Replay the range; ``progress(done, total)`` is told the offsets covered so far of all partitions."""
    started = time.monotonic()
    consumer = options.connection.reader("replay", {"isolation.level": "read_committed", "enable.partition.eof": True})
    try:
        ranges = _resolve_ranges(consumer, options)
        report = ReplayReport(ranges=ranges)
        ensure_topics(options.connection, [options.output, options.dlq], len(ranges))
        pending = {partition for partition, (first, end) in ranges.items() if first < end}
        total = sum(end - first for first, end in ranges.values())
        progress(0, total)
        if pending:
            _replay(
                consumer,
                options,
                model,
                ranges=ranges,
                pending=pending,
                report=report,
                progress=lambda done: progress(done, total),
            )
        progress(total, total)
    except KafkaException as error:
        raise BrokerError(f"replay of {options.input!r}: {error.args[0].str()}") from None
    finally:
        consumer.close()
    report.seconds = time.monotonic() - started
    return report


def _replay(
    consumer: Any,
    options: ReplayOptions,
    model: ServedModel,
    *,
    ranges: dict[int, tuple[int, int]],
    pending: set[int],
    report: ReplayReport,
    progress: Callable[[int], None],
) -> None:
    limits = read_limits(options.connection, [options.output, options.dlq])
    metrics = WorkerMetrics(max_batch=options.max_batch)
    written = options.written
    routing = Routing(
        options.output, options.dlq, options.top_k, limits=limits, encode=written.encode, media_type=written.media_type
    )
    step = BatchStep(ModelHolder(ModelSet(default=model)), routing, metrics)
    schemas = SchemaWait(options.decoder, ConsumerState(), metrics)
    producer = options.connection.producer(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "partitioner": "murmur2_random",
            **producer_limits(limits),
        },
    )
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error.str())

    consumer.assign([TopicPartition(options.input, partition, ranges[partition][0]) for partition in pending])
    covered = dict.fromkeys(ranges, 0)

    def finished(partition: int) -> None:
        first, end = ranges[partition]
        covered[partition] = end - first
        pending.discard(partition)
        consumer.pause([TopicPartition(options.input, partition)])

    while pending:
        batch: list[InFlight] = []
        for message in consumer.consume(options.max_batch, 1.0):
            partition, error = message.partition(), message.error()
            if partition not in pending:
                continue
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:  # its last records were transaction markers
                    finished(partition)
                elif error.fatal():
                    raise BrokerError(f"replay of {options.input!r}: {error.str()}")
                continue
            first, end = ranges[partition]
            if message.offset() < end:
                schemas.fetch(schemas.missing([(message.value(), message.headers())]), time.sleep)
                batch.append(InFlight.unacked(message, options.max_event_bytes, options.decoder))
                covered[partition] = message.offset() + 1 - first
            if message.offset() + 1 >= end:
                finished(partition)
        if batch:
            processed = step(batch)
            sent = [produce(producer, record, delivered, step.routing.instead) for record in processed.records]
            producer.poll(0)
            report.results += sum(1 for record in sent if record is not None and record.role is Role.RESULT)
            report.dead_letters += sum(1 for record in sent if record is not None and record.role is Role.DEAD_LETTER)
        progress(sum(covered.values()))
    if producer.flush(60) or failures:
        raise BrokerError(f"replay results not all delivered to {options.output!r}: {failures[:1] or 'timed out'}")


def _resolve_ranges(consumer: Any, options: ReplayOptions) -> dict[int, tuple[int, int]]:
    """Each partition's [first, end) offsets for the replay's bounds."""
    metadata = consumer.list_topics(options.input, timeout=30).topics.get(options.input)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise BrokerError(f"topic {options.input!r} does not exist")
    partitions = sorted(metadata.partitions)
    marks = {p: consumer.get_watermark_offsets(TopicPartition(options.input, p), timeout=30) for p in partitions}
    first = _offsets(consumer, options.input, options.start, marks)
    end = _offsets(consumer, options.input, options.end or Bound(keyword="latest"), marks)
    return {p: (first[p], max(first[p], end[p])) for p in partitions}


def _offsets(consumer: Any, topic: str, bound: Bound, marks: dict[int, tuple[int, int]]) -> dict[int, int]:
    """Where ``bound`` falls in each partition, clamped to the records it holds."""
    if bound.keyword is not None:
        return {p: low if bound.keyword == "earliest" else high for p, (low, high) in marks.items()}
    if bound.offset is not None:
        return {p: min(max(bound.offset, low), high) for p, (low, high) in marks.items()}
    asked = [TopicPartition(topic, p, bound.time_ms) for p in marks]
    found = consumer.offsets_for_times(asked, timeout=30)
    # -1: no record at or after that time, so the bound is the partition's end.
    return {tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found}
