"""The at-least-once publisher against the real broker: a batch's future completes only once every
record is on the broker, in order per key, and fails when the broker refuses one of them."""

import asyncio
import uuid

import pytest

from stream_clf.errors import BrokerError
from stream_clf.kafka.connection import Connection
from stream_clf.kafka.topics import ensure_topics
from stream_clf.worker.publisher import PRODUCER_SETTINGS, BatchPublisher
from stream_clf.worker.records import OutRecord
from tests.kafka_helpers import collect

pytestmark = pytest.mark.broker


def _publisher(bootstrap: str) -> BatchPublisher:
    return BatchPublisher(
        Connection.to(bootstrap).producer({**PRODUCER_SETTINGS, "acks": "all", "enable.idempotence": True})
    )


def test_a_batch_is_delivered_whole_and_in_order_per_key_before_its_future_completes(kafka_bootstrap):
    topic = f"published-{uuid.uuid4().hex[:8]}"
    ensure_topics(Connection.to(kafka_bootstrap), [topic], 4)
    publisher = _publisher(kafka_bootstrap)
    batches = [
        [OutRecord(topic, f"k{i % 7}".encode(), f"{b}-{i}".encode(), [("n", str(i).encode())]) for i in range(300)]
        for b in range(3)
    ]

    async def publish() -> None:
        await asyncio.gather(*(publisher(batch) for batch in batches))

    asyncio.run(publish())
    assert publisher.close(timeout=5) == 0
    records = collect(kafka_bootstrap, [topic], until=lambda r: len(r) >= 900, timeout=30, settle=1.0)
    assert len(records) == 900, "each record once"
    by_key: dict[bytes, list[bytes]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key.setdefault(record.key, []).append(record.value)
    for key, values in by_key.items():
        expected = [f"{b}-{i}".encode() for b in range(3) for i in range(300) if f"k{i % 7}".encode() == key]
        assert values == expected, f"the order of key {key!r} was changed"
    assert {record.headers["n"] for record in records} == {str(i).encode() for i in range(300)}


def test_a_record_the_broker_refuses_fails_its_batch(kafka_bootstrap):
    topic = f"small-{uuid.uuid4().hex[:8]}"
    ensure_topics(Connection.to(kafka_bootstrap), [topic], 1, {"max.message.bytes": "2000"})
    publisher = _publisher(kafka_bootstrap)
    batch = [OutRecord(topic, b"k", b"fits", []), OutRecord(topic, b"k", b"x" * 20_000, [])]

    async def publish() -> None:
        await asyncio.wait_for(publisher(batch), 30)

    with pytest.raises(BrokerError, match=f"the broker did not take a record for {topic}"):
        asyncio.run(publish())
    publisher.close(timeout=5)


def test_an_empty_batch_is_delivered_at_once(kafka_bootstrap):
    publisher = _publisher(kafka_bootstrap)

    async def publish() -> None:
        await asyncio.wait_for(publisher([]), 1)

    asyncio.run(publish())
    assert publisher.close(timeout=1) == 0
