"""At-least-once on Faust: each message read is fed straight to the pipeline, and a task runs it.

Acknowledgement is manual. Faust's consumer tracks every message read; the
:class:`~stream_clf.worker.pipeline.Pipeline` acks one only after its result or dead letter is
delivered, and in the order messages were read. Faust commits the highest contiguous acked offset of
each partition, so a crash at any moment leaves every committed event with a delivered record.

**No stream, no agent.** Faust's conductor would make an event of each message and queue it for an
agent, whose task woke once per event: that machinery cost the event loop more than everything
stream-clf does with an event. The consumer here calls :class:`_Delivery` for each message instead,
which decodes it and feeds the pipeline, waiting while the pipeline is full (that wait is the
back-pressure: the consumer reads on once it returns). Faust still runs the group, the fetches, the
acked offsets and their commits. (Faust's ``take()`` was never used: it acks a batch when the loop
asks for the next one, including when the loop body raised, faust-streaming #189.)

**Handing partitions over without duplicates.** Faust forgets the acked offsets of revoked
partitions *before* its own revocation handler commits, so, left alone, every rebalance and every
clean stop gave away up to a commit interval of delivered results uncommitted, and their next owner
published them again. Here, before Faust sees a revocation, and before a clean stop begins, the
pipeline hands over (:meth:`~stream_clf.worker.pipeline.Pipeline.hand_over`: what is not being
classified is dropped, the rest delivered and acked) and the acked offsets are committed.

Faust's aiokafka consumer is extended in four places (its transport is chosen by the app):

- **delivery**: each message goes to :class:`_Delivery`, not to Faust's conductor.
- **isolation level**: Faust reads uncommitted data unless its own exactly-once mode is on; the
  consumer here uses ``--isolation`` (``read_committed`` by default), so events of an aborted
  upstream transaction are never labelled.
- **hand-over**: a message fed without waiting costs no task
  (:class:`~stream_clf.worker.eager_wait.EagerWaitFirst`).
- **fetches**: each fetch marks the loop as consuming (for liveness), and a fetch that fails for
  good (a record the client cannot decode, say) ends the worker with one line and a non-zero exit,
  where Faust would log it and fetch nothing more. While events come, the broker holds a fetch
  for 16 KiB or 20 ms (:data:`BUSY_FETCH`); once a read finds none, it answers the first byte at
  once and holds an empty fetch for 500 ms (:data:`IDLE_FETCH`), so a worker with nothing to read
  does not ask fifty times a second (a tenth of a core of the broker's, measured).
"""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import ConsumerStoppedError, KafkaError
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer, Transport
from faust.types import TP, ConsumerT, Message
from mode.threads import WorkerThread

from stream_clf.kafka.connection import Connection
from stream_clf.kafka.groups import GroupReader
from stream_clf.ops.health import ConsumerState
from stream_clf.ops.metrics import LAG_INTERVAL_SECONDS, WorkerMetrics
from stream_clf.settings import WorkerSettings
from stream_clf.worker.core import BatchStep
from stream_clf.worker.eager_wait import EagerWaitFirst
from stream_clf.worker.events import Source
from stream_clf.worker.pipeline import INFERENCES_IN_FLIGHT, Pipeline, Sender
from stream_clf.worker.records import Decoder, InFlight
from stream_clf.worker.schema_wait import SchemaWait

__all__ = ["WorkerApp", "create_app"]

log = logging.getLogger(__name__)

# How long the broker may hold a fetch, as (bytes, ms): it answers when it has the bytes or the
# time is up. While events come, a fetch waits for a few of them; once a read finds none, the first
# event is answered at once and an empty fetch is held long.
BUSY_FETCH = (16 * 1024, 20)
IDLE_FETCH = (1, 500)


class WorkerApp(faust.App):
    """A Faust app whose consumer reads at ``isolation`` and reports its fetches to ``consumer_state``."""

    isolation: str = "read_committed"
    consumer_state: ConsumerState  # Faust's App has a ``state`` of its own
    fail: Callable[[str], None]
    pipeline: Pipeline
    deliver: Callable[[Message], Awaitable[None]]  # called for each message read, in place of Faust's conductor
    leaving: bool = False  # a clean stop began: no assignment is served again

    def _new_transport(self) -> Transport:
        return _Transport(self.conf.broker_consumer, self)

    def _new_consumer(self) -> ConsumerT:
        consumer = super()._new_consumer()
        consumer.callback = self.deliver  # read by the consumer's fetch loop when it starts
        return consumer

    async def hand_over(self) -> None:
        """Finish or drop the events in flight, then commit every offset acked."""
        await self.pipeline.hand_over()
        # A commit already under way (the periodic one) makes this call wait for it and commit nothing;
        # the second then commits what was acked since.
        if not await self.consumer.commit():
            await self.consumer.commit()

    async def leave(self) -> None:
        """Before a clean stop: hand the partitions over for good."""
        self.leaving = True
        await self.hand_over()


class _KafkaClientThread(WorkerThread):
    """The thread that runs aiokafka's client, named for the thread CPU metric (mode calls it Thread-N)."""

    def __init__(self, service: Any, **kwargs: Any) -> None:
        super().__init__(service, name="kafka-client", **kwargs)


class _ConsumerThread(AIOKafkaConsumerThread):
    Worker = _KafkaClientThread

    def _create_worker_consumer(self, transport: Transport) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka takes the level at construction and reads it at start; Faust passes
        # read_committed only in its own exactly-once mode.
        consumer._isolation_level = self.app.isolation
        # aiokafka answers a fetch as soon as one byte is there: under a paced load that is a
        # request per few events, and the broker's share of the cores tripled. While events come,
        # a fetch waits for a few of them (BUSY_FETCH); see _fetch_records for when none come.
        consumer._fetch_min_bytes, consumer._fetch_max_wait_ms = BUSY_FETCH
        return consumer

    async def _fetch_records(self, consumer: Any, active_partitions: Any, *args: Any, **kwargs: Any) -> Any:
        app: WorkerApp = self.app
        app.consumer_state.polled()
        try:
            records = await super()._fetch_records(consumer, active_partitions, *args, **kwargs)
            # Read by aiokafka's fetcher for each request it makes (Faust's driver reaches it the same way).
            # Busy fetches every 20 ms of a worker that reads nothing cost the broker 0.09 cores.
            consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms = (
                BUSY_FETCH if records else IDLE_FETCH
            )
            return records
        except (ConsumerStoppedError, asyncio.CancelledError):
            raise
        except Exception as error:  # a record it cannot decode, say: retrying cannot help
            if not (isinstance(error, KafkaError) and error.retriable):
                app.fail(f"the consumer failed for good: {type(error).__name__}: {error}")
            raise


class _Consumer(EagerWaitFirst, Consumer):
    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # Faust drops the revoked partitions' acked offsets first thing: commit them before it does.
        app: WorkerApp = self.app
        if not app.should_stop:
            await app.hand_over()
        await super().on_partitions_revoked(revoked)

    def forget(self, message: Any) -> None:
        """Stop waiting for ``message``'s ack: it was dropped unfinished and will be read again."""
        self._unacked_messages.discard(message)


class _Transport(Transport):
    Consumer = _Consumer


def create_app(
    settings: WorkerSettings,
    connection: Connection,
    step: BatchStep,
    metrics: WorkerMetrics,
    state: ConsumerState,
    *,
    fail: Callable[[str], None],
    publish: Sender,
    datadir: Path,
    client_id: str,
    schemas: SchemaWait,
) -> WorkerApp:
    """Build the worker's Faust app.

    ``fail`` ends the worker with a reason; ``publish`` hands a batch's records to the producer
    (:class:`~stream_clf.worker.publisher.BatchPublisher`); ``datadir`` is Faust's scratch
    directory (the worker keeps no tables, so nothing there outlives the process); ``client_id``
    names the consumer in its group (so ``stream-clf swap`` knows the running workers);
    ``schemas`` decodes the events, fetching their schemas first where they are registry-framed.

    ``--max-buffered-bytes``: half bounds the pipeline (bytes, exactly); the other half is the
    client's prefetch, which aiokafka keeps to one fetch per assigned partition, of at most
    Faust's ``consumer_max_fetch_size`` (1 MiB) unless a single record is larger.
    """
    delivery = settings.delivery
    session_timeout = delivery.session_timeout_ms / 1000
    app = WorkerApp(
        delivery.group,
        broker=connection.faust_brokers(),
        key_serializer="raw",
        value_serializer="raw",
        datadir=datadir,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=max(0.5, session_timeout / 10),
        broker_commit_interval=1.0,
        topic_partitions=settings.topics.partitions,
        web_enabled=False,  # the endpoints are served by stream_clf.ops.web.server, in every mode
        broker_credentials=connection.faust_credentials(),
        broker_client_id=client_id,
    )
    app.isolation = delivery.isolation
    app.consumer_state = state
    app.fail = fail
    app.pipeline = _pipeline(settings, step, publish, metrics, state)
    _consume_and_classify(app, settings, metrics=metrics, fail=fail, schemas=schemas)
    _track_partitions(app, set(settings.topics.input), metrics, state, GroupReader(connection, delivery.group))
    return app


def _pipeline(
    settings: WorkerSettings, step: BatchStep, publish: Sender, metrics: WorkerMetrics, state: ConsumerState
) -> Pipeline:
    batching = settings.batching
    return Pipeline(
        step,
        publish,
        metrics,
        state,
        max_batch=batching.max_batch,
        max_wait=batching.max_wait_ms / 1000,
        max_tokens=batching.max_tokens,
        max_bytes=settings.delivery.max_buffered_bytes // 2,
        tokenization=ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize"),
        inference=ThreadPoolExecutor(max_workers=INFERENCES_IN_FLIGHT, thread_name_prefix="inference"),
    )


def _consume_and_classify(
    app: WorkerApp,
    settings: WorkerSettings,
    *,
    metrics: WorkerMetrics,
    fail: Callable[[str], None],
    schemas: SchemaWait,
) -> None:
    """Subscribe to the input topics, feed each message read to the pipeline, and run it."""
    app.topics.add(app.topic(*settings.topics.input))  # Faust's conductor subscribes to what it holds
    app.deliver = _Delivery(app, settings.delivery.max_event_bytes, metrics, schemas)
    pipeline = app.pipeline

    @app.task
    async def classify() -> None:
        try:
            await pipeline.run()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the stages' ExceptionGroup
            # A batch that cannot be delivered must not be acked; stop the worker so that a
            # restart re-reads it from the last committed offset.
            log.exception("event=pipeline_failed error=%r", error)
            fail(f"a batch could not be delivered: {_first_cause(error)}")


class _Delivery:
    """Called by Faust's consumer for each message it reads, in read order: the message becomes an
    :class:`~stream_clf.worker.records.InFlight` fed to the pipeline, waiting while the pipeline is full.

    A fetched batch of messages is fed with no task, queue or turn of the event loop of its own.
    The consumer tracks each message here; the pipeline acks it once its result or dead letter is
    delivered, or forgets it when it drops it unfinished. A feed that is cancelled (the flow stopped
    for a rebalance, or the worker stopping) forgets its message: whoever owns the partition next
    reads it again. Anything else that goes wrong here ends the worker with one line: a consumer that
    stopped feeding the pipeline would otherwise sit in its group, holding its partitions.
    """

    def __init__(self, app: WorkerApp, max_event_bytes: int, metrics: WorkerMetrics, schemas: SchemaWait) -> None:
        self._app = app
        self._max_event_bytes = max_event_bytes
        self._metrics = metrics
        self._schemas = schemas
        self._clock = metrics.stage("consume")

    async def __call__(self, message: Message) -> None:
        clock = self._clock
        consumer: _Consumer = self._app.consumer
        clock.enter("busy")
        consumer.track_message(message)
        try:
            self._metrics.consumed(message.topic)
            schema_id = self._schemas.decoder.pending(message.value, message.headers)
            if schema_id is not None:  # not cached: fetched first, waiting while the registry is down
                clock.enter("blocked")
                await self._schemas.fetch_async(schema_id)
                clock.enter("busy")
            record = _in_flight(message, consumer, self._max_event_bytes, self._schemas.decoder)
            clock.enter("blocked")
            await self._app.pipeline.feed(record)
        except asyncio.CancelledError:
            consumer.forget(message)
            raise
        except Exception as error:
            log.exception("event=delivery_failed topic=%s partition=%s offset=%s", *message.tp, message.offset)
            self._app.fail(f"an event could not be taken in: {type(error).__name__}: {error}")
            raise
        finally:
            clock.enter("starved")


def _track_partitions(
    app: WorkerApp,
    inputs: set[str],
    metrics: WorkerMetrics,
    state: ConsumerState,
    group: GroupReader,
) -> None:
    """Keep the consumer state's assignment and each input partition's lag up to date; ``group`` asks
    the group's committed offsets of partitions."""

    def assigned() -> list[TP]:
        return sorted(tp for tp in app.consumer.assignment() if tp.topic in inputs)

    @app.on_partitions_revoked.connect
    async def revoked(sender: faust.App, revoked: set[TP], **_: Any) -> None:
        state.assigned = 0

    @app.on_partitions_assigned.connect
    async def now_assigned(sender: faust.App, assigned: set[TP], **_: Any) -> None:
        state.assigned = sum(1 for tp in assigned if tp.topic in inputs)
        metrics.assignments.inc()
        if not app.leaving:
            app.pipeline.serve(app.consumer_generation_id)

    @app.on_before_shutdown.connect
    async def close_group_reader(sender: faust.App, **_: Any) -> None:
        await group.close()

    # The group's committed offset of each partition as it was assigned: where this worker started.
    started: dict[tuple[str, int], int] = {}

    @app.on_partitions_assigned.connect
    async def forget_starts(sender: faust.App, assigned: set[TP], **_: Any) -> None:
        started.clear()

    @app.timer(LAG_INTERVAL_SECONDS)
    async def measure_lag() -> None:
        """Events behind each partition's end: from the last event this worker finished, or where it
        started, whichever is further. Not the consumer's position: events read and not finished are
        not done, and a worker stuck on them must show its lag."""
        partitions = assigned()
        state.assigned = len(partitions)
        ends = await app.consumer.highwaters(*partitions) if partitions else {}
        unknown = [(tp.topic, tp.partition) for tp in partitions if (tp.topic, tp.partition) not in started]
        if unknown:
            try:
                started.update(await group.committed(unknown))
            except Exception as error:  # the brokers do not answer now: measured at the next tick
                log.debug("event=lag_not_measured error=%r", error)
                return
        done = state.offsets()
        lag = {}
        for tp in partitions:
            key = (tp.topic, tp.partition)
            lag[key] = max(0, (ends.get(tp) or 0) - max(done.get(key, 0), started.get(key, 0)))
        metrics.partitions(lag)
        state.waiting(lag=lag)


def _in_flight(message: Message, consumer: _Consumer, max_bytes: int, decoder: Decoder) -> InFlight:
    return InFlight.decode(
        Source(message.topic, message.partition, message.offset),
        message.key,
        message.value,
        functools.partial(consumer.ack, message),
        max_bytes,
        timestamp=message.timestamp,
        decoder=decoder,
        headers=message.headers,
        forget=functools.partial(consumer.forget, message),
        generation=message.generation_id or 0,
    )


def _first_cause(error: BaseException) -> str:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]
