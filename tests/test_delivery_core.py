"""The delivery core in process: the batch step, the at-least-once pipeline's ordering rules, and the
exactly-once loop's commit and abort, with fakes where Kafka would be (no broker needed).

The rules a subscriber relies on: an event is acked only after its record is delivered, acks go in
read order, at most two batches await delivery at once, only the culprits of a failing batch are
dead-lettered, and an aborted transaction is neither counted nor lost.
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream_clf.kafka.connection import Connection
from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.ops.health import ConsumerState
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS, build_tiny_bundle
from stream_clf.worker.core import BatchStep
from stream_clf.worker.events import Source
from stream_clf.worker.models import ModelHolder, ModelSet, ServedModel
from stream_clf.worker.pipeline import INFERENCES_IN_FLIGHT, Pipeline
from stream_clf.worker.records import InFlight, OutRecord
from stream_clf.worker.routing import Routing
from stream_clf.worker.transactional import Commit, TransactionalLoop

POISON = "POISON"
SLOW = "SLOW"


class Poisonable:
    """The tiny model's classifier, except that a batch holding a text with POISON fails, as a model can,
    and one holding a text with SLOW takes half a second. ``finished`` lists each batch's first plan
    as its inference ends."""

    def __init__(self, classifier: Classifier) -> None:
        self._classifier = classifier
        self.bundle = classifier.bundle
        # Held, not just their ids: a freed plan's id can be reused by a clean plan of a later test.
        self._poisoned: dict[int, object] = {}
        self._slow: dict[int, object] = {}
        self.finished: list[object] = []

    def plan(self, texts):
        plans = self._classifier.plan(texts)
        self._poisoned |= {id(plan): plan for plan, text in zip(plans, texts, strict=True) if POISON in text}
        self._slow |= {id(plan): plan for plan, text in zip(plans, texts, strict=True) if SLOW in text}
        return plans

    def infer(self, plans, observe=None):
        if any(id(plan) in self._poisoned for plan in plans):
            raise RuntimeError("the model failed on this input")
        if any(id(plan) in self._slow for plan in plans):
            time.sleep(0.5)
        predictions = self._classifier.infer(plans, observe)
        self.finished.append(plans[0])
        return predictions

    def padded_tokens(self, plans):
        return self._classifier.padded_tokens(plans)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Poisonable:
    bundle = load_bundle(build_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle"))
    return Poisonable(Classifier(bundle, threads=1))


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics(max_batch=4)


@pytest.fixture
def step(classifier: Poisonable, metrics: WorkerMetrics) -> BatchStep:
    return BatchStep(ModelHolder(ModelSet(ServedModel(classifier, "tiny"))), Routing("out", "dlq"), metrics)


def event(
    offset: int,
    text: str | None = None,
    acks: list[int] | None = None,
    partition: int = 0,
    *,
    forgotten: list[int] | None = None,
    generation: int = 0,
) -> InFlight:
    def ack() -> None:
        if acks is not None:
            acks.append(offset)

    def forget() -> None:
        if forgotten is not None:
            forgotten.append(offset)

    value = orjson.dumps({"id": f"e{offset}", "text": text or SAMPLE_TEXTS[offset % len(SAMPLE_TEXTS)]})
    return InFlight.decode(
        Source("in", partition, offset), f"k{offset}".encode(), value, ack, 1 << 20, timestamp=1.0,
        forget=forget, generation=generation,
    )  # fmt: skip


def counted(metrics: WorkerMetrics) -> tuple[float, float]:
    snapshot = metrics.snapshot()
    return snapshot["results_out"], sum(snapshot["dead_letters"].values())


def test_only_the_culprits_of_a_failing_batch_are_dead_lettered(step, metrics):
    batch = [event(0), event(1, f"a {POISON} text"), event(2), event(3, "[1,2]"), event(4)]
    batch[3].value = b"[1,2]"
    batch[3].outcome = InFlight.decode(batch[3].source, None, b"[1,2]", batch[3].ack, 1 << 20).outcome

    processed = step(batch)

    topics = [record.topic for record in processed.records]
    assert topics == ["out", "dlq", "out", "dlq", "out"]
    poisoned = dict(processed.records[1].headers)
    assert poisoned["error.reason"] == b"inference_error"
    assert processed.records[1].value == batch[1].value, "a dead letter keeps the original bytes"
    assert dict(processed.records[3].headers)["error.reason"] == b"not_an_object"
    assert [orjson.loads(r.value)["id"] for r in processed.records if r.topic == "out"] == ["e0", "e2", "e4"]
    assert counted(metrics) == (0, 0), "nothing is counted before its record is out"
    processed.count(metrics)
    assert counted(metrics) == (3, 2)


class Deliveries:
    """A fake producer: every record sent gets a future that the test completes, in any order; a
    batch is delivered when all of its records are."""

    def __init__(self) -> None:
        self.sent: list[tuple[OutRecord, asyncio.Future]] = []

    def __call__(self, records) -> asyncio.Future:
        futures = [asyncio.get_running_loop().create_future() for _ in records]
        self.sent.extend(zip(records, futures, strict=True))

        async def delivered():
            await asyncio.gather(*futures)
            return list(records)

        return asyncio.ensure_future(delivered())

    def complete(self, indices) -> None:
        for index in indices:
            self.sent[index][1].set_result(None)


def small_pipeline(step, deliveries, metrics, state, tokenization, inference) -> Pipeline:
    """Batches of four, closed 10 ms after their first event."""
    return Pipeline(
        step,
        deliveries,
        metrics,
        state,
        max_batch=4,
        max_wait=0.01,
        max_tokens=None,
        max_bytes=1 << 30,
        tokenization=tokenization,
        inference=inference,
    )


async def settle(seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)


def test_pipeline_acks_in_read_order_only_after_delivery_and_publishes_a_batch_once_the_last_is_delivered(
    step, metrics
):
    """A batch goes to the producer only once the one before it is delivered: a record the broker refuses
    fails its neighbours too, which are sent again, and must not land behind the next batch's results."""

    async def scenario() -> None:
        acks: list[int] = []
        deliveries = Deliveries()
        state = ConsumerState()
        with ThreadPoolExecutor(1) as tokenization, ThreadPoolExecutor(INFERENCES_IN_FLIGHT) as inference:
            pipeline = small_pipeline(step, deliveries, metrics, state, tokenization, inference)
            running = asyncio.create_task(pipeline.run())
            for offset in range(12):
                await pipeline.feed(event(offset, acks=acks))
            await settle(1.0)

            # Three batches of four are classified; only the first is with the producer.
            assert [orjson.loads(r.value)["id"] for r, _ in deliveries.sent] == [f"e{i}" for i in range(4)]
            deliveries.complete([3, 1, 2])
            await settle()
            assert len(deliveries.sent) == 4, "one pending delivery holds the next batch back"
            assert acks == []
            assert counted(metrics) == (0, 0)

            # The first batch delivered: acked in read order, and the second goes out.
            deliveries.complete([0])
            await settle()
            assert acks == list(range(4))
            assert counted(metrics) == (4, 0)
            assert [orjson.loads(r.value)["id"] for r, _ in deliveries.sent] == [f"e{i}" for i in range(8)]

            deliveries.complete(reversed(range(4, 8)))
            await settle()
            assert acks == list(range(8))
            assert len(deliveries.sent) == 12
            deliveries.complete([9, 11, 8])
            await settle()
            assert acks == list(range(8)), "one pending delivery holds its whole batch back"
            deliveries.complete([10])
            await settle()
            assert acks == list(range(12))
            assert state.offsets() == {("in", 0): 12}
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

    asyncio.run(scenario())


def test_a_slow_batch_holds_back_the_next_ones_results_but_not_their_inference(step, classifier, metrics):
    async def scenario() -> None:
        acks: list[int] = []
        deliveries = Deliveries()
        with ThreadPoolExecutor(1) as tokenization, ThreadPoolExecutor(INFERENCES_IN_FLIGHT) as inference:
            pipeline = small_pipeline(step, deliveries, metrics, ConsumerState(), tokenization, inference)
            running = asyncio.create_task(pipeline.run())
            classifier.finished.clear()
            for offset in range(8):
                await pipeline.feed(event(offset, f"a {SLOW} text" if offset == 0 else None, acks=acks))
            await settle(0.25)
            # The second batch is classified while the first, slow one still runs; nothing is sent.
            assert len(classifier.finished) == 1
            assert deliveries.sent == []
            await settle(1.0)
            assert [orjson.loads(r.value)["id"] for r, _ in deliveries.sent] == [f"e{i}" for i in range(4)]
            assert len(classifier.finished) == 2
            deliveries.complete(reversed(range(4)))
            await settle()
            assert [orjson.loads(r.value)["id"] for r, _ in deliveries.sent] == [f"e{i}" for i in range(8)]
            deliveries.complete(reversed(range(4, 8)))
            await settle()
            assert acks == list(range(8))
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

    asyncio.run(scenario())


def test_a_hand_over_delivers_and_acks_the_batches_being_classified_and_drops_the_rest_unpublished(
    step, classifier, metrics
):
    """What a rebalance or a clean stop relies on: when ``hand_over`` returns, every event is either acked
    with its result delivered, or forgotten with nothing published; events read before the partitions
    moved are never taken in afterwards, those of the new generation are."""

    async def scenario() -> None:
        acks: list[int] = []
        forgotten: list[int] = []
        deliveries = Deliveries()
        state = ConsumerState()
        with ThreadPoolExecutor(1) as tokenization, ThreadPoolExecutor(INFERENCES_IN_FLIGHT) as inference:
            pipeline = small_pipeline(step, deliveries, metrics, state, tokenization, inference)
            pipeline.serve(1)
            running = asyncio.create_task(pipeline.run())
            # The first batch is slow: while it is classified the second waits for it, the rest queue.
            for offset in range(16):
                text = f"a {SLOW} text" if offset == 0 else None
                await pipeline.feed(event(offset, text, acks=acks, forgotten=forgotten, generation=1))
            await settle(0.1)
            handing_over = asyncio.create_task(pipeline.hand_over())
            await settle(1.0)
            assert not handing_over.done(), "it waits for the deliveries of what is being classified"
            assert len(deliveries.sent) == 4, "the first batch in the lanes is with the producer"
            deliveries.complete(range(4))
            await settle()
            assert not handing_over.done()
            classified = len(deliveries.sent)
            assert classified == 8, "the second batch in the lanes finishes too"
            deliveries.complete(range(4, classified))
            await asyncio.wait_for(handing_over, 5)
            assert acks == list(range(classified))
            assert sorted(forgotten) == list(range(classified, 16))

            # Read before the new assignment: dropped. Read in it: classified.
            await pipeline.feed(event(16, acks=acks, forgotten=forgotten, generation=1))
            pipeline.serve(2)
            await pipeline.feed(event(17, acks=acks, forgotten=forgotten, generation=1))
            await pipeline.feed(event(18, acks=acks, forgotten=forgotten, generation=2))
            await settle(0.5)
            assert [orjson.loads(r.value)["id"] for r, _ in deliveries.sent[classified:]] == ["e18"]
            assert forgotten[-2:] == [16, 17]
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

    asyncio.run(scenario())


def test_a_feed_cancelled_while_it_waits_for_room_lets_its_event_go(step, metrics):
    """The consumer cancels a feed that waits when the flow stops for a rebalance: that event is not
    taken in, the consumer is told to forget it (the partition's next owner reads it), and the bytes it
    held are free again: a hand-over, which returns once nothing is held, still returns."""

    async def scenario() -> None:
        forgotten: list[int] = []
        with ThreadPoolExecutor(1) as tokenization, ThreadPoolExecutor(INFERENCES_IN_FLIGHT) as inference:
            # Not running: nothing takes events out, so the intake (four events) fills.
            pipeline = small_pipeline(step, Deliveries(), metrics, ConsumerState(), tokenization, inference)
            for offset in range(4):
                await pipeline.feed(event(offset, forgotten=forgotten))
            waiting = asyncio.create_task(pipeline.feed(event(4, forgotten=forgotten)))
            await settle(0.1)
            assert not waiting.done(), "a full pipeline makes the feed wait"
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert forgotten == [4]
            await asyncio.wait_for(pipeline.hand_over(), 2)
            assert sorted(forgotten) == [0, 1, 2, 3, 4]

    asyncio.run(scenario())


def test_a_failed_delivery_stops_the_pipeline_without_acking(step, metrics):
    async def scenario() -> None:
        acks: list[int] = []
        deliveries = Deliveries()
        with ThreadPoolExecutor(1) as tokenization, ThreadPoolExecutor(INFERENCES_IN_FLIGHT) as inference:
            pipeline = small_pipeline(step, deliveries, metrics, ConsumerState(), tokenization, inference)
            running = asyncio.create_task(pipeline.run())
            for offset in range(4):
                await pipeline.feed(event(offset, acks=acks))
            await settle(1.0)
            deliveries.complete([0, 1, 3])
            deliveries.sent[2][1].set_exception(RuntimeError("the broker refused the record"))
            with pytest.raises(ExceptionGroup):
                await asyncio.wait_for(running, 5)
        assert acks == []
        assert counted(metrics) == (0, 0)

    asyncio.run(scenario())


class FakeMessage:
    def __init__(self, offset: int, partition: int = 0) -> None:
        self._offset = offset
        self._partition = partition
        self._value = orjson.dumps({"id": f"e{offset}", "text": SAMPLE_TEXTS[offset % len(SAMPLE_TEXTS)]})

    def error(self):
        return None

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return 1, 1_000


class FakeConsumer:
    """Positions after what was consumed, a committed offset, and the seeks of a rewind."""

    def __init__(self, committed: int, position: int) -> None:
        self._committed = committed
        self._position = position
        self.seeks: list[TopicPartition] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("in", 0)]

    def position(self, partitions):
        return [TopicPartition("in", 0, self._position)]

    def committed(self, partitions, timeout=None):
        return [TopicPartition("in", 0, self._committed)]

    def consumer_group_metadata(self) -> object:
        return object()

    def seek(self, partition: TopicPartition) -> None:
        self.seeks.append(partition)
        self._position = partition.offset


class FakeTransactions:
    """A transactional producer whose commits fail (with an abortable error) as often as told."""

    def __init__(self, failures: int) -> None:
        self._failures = failures
        self.open: list[OutRecord] = []
        self.committed: list[tuple[str, bytes]] = []
        self.offsets: list[int] = []
        self.aborts = 0

    def begin_transaction(self) -> None:
        self.open = []
        self.deliveries = []

    def produce(self, topic, key=None, value=None, headers=None, on_delivery=None) -> None:
        self.open.append((topic, value))
        self.deliveries.append(on_delivery)

    def poll(self, timeout: float) -> int:
        return 0

    def send_offsets_to_transaction(self, positions, metadata, timeout) -> None:
        self.pending_offsets = [tp.offset for tp in positions]

    def commit_transaction(self, timeout) -> None:
        if self._failures:
            self._failures -= 1
            raise KafkaException(KafkaError(KafkaError._STATE, "the coordinator moved", txn_requires_abort=True))
        for delivered in self.deliveries:
            if delivered is not None:
                delivered(None, None)
        self.committed += self.open
        self.offsets += self.pending_offsets

    def abort_transaction(self, timeout) -> None:
        self.aborts += 1
        self.open = []


def test_an_aborted_transaction_is_not_counted_and_its_batch_is_read_again(step, metrics):
    producer = FakeTransactions(failures=1)
    consumer = FakeConsumer(committed=10, position=14)
    state = ConsumerState()
    pauses: list[float] = []
    loop = TransactionalLoop(step, producer, consumer, metrics, state, max_event_bytes=1 << 20, pause=pauses.append)
    messages = [FakeMessage(offset) for offset in range(10, 14)]

    assert loop.process(messages) is Commit.ABORTED
    assert producer.aborts == 1
    assert producer.committed == []
    assert counted(metrics) == (0, 0), "an aborted batch's results were never visible: not counted"
    assert [tp.offset for tp in consumer.seeks] == [10], "rewound to the committed offset"
    assert state.offsets() == {}
    assert pauses == [0.5], "read again after a back-off"

    consumer._position = 14  # the batch is consumed again
    assert loop.process(messages) is Commit.COMMITTED
    assert [orjson.loads(value)["id"] for _, value in producer.committed] == ["e10", "e11", "e12", "e13"]
    assert producer.offsets == [14]
    assert counted(metrics) == (4, 0), "each event counted once, though classified twice"
    assert state.offsets() == {("in", 0): 14}


def test_each_transaction_commits_the_offsets_past_its_own_batch_while_the_next_is_classified(step, metrics):
    producer = FakeTransactions(failures=0)
    consumer = FakeConsumer(committed=0, position=8)  # already past both batches
    state = ConsumerState()
    loop = TransactionalLoop(step, producer, consumer, metrics, state, max_event_bytes=1 << 20)

    assert loop.submit([FakeMessage(offset) for offset in range(4)])
    assert loop.submit([FakeMessage(offset) for offset in range(4, 8)])
    assert loop.settle(keep=1) == [Commit.COMMITTED]
    assert producer.offsets == [4], "the first transaction commits past its own records, not the position"
    assert [orjson.loads(value)["id"] for _, value in producer.committed] == [f"e{i}" for i in range(4)]
    assert loop.settle(keep=0) == [Commit.COMMITTED]
    assert producer.offsets == [4, 8]
    assert state.offsets() == {("in", 0): 8}


def test_an_aborted_transaction_drops_the_batches_read_after_it(step, metrics):
    producer = FakeTransactions(failures=1)
    consumer = FakeConsumer(committed=0, position=8)
    loop = TransactionalLoop(
        step, producer, consumer, metrics, ConsumerState(), max_event_bytes=1 << 20, pause=lambda _: None
    )

    loop.submit([FakeMessage(offset) for offset in range(4)])
    loop.submit([FakeMessage(offset) for offset in range(4, 8)])
    assert loop.settle(keep=0) == [Commit.ABORTED], "the second batch is not committed past the first's abort"
    assert producer.committed == []
    assert [tp.offset for tp in consumer.seeks] == [0], "both are read again from the committed offset"
    assert loop.settle(keep=0) == []
    assert counted(metrics) == (0, 0)


def test_a_transaction_that_fails_for_good_stops_the_loop(step, metrics):
    class Fenced(FakeTransactions):
        def commit_transaction(self, timeout) -> None:
            raise KafkaException(KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True))

    loop = TransactionalLoop(step, Fenced(0), FakeConsumer(0, 1), metrics, ConsumerState(), max_event_bytes=1 << 20)
    with pytest.raises(Exception, match="failed for good"):
        loop.process([FakeMessage(0)])
    assert counted(metrics) == (0, 0)


def test_an_empty_fetch_commits_nothing(step, metrics):
    producer = FakeTransactions(failures=0)
    loop = TransactionalLoop(step, producer, FakeConsumer(0, 0), metrics, ConsumerState(), max_event_bytes=1 << 20)
    assert loop.process([]) is None
    assert producer.committed == []


def test_routes_answer_the_same_whatever_the_loop(metrics, tmp_path: Path):
    from stream_clf.ops.health import Readiness
    from stream_clf.ops.web.routes import Routes

    class BrokerAnswers(Readiness):
        def _ask_broker(self) -> None:
            return None

    state = ConsumerState()
    routes = Routes(metrics, BrokerAnswers(Connection.to("127.0.0.1:1"), state, stall_seconds=0.2))
    assert routes.answer("/healthz").status == 200
    ready = routes.answer("/readyz")
    assert ready.status == 503
    assert "no partitions assigned" in orjson.loads(ready.body)["reasons"]
    assert routes.answer("/metrics").body.startswith(b"# HELP")
    assert routes.answer("/dashboard").content_type == "text/html"
    assert routes.answer("/nowhere").status == 404

    import time

    time.sleep(0.3)  # the loop neither fetched nor finished anything since, while the broker answers
    stalled = routes.answer("/healthz")
    assert stalled.status == 503
    assert "consumer stalled" in orjson.loads(stalled.body)["reason"]
    state.polled()
    assert routes.answer("/healthz").status == 200


def test_liveness_is_progress_events_waiting_and_none_finished_is_a_stall_however_busy_the_fetches(metrics):
    from stream_clf.ops.health import Readiness
    from stream_clf.ops.web.routes import Routes

    class BrokerAnswers(Readiness):
        def _ask_broker(self) -> None:
            return None

    state = ConsumerState()
    routes = Routes(metrics, BrokerAnswers(Connection.to("127.0.0.1:1"), state, stall_seconds=0.3))
    time.sleep(0.4)
    state.polled()
    assert routes.answer("/healthz").status == 200, "idle with nothing waiting: alive"
    state.waiting(lag={("in", 0): 5})
    time.sleep(0.2)
    state.polled()
    assert routes.answer("/healthz").status == 200, "events arrived a moment ago: not a stall yet"
    time.sleep(0.2)
    state.polled()  # the loop fetches on, but finishes nothing
    stalled = routes.answer("/healthz")
    assert stalled.status == 503
    assert "events waiting and none finished" in orjson.loads(stalled.body)["reason"]
    state.processed("in", 0, 3)
    assert routes.answer("/healthz").status == 200, "an event finished: progress"
    state.waiting(lag={("in", 0): 0}, held=0)
    time.sleep(0.4)
    state.polled()
    assert routes.answer("/healthz").status == 200, "nothing waits: no stall, however long"
    vital = Routes(metrics, BrokerAnswers(Connection.to("127.0.0.1:1"), state, vital=[lambda: "the follower died"]))
    assert orjson.loads(vital.answer("/healthz").body)["reason"] == "the follower died"
