"""One micro-batch's way out: classify it, publish a result or a dead letter per event, then ack.

The order of the steps is the delivery guarantee. Every record of the batch is handed to the
producer, all deliveries are awaited, and only then are the input events acknowledged, in the
order they were read, so the consumer never commits an offset whose result the broker has not
acknowledged. Inference runs in an executor so the event loop (and Faust's timers) keep running.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from stream_clf.classifier import Classifier, Prediction
from stream_clf.errors import EventError, Reason
from stream_clf.events import Source, TextEvent, dead_letter_headers, decode_event, encode_result

__all__ = ["BatchProcessor", "InFlight", "Sender"]

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


class Sender(Protocol):
    """Publishes one record; the returned awaitable completes when the broker has acknowledged it."""

    async def __call__(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> Awaitable[object]: ...


@dataclass(slots=True)
class InFlight:
    """One consumed record on its way through the worker, with its decoded event or rejection."""

    source: Source
    key: bytes | None
    value: bytes | None
    outcome: TextEvent | EventError
    ack: Callable[[], Awaitable[object]]

    @classmethod
    def decode(
        cls,
        source: Source,
        key: bytes | None,
        value: bytes | None,
        ack: Callable[[], Awaitable[object]],
        max_bytes: int,
    ) -> "InFlight":
        try:
            outcome: TextEvent | EventError = decode_event(value, max_bytes)
        except EventError as error:
            outcome = error
        return cls(source=source, key=key, value=value, outcome=outcome, ack=ack)


class BatchProcessor:
    """Classifies micro-batches and publishes their results and dead letters."""

    def __init__(
        self,
        classifier: Classifier,
        send: Sender,
        *,
        output_topic: str,
        dlq_topic: str,
        executor: Executor,
        top_k: int = 0,
    ) -> None:
        self._classifier = classifier
        self._send = send
        self._output = output_topic
        self._dlq = dlq_topic
        self._executor = executor
        self._top_k = top_k
        self._model = classifier.bundle.name
        self._version = classifier.bundle.version

    async def process(self, batch: Sequence[InFlight]) -> None:
        """Publish one record per event of ``batch``, await their delivery, then ack the events."""
        events = [record for record in batch if isinstance(record.outcome, TextEvent)]
        answers = dict(zip(map(id, events), await self._classify(events), strict=True))
        deliveries = [await self._publish(record, answers.get(id(record))) for record in batch]
        await asyncio.gather(*deliveries)
        for record in batch:
            await record.ack()

    async def _publish(self, record: InFlight, answer: Prediction | EventError | None) -> Awaitable[object]:
        event = record.outcome
        if isinstance(answer, Prediction) and isinstance(event, TextEvent):
            value = encode_result(
                event_id=event.id or record.source.default_id,
                label=answer.label,
                scores=answer.scores,
                model=self._model,
                model_version=self._version,
                source=record.source,
                meta=event.meta,
                truncated=answer.truncated,
                chunks=answer.chunks,
                top_k=self._top_k,
                labels=answer.labels,
            )
            return await self._send(self._output, record.key, value, [])
        rejected = answer if isinstance(answer, EventError) else event
        assert isinstance(rejected, EventError), "an event is either classified or rejected"
        return await self._send(self._dlq, record.key, record.value, dead_letter_headers(rejected, record.source))

    async def _classify(self, events: Sequence[InFlight]) -> list[Prediction | EventError]:
        """Predict the whole batch; if that fails, predict one by one to isolate the culprits."""
        if not events:
            return []
        texts = [record.outcome.text for record in events if isinstance(record.outcome, TextEvent)]
        loop = asyncio.get_running_loop()
        try:
            return list(await loop.run_in_executor(self._executor, self._classifier.predict, texts))
        except Exception as error:  # ONNX Runtime and tokenizers raise their own types
            log.warning("event=batch_inference_failed size=%d error=%r retry=one_by_one", len(texts), _brief(error))
        outcomes: list[Prediction | EventError] = []
        for text in texts:
            try:
                outcomes.extend(await loop.run_in_executor(self._executor, self._classifier.predict, [text]))
            except Exception as error:  # as above
                outcomes.append(EventError(Reason.INFERENCE_ERROR, _brief(error)))
        return outcomes


def _brief(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:300]
