"""The Faust app: an agent that feeds consumed events into the pipeline, and a task that runs it.

Acknowledgement is manual. The agent reads with ``stream.noack()``; an event is acked only by the
:class:`~stream_clf.processing.Pipeline`, after its result or dead letter is delivered, and in the
order events were read. Faust commits the highest contiguous acked offset of each partition, so a
crash at any moment leaves every committed event with a delivered record. On SIGTERM or a rebalance
Faust waits until every event it handed out is acked (``stream_wait_empty``), which the bounded
queues keep short. Faust's ``take()`` is avoided on purpose: it acks a batch when the loop asks for
the next one, including when the loop body raised (faust-streaming #189).
"""

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faust
from faust.types import TP, EventT, StreamT

from stream_clf.classifier import Classifier
from stream_clf.events import Source
from stream_clf.metrics import LAG_INTERVAL_SECONDS, WorkerMetrics
from stream_clf.processing import BatchProcessor, Headers, InFlight, Pipeline
from stream_clf.settings import WorkerSettings
from stream_clf.web import Readiness, add_pages

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: WorkerSettings, classifier: Classifier, *, max_record_bytes: int, datadir: Path) -> faust.App:
    """Build the worker's Faust app.

    ``max_record_bytes`` is the largest record it may have to publish; ``datadir`` is Faust's
    scratch directory (the worker keeps no tables, so nothing there outlives the process).
    """
    session_timeout = settings.session_timeout_ms / 1000
    app = faust.App(
        settings.group,
        broker=[f"kafka://{address}" for address in settings.brokers],
        key_serializer="raw",
        value_serializer="raw",
        datadir=datadir,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=max(0.5, session_timeout / 10),
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_max_request_size=max_record_bytes,
        topic_partitions=settings.partitions,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_host=settings.web_host,
        broker_credentials=settings.security.faust_credentials(),
    )
    source = app.topic(*settings.input)
    topics = {name: app.topic(name) for name in (settings.output, settings.dlq)}

    async def send(topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> asyncio.Future:
        # force=True: publish now. Without it, a send made while Faust considers an event current
        # is attached to that event and held back until it is acked -- the reverse of our order.
        return await topics[topic].send(key=key, value=value, headers=headers, force=True)

    bundle = classifier.bundle
    metrics = WorkerMetrics(
        model=bundle.name, version=bundle.version, precision=bundle.precision, max_batch=settings.max_batch
    )
    processor = BatchProcessor(
        classifier,
        send,
        output_topic=settings.output,
        dlq_topic=settings.dlq,
        inference=ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference"),
        tokenization=ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize"),
        metrics=metrics,
        top_k=settings.top_k,
    )
    pipeline = Pipeline(
        processor, max_batch=settings.max_batch, max_wait=settings.max_wait_ms / 1000, max_tokens=settings.max_tokens
    )

    @app.agent(source, name="stream_clf.consume")
    async def consume(stream: StreamT) -> None:
        manual = stream.noack()
        async for event in manual.events():
            metrics.consumed(event.message.topic)
            await pipeline.feed(_in_flight(event, manual, settings.max_event_bytes))

    @app.task
    async def classify() -> None:
        try:
            await pipeline.run()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the stages' ExceptionGroup
            # A batch that cannot be delivered must not be acked; stop the worker so that a
            # restart re-reads it from the last committed offset.
            log.exception("event=worker_crash error=%r", error)
            await app.crash(error)

    def assigned() -> list[TP]:
        return sorted(tp for tp in app.consumer.assignment() if tp.topic in settings.input)

    @app.timer(LAG_INTERVAL_SECONDS)
    async def measure_lag() -> None:
        partitions = assigned()
        ends = await app.consumer.highwaters(*partitions) if partitions else {}
        lag = {}
        for tp in partitions:
            done = processor.processed.get((tp.topic, tp.partition))
            if done is None:
                done = await app.consumer.position(tp) or 0
            lag[tp.topic, tp.partition] = max(0, (ends.get(tp) or 0) - done)
        metrics.partitions(lag)

    add_pages(app, metrics, Readiness(settings.brokers, lambda: len(assigned()), security=settings.security))
    return app


def _in_flight(event: EventT, stream: StreamT, max_bytes: int) -> InFlight:
    message = event.message
    return InFlight.decode(
        Source(message.topic, message.partition, message.offset),
        message.key,
        message.value,
        functools.partial(stream.ack, event),
        max_bytes,
        timestamp=message.timestamp,
    )
