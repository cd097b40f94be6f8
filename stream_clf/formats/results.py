"""Results written through a Schema Registry (``--output-format avro|json-schema``), so that a subscriber
reading every topic through the registry (Kafka Connect sinks, ksqlDB, Flink SQL) reads them too.

Each published topic's schema (result, review copy, shadow answer) is registered at start-up under its
``TopicNameStrategy`` subject (``<topic>-value``), with BACKWARD compatibility set on the subject: a
later stream-clf only adds optional fields, so a subscriber's older reader schema keeps working. The
records are written by confluent-kafka's own serializers; ``meta`` (any JSON) travels as a JSON string.
Keys stay the bytes read; dead letters stay raw bytes with headers.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from stream_clf.errors import ConfigError
from stream_clf.formats import OUTPUT_FORMATS

__all__ = ["RESULT_KINDS", "ResultWriter", "avro_schema", "json_schema", "serializer"]

RESULT_KINDS = ("result", "review", "shadow")
COMPATIBILITY = "BACKWARD"
NAMESPACE = "dev.stream_clf"


@dataclass(frozen=True)
class _Nullable:
    """A field that may be null (the JSON result leaves it out): Avro ``["null", type]``, default null."""

    type: Any


def _avro_record(name: str, fields: list[tuple[str, Any]]) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": [{"name": field, "type": kind} for field, kind in fields]}


_SOURCE = _avro_record("Source", [("topic", "string"), ("partition", "int"), ("offset", "long")])
_SCORES = {"type": "map", "values": "double"}
_RANKED = {"type": "array", "items": _avro_record("Ranked", [("label", "string"), ("score", "double")])}
_RESULT_FIELDS: list[tuple[str, Any]] = [
    ("id", "string"),
    ("label", "string"),
    ("score", "double"),
    ("scores", _SCORES),
    ("model", "string"),
    ("model_version", "string"),
    ("source", _SOURCE),
    ("meta", _Nullable("string")),  # the event's meta as JSON text
    ("truncated", "boolean"),
    ("chunks", "int"),
    ("top_k", _Nullable(_RANKED)),
    ("labels", _Nullable({"type": "array", "items": "string"})),
    ("abstained", _Nullable("boolean")),
    ("meta_dropped", _Nullable("boolean")),
]
_REVIEW_FIELDS = [*_RESULT_FIELDS, ("text", "string"), ("min_confidence", _Nullable("double"))]
_SIDE = _avro_record(
    "Side",
    [("model", "string"), ("model_version", "string"), ("label", "string"), ("score", "double"), ("scores", _SCORES)],
)
_SHADOW_FIELDS: list[tuple[str, Any]] = [
    ("id", "string"),
    ("source", _SOURCE),
    ("live", _SIDE),
    ("shadow", "Side"),  # a named Avro type is defined once, then named
    ("agree", "boolean"),
]
_FIELDS = {"result": _RESULT_FIELDS, "review": _REVIEW_FIELDS, "shadow": _SHADOW_FIELDS}


def avro_schema(kind: str) -> dict[str, Any]:
    """The Avro schema of a ``kind`` record (result, review, shadow)."""
    fields = []
    for name, avro_type in _FIELDS[kind]:
        if isinstance(avro_type, _Nullable):
            fields.append({"name": name, "type": ["null", avro_type.type], "default": None})
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
        if isinstance(avro_type, _Nullable):
            properties[name] = {"oneOf": [{"type": "null"}, _json_type(avro_type.type)]}
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
        if isinstance(avro_type, _Nullable):
            record.setdefault(name, None)
    return record


def serializer(
    client: SchemaRegistryClient, output_format: str, schema_text: str, *, validate: bool = True
) -> Callable[..., bytes]:
    """confluent-kafka's serializer of ``output_format`` (avro, json-schema) with ``schema_text``, which
    it registers under the record's subject if it is not yet; ``validate``: JSON Schema values are
    checked against it (Avro's always are)."""
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.schema_registry.json_schema import JSONSerializer

    if output_format == "avro":
        return AvroSerializer(client, schema_text)
    return JSONSerializer(schema_text, client, conf={"validate": validate})


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
        # Registered just now: the client's cache answers, no call; our own results need no validation.
        return serializer(client, self.format, text, validate=False)
