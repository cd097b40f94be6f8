"""The worker's stages between consuming an event and acknowledging it.

::

    feed ─► intake ─► tokenize ─► batcher ─► infer ─► publish ─► ack
            (queue)   (thread)   (count,    (thread)  (results and dead
                                 wait,               letters, awaited,
                                 tokens)             acked in read order)

Each stage is a task, so the stages overlap: while the inference thread runs batch N, the event loop
decodes and the tokenizer thread encodes what will become batch N+1, and batch N-1's records are
delivered. The order of the last steps is the delivery guarantee: every record of a batch is
handed to the producer (in read order, batch after batch, so per-key order holds), all deliveries
are awaited, the previous batch is fully acked, and only then are this batch's events acked, in the
order they were read. So the consumer never commits an offset
whose record the broker has not acknowledged, and acks never run ahead of an earlier batch.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from stream_clf.batching import MicroBatcher
from stream_clf.classifier import Classifier, Prediction
from stream_clf.errors import EventError, Reason
from stream_clf.events import Source, TextEvent, dead_letter_headers, decode_event, encode_result
from stream_clf.metrics import WorkerMetrics
from stream_clf.windows import Plan

__all__ = [
    "BatchProcessor",
    "InFlight",
    "Pipeline",
    "Routing",
    "Sender",
    "classify_planned",
    "count_outcomes",
    "isolated",
    "plan_events",
]

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
T = TypeVar("T")
R = TypeVar("R")
# Batches whose records may be awaiting delivery while the next one is classified.
PUBLISHES_IN_FLIGHT = 2


class Sender(Protocol):
    """Publishes one record; the returned awaitable completes when the broker has acknowledged it."""

    async def __call__(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> Awaitable[object]: ...


@dataclass(slots=True)
class InFlight:
    """One consumed record on its way through the worker: its decoded event (or rejection), its plan.

    ``timestamp`` is the record's Kafka timestamp (seconds since the epoch); ``received`` the
    monotonic time the worker took it in.
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


@dataclass(frozen=True)
class Routing:
    """Where each event's one record goes, and what it holds: a result, or a dead letter."""

    output: str
    dlq: str
    model: str
    version: str
    top_k: int = 0

    def record(
        self, record: InFlight, answer: Prediction | EventError | None
    ) -> tuple[str, bytes | None, bytes | None, Headers]:
        """(topic, key, value, headers) of the record published for ``record``."""
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
            return self.output, record.key, value, []
        rejected = answer if isinstance(answer, EventError) else event
        assert isinstance(rejected, EventError), "an event is either classified or rejected"
        return self.dlq, record.key, record.value, dead_letter_headers(rejected, record.source)


def count_outcomes(
    metrics: WorkerMetrics, batch: Sequence[InFlight], answers: Mapping[int, Prediction | EventError]
) -> None:
    """Count each delivered record of ``batch`` as a result (with its latency) or a dead letter."""
    now = time.time()
    for record in batch:
        answer = answers.get(id(record))
        if isinstance(answer, Prediction):
            latency = None if record.timestamp is None else max(0.0, now - record.timestamp)
            metrics.result(answer.label, answer.score, latency)
        else:
            rejected = answer if isinstance(answer, EventError) else record.outcome
            assert isinstance(rejected, EventError), "an event is either classified or rejected"
            metrics.dead_letter(rejected.reason.value)


def plan_events(classifier: Classifier, records: Sequence[InFlight], metrics: WorkerMetrics) -> None:
    """Plan the valid events' texts (tokenize, cut); an event whose text cannot be is rejected."""
    events = [record for record in records if isinstance(record.outcome, TextEvent)]
    texts = [record.outcome.text for record in events if isinstance(record.outcome, TextEvent)]
    started = time.perf_counter()
    plans = isolated(classifier.plan, texts)
    if texts:
        metrics.tokenize_seconds.observe(time.perf_counter() - started)
    for record, planned in zip(events, plans, strict=True):
        if isinstance(planned, EventError):
            record.outcome = planned
        else:
            record.plan = planned


def classify_planned(
    classifier: Classifier, batch: Sequence[InFlight], metrics: WorkerMetrics
) -> dict[int, Prediction | EventError]:
    """Predictions (or inference errors) for the planned events of ``batch``, keyed by ``id(record)``."""
    events = [record for record in batch if record.plan is not None]
    plans = [record.plan for record in events if record.plan is not None]
    started = time.monotonic()
    answers = isolated(classifier.infer, plans)
    if plans:
        metrics.batch(
            events=len(batch),
            tokens=sum(text_plan.tokens for text_plan in plans),
            padded=classifier.padded_tokens(plans),
            seconds=time.monotonic() - started,
            waits=[started - record.received for record in batch],
        )
    return dict(zip(map(id, events), answers, strict=True))


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


class BatchProcessor:
    """Tokenizes, classifies and publishes micro-batches; each step callable on its own."""

    def __init__(
        self,
        classifier: Classifier,
        send: Sender,
        *,
        output_topic: str,
        dlq_topic: str,
        inference: Executor,
        tokenization: Executor,
        metrics: WorkerMetrics,
        top_k: int = 0,
    ) -> None:
        self._classifier = classifier
        self._send = send
        self._inference = inference
        self._tokenization = tokenization
        self.routing = Routing(output_topic, dlq_topic, classifier.bundle.name, classifier.bundle.version, top_k)
        self._metrics = metrics
        # Per input partition, the offset after the last event acked: what lag is measured from.
        self.processed: dict[tuple[str, int], int] = {}

    async def tokenize(self, records: Sequence[InFlight]) -> None:
        """Plan the valid events' texts in the tokenizer thread; a text that cannot be is rejected."""
        await asyncio.get_running_loop().run_in_executor(
            self._tokenization, plan_events, self._classifier, records, self._metrics
        )

    async def classify(self, batch: Sequence[InFlight]) -> dict[int, Prediction | EventError]:
        """Predictions (or inference errors) for the planned events of ``batch``, keyed by ``id(record)``."""
        return await asyncio.get_running_loop().run_in_executor(
            self._inference, classify_planned, self._classifier, batch, self._metrics
        )

    async def send(
        self, batch: Sequence[InFlight], answers: dict[int, Prediction | EventError]
    ) -> list[Awaitable[object]]:
        """Hand one record per event to the producer, in read order; return their deliveries."""
        return [await self._publish(record, answers.get(id(record))) for record in batch]

    async def confirm(
        self,
        batch: Sequence[InFlight],
        answers: dict[int, Prediction | EventError],
        deliveries: Sequence[Awaitable[object]],
        previous: Awaitable[object] | None = None,
    ) -> None:
        """Await the deliveries and the previous batch's confirmation, count them, ack the events in order."""
        await asyncio.gather(*deliveries)
        if previous is not None:
            await previous
        self._count(batch, answers)
        for record in batch:
            await record.ack()
            self.processed[record.source.topic, record.source.partition] = record.source.offset + 1

    async def process(self, batch: Sequence[InFlight]) -> None:
        """All steps for one batch, one after the other."""
        await self.tokenize(batch)
        answers = await self.classify(batch)
        await self.confirm(batch, answers, await self.send(batch, answers))

    def _count(self, batch: Sequence[InFlight], answers: dict[int, Prediction | EventError]) -> None:
        count_outcomes(self._metrics, batch, answers)

    async def _publish(self, record: InFlight, answer: Prediction | EventError | None) -> Awaitable[object]:
        return await self._send(*self.routing.record(record, answer))


class Pipeline:
    """The stages as concurrent tasks, fed one consumed record at a time."""

    def __init__(self, processor: BatchProcessor, *, max_batch: int, max_wait: float, max_tokens: int | None) -> None:
        self._processor = processor
        self._max_batch = max_batch
        self._intake: asyncio.Queue[InFlight] = asyncio.Queue(max_batch)
        self._batcher: MicroBatcher[InFlight] = MicroBatcher(
            max_batch, max_wait, capacity=max_batch, max_cost=max_tokens, cost=lambda record: record.tokens
        )
        self._slots = asyncio.Semaphore(PUBLISHES_IN_FLIGHT)

    async def feed(self, record: InFlight) -> None:
        """Hand a consumed record to the pipeline, waiting while it is full."""
        await self._intake.put(record)

    async def run(self) -> None:
        """Run the stages until cancelled; raise the first failure of any of them."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._tokenize_stage())
            group.create_task(self._classify_stage(group))

    async def _tokenize_stage(self) -> None:
        while True:
            chunk = [await self._intake.get()]
            while len(chunk) < self._max_batch and not self._intake.empty():
                chunk.append(self._intake.get_nowait())
            await self._processor.tokenize(chunk)
            for record in chunk:
                await self._batcher.put(record)

    async def _classify_stage(self, group: asyncio.TaskGroup) -> None:
        previous: asyncio.Task[None] | None = None
        while True:
            batch = await self._batcher.next_batch()
            answers = await self._processor.classify(batch)
            await self._slots.acquire()
            # Sends are issued here, in batch order, so records keep their order per key; waiting
            # for their delivery and acking happen in a task, beside the next batch's inference.
            deliveries = await self._processor.send(batch, answers)
            previous = group.create_task(self._confirm(batch, answers, deliveries, previous))

    async def _confirm(
        self,
        batch: Sequence[InFlight],
        answers: dict[int, Prediction | EventError],
        deliveries: Sequence[Awaitable[object]],
        previous: asyncio.Task | None,
    ) -> None:
        try:
            await self._processor.confirm(batch, answers, deliveries, previous)
        finally:
            self._slots.release()


def _brief(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:300]
