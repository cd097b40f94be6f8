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

import collections
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from stream_clf.errors import EventError, Reason, fails_alone
from stream_clf.model.classifier import Prediction
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.ops.tracing import BatchTracing, NoTracing
from stream_clf.worker.events import TextEvent
from stream_clf.worker.models import ModelHolder, ModelSet, ServedModel
from stream_clf.worker.records import Answer, Form, InFlight, Outcome, OutRecord, Role
from stream_clf.worker.routing import Routing

__all__ = ["BatchStep", "ProcessedBatch", "isolated"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ProcessedBatch:
    """A micro-batch after classification: each event's outcome, and its records, in read order."""

    events: Sequence[InFlight]
    outcomes: Sequence[Outcome]
    records: Sequence[OutRecord]

    def count(self, metrics: WorkerMetrics, records: Sequence[OutRecord] | None = None) -> None:
        """Count each event by the records that went out for it: call once they are durably out.

        ``records`` are those published (by default the batch's own; a topic's refusal may have
        replaced some by smaller forms): each answer as a result (with its latency) or a dead
        letter, and the forms that were cut down to fit.
        """
        outcomes = {id(event): outcome for event, outcome in zip(self.events, self.outcomes, strict=True)}
        now = time.time()
        for record in self.records if records is None else records:
            event = record.event
            outcome = outcomes.get(id(event)) if event is not None else None
            if record.form is not Form.WHOLE:
                metrics.refitted(record.role.value, record.form.value)
            if event is None or outcome is None or not record.role.answers:
                continue
            answer, model = outcome.answer, outcome.model
            if record.role is Role.RESULT and isinstance(answer, Prediction) and model is not None:
                latency = None if event.timestamp is None else max(0.0, now - event.timestamp)
                metrics.result(model.version, answer.label, answer.score, latency)
                if outcome.abstained:
                    metrics.abstained(model.version, answer.label)
                if outcome.shadow is not None:
                    metrics.shadow_compared(answer.label, outcome.shadow.label)
            elif record.reason is not None:
                metrics.dead_letter(record.reason)


class BatchStep:
    """Plans, classifies and routes micro-batches; :meth:`plan` and :meth:`classify` may run in several
    threads at once, on different batches (the pipeline overlaps them).

    Each batch is answered by one :class:`~stream_clf.worker.models.ModelSet`, the one in service
    when the batch was formed (``models``; by default the holder's current one). An event planned
    for another model than the one that now serves it (a swap came in between) is planned again.
    """

    def __init__(
        self, models: ModelHolder, routing: Routing, metrics: WorkerMetrics, tracing: BatchTracing | None = None
    ) -> None:
        self.models = models
        self.routing = routing
        self._metrics = metrics
        self._tracing = tracing or NoTracing()

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
        """Classify the planned events of ``batch`` and route every event to its records: one span
        (``--otel``), linked to the events' traces."""
        with self._tracing.batch([record.headers for record in batch]) as span:
            processed = self._classify(batch, models)
            if span.is_recording():  # without --otel, nothing is counted
                roles = collections.Counter(record.role for record in processed.records)
                span.set_attribute("stream_clf.results", roles[Role.RESULT])
                span.set_attribute("stream_clf.dead_letters", roles[Role.DEAD_LETTER])
        return processed

    def _classify(self, batch: Sequence[InFlight], models: ModelSet | None) -> ProcessedBatch:
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
    except BaseException as error:  # ONNX Runtime and tokenizers raise their own types, and panic
        if not fails_alone(error):
            raise
        log.warning("event=batch_failed stage=%s size=%d error=%r", stage, len(items), _brief(error))
    results: list[R | EventError] = []
    for item in items:
        try:
            results.extend(function([item]))
        except BaseException as error:  # as above
            if not fails_alone(error):
                raise
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


def _brief(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:300]
