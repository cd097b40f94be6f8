"""Results written through a Schema Registry (``--output-format avro|json-schema``), so that a subscriber
reading every topic through the registry (Kafka Connect sinks, ksqlDB, Flink SQL) reads them too.

Each published topic's schema (result, review copy, shadow answer) is registered at start-up under its
``TopicNameStrategy`` subject (``<topic>-value``), with BACKWARD compatibility set on the subject: a
later stream-clf only adds optional fields, so a subscriber's older reader schema keeps working. The
records are written by confluent-kafka's own serializers; ``meta`` (any JSON) travels as a JSON string.
Keys stay the bytes read; dead letters stay raw bytes with headers.
"""

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from stream_clf.errors import ConfigError
from stream_clf.formats import OUTPUT_FORMATS

__all__ = ["RESULT_KINDS", "ResultWriter", "avro_schema", "json_schema"]

RESULT_KINDS = ("result", "review", "shadow")
COMPATIBILITY = "BACKWARD"
NAMESPACE = "dev.stream_clf"

_OPTIONAL = object()  # marks a field that may be absent (null)


def _source() -> dict[str, Any]:
    return {
        "type": "record",
        "name": "Source",
        "fields": [
            {"name": "topic", "type": "string"},
            {"name": "partition", "type": "int"},
            {"name": "offset", "type": "long"},
        ],
    }


_SCORES = {"type": "map", "values": "double"}
_RANKED = {
    "type": "array",
    "items": {
        "type": "record",
        "name": "Ranked",
        "fields": [{"name": "label", "type": "string"}, {"name": "score", "type": "double"}],
    },
}
_RESULT_FIELDS: list[tuple[str, Any]] = [
    ("id", "string"),
    ("label", "string"),
    ("score", "double"),
    ("scores", _SCORES),
    ("model", "string"),
    ("model_version", "string"),
    ("source", "Source"),
    ("meta", (_OPTIONAL, "string")),  # the event's meta as JSON text
    ("truncated", "boolean"),
    ("chunks", "int"),
    ("top_k", (_OPTIONAL, _RANKED)),
    ("labels", (_OPTIONAL, {"type": "array", "items": "string"})),
    ("abstained", (_OPTIONAL, "boolean")),
    ("meta_dropped", (_OPTIONAL, "boolean")),
]
_REVIEW_FIELDS = [*_RESULT_FIELDS, ("text", "string"), ("min_confidence", (_OPTIONAL, "double"))]
_SIDE = {
    "type": "record",
    "name": "Side",
    "fields": [
        {"name": "model", "type": "string"},
        {"name": "model_version", "type": "string"},
        {"name": "label", "type": "string"},
        {"name": "score", "type": "double"},
        {"name": "scores", "type": _SCORES},
    ],
}
_SHADOW_FIELDS: list[tuple[str, Any]] = [
    ("id", "string"),
    ("source", "Source"),
    ("live", _SIDE),
    ("shadow", "Side"),
    ("agree", "boolean"),
]
_FIELDS = {"result": _RESULT_FIELDS, "review": _REVIEW_FIELDS, "shadow": _SHADOW_FIELDS}


def avro_schema(kind: str) -> dict[str, Any]:
    """The Avro schema of a ``kind`` record (result, review, shadow)."""
    fields = []
    for name, avro_type in _FIELDS[kind]:
        if avro_type == "Source":
            fields.append({"name": name, "type": _source()})
        elif isinstance(avro_type, tuple):
            fields.append({"name": name, "type": ["null", avro_type[1]], "default": None})
        else:
            fields.append({"name": name, "type": avro_type})
    return {"type": "record", "name": kind.capitalize(), "namespace": NAMESPACE, "fields": fields}


def _json_type(avro_type: Any) -> dict[str, Any]:
    if isinstance(avro_type, dict):
        if avro_type["type"] == "map":
            return {"type": "object", "additionalProperties": _json_type(avro_type["values"])}
        if avro_type["type"] == "array":
            return {"type": "array", "items": _json_type(avro_type["items"])}
        return _json_object(avro_type["fields"])
    if avro_type == "Source":
        return _json_object(_source()["fields"])
    if avro_type == "Side":
        return _json_object(_SIDE["fields"])
    return {"type": {"string": "string", "double": "number", "int": "integer", "long": "integer"}.get(
        avro_type, avro_type
    )}  # fmt: skip


def _json_object(fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {field["name"]: _json_type(field["type"]) for field in fields},
        "required": [field["name"] for field in fields],
    }


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a ``kind`` record: the same fields as its Avro schema."""
    properties, required = {}, []
    for name, avro_type in _FIELDS[kind]:
        if isinstance(avro_type, tuple):
            properties[name] = {"oneOf": [{"type": "null"}, _json_type(avro_type[1])]}
        else:
            properties[name] = _json_type(avro_type)
            required.append(name)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": f"{NAMESPACE}.{kind.capitalize()}",
        "type": "object",
        "properties": properties,
        "required": required,
    }


def _record(kind: str, value: bytes) -> dict[str, Any]:
    """A JSON result (as the worker encodes it) in the shape of its schema: every field present, ``meta``
    as JSON text."""
    record = orjson.loads(value)
    if kind == "shadow":
        return record
    meta = record.get("meta")
    record["meta"] = None if meta is None else orjson.dumps(meta).decode()
    for name, avro_type in _FIELDS[kind]:
        if isinstance(avro_type, tuple):
            record.setdefault(name, None)
    return record


class ResultWriter:
    """Turns the worker's JSON results into registry-framed records of ``output_format`` for the topics
    in ``topics`` (kind -> topic), their schemas registered at start-up."""

    def __init__(self, client: SchemaRegistryClient, output_format: str, topics: Mapping[str, str]) -> None:
        if output_format not in OUTPUT_FORMATS[1:]:
            raise ValueError(f"output format {output_format!r} is none of {', '.join(OUTPUT_FORMATS[1:])}")
        self.format = output_format
        self.content_type = "application/avro" if output_format == "avro" else "application/json"
        self._serializers: dict[str, tuple[str, Callable[..., bytes]]] = {}
        for kind, topic in topics.items():
            self._serializers[topic] = (kind, self._register(client, kind, topic))

    @property
    def subjects(self) -> list[str]:
        """The subjects the schemas are registered under."""
        return [f"{topic}-value" for topic in self._serializers]

    def __call__(self, topic: str, value: bytes) -> bytes:
        """The registry-framed record for JSON result ``value`` bound for ``topic``; a topic without a
        schema (the dead-letter topic) keeps ``value`` as it is."""
        found = self._serializers.get(topic)
        if found is None:
            return value
        kind, serialize = found
        return serialize(_record(kind, value), SerializationContext(topic, MessageField.VALUE))

    def _register(self, client: SchemaRegistryClient, kind: str, topic: str) -> Callable[..., bytes]:
        """Register ``kind``'s schema under ``topic``'s subject, BACKWARD compatible; its serializer."""
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.schema_registry.json_schema import JSONSerializer

        subject = f"{topic}-value"
        schema = avro_schema(kind) if self.format == "avro" else json_schema(kind)
        text = orjson.dumps(schema).decode()
        schema_type = "AVRO" if self.format == "avro" else "JSON"
        try:
            client.set_compatibility(subject_name=subject, level=COMPATIBILITY)
            client.register_schema(subject, Schema(text, schema_type))
        except SchemaRegistryError as error:
            raise ConfigError(
                f"the Schema Registry refused the {kind} schema under subject {subject}: {error.error_message}"
            ) from None
        except Exception as error:  # unreachable, TLS, auth: whatever it is, the worker cannot start
            raise ConfigError(f"could not register the {kind} schema under subject {subject}: {error}") from None
        conf = {"auto.register.schemas": True}  # registered just now: the client's cache answers, no call
        if self.format == "avro":
            return AvroSerializer(client, text, conf=conf)
        return JSONSerializer(text, client, conf={**conf, "validate": False})
