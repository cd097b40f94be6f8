"""A corpus of hostile events through the real broker: each lands on the dead-letter topic with the
right reason and its bytes intact, or is labelled when it is odd but valid; good events around them
are labelled; the worker never stops."""

import uuid
from collections import Counter

import orjson
import pytest

from stream_clf.kafka.connection import Connection
from stream_clf.kafka.topics import ensure_topics
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS
from tests.kafka_helpers import Topics, collect, produce

pytestmark = pytest.mark.broker

TEN_MB = 10 * 1024 * 1024
# Rejected: (name, value, reason). The name is the record's key, so the dead letter can be matched.
REJECTED = [
    ("invalid-json", b'{"text": "no closing brace"', "invalid_json"),
    ("truncated-json", b'{"id": "t", "text": "half an ev', "invalid_json"),
    ("json-array", b'["text", "in", "an", "array"]', "not_an_object"),
    ("json-string", b'"just a string"', "not_an_object"),
    ("json-number", b"3.5", "not_an_object"),
    ("json-null", b"null", "not_an_object"),
    ("deeply-nested", b'{"text": "ok", "meta": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid_json"),
    ("non-utf8", b'{"text": "caf\xe9 \xff"}', "invalid_utf8"),
    ("lone-surrogate", b'{"text": "a \\ud800 b"}', "invalid_json"),
    ("surrogate-bytes", b'{"text": "a \xed\xa0\x80 b"}', "invalid_utf8"),
    ("missing-text", b'{"id": "m", "body": "hello"}', "missing_text"),
    ("null-text", b'{"text": null}', "text_not_string"),
    ("numeric-text", b'{"text": 12}', "text_not_string"),
    ("empty-text", b'{"text": ""}', "empty_text"),
    ("whitespace-text", b'{"text": " \\t\\n\\u3000 "}', "empty_text"),
    ("empty-value", b"", "invalid_json"),
    ("tombstone", None, "invalid_json"),
    ("ten-megabytes", orjson.dumps({"text": "word " * (TEN_MB // 5)}), "too_large"),
]
# Odd but valid: labelled, text kept as it was.
LABELLED = {
    "nul-bytes": "before\u0000after, a NUL in the middle",
    "byte-order-mark": "a value that starts with a BOM",
    "right-to-left": "مرحبا بالعالم — שלום עולם",
    "emoji": "launch day 🚀🔥 what a match ⚽",
    "combining": "Zalgo: Z̸̢a̴l̵g̶o̷ and e\u0301\u0301\u0301",
    "far-past-max-length": " ".join(SAMPLE_TEXTS * 40),
}


def test_every_hostile_event_is_dead_lettered_or_labelled_and_good_ones_are_labelled(
    kafka_bootstrap, tiny_bundle, start_worker
):
    tag = uuid.uuid4().hex[:8]
    topics = Topics(f"in-{tag}", f"out-{tag}", f"dlq-{tag}", f"group-{tag}")
    # The input accepts 11 MB records; the worker sizes its output and dead-letter topics to match.
    ensure_topics(Connection.to(kafka_bootstrap), [topics.input], 4, {"max.message.bytes": str(11 * 1024 * 1024)})
    events: list[tuple[bytes | None, bytes | None]] = []
    for i, (name, value, _) in enumerate(REJECTED):
        events += [(f"good-{i}".encode(), orjson.dumps({"id": f"good-{i}", "text": f"good text {i}"}))]
        events += [(name.encode(), value)]
    for name, text in LABELLED.items():
        value = orjson.dumps({"id": name, "text": text})
        events.append((name.encode(), b"\xef\xbb\xbf" + value if name == "byte-order-mark" else value))
    events += [(b"dup", orjson.dumps({"id": "same-id", "text": f"duplicate {n}"})) for n in range(3)]
    events += [(None, orjson.dumps({"id": f"keyless-{n}", "text": "an event with no key"})) for n in range(3)]
    produce(kafka_bootstrap, topics.input, events, {"message.max.bytes": 12 * 1024 * 1024})
    worker = start_worker(topics, tiny_bundle)

    records = collect(
        kafka_bootstrap,
        [topics.output, topics.dlq],
        until=lambda rs: len(rs) >= len(events),
        timeout=180,
        settle=2,
        watch=[worker],
    )
    worker.assert_running()

    assert len(records) == len(events), "exactly one record per event"
    dead = {record.key.decode(): record for record in records if record.topic == topics.dlq and record.key}
    dead_keyless = [record for record in records if record.topic == topics.dlq and not record.key]
    assert not dead_keyless
    assert set(dead) == {name for name, _, _ in REJECTED}
    for name, value, reason in REJECTED:
        letter = dead[name]
        assert letter.headers["error.reason"].decode() == reason, name
        assert letter.value == (value if value is not None else None), f"{name}: original bytes kept"
        assert letter.headers["error.detail"]
    results = {}
    for record in records:
        if record.topic == topics.output:
            result = orjson.loads(record.value)
            results.setdefault(result["id"], []).append(result)
    assert sorted(results) == sorted(
        [f"good-{i}" for i in range(len(REJECTED))] + list(LABELLED) + ["same-id"] + [f"keyless-{n}" for n in range(3)]
    )
    assert Counter(len(found) for found in results.values()) == Counter({1: len(results) - 1, 3: 1})
    assert results["far-past-max-length"][0]["truncated"] is True
    for name in LABELLED:
        assert results[name][0]["label"] in ("negative", "positive")
