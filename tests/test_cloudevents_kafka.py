"""CloudEvents (binary and structured mode, the Kafka protocol binding) and W3C trace context, through a
real broker and, for registry-framed data, a real Schema Registry: each event's id is its ``ce_id``, its
result carries CloudEvents headers of its own made from the source record's place, and the event's
``traceparent`` and ``tracestate`` travel onto its result or dead letter."""

import base64

import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS
from tests.kafka_helpers import Topics, collect, produce

pytestmark = [pytest.mark.broker, pytest.mark.timeout(600)]

AVRO_NOTE = {"type": "record", "name": "Note", "namespace": "ce", "fields": [{"name": "text", "type": "string"}]}


def _trace(i: int) -> list[tuple[str, bytes]]:
    return [
        ("traceparent", f"00-{i + 1:032x}-{i + 7:016x}-01".encode()),
        ("tracestate", f"vendor=v{i}".encode()),
    ]


def _binary(ce_id: str) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", b"/shop/reviews"),
        ("ce_type", b"shop.review.created"),
    ]


def _structured(ce_id: str, **data: object) -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": ce_id, "source": "/shop", "type": "shop.review", **data})


STRUCTURED = [("content-type", b"application/cloudevents+json; charset=utf-8")]


def _events(avro: bytes) -> list[tuple[bytes, bytes, list]]:
    """Every shape of event, each with its own trace context: (key, value, headers)."""
    text = SAMPLE_TEXTS
    shapes: list[tuple[bytes, list]] = [
        (orjson.dumps({"text": text[0]}), _binary("bin-json")),
        (avro, _binary("bin-avro")),
        (text[2].encode(), [*_binary("bin-text"), ("content-type", b"text/plain")]),
        (_structured("st-object", data={"text": text[3], "meta": {"shop": 7}}), STRUCTURED),
        (_structured("st-string", data=text[4]), STRUCTURED),
        (_structured("st-base64", data_base64=base64.b64encode(orjson.dumps({"text": text[5]})).decode()), STRUCTURED),
        (orjson.dumps({"id": "plain", "text": text[6]}), []),  # no CloudEvent, a trace all the same
        (b"{not json", STRUCTURED),  # hostile: dead-lettered, its trace carried
        (_structured("st-nodata"), STRUCTURED),  # no data: dead-lettered
    ]
    return [(f"k{i}".encode(), value, [*headers, *_trace(i)]) for i, (value, headers) in enumerate(shapes)]


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_cloudevents_in_both_modes_are_answered_with_their_ids_and_traces(
    guarantee, kafka_bootstrap, schema_registry, tiny_bundle, start_worker
):
    topics = Topics.fresh(kafka_bootstrap)
    avro = AvroSerializer(SchemaRegistryClient(schema_registry.client_config()), orjson.dumps(AVRO_NOTE).decode())(
        {"text": SAMPLE_TEXTS[1]}, SerializationContext(topics.input, MessageField.VALUE)
    )
    events = _events(avro)
    landed = produce(kafka_bootstrap, topics.input, events)
    worker = start_worker(topics, tiny_bundle, "--guarantee", guarantee, "--schema-registry", schema_registry.url)
    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=lambda seen: len(seen) >= len(events),
                      timeout=180, settle=2, watch=[worker])  # fmt: skip
    assert len(records) == len(events), "one record out per event"
    by_trace = {record.headers["traceparent"]: record for record in records}
    assert len(by_trace) == len(events), "every record carries its own event's trace"
    for i, ((_key, _value, headers), source) in enumerate(zip(events, landed, strict=True)):
        sent = dict(headers)
        out = by_trace[sent["traceparent"]]
        assert out.headers["tracestate"] == sent["tracestate"]
        if i >= 7:
            assert out.topic == topics.dlq, i
            assert out.value == events[i][1], "the dead letter keeps the original bytes"
            continue
        assert out.topic == topics.output, (i, out.headers.get("error.detail"))
        result = orjson.loads(out.value)
        ce_id = sent.get("ce_id", b"").decode() or orjson.loads(events[i][1]).get("id")
        assert result["id"] == ce_id, "a CloudEvent's id is its ce_id"
        if i == 6:
            assert not any(name.startswith("ce_") for name in out.headers), "no CloudEvent in, none out"
            continue
        assert out.headers["ce_id"] == f"{source.topic}:{source.partition}:{source.offset}:result".encode()
        assert out.headers["ce_subject"] == ce_id.encode()
        assert out.headers["ce_specversion"] == b"1.0"
        assert out.headers["ce_source"] == f"/stream-clf/{topics.input}".encode()
        assert out.headers["ce_type"] == b"dev.stream-clf.result"
        assert out.headers["content-type"] == b"application/json"
    assert orjson.loads(by_trace[dict(events[3][2])["traceparent"]].value)["meta"] == {"shop": 7}
    worker.assert_running()
