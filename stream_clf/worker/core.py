"""The batch step both delivery guarantees share: consumed records in, records to publish out.

::

    consumed records ─► plan (tokenize, cut) ─► classify (length buckets, ONNX Runtime)
                     ─► route: one result or one dead letter per event ─► ProcessedBatch

:class:`BatchStep` does no I/O and commits nothing. The at-least-once pipeline
(:mod:`stream_clf.worker.pipeline`) publishes a :class:`ProcessedBatch`'s records, awaits their
delivery and acks the events; the exactly-once loop (:mod:`stream_clf.worker.transactional`)
publishes them in a transaction with the consumer's offsets. Either counts the batch's outcomes
(:meth:`ProcessedBatch.count`) only once its records are durably out: delivered, or committed.
"""

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from stream_clf.errors import EventError, Reason
from stream_clf.model.classifier import Classifier, Prediction
from stream_clf.model.windows import Plan
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.worker.events import Source, TextEvent, dead_letter_headers, decode_event, encode_result

__all__ = ["BatchStep", "Headers", "InFlight", "OutRecord", "ProcessedBatch", "Routing", "isolated"]

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
Answer = Prediction | EventError
T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class InFlight:
    """One consumed record on its way through the worker: its decoded event (or rejection), its plan.

    ``ack`` tells the consumer the record is done (at-least-once; a no-op where offsets commit in
    a transaction). ``timestamp`` is the record's Kafka timestamp (seconds since the epoch);
    ``received`` the monotonic time the worker took it in.
    """

    source: Source
    key: bytes | None
    value: bytes | None
    outcome: TextEvent | EventError
    ack: Callable[[], Awaitable[object]]
    timestamp: float | None = None
    received: float = field(default_factory=time.monotonic)
    plan: Plan | None = None

    @classmethod
    def decode(
        cls,
        source: Source,
        key: bytes | None,
        value: bytes | None,
        ack: Callable[[], Awaitable[object]],
        max_bytes: int,
        *,
        timestamp: float | None = None,
    ) -> "InFlight":
        try:
            outcome: TextEvent | EventError = decode_event(value, max_bytes)
        except EventError as error:
            outcome = error
        return cls(source=source, key=key, value=value, outcome=outcome, ack=ack, timestamp=timestamp)

    @property
    def tokens(self) -> int:
        """What this event costs the model (0 for a rejected one)."""
        return self.plan.tokens if self.plan else 0


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to publish: the event's result on the output topic, or its dead letter."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclass(frozen=True)
class Routing:
    """Where each event's one record goes, and what it holds: a result, or a dead letter."""

    output: str
    dlq: str
    model: str
    version: str
    top_k: int = 0

    def record(self, record: InFlight, answer: Answer | None) -> OutRecord:
        """The record published for ``record``: its result, or its dead letter with the original bytes."""
        event = record.outcome
        if isinstance(answer, Prediction) and isinstance(event, TextEvent):
            value = encode_result(
                event_id=event.id or record.source.default_id,
                label=answer.label,
                scores=answer.scores,
                model=self.model,
                model_version=self.version,
                source=record.source,
                meta=event.meta,
                truncated=answer.truncated,
                chunks=answer.chunks,
                top_k=self.top_k,
                labels=answer.labels,
            )
            return OutRecord(self.output, record.key, value, [])
        rejected = _rejection(record, answer)
        return OutRecord(self.dlq, record.key, record.value, dead_letter_headers(rejected, record.source))


@dataclass(frozen=True)
class ProcessedBatch:
    """A micro-batch after classification: each event's answer, and its record, in read order."""

    events: Sequence[InFlight]
    answers: Sequence[Answer | None]
    records: Sequence[OutRecord]

    def count(self, metrics: WorkerMetrics) -> None:
        """Count each event as a result (with its latency) or a dead letter: call once it is durably out."""
        now = time.time()
        for event, answer in zip(self.events, self.answers, strict=True):
            if isinstance(answer, Prediction):
                latency = None if event.timestamp is None else max(0.0, now - event.timestamp)
                metrics.result(answer.label, answer.score, latency)
            else:
                metrics.dead_letter(_rejection(event, answer).reason.value)


class BatchStep:
    """Plans, classifies and routes micro-batches; :meth:`plan` and :meth:`classify` may run in several
    threads at once, on different batches (the pipeline overlaps them)."""

    def __init__(self, classifier: Classifier, routing: Routing, metrics: WorkerMetrics) -> None:
        self._classifier = classifier
        self.routing = routing
        self._metrics = metrics

    def plan(self, records: Sequence[InFlight]) -> None:
        """Tokenize and cut the valid events' texts; an event whose text cannot be is rejected."""
        events = [record for record in records if isinstance(record.outcome, TextEvent)]
        texts = [record.outcome.text for record in events if isinstance(record.outcome, TextEvent)]
        started = time.perf_counter()
        plans = isolated(self._classifier.plan, texts)
        if texts:
            self._metrics.tokenize_seconds.observe(time.perf_counter() - started)
        for record, planned in zip(events, plans, strict=True):
            if isinstance(planned, EventError):
                record.outcome = planned
            else:
                record.plan = planned

    def classify(self, batch: Sequence[InFlight]) -> ProcessedBatch:
        """Classify the planned events of ``batch`` and route every event to its one record."""
        planned = [record for record in batch if record.plan is not None]
        plans = [record.plan for record in planned if record.plan is not None]
        started = time.monotonic()
        predictions = isolated(self.infer, plans)
        if plans:
            self._metrics.batch(
                events=len(batch),
                tokens=sum(text_plan.tokens for text_plan in plans),
                padded=self._classifier.padded_tokens(plans),
                seconds=time.monotonic() - started,
                waits=[started - record.received for record in batch],
            )
        by_record = dict(zip(map(id, planned), predictions, strict=True))
        answers = [by_record.get(id(record)) for record in batch]
        records = [self.routing.record(record, answer) for record, answer in zip(batch, answers, strict=True)]
        return ProcessedBatch(batch, answers, records)

    def infer(self, plans: list[Plan]) -> list[Prediction]:
        """The classifier's answers for ``plans``, each lane's time counted."""
        return self._classifier.infer(plans, observe=self._metrics.lane_busy)

    def __call__(self, batch: Sequence[InFlight]) -> ProcessedBatch:
        """Both steps, one after the other."""
        self.plan(batch)
        return self.classify(batch)


def isolated(function: Callable[[list[T]], list[R]], items: list[T]) -> list[R | EventError]:
    """``function`` over ``items``; if that fails, item by item, so that only the culprits fail."""
    if not items:
        return []
    try:
        return list(function(items))
    except Exception as error:  # ONNX Runtime and tokenizers raise their own types
        log.warning("event=batch_failed stage=%s size=%d error=%r", function.__name__, len(items), _brief(error))
    results: list[R | EventError] = []
    for item in items:
        try:
            results.extend(function([item]))
        except Exception as error:  # as above
            results.append(EventError(Reason.INFERENCE_ERROR, _brief(error)))
    return results


def _rejection(record: InFlight, answer: Answer | None) -> EventError:
    rejected = answer if isinstance(answer, EventError) else record.outcome
    assert isinstance(rejected, EventError), "an event is either classified or rejected"
    return rejected


def _brief(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:300]
