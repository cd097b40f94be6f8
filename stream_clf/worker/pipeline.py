"""At-least-once: the batch step's stages as concurrent tasks, acking each event after its delivery.

::

    feed ─► intake ─► tokenize ─► batcher ─► infer ────────► publish ─► confirm
            (queue)   (thread)    (count,    (2 batches at    (read      (deliveries awaited,
                                   wait,      once, buckets    order,     then acks in read order)
                                   tokens)    in the lanes)    one batch
                                                               at a time)

Each stage is a task, so the stages overlap: while the lanes run batch N, the event loop decodes,
the tokenizer thread plans what will become batch N+2, batch N+1 queues its buckets behind N's (so
no lane idles while batch N's last bucket runs), and batch N-1's records are delivered. A batch is
formed when an inference slot is free, from everything queued by then: under load batches grow by
themselves (small ones cost more per text), and a batch whose first event has already waited
``max_wait`` starts at once instead of waiting for one that cannot fill.

The order of the last steps is the delivery guarantee: batches are published in the order they
were formed, every record of a batch is handed to the producer in read order (so per-key order
holds), all deliveries are awaited, the previous batch is fully acked, and only then are this
batch's events acked, in the order they were read. So the consumer never commits an offset whose
record the broker has not acknowledged, and acks never run ahead of an earlier batch. A batch goes
to the producer only once the one before it is delivered: when the broker refuses a record for
itself, it fails its whole produce request, and the neighbours sent again on their own
(:class:`~stream_clf.worker.publisher.BatchPublisher`) must not land behind the next batch's
results for the same keys. At most :data:`INFERENCES_IN_FLIGHT` batches are classified meanwhile,
and the events from the intake to their ack weigh at most ``max_bytes``
(:class:`~stream_clf.worker.budget.ByteBudget`).

**Handing partitions over.** When its partitions are about to go (a rebalance, or the worker
stopping), :meth:`Pipeline.hand_over` stops taking events in, drops those not yet in a batch being
classified (they were never published: whoever owns the partition next reads them again), and
waits until the batches in the lanes are delivered and acked, so that the consumer commits all of
them before the partitions go. Nothing published is left uncommitted, and nothing committed is
left unpublished. After a new assignment, :meth:`Pipeline.serve` takes in events read in the new
group generation only; one read before it is dropped, as the partition's new owner reads it too.

Every stage keeps a :class:`~stream_clf.ops.metrics.StageClock`: the time it was busy, starved
(waiting for its input) and blocked (waiting for room, or an answer, downstream).
"""

import asyncio
import time
from collections.abc import Awaitable, Sequence
from concurrent.futures import Executor
from typing import Protocol

from stream_clf.ops.health import ConsumerState
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.worker.batching import MicroBatcher
from stream_clf.worker.budget import ByteBudget
from stream_clf.worker.core import BatchStep, ProcessedBatch
from stream_clf.worker.records import InFlight, OutRecord

__all__ = ["INFERENCES_IN_FLIGHT", "Pipeline", "Sender"]

# Batches being classified at once: the next one queues its buckets behind the current one's.
INFERENCES_IN_FLIGHT = 2


class Sender(Protocol):
    """Hands a batch's records to the producer, in order, at once; the returned awaitable completes
    when the broker has acknowledged all of them, with the records that went out (a refused record's
    smaller form in its place), and fails if one could not be published."""

    def __call__(self, records: Sequence[OutRecord]) -> Awaitable[Sequence[OutRecord]]: ...


class Pipeline:
    """The stages as concurrent tasks, fed one consumed record at a time.

    ``inference`` must run :data:`INFERENCES_IN_FLIGHT` calls at once.
    """

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
        max_bytes: int,
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
        self._budget = ByteBudget(max_bytes)
        self._intake: asyncio.Queue[InFlight] = asyncio.Queue(max_batch)
        self._batcher: MicroBatcher[InFlight] = MicroBatcher(
            max_batch,
            max_wait,
            capacity=max_batch,
            max_cost=max_tokens,
            cost=lambda record: record.tokens,
            arrived=lambda record: record.received,
        )
        self._inferring = asyncio.Semaphore(INFERENCES_IN_FLIGHT)
        self._classified: asyncio.Queue[asyncio.Future[ProcessedBatch]] = asyncio.Queue()
        self._delivering = asyncio.Semaphore(1)  # held by the batch awaiting its deliveries
        self._serving: int | None = 0  # the group generation whose events are taken in; None: none

    async def feed(self, record: InFlight) -> None:
        """Hand a consumed record to the pipeline, waiting while it is full (in events or in bytes).
        One read in another group generation than the one served is dropped, and so is one whose
        feed is cancelled while it waits."""
        await self._budget.take(record.weight)
        if not self._current(record):
            self._drop(record)
            return
        self._state.waiting(held=self._budget.events)
        try:
            await self._intake.put(record)
        except asyncio.CancelledError:  # not taken in: let it go
            self._drop(record)
            raise

    def serve(self, generation: int) -> None:
        """Take in the events read in consumer group ``generation`` (the assignment just received)."""
        self._serving = generation

    async def hand_over(self) -> None:
        """Before the partitions go: take nothing more in, drop what is not in a batch being classified,
        and return once every event still held is delivered and acked (so the consumer can commit it)."""
        self._serving = None
        while not self._intake.empty():
            self._drop(self._intake.get_nowait())
        for record in self._batcher.drain():
            self._drop(record)
        await self._budget.emptied()

    def _current(self, record: InFlight) -> bool:
        return record.generation == self._serving

    def _drop(self, record: InFlight) -> None:
        """Let go of a record unfinished: nothing was published for it, and its offset is not acked."""
        record.forget()
        self._budget.give(record.weight)
        self._state.waiting(held=self._budget.events)

    async def run(self) -> None:
        """Run the stages until cancelled; raise the first failure of any of them."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._tokenize_stage())
            group.create_task(self._infer_stage())
            group.create_task(self._publish_stage(group))

    async def _tokenize_stage(self) -> None:
        loop = asyncio.get_running_loop()
        clock = self._metrics.stage("tokenize")
        while True:
            clock.enter("starved")
            chunk = [await self._intake.get()]
            while len(chunk) < self._max_batch and not self._intake.empty():
                chunk.append(self._intake.get_nowait())
            clock.enter("busy")
            await loop.run_in_executor(self._tokenization, self._step.plan, chunk)
            clock.enter("blocked")
            for record in chunk:
                if self._current(record):
                    await self._batcher.put(record)
                else:  # its partition went while it was planned
                    self._drop(record)

    async def _infer_stage(self) -> None:
        loop = asyncio.get_running_loop()
        clock = self._metrics.stage("batch")
        while True:
            # A batch is formed only once it can start: while the lanes are full, events queue, and
            # the next batch takes all of them at once instead of closing small and waiting.
            clock.enter("blocked")
            await self._inferring.acquire()
            clock.enter("starved")
            batch = await self._batcher.next_batch()
            clock.enter("busy")
            for record in batch:
                if not self._current(record):  # its partition went while it waited for a batch
                    self._drop(record)
            batch = [record for record in batch if self._current(record)]
            if not batch:
                self._inferring.release()
                continue
            # The models are taken here, in batch order: a swap falls between two batches.
            models = self._step.models.current
            self._classified.put_nowait(loop.run_in_executor(self._inference, self._step.classify, batch, models))

    async def _publish_stage(self, group: asyncio.TaskGroup) -> None:
        clock = self._metrics.stage("publish")
        previous: asyncio.Task[None] | None = None
        while True:
            clock.enter("starved")
            classified = await self._classified.get()
            try:
                processed = await classified
            finally:
                self._inferring.release()
            clock.enter("blocked")
            await self._delivering.acquire()
            clock.enter("busy")
            # Records are handed over here, in batch order, so they keep their order per key;
            # waiting for their delivery and acking happen in a task, while the next ones are classified.
            delivered = self._send(processed.records)
            previous = group.create_task(self._confirm(processed, delivered, previous))

    async def _confirm(
        self, processed: ProcessedBatch, delivered: Awaitable[Sequence[OutRecord]], previous: asyncio.Task | None
    ) -> None:
        try:
            sent = await delivered
        finally:
            self._delivering.release()  # the next batch may go to the producer
        if previous is not None:
            await previous
        started = time.perf_counter()
        processed.count(self._metrics, sent)
        for record in processed.events:
            record.ack()
            self._state.processed(record.source.topic, record.source.partition, record.source.offset)
            self._budget.give(record.weight)
        self._state.waiting(held=self._budget.events)
        self._metrics.stage("confirm").add("busy", time.perf_counter() - started)
