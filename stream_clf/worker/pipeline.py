"""At-least-once: the batch step's stages as concurrent tasks, acking each event after its delivery.

::

    feed ─► intake ─► plan ─► batcher ─► classify ─► send ─► confirm
            (queue)  (thread) (count,    (thread)   (read   (deliveries awaited,
                               wait,                 order)  then acks in read order)
                               tokens)

Each stage is a task, so the stages overlap: while the inference thread runs batch N, the event loop
decodes and the tokenizer thread plans what will become batch N+1, and batch N-1's records are
delivered. The order of the last steps is the delivery guarantee: every record of a batch is
handed to the producer (in read order, batch after batch, so per-key order holds), all deliveries
are awaited, the previous batch is fully acked, and only then are this batch's events acked, in the
order they were read. So the consumer never commits an offset whose record the broker has not
acknowledged, and acks never run ahead of an earlier batch. At most :data:`PUBLISHES_IN_FLIGHT`
batches await delivery at once.
"""

import asyncio
from collections.abc import Awaitable, Sequence
from concurrent.futures import Executor
from typing import Protocol

from stream_clf.ops.health import ConsumerState
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.worker.batching import MicroBatcher
from stream_clf.worker.core import BatchStep, InFlight, OutRecord, ProcessedBatch

__all__ = ["PUBLISHES_IN_FLIGHT", "Pipeline", "Sender"]

# Batches whose records may be awaiting delivery while the next one is classified.
PUBLISHES_IN_FLIGHT = 2


class Sender(Protocol):
    """Publishes one record; the returned awaitable completes when the broker has acknowledged it."""

    async def __call__(self, record: OutRecord) -> Awaitable[object]: ...


class Pipeline:
    """The stages as concurrent tasks, fed one consumed record at a time."""

    def __init__(
        self,
        step: BatchStep,
        send: Sender,
        metrics: WorkerMetrics,
        state: ConsumerState,
        *,
        max_batch: int,
        max_wait: float,
        max_tokens: int | None,
        tokenization: Executor,
        inference: Executor,
    ) -> None:
        self._step = step
        self._send = send
        self._metrics = metrics
        self._state = state
        self._tokenization = tokenization
        self._inference = inference
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
            group.create_task(self._plan_stage())
            group.create_task(self._classify_stage(group))

    async def _plan_stage(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chunk = [await self._intake.get()]
            while len(chunk) < self._max_batch and not self._intake.empty():
                chunk.append(self._intake.get_nowait())
            await loop.run_in_executor(self._tokenization, self._step.plan, chunk)
            for record in chunk:
                await self._batcher.put(record)

    async def _classify_stage(self, group: asyncio.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        previous: asyncio.Task[None] | None = None
        while True:
            batch = await self._batcher.next_batch()
            processed = await loop.run_in_executor(self._inference, self._step.classify, batch)
            await self._slots.acquire()
            # Sends are issued here, in batch order, so records keep their order per key; waiting
            # for their delivery and acking happen in a task, beside the next batch's inference.
            deliveries = [await self._send(record) for record in processed.records]
            previous = group.create_task(self._confirm(processed, deliveries, previous))

    async def _confirm(
        self, processed: ProcessedBatch, deliveries: Sequence[Awaitable[object]], previous: asyncio.Task | None
    ) -> None:
        try:
            await asyncio.gather(*deliveries)
            if previous is not None:
                await previous
            processed.count(self._metrics)
            for record in processed.events:
                await record.ack()
                self._state.processed(record.source.topic, record.source.partition, record.source.offset)
        finally:
            self._slots.release()
