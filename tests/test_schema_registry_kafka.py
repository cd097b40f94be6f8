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
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
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

    def __init__(self, registry: dict, topic: str, review_pb2: ModuleType) -> None:
        self.client = SchemaRegistryClient(registry)
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
    writers = Writers(schema_registry.client_config(), topics.input, review_pb2)
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
    writers = Writers(schema_registry.client_config(), topics.input, review_pb2)
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
    writers = Writers(schema_registry.client_config(), topics.input, review_pb2)
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


def _reader(output_format: str, client: SchemaRegistryClient):
    """A subscriber's deserializer: it knows nothing of stream-clf, the writer's schema comes by id."""
    if output_format == "avro":
        return AvroDeserializer(client)
    return JSONDeserializer(None, schema_registry_client=client)


@pytest.mark.parametrize(("output_format", "guarantee"), [("avro", "at-least-once"), ("json-schema", "exactly-once")])
def test_results_review_copies_and_shadow_answers_written_through_the_registry_read_back_by_its_serializers(
    output_format, guarantee, kafka_bootstrap, schema_registry, tiny_bundle, start_worker
):
    topics = Topics.fresh(kafka_bootstrap)
    review, shadow = f"{topics.output}.review", f"{topics.output}.shadow"
    texts = {f"e{i}": SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(24)}
    metas = {event_id: {"n": i, "tags": ["a", "b"]} if i % 2 else None for i, event_id in enumerate(texts)}
    events = [
        (f"k{i % 5}".encode(), orjson.dumps({"id": event_id, "text": text, "meta": metas[event_id]}))
        for i, (event_id, text) in enumerate(texts.items())
    ]
    port = free_port()
    worker = start_worker(
        topics, tiny_bundle, "--guarantee", guarantee, "--schema-registry", schema_registry.url,
        "--output-format", output_format, "--top-k", "2", "--min-confidence", "0.999",
        "--shadow-model", str(tiny_bundle), "--web-port", str(port),
    )  # fmt: skip
    wait_for_status(port, "/readyz", 200, timeout=120)  # the review and shadow topics exist from here
    produce(kafka_bootstrap, topics.input, events)
    expected = 3 * len(events)  # a result, a review copy (every score is under 0.999) and a shadow answer each
    records = collect(kafka_bootstrap, [topics.output, review, shadow, topics.dlq],
                      until=lambda seen: len(seen) >= expected, timeout=180, settle=2, watch=[worker])  # fmt: skip
    client = SchemaRegistryClient(schema_registry.client_config())
    read = _reader(output_format, client)
    decoded: dict[str, list[dict]] = {}
    for record in records:
        assert record.topic != topics.dlq, record.headers
        assert record.value[0] == 0, "registry-framed"
        decoded.setdefault(record.topic, []).append(
            read(record.value, SerializationContext(record.topic, MessageField.VALUE))
        )
    results = {result["id"]: result for result in decoded[topics.output]}
    assert len(decoded[topics.output]) == len(results) == len(texts), "one result each"
    classifier = Classifier(load_bundle(tiny_bundle))
    ids = sorted(texts)
    for event_id, prediction in zip(ids, classifier.predict([texts[i] for i in ids]), strict=True):
        result = results[event_id]
        assert result["label"] == prediction.label, event_id
        assert result["score"] == pytest.approx(prediction.score, abs=1e-5)
        assert [ranked["label"] for ranked in result["top_k"]] == sorted(result["scores"], key=result["scores"].get,
                                                                         reverse=True)[:2]  # fmt: skip
        meta = metas[event_id]
        assert (result["meta"] and orjson.loads(result["meta"])) == (meta and meta), "meta travels as JSON text"
        assert result["abstained"] is True
    assert sorted((copy["id"], copy["text"]) for copy in decoded[review]) == sorted(texts.items())
    assert {answer["id"]: answer["agree"] for answer in decoded[shadow]} == dict.fromkeys(texts, True)
    for topic in (topics.output, review, shadow):
        assert client.get_compatibility(f"{topic}-value") == "BACKWARD"
        registered = client.get_latest_version(f"{topic}-value").schema
        assert registered.schema_type == ("AVRO" if output_format == "avro" else "JSON")
    worker.assert_running()


def test_a_results_subject_whose_schema_cannot_evolve_stops_the_worker_with_one_line(
    kafka_bootstrap, schema_registry, tiny_bundle, start_worker
):
    topics = Topics.fresh(kafka_bootstrap)
    client = SchemaRegistryClient(schema_registry.client_config())
    subject = f"{topics.output}-value"
    client.set_compatibility(subject_name=subject, level="BACKWARD")
    other = {"type": "record", "name": "Result", "fields": [{"name": "count", "type": "int"}]}
    client.register_schema(subject, Schema(orjson.dumps(other).decode(), "AVRO"))
    worker = start_worker(topics, tiny_bundle, "--schema-registry", schema_registry.url, "--output-format", "avro")
    assert worker.process is not None
    assert worker.process.wait(120) == 2
    said = worker.log.read_text()
    assert f"the Schema Registry refused the result schema under subject {subject}" in said, said
    assert "Traceback" not in said


def test_replay_reads_registry_events_and_writes_results_through_the_registry(
    kafka_bootstrap, schema_registry, tiny_bundle, review_pb2
):
    topics = Topics.fresh(kafka_bootstrap)
    writers = Writers(schema_registry.client_config(), topics.input, review_pb2)
    events, texts = _events(writers, 6)
    produce(kafka_bootstrap, topics.input, [*events, (b"k", b"\x00\x7f\xff\xff\xf0 not a known schema")])
    relabelled = f"relabelled-{topics.output}"
    command = [sys.executable, "-m", "stream_clf", "replay", "--brokers", kafka_bootstrap, "--input", topics.input,
               "--output", relabelled, "--model", str(tiny_bundle), "--from", "earliest", "--dlq", topics.dlq,
               "--schema-registry", schema_registry.url, "--output-format", "avro", *TEXT_FLAGS]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"replayed {len(events) + 1} events" in done.stdout, done.stdout
    records = collect(kafka_bootstrap, [relabelled, topics.dlq], until=lambda seen: len(seen) > len(events),
                      timeout=60, settle=2)  # fmt: skip
    read = AvroDeserializer(SchemaRegistryClient(schema_registry.client_config()))
    context = SerializationContext(relabelled, MessageField.VALUE)
    results = {result["id"]: result for result in (read(r.value, context) for r in records if r.topic == relabelled)}
    assert set(results) == set(texts), "every format read, each once"
    classifier = Classifier(load_bundle(tiny_bundle))
    ids = sorted(texts)
    for event_id, prediction in zip(ids, classifier.predict([texts[i] for i in ids]), strict=True):
        assert results[event_id]["label"] == prediction.label, event_id
    assert [r.headers["error.reason"] for r in records if r.topic == topics.dlq] == [b"unknown_schema"]
    tailed = subprocess.run(
        [sys.executable, "-m", "stream_clf", "tail", "--brokers", kafka_bootstrap, "--topic", relabelled,
         "--from-beginning", "--max", str(len(events)), "--schema-registry", schema_registry.url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert tailed.returncode == 0, tailed.stderr
    printed = {line.split()[0]: line.split()[1] for line in tailed.stdout.splitlines()}
    assert printed == {event_id: result["label"] for event_id, result in results.items()}, "Avro results, read"


def test_produce_writes_records_through_the_registry_and_stops_at_a_line_that_does_not_fit(
    kafka_bootstrap, schema_registry, tmp_path
):
    topics = Topics.fresh(kafka_bootstrap, partitions=1)
    schema = tmp_path / "review.avsc"
    schema.write_bytes(orjson.dumps(AVRO_REVIEW))
    records = [{"id": f"r{i}", "review": {"title": f"T{i}", "body": SAMPLE_TEXTS[i]}} for i in range(5)]
    lines = tmp_path / "reviews.jsonl"
    lines.write_bytes(b"\n".join(orjson.dumps(record) for record in records) + b'\n{"id": "r5"}\n' + b"{}\n")
    command = [sys.executable, "-m", "stream_clf", "produce", "--brokers", kafka_bootstrap, "--topic", topics.input,
               "--format", "avro", "--schema", str(schema), "--schema-registry", schema_registry.url,
               str(lines)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "line 6:" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    sent = collect(kafka_bootstrap, [topics.input], until=lambda seen: len(seen) >= len(records), timeout=60, settle=2)
    read = AvroDeserializer(SchemaRegistryClient(schema_registry.client_config()))
    context = SerializationContext(topics.input, MessageField.VALUE)
    assert [read(record.value, context) for record in sent] == records, "the lines before it, in order"
    tailed = subprocess.run(
        [sys.executable, "-m", "stream_clf", "tail", "--brokers", kafka_bootstrap, "--topic", topics.input,
         "--from-beginning", "--max", str(len(records)), "--json", "--schema-registry", schema_registry.url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert [orjson.loads(line) for line in tailed.stdout.splitlines()] == records
    schema.write_text('{"type": "record", "name": "Broken"')
    broken = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert broken.returncode == 2
    assert broken.stderr.count("\n") == 1, broken.stderr
    assert "not a readable JSON schema file" in broken.stderr
