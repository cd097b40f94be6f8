"""At-least-once publishing: a micro-batch's records handed to librdkafka at once, one awaitable for all.

Faust's ``topic.send`` cost the event loop about half a millisecond per record (a fifth of the
worker's time on short texts), and its aiokafka producer, without linger, sent a produce request
every few records, which cost the broker a quarter of a core. Here each record is one call into
librdkafka, which batches them per partition (``linger.ms``); a thread of its own serves the
delivery reports, and the event loop is woken once per batch, when the last record of it is
acknowledged.

The producer is idempotent (``acks=all``), so retries neither duplicate nor reorder records within
a partition: records keep the order of the ``produce`` calls, which is the events' read order.
Keys are partitioned with ``murmur2``, as Java clients and Faust's own producer do.

A record refused for itself (too large, say) never ends the worker. Routing checks every record
against its topic's limits before it gets here, so this is rare: a limit changed under a running
worker. librdkafka refusing it at once gets its next smaller form in its place, in order; the
broker refusing it fails every record of its produce request with it, so each failed record is
sent again on its own, and one the broker still refuses gets its next smaller form
(:meth:`~stream_clf.worker.routing.Routing.instead`). Those come after the rest of their batch.
A record that fails for another reason (the topic is gone, the worker may not write to it) fails
the batch: the worker stops and its events are read again.
"""

import asyncio
import functools
import threading
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stream_clf.errors import BrokerError
from stream_clf.kafka.limits import RECORD_ERRORS, Refusal
from stream_clf.worker.records import OutRecord

__all__ = ["PRODUCER_SETTINGS", "BatchPublisher", "Refit", "produce"]

# What every result producer of the worker sets, whatever the guarantee.
# linger: 20 ms rather than 5 took the paced load's produce requests, and the broker's share of the
# cores, down; a batch waits longer than that for its delivery report anyway.
PRODUCER_SETTINGS: dict[str, object] = {"partitioner": "murmur2_random", "linger.ms": 20}
_POLL_SECONDS = 0.1
# What to publish instead of a record its topic refused (None: nothing is left to publish).
Refit = Callable[[OutRecord, Refusal], OutRecord | None]


def produce(
    producer: Producer,
    record: OutRecord,
    on_delivery: Callable[..., None] | None = None,
    refit: Refit | None = None,
) -> OutRecord | None:
    """Hand one record to librdkafka, waiting while its local queue is full (deliveries drain it).

    A record librdkafka refuses at once for itself (larger than ``message.max.bytes``) is replaced
    by ``refit``'s smaller form; returns the record handed over (None: none was).
    """
    while True:
        try:
            producer.produce(
                record.topic,
                value=record.value,
                key=record.key,
                headers=record.headers or None,
                on_delivery=on_delivery,
            )
            return record
        except BufferError:
            producer.poll(_POLL_SECONDS)
        except KafkaException as failure:
            error = failure.args[0]
            if refit is None or error.code() not in RECORD_ERRORS:
                raise BrokerError(f"a record for {record.topic} was refused: {error.str()}") from None
            smaller = refit(record, Refusal.of(record.topic, error))
            if smaller is None:
                return None
            record = smaller


class _Batch:
    """Collects one batch's delivery reports (in the delivery thread) and settles once all are in."""

    __slots__ = ("_failed", "_lock", "_loop", "_on_done", "_pending")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pending: int, on_done: Callable[[dict[int, KafkaError]], None]
    ) -> None:
        self._loop = loop
        self._pending = pending
        self._failed: dict[int, KafkaError] = {}
        self._on_done = on_done
        self._lock = threading.Lock()

    def delivered(self, index: int, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._failed[index] = error
        self.settled()

    def settled(self) -> None:
        """One record fewer to wait for (its report came, or no record was handed over for it)."""
        with self._lock:
            self._pending -= 1
            done = self._pending == 0
        if done:
            self._loop.call_soon_threadsafe(self._on_done, self._failed)


class BatchPublisher:
    """Publishes micro-batches of records through one librdkafka producer; see the module's docstring.

    ``refit`` gives the smaller form of a record its topic refused (by default, none: a refusal
    fails the batch).
    """

    def __init__(self, producer: Producer, refit: Refit | None = None) -> None:
        self._producer = producer
        self._refit = refit
        self._closing = threading.Event()
        self._deliveries = threading.Thread(target=self._serve_deliveries, name="deliveries", daemon=True)
        self._deliveries.start()

    def __call__(self, records: Sequence[OutRecord]) -> asyncio.Future[list[OutRecord]]:
        """Hand ``records`` to the producer, in order; the future completes when all are acknowledged,
        with the records that went out (a refused record's smaller form in its place, or none)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[OutRecord]] = loop.create_future()
        sent: list[OutRecord | None] = list(records)
        if not records:
            future.set_result([])
            return future

        def done(failed: dict[int, KafkaError]) -> None:
            if future.done():  # cancelled while the worker stops
                return
            if not failed:
                future.set_result([record for record in sent if record is not None])
                return
            repair = loop.create_task(self._resend(sent, failed))
            repair.add_done_callback(lambda task: _settle(future, task))

        batch = _Batch(loop, len(records), done)
        for index, record in enumerate(records):
            sent[index] = produce(self._producer, record, functools.partial(batch.delivered, index), self._refit)
            if sent[index] is None:
                batch.settled()
        return future

    async def _resend(self, sent: list[OutRecord | None], failed: dict[int, KafkaError]) -> list[OutRecord]:
        """Send each failed record again on its own (the broker fails a whole produce request for one
        record), in order; one refused again for itself goes in its next smaller form."""
        for index in sorted(failed):
            record, error = sent[index], failed[index]
            while record is not None:
                error = await self._send_one(record)
                if error is None:
                    break
                if error.code() not in RECORD_ERRORS or self._refit is None:
                    raise BrokerError(f"the broker did not take a record for {record.topic}: {error.str()}")
                record = self._refit(record, Refusal.of(record.topic, error))
            sent[index] = record
        return [record for record in sent if record is not None]

    async def _send_one(self, record: OutRecord) -> KafkaError | None:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[KafkaError | None] = loop.create_future()

        def delivered(error: KafkaError | None, _message: Message) -> None:
            loop.call_soon_threadsafe(_answer, answer, error)

        produce(self._producer, record, delivered)
        return await answer

    def close(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for outstanding deliveries; return how many are left."""
        left = self._producer.flush(timeout)
        self._closing.set()
        self._deliveries.join()
        return left

    def _serve_deliveries(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(_POLL_SECONDS)


def _answer(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _settle(future: asyncio.Future, task: asyncio.Task) -> None:
    if future.done():
        return
    if task.cancelled():
        future.cancel()
    elif task.exception() is not None:
        future.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        future.set_result(task.result())
