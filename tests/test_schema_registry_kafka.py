"""Events as Kafka estates write them, through a real Schema Registry (Apicurio, Confluent's API) and a
real broker: Avro, JSON Schema and Protobuf values written by confluent-kafka's own serializers (for
Protobuf, a message class generated here from a ``.proto``), read by the worker from the schemas alone."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.tools.broker import free_port
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS
from tests.kafka_helpers import Topics, collect, produce
from tests.web_helpers import get, wait_for_status

pytestmark = [pytest.mark.broker, pytest.mark.timeout(600)]

AVRO_REVIEW = {
    "type": "record",
    "name": "Review",
    "namespace": "shop",
    "fields": [
        {"name": "id", "type": "string"},
        {
            "name": "review",
            "type": {
                "type": "record",
                "name": "Body",
                "fields": [{"name": "title", "type": "string"}, {"name": "body", "type": "string"}],
            },
        },
    ],
}
JSON_REVIEW = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "review": {"type": "object", "properties": {"title": {"type": "string"}, "body": {"type": "string"}}},
    },
    "required": ["id", "review"],
}
# Two top-level messages: the review is the second, so its values carry message indexes [1].
PROTO_REVIEW = """syntax = "proto3";
package shop;
message Other { string x = 1; }
message Review {
  string id = 1;
  Body review = 2;
  message Body { string title = 1; string body = 2; }
}
"""
TEXT_FLAGS = ("--text-field", "review.title", "--text-field", "review.body")


def _generated(tmp: Path) -> ModuleType:
    """The Python message classes protoc generates from PROTO_REVIEW, as a producer's build would."""
    (tmp / "review.proto").write_text(PROTO_REVIEW)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp}", f"--python_out={tmp}", "review.proto"],
                   check=True)  # fmt: skip
    spec = importlib.util.spec_from_file_location("review_pb2", tmp / "review_pb2.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def review_pb2(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return _generated(tmp_path_factory.mktemp("proto"))


def _subject(kind: str) -> dict:
    return {"subject.name.strategy": lambda context, _name: f"{context.topic}-{kind}-value"}


class Writers:
    """A producer's serializers, one per format, writing ``{"id", "review": {"title", "body"}}`` events."""

    def __init__(self, url: str, topic: str, review_pb2: ModuleType) -> None:
        self.client = SchemaRegistryClient({"url": url})
        self.topic = topic
        # One subject per format (a registry subject holds one schema type): "<topic>-<format>-value".
        self.avro = AvroSerializer(self.client, orjson.dumps(AVRO_REVIEW).decode(), conf=_subject("avro"))
        self.json = JSONSerializer(orjson.dumps(JSON_REVIEW).decode(), self.client, conf=_subject("json"))
        self.proto = ProtobufSerializer(
            review_pb2.Review, self.client, {"use.deprecated.format": False, **_subject("proto")}
        )
        self.pb2 = review_pb2

    def write(self, kind: str, event_id: str, title: str, body: str) -> bytes:
        context = SerializationContext(self.topic, MessageField.VALUE)
        record = {"id": event_id, "review": {"title": title, "body": body}}
        if kind == "avro":
            return self.avro(record, context)
        if kind == "json-schema":
            return self.json(record, context)
        if kind == "protobuf":
            message = self.pb2.Review(id=event_id)
            message.review.title, message.review.body = title, body
            return self.proto(message, context)
        return orjson.dumps(record)  # plain JSON, as before registries


def _events(writers: Writers, count: int) -> tuple[list[tuple[bytes, bytes]], dict[str, str]]:
    """``count`` events of each format, interleaved; and each event's text (title and body joined)."""
    events, texts = [], {}
    for i in range(count):
        for kind in ("avro", "json-schema", "protobuf", "json"):
            event_id = f"{kind}-{i}"
            title, body = SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)][:12], SAMPLE_TEXTS[(i + 3) % len(SAMPLE_TEXTS)]
            events.append((f"k{i % 7}".encode(), writers.write(kind, event_id, title, body)))
            texts[event_id] = f"{title} {body}"
    return events, texts


def _answers(records, topics: Topics) -> tuple[dict[str, list[dict]], list]:
    results: dict[str, list[dict]] = {}
    for record in records:
        if record.topic == topics.output:
            result = orjson.loads(record.value)
            results.setdefault(result["id"], []).append(result)
    return results, [record for record in records if record.topic == topics.dlq]


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_registry_events_of_every_format_are_answered_with_the_labels_of_their_text(
    guarantee, kafka_bootstrap, schema_registry, tiny_bundle, start_worker, review_pb2
):
    topics = Topics.fresh(kafka_bootstrap)
    writers = Writers(schema_registry.url, topics.input, review_pb2)
    events, texts = _events(writers, 15)
    assert {value[0] for _, value in events} == {0, ord("{")}, "registry-framed values beside plain JSON"
    produce(kafka_bootstrap, topics.input, events)
    worker = start_worker(
        topics, tiny_bundle, "--guarantee", guarantee, "--schema-registry", schema_registry.url, *TEXT_FLAGS
    )
    records = collect(
        kafka_bootstrap,
        [topics.output, topics.dlq],
        until=lambda seen: len(seen) >= len(events),
        timeout=180,
        settle=2,
        watch=[worker],
    )
    results, dead = _answers(records, topics)
    assert dead == [], [(r.headers.get("error.reason"), r.headers.get("error.detail")) for r in dead]
    assert set(results) == set(texts)
    assert all(len(answers) == 1 for answers in results.values()), "one result each"
    classifier = Classifier(load_bundle(tiny_bundle))
    ids = sorted(texts)
    expected = classifier.predict([texts[event_id] for event_id in ids])
    for event_id, prediction in zip(ids, expected, strict=True):
        assert results[event_id][0]["label"] == prediction.label, event_id  # the same as JSON gives the same text
        assert results[event_id][0]["score"] == pytest.approx(prediction.score, abs=1e-5), event_id


def test_hostile_and_evolving_registry_events_cost_one_dead_letter_each(
    kafka_bootstrap, schema_registry, tiny_bundle, start_worker, review_pb2
):
    topics = Topics.fresh(kafka_bootstrap, partitions=1)
    writers = Writers(schema_registry.url, topics.input, review_pb2)
    context = SerializationContext(topics.input, MessageField.VALUE)
    good = writers.write("avro", "good-1", "Fine", "a good film")
    avro_id = good[1:5]
    no_text = AvroSerializer(
        writers.client,
        orjson.dumps(
            {"type": "record", "name": "Click", "namespace": "web", "fields": [{"name": "id", "type": "string"}]}
        ).decode(),
    )({"id": "click-1"}, SerializationContext(f"{topics.input}-clicks", MessageField.VALUE))
    # v2 of the review: an optional field added (a BACKWARD compatible change), registered by the producer.
    evolved = {
        **AVRO_REVIEW,
        "fields": [*AVRO_REVIEW["fields"], {"name": "stars", "type": ["null", "int"], "default": None}],
    }
    v2 = AvroSerializer(writers.client, orjson.dumps(evolved).decode(), conf=_subject("avro"))(
        {"id": "good-2", "review": {"title": "Two", "body": "still good"}, "stars": 4}, context
    )
    assert v2[1:5] != avro_id, "a new schema id"
    proto = writers.write("protobuf", "good-3", "Three", "fine again")
    hostile = {
        "unknown": b"\x00" + (2**31 - 7).to_bytes(4, "big") + b"\x02hi",
        "avro_garbage": b"\x00" + avro_id + b"\xff\xff\xff\xff\xff\x01",
        "avro_trailing": good + b"extra",
        "no_text": no_text,
        "proto_index": proto[:5] + b"\x02\x0e" + proto[7:],  # message index 7: the schema has 2
        "proto_garbage": proto[:7] + b"\x0a\xff\xff\xff\xff\x0f",
        "json_body": writers.write("json-schema", "j", "t", "b")[:5] + b"{not json",
    }
    values = [good, *hostile.values(), v2, proto]
    produce(kafka_bootstrap, topics.input, [(None, value) for value in values])
    worker = start_worker(topics, tiny_bundle, "--schema-registry", schema_registry.url, *TEXT_FLAGS)
    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=lambda seen: len(seen) >= len(values),
                      timeout=120, settle=2, watch=[worker])  # fmt: skip
    results, dead = _answers(records, topics)
    assert sorted(results) == ["good-1", "good-2", "good-3"]
    reasons = {record.value: record.headers["error.reason"].decode() for record in dead}
    assert len(dead) == len(hostile)
    assert {name: reasons[value] for name, value in hostile.items()} == {
        "unknown": "unknown_schema",
        "avro_garbage": "undecodable",
        "avro_trailing": "undecodable",
        "no_text": "no_text_field",
        "proto_index": "undecodable",
        "proto_garbage": "undecodable",
        "json_body": "undecodable",
    }, "each with its original bytes"
    worker.assert_running()


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_a_registry_outage_makes_new_schemas_wait_never_dead_letter(
    guarantee, kafka_bootstrap, schema_registry, tiny_bundle, start_worker, review_pb2
):
    topics = Topics.fresh(kafka_bootstrap)
    writers = Writers(schema_registry.url, topics.input, review_pb2)
    first = [(b"k", writers.write("json", f"before-{i}", "Before", SAMPLE_TEXTS[i])) for i in range(4)]
    # A schema the worker has not seen: registered now, its events written while the registry is down.
    fresh = {**AVRO_REVIEW, "name": f"Review{guarantee.replace('-', '')}{time.monotonic_ns()}"}
    serializer = AvroSerializer(writers.client, orjson.dumps(fresh).decode(), conf=_subject("fresh"))
    context = SerializationContext(topics.input, MessageField.VALUE)
    later = [
        (
            f"k{i}".encode(),
            serializer({"id": f"during-{i}", "review": {"title": "During", "body": SAMPLE_TEXTS[i % 5]}}, context),
        )
        for i in range(40)
    ]
    port = free_port()
    worker = start_worker(topics, tiny_bundle, "--guarantee", guarantee, "--schema-registry", schema_registry.url,
                          "--web-port", str(port), *TEXT_FLAGS)  # fmt: skip
    produce(kafka_bootstrap, topics.input, first)
    wait_for_status(port, "/readyz", 200, timeout=120)
    collect(kafka_bootstrap, [topics.output], until=lambda seen: len(seen) >= len(first), timeout=60, watch=[worker])
    os.kill(schema_registry.pid, signal.SIGSTOP)  # a registry that hangs: every ask times out
    try:
        produce(kafka_bootstrap, topics.input, later)
        deadline = time.monotonic() + 20
        said = b""
        while time.monotonic() < deadline:
            _, said = get(port, "/readyz")
            if b"Schema Registry" in said:
                break
            time.sleep(0.5)
        assert b"Schema Registry" in said, said
        time.sleep(max(0.0, deadline - time.monotonic()))
        worker.assert_running()
        waiting = collect(kafka_bootstrap, [topics.output, topics.dlq], until=lambda seen: True, timeout=10, settle=2)
        assert len(waiting) == len(first), "nothing of the new schema answered or dead-lettered while it was down"
    finally:
        os.kill(schema_registry.pid, signal.SIGCONT)
    total = len(first) + len(later)
    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=lambda seen: len(seen) >= total,
                      timeout=120, settle=2, watch=[worker])  # fmt: skip
    results, dead = _answers(records, topics)
    assert dead == []
    assert Counter(len(answers) for answers in results.values()) == {1: len(first) + len(later)}
    wait_for_status(port, "/readyz", 200, timeout=30)
