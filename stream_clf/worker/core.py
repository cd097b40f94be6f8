"""The batch step both delivery guarantees share: consumed records in, records to publish out.

::

    consumed records ─► plan (tokenize, cut, for the model that serves each event)
                     ─► classify (length buckets, ONNX Runtime; the shadow model beside)
                     ─► route: one result or one dead letter per event, and the result's
                        review copy (it abstained) and shadow answer ─► ProcessedBatch

:class:`BatchStep` does no I/O and commits nothing. The at-least-once pipeline
(:mod:`stream_clf.worker.pipeline`) publishes a :class:`ProcessedBatch`'s records, awaits their
delivery and acks the events; the exactly-once loop (:mod:`stream_clf.worker.transactional`)
publishes them in a transaction with the consumer's offsets. Either counts the batch's outcomes
(:meth:`ProcessedBatch.count`) only once its records are durably out: delivered, or committed.
"""

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from stream_clf.errors import EventError, Reason
from stream_clf.model.classifier import Prediction
from stream_clf.model.windows import Plan
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.worker.abstain import MinConfidence
from stream_clf.worker.events import (
    Source,
    TextEvent,
    dead_letter_headers,
    decode_event,
    encode_result,
    encode_review,
    encode_shadow,
)
from stream_clf.worker.models import ModelHolder, ModelSet, ServedModel

__all__ = ["BatchStep", "Headers", "InFlight", "OutRecord", "Outcome", "ProcessedBatch", "Routing", "isolated"]

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
    model: ServedModel | None = None  # the model it was planned for

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

    @classmethod
    def unacked(cls, message: "KafkaMessage", max_bytes: int) -> "InFlight":
        """A record librdkafka read, whose offset is not acked (a transaction commits it, or nothing does)."""
        _, timestamp = message.timestamp()
        source = Source(message.topic(), message.partition(), message.offset())
        return cls.decode(
            source,
            message.key(),
            message.value(),
            _no_ack,
            max_bytes,
            timestamp=timestamp / 1000 if timestamp else None,
        )

    @property
    def tokens(self) -> int:
        """What this event costs the model (0 for a rejected one)."""
        return self.plan.tokens if self.plan else 0


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to publish: an event's result or dead letter, or its review copy or shadow answer."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one event: its answer and the model that gave it, the shadow model's answer
    (when one runs), and whether the result abstained (its score below ``--min-confidence``)."""

    answer: Answer | None
    model: ServedModel | None = None
    shadow: Prediction | None = None
    shadow_model: ServedModel | None = None
    abstained: bool = False


@dataclass(frozen=True)
class Routing:
    """Where each event's records go, and what they hold: a result or a dead letter, and beside a
    result its review copy (``review``, when it abstained) and its shadow answer (``shadow``)."""

    output: str
    dlq: str
    top_k: int = 0
    review: str | None = None
    shadow: str | None = None
    min_confidence: MinConfidence | None = None

    def records(self, record: InFlight, outcome: Outcome) -> list[OutRecord]:
        """The records published for ``record``: one result or one dead letter, then any copies."""
        event, answer, model = record.outcome, outcome.answer, outcome.model
        if not (isinstance(answer, Prediction) and isinstance(event, TextEvent) and model is not None):
            rejected = _rejection(record, answer)
            return [OutRecord(self.dlq, record.key, record.value, dead_letter_headers(rejected, record.source))]
        event_id = event.id or record.source.default_id
        value = encode_result(
            event_id=event_id,
            label=answer.label,
            scores=answer.scores,
            model=model.name,
            model_version=model.version,
            source=record.source,
            meta=event.meta,
            truncated=answer.truncated,
            chunks=answer.chunks,
            top_k=self.top_k,
            labels=answer.labels,
            abstained=outcome.abstained if self.min_confidence is not None else None,
        )
        records = [OutRecord(self.output, record.key, value, [])]
        if outcome.abstained and self.review is not None and self.min_confidence is not None:
            bound = self.min_confidence.bound(answer.label)
            records.append(OutRecord(self.review, record.key, encode_review(value, event.text, bound), []))
        if outcome.shadow is not None and outcome.shadow_model is not None and self.shadow is not None:
            shadow = encode_shadow(
                event_id=event_id,
                source=record.source,
                live=(model.name, model.version, answer),
                shadow=(outcome.shadow_model.name, outcome.shadow_model.version, outcome.shadow),
            )
            records.append(OutRecord(self.shadow, record.key, shadow, []))
        return records

    def abstains(self, answer: Prediction) -> bool:
        return self.min_confidence is not None and self.min_confidence.abstains(answer.label, answer.score)


@dataclass(frozen=True)
class ProcessedBatch:
    """A micro-batch after classification: each event's outcome, and its records, in read order."""

    events: Sequence[InFlight]
    outcomes: Sequence[Outcome]
    records: Sequence[OutRecord]

    def count(self, metrics: WorkerMetrics) -> None:
        """Count each event as a result (with its latency) or a dead letter: call once it is durably out."""
        now = time.time()
        for event, outcome in zip(self.events, self.outcomes, strict=True):
            answer, model = outcome.answer, outcome.model
            if isinstance(answer, Prediction) and model is not None:
                latency = None if event.timestamp is None else max(0.0, now - event.timestamp)
                metrics.result(model.version, answer.label, answer.score, latency)
                if outcome.abstained:
                    metrics.abstained(model.version, answer.label)
                if outcome.shadow is not None:
                    metrics.shadow_compared(answer.label, outcome.shadow.label)
            else:
                metrics.dead_letter(_rejection(event, answer).reason.value)


class BatchStep:
    """Plans, classifies and routes micro-batches; :meth:`plan` and :meth:`classify` may run in several
    threads at once, on different batches (the pipeline overlaps them).

    Each batch is answered by one :class:`~stream_clf.worker.models.ModelSet`, the one in service
    when the batch was formed (``models``; by default the holder's current one). An event planned
    for another model than the one that now serves it (a swap came in between) is planned again.
    """

    def __init__(self, models: ModelHolder, routing: Routing, metrics: WorkerMetrics) -> None:
        self.models = models
        self.routing = routing
        self._metrics = metrics

    def plan(self, records: Sequence[InFlight], models: ModelSet | None = None) -> None:
        """Tokenize and cut the valid events' texts for the models that serve them; an event whose
        text cannot be is rejected."""
        models = models or self.models.current
        events = [record for record in records if isinstance(record.outcome, TextEvent)]
        started = time.perf_counter()
        for model, group in _grouped(events, lambda record: models.serving(record.source, record.key)):
            texts = [record.outcome.text for record in group if isinstance(record.outcome, TextEvent)]
            for record, planned in zip(group, isolated("plan", model.classifier.plan, texts), strict=True):
                if isinstance(planned, EventError):
                    record.outcome = planned
                else:
                    record.plan, record.model = planned, model
        if events:
            self._metrics.tokenize_seconds.observe(time.perf_counter() - started)

    def classify(self, batch: Sequence[InFlight], models: ModelSet | None = None) -> ProcessedBatch:
        """Classify the planned events of ``batch`` and route every event to its records."""
        models = models or self.models.current
        stale = [r for r in batch if r.plan is not None and r.model is not models.serving(r.source, r.key)]
        if stale:
            self.plan(stale, models)
        planned = [record for record in batch if record.plan is not None and record.model is not None]
        started = time.monotonic()
        answers: dict[int, tuple[Answer, ServedModel]] = {}
        padded = 0
        for model, group in _grouped(planned, lambda record: record.model):
            plans = [record.plan for record in group if record.plan is not None]
            infer = functools.partial(model.classifier.infer, observe=self._metrics.lane_busy)
            for record, answer in zip(group, isolated("infer", infer, plans), strict=True):
                answers[id(record)] = (answer, model)
            padded += model.classifier.padded_tokens(plans)
        if planned:
            self._metrics.batch(
                events=len(batch),
                tokens=sum(record.tokens for record in planned),
                padded=padded,
                seconds=time.monotonic() - started,
                waits=[started - record.received for record in batch],
            )
        shadows = self._shadow(models.shadow, [r for r in planned if isinstance(answers[id(r)][0], Prediction)])
        outcomes = []
        for record in batch:
            answer, model = answers.get(id(record), (None, None))
            abstained = isinstance(answer, Prediction) and self.routing.abstains(answer)
            shadow = shadows.get(id(record))
            outcomes.append(Outcome(answer, model, shadow, models.shadow if shadow is not None else None, abstained))
        records = [
            out
            for record, outcome in zip(batch, outcomes, strict=True)
            for out in self.routing.records(record, outcome)
        ]
        return ProcessedBatch(batch, outcomes, records)

    def _shadow(self, shadow: ServedModel | None, answered: Sequence[InFlight]) -> dict[int, Prediction]:
        """The shadow model's answers for the events the live models answered (by record id). A text
        the shadow model fails on gets no shadow answer; the live result is unaffected."""
        if shadow is None or not answered:
            return {}
        started = time.perf_counter()
        texts = [record.outcome.text for record in answered if isinstance(record.outcome, TextEvent)]
        plans = isolated("shadow plan", shadow.classifier.plan, texts)
        usable = [
            (record, plan) for record, plan in zip(answered, plans, strict=True) if not isinstance(plan, EventError)
        ]
        predictions = isolated("shadow infer", shadow.classifier.infer, [plan for _, plan in usable])
        self._metrics.shadow_seconds.inc(time.perf_counter() - started)
        return {
            id(record): prediction
            for (record, _), prediction in zip(usable, predictions, strict=True)
            if isinstance(prediction, Prediction)
        }

    def __call__(self, batch: Sequence[InFlight], models: ModelSet | None = None) -> ProcessedBatch:
        """Both steps, one after the other, with one model set."""
        models = models or self.models.current
        self.plan(batch, models)
        return self.classify(batch, models)


def isolated(stage: str, function: Callable[[list[T]], list[R]], items: list[T]) -> list[R | EventError]:
    """``function`` over ``items``; if that fails, item by item, so that only the culprits fail."""
    if not items:
        return []
    try:
        return list(function(items))
    except Exception as error:  # ONNX Runtime and tokenizers raise their own types
        log.warning("event=batch_failed stage=%s size=%d error=%r", stage, len(items), _brief(error))
    results: list[R | EventError] = []
    for item in items:
        try:
            results.extend(function([item]))
        except Exception as error:  # as above
            results.append(EventError(Reason.INFERENCE_ERROR, _brief(error)))
    return results


def _grouped(
    records: Sequence[InFlight], model_of: Callable[[InFlight], ServedModel | None]
) -> list[tuple[ServedModel, list[InFlight]]]:
    """``records`` grouped by their model, each group in read order."""
    groups: dict[int, tuple[ServedModel, list[InFlight]]] = {}
    for record in records:
        model = model_of(record)
        if model is not None:
            groups.setdefault(id(model), (model, []))[1].append(record)
    return list(groups.values())


class KafkaMessage(Protocol):
    """What :meth:`InFlight.unacked` reads of a confluent-kafka ``Message``."""

    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def timestamp(self) -> tuple[int, int]: ...


async def _no_ack() -> None:
    """Nothing to do: the offset is committed elsewhere, or not at all."""


def _rejection(record: InFlight, answer: Answer | None) -> EventError:
    rejected = answer if isinstance(answer, EventError) else record.outcome
    assert isinstance(rejected, EventError), "an event is either classified or rejected"
    return rejected


def _brief(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:300]
