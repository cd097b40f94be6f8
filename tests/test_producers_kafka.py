"""What real producers send: every compression codec, and transactions that commit or abort.

The events are written by confluent-kafka (librdkafka), a client independent of the Faust worker's
aiokafka, with the settings a production producer would use.
"""

import os
import time

import orjson
import pytest
from confluent_kafka import Producer

from stream_clf.kafka.connection import COMPRESSION_CODECS
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS
from tests.kafka_helpers import collect, ids_seen, produce, results_of

pytestmark = pytest.mark.broker

GUARANTEES = ("at-least-once", "exactly-once")
PER_CODEC = 4


def compressible(event_id: str, index: int) -> bytes:
    """An event that compresses well: librdkafka sends a batch uncompressed when compressing would not
    make it smaller, and these tests need the batches compressed."""
    text = " ".join([SAMPLE_TEXTS[index % len(SAMPLE_TEXTS)]] * 6)
    return orjson.dumps({"id": event_id, "text": text})


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_events_compressed_with_every_codec_are_labelled(kafka_bootstrap, topics, tiny_bundle, start_worker, guarantee):
    sent = {}
    for codec in COMPRESSION_CODECS:
        events = []
        for i in range(PER_CODEC):
            event_id = f"{codec}-{i}"
            sent[event_id] = codec
            events.append((event_id.encode(), compressible(event_id, i)))
        # linger so each codec's events travel as one compressed batch
        produce(kafka_bootstrap, topics.input, events, {"compression.type": codec, "linger.ms": 50})
    worker = start_worker(topics, tiny_bundle, "--guarantee", guarantee, "--compression", "zstd")

    records = collect(
        kafka_bootstrap,
        [topics.output, topics.dlq],
        until=ids_seen(topics, len(sent)),
        timeout=90,
        settle=2,
        watch=[worker],
    )

    assert [r for r in records if r.topic == topics.dlq] == []
    results = results_of(records, topics)
    assert sorted(r["id"] for r in results) == sorted(sent), "one result per event, whatever its codec"
    assert worker.terminate() == 0


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_events_of_aborted_upstream_transactions_are_never_labelled(
    kafka_bootstrap, topics, tiny_bundle, start_worker, guarantee
):
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"upstream-{topics.group}"})
    producer.init_transactions(30)
    committed, aborted = [], []
    for batch in range(6):
        ids = [f"b{batch}-{i}" for i in range(5)]
        producer.begin_transaction()
        for event_id in ids:
            producer.produce(topics.input, key=event_id.encode(), value=orjson.dumps({"id": event_id, "text": "x"}))
        producer.flush(30)  # the records reach the log before the abort: a reader of uncommitted data sees them
        if batch % 2:
            producer.abort_transaction(30)
            aborted += ids
        else:
            producer.commit_transaction(30)
            committed += ids
    worker = start_worker(topics, tiny_bundle, "--guarantee", guarantee)

    records = collect(
        kafka_bootstrap,
        [topics.output, topics.dlq],
        until=ids_seen(topics, len(committed)),
        timeout=90,
        settle=5,
        watch=[worker],
    )

    labelled = [r["id"] for r in results_of(records, topics)]
    assert sorted(labelled) == sorted(committed)
    assert not set(labelled) & set(aborted)
    assert worker.terminate() == 0


def test_read_uncommitted_is_there_for_whoever_asks(kafka_bootstrap, topics, tiny_bundle, start_worker):
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"upstream-{topics.group}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topics.input, value=orjson.dumps({"id": "never-committed", "text": "x"}))
    producer.flush(30)
    producer.abort_transaction(30)
    worker = start_worker(topics, tiny_bundle, "--isolation", "read_uncommitted")

    records = collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 1), timeout=60, watch=[worker])

    assert [r["id"] for r in results_of(records, topics)] == ["never-committed"]
    assert worker.terminate() == 0


def test_a_consumer_that_fails_for_good_ends_the_worker_with_one_line(
    kafka_bootstrap, topics, tiny_bundle, start_worker, tmp_path, monkeypatch
):
    # Without its codec library (as when aiokafka's optional codecs are not installed), Faust's
    # consumer cannot decode lz4 batches: the worker must exit non-zero, not sit there alive.
    hidden = tmp_path / "no-codecs"
    (hidden / "cramjam").mkdir(parents=True)
    (hidden / "cramjam" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")]))
    lz4_events = [(b"k", compressible(f"lz4-{i}", i)) for i in range(PER_CODEC)]
    produce(kafka_bootstrap, topics.input, lz4_events, {"compression.type": "lz4", "linger.ms": 50})
    worker = start_worker(topics, tiny_bundle, "--compression", "none")  # its producer needs no codec

    started = time.monotonic()
    code = worker.process.wait(timeout=60)

    assert code == 1
    assert time.monotonic() - started < 60
    failures = [line for line in worker.log.read_text().splitlines() if "event=worker_failed" in line]
    assert len(failures) == 1, worker.log_tail()
    assert "the consumer failed for good" in failures[0]
    assert "lz4" in failures[0].lower()
