"""The worker end to end against the real broker: what goes in comes out, once, in order."""

import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS, build_tiny_bundle
from tests.kafka_helpers import (
    KEYS,
    Record,
    Topics,
    collect,
    committed_offsets,
    ids_seen,
    keyed_events,
    produce,
    results_of,
)

pytestmark = pytest.mark.broker


def _assert_committed_events_have_results(kafka_bootstrap: str, topics: Topics, records: list[Record]) -> None:
    """At-least-once: every input offset below the committed one has a result or a dead letter."""
    answered = defaultdict(set)
    for result in results_of(records, topics):
        answered[result["source"]["partition"]].add(result["source"]["offset"])
    for record in records:
        if record.topic == topics.dlq:
            answered[int(record.headers["source.partition"])].add(int(record.headers["source.offset"]))
    for partition, offset in committed_offsets(kafka_bootstrap, topics.group, topics.input, 4).items():
        missing = set(range(max(offset, 0))) - answered[partition]
        assert not missing, (
            f"partition {partition} committed up to {offset} but offsets {sorted(missing)[:10]} have no record"
        )


def _wait_for_commits(kafka_bootstrap: str, topics: Topics, at_least: int, timeout: float = 30) -> None:
    """Wait until the group has committed ``at_least`` offsets in all: commits happen while it runs."""
    deadline = time.monotonic() + timeout
    while (
        sum(max(0, offset) for offset in committed_offsets(kafka_bootstrap, topics.group, topics.input, 4).values())
        < at_least
    ):
        assert time.monotonic() < deadline, f"fewer than {at_least} offsets committed after {timeout}s"
        time.sleep(0.2)


def test_every_event_gets_exactly_one_result_in_key_order(kafka_bootstrap, topics, tiny_bundle, start_worker):
    events = keyed_events(2000)
    landed = produce(kafka_bootstrap, topics.input, events)
    assert len({record.partition for record in landed}) == 4
    start_worker(topics, tiny_bundle, "--max-batch", "64")

    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=ids_seen(topics, 2000), timeout=120, settle=3)

    assert [r for r in records if r.topic == topics.dlq] == []
    results = results_of(records, topics)
    assert len(results) == 2000, f"{len(results) - 2000} duplicates"
    assert {r["id"] for r in results} == {f"e{i}" for i in range(2000)}

    # Same key as the input, and per-key order kept: each key's sequence numbers rise in its partition.
    by_id = {f"e{i}": (key, value) for i, (key, value) in enumerate(events)}
    sequences = defaultdict(list)
    for record in sorted((r for r in records if r.topic == topics.output), key=lambda r: (r.partition, r.offset)):
        result = orjson.loads(record.value)
        assert record.key == by_id[result["id"]][0]
        sequences[record.key].append(result["meta"]["seq"])
    assert len(sequences) == KEYS
    assert all(seq == sorted(seq) and len(seq) == 2000 // KEYS for seq in sequences.values())

    # The source fields point at the input record, and the labels are the classifier's own.
    where = {f"e{i}": landed[i] for i in range(2000)}
    classifier = Classifier(load_bundle(tiny_bundle))
    texts = [orjson.loads(value)["text"] for _, value in events]
    expected = {f"e{i}": p for i, p in enumerate(classifier.predict(texts))}
    bundle = classifier.bundle
    for result in results:
        source = where[result["id"]]
        assert result["source"] == {"topic": topics.input, "partition": source.partition, "offset": source.offset}
        assert result["label"] == expected[result["id"]].label
        assert result["scores"] == pytest.approx(expected[result["id"]].scores, abs=1e-5)
        assert result["score"] == result["scores"][result["label"]]
        assert (result["model"], result["model_version"], result["truncated"]) == (bundle.name, bundle.version, False)
    assert len({r["label"] for r in results}) == 2, "the test model should give both labels"


def test_every_kind_of_bad_input_goes_to_the_dead_letter_topic(kafka_bootstrap, topics, start_worker, tmp_path: Path):
    # A bundle whose tokenizer allows 64 tokens but whose model has 16 positions: long texts fail
    # in ONNX Runtime, which is how an inference error looks in real life.
    bundle = build_tiny_bundle(tmp_path / "short", max_positions=16, max_length=64)
    bad = {
        "invalid_json": b'{"text": "unterminated',
        "not_an_object": b'["text", "in", "an", "array"]',
        "not_an_object-scalar": b"42",
        "missing_text": b'{"id": "x", "body": "hello"}',
        "text_not_string": b'{"text": 12}',
        "text_not_string-null": b'{"text": null}',
        "empty_text": b'{"text": ""}',
        "empty_text-blank": b'{"text": "  \\n\\t "}',
        "too_large": orjson.dumps({"text": "big " * 1024}),
        "invalid_utf8": b'{"text": "caf\xe9"}',
        "inference_error": orjson.dumps({"text": " ".join(SAMPLE_TEXTS[:3])}),
    }
    good = [orjson.dumps({"id": f"good-{i}", "text": f"short text number {i}"}) for i in range(20)]
    events: list[tuple[bytes, bytes | None]] = []
    for i, (name, value) in enumerate(bad.items()):
        events += [(f"good-key-{i}".encode(), good[i]), (f"bad-key-{name}".encode(), value)]
    events += [(f"good-key-{i}".encode(), value) for i, value in enumerate(good[len(bad) :], start=len(bad))]
    produce(kafka_bootstrap, topics.input, events)
    worker = start_worker(topics, bundle, "--max-event-bytes", "2048")

    records = collect(
        kafka_bootstrap,
        [topics.output, topics.dlq],
        until=lambda rs: len(rs) >= len(events),
        timeout=90,
        settle=2,
        watch=[worker],
    )

    assert len(records) == len(events)
    dead = {record.key.decode().removeprefix("bad-key-"): record for record in records if record.topic == topics.dlq}
    assert set(dead) == set(bad)
    for name, record in dead.items():
        assert record.headers["error.reason"].decode() == name.split("-")[0]
        assert record.value == bad[name], "a dead letter keeps the original bytes"
        assert record.headers["source.topic"].decode() == topics.input
        assert int(record.headers["source.offset"]) >= 0
        assert record.headers["error.detail"]
    results = results_of(records, topics)
    assert sorted(r["id"] for r in results) == sorted(f"good-{i}" for i in range(20))


def test_commits_never_pass_an_event_without_a_result_and_kill_9_loses_nothing(
    kafka_bootstrap, topics, tiny_bundle, start_worker
):
    total = 3000
    events = keyed_events(total)
    producer = threading.Thread(
        target=lambda: [produce(kafka_bootstrap, topics.input, events[i : i + 100]) or time.sleep(0.05)
                        for i in range(0, total, 100)]
    )  # fmt: skip
    producer.start()
    worker = start_worker(topics, tiny_bundle, "--max-batch", "16")
    collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 400), timeout=90, watch=[worker])
    _wait_for_commits(kafka_bootstrap, topics, at_least=200)
    worker.kill()

    # Before anyone restarts: whatever the dead worker committed has its result in the output.
    seen = collect(kafka_bootstrap, [topics.output, topics.dlq], until=lambda rs: True, timeout=30, settle=3)
    _assert_committed_events_have_results(kafka_bootstrap, topics, seen)
    assert len({r["id"] for r in results_of(seen, topics)}) < total, "the kill should land mid-stream"

    producer.join()
    restarted = start_worker(topics, tiny_bundle, "--max-batch", "16")
    records = collect(
        kafka_bootstrap, [topics.output, topics.dlq], until=ids_seen(topics, total), timeout=120, watch=[restarted]
    )
    ids = Counter(r["id"] for r in results_of(records, topics))
    assert set(ids) == {f"e{i}" for i in range(total)}
    print(f"kill -9 mid-stream: {total} events, {sum(ids.values()) - total} duplicates, 0 lost")


def test_sigterm_finishes_in_flight_work_commits_and_exits_0(kafka_bootstrap, topics, tiny_bundle, start_worker):
    total = 3000
    produce(kafka_bootstrap, topics.input, keyed_events(total))
    worker = start_worker(topics, tiny_bundle, "--max-batch", "8")
    collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 300), timeout=90, watch=[worker])

    started = time.monotonic()
    assert worker.terminate(timeout=60) == 0
    assert time.monotonic() - started < 30

    seen = collect(kafka_bootstrap, [topics.output, topics.dlq], until=lambda rs: True, timeout=30, settle=3)
    _assert_committed_events_have_results(kafka_bootstrap, topics, seen)
    before = Counter(r["id"] for r in results_of(seen, topics))

    start_worker(topics, tiny_bundle, "--max-batch", "8")
    records = collect(
        kafka_bootstrap, [topics.output, topics.dlq], until=ids_seen(topics, total), timeout=120, settle=2
    )
    ids = Counter(r["id"] for r in results_of(records, topics))
    assert set(ids) == {f"e{i}" for i in range(3000)}
    # A clean stop commits everything it published, so the restart repeats nothing.
    assert sum(ids.values()) == total, (
        f"{sum(ids.values()) - total} duplicates after a clean stop ({len(before)} before)"
    )
