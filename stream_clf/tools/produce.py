"""``stream-clf produce``: send lines of a file (or stdin) as events, with confluent-kafka.

A line that is a JSON object is sent as it is; any other line becomes ``{"text": line}``; blank
lines are skipped. With ``raw`` every line's bytes are sent unchanged, blank or not, which is how
to exercise the dead-letter path. With a ``serialize`` (:func:`registry_serializer`: ``--format avro``
or ``json-schema`` and ``--schema FILE``) each record is written through the Schema Registry instead,
by confluent-kafka's own serializers, as a producer of a registry estate writes it.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer

from stream_clf.errors import ConfigError
from stream_clf.formats.registry import RegistryAccess
from stream_clf.kafka.connection import Connection

__all__ = [
    "ProduceReport",
    "event_for_line",
    "produce_lines",
    "producer_config",
    "registry_serializer",
]

# Turns one record into the value sent; raises ConfigError naming what does not fit.
Serialize = Callable[[dict[str, Any]], bytes]


@dataclass
class ProduceReport:
    """What happened to the lines sent."""

    sent: int = 0
    failed: int = 0
    skipped: int = 0
    first_error: str | None = None


def producer_config(connection: Connection) -> dict[str, object]:
    """An idempotent producer that partitions keys like the Java client and Faust (murmur2)."""
    return connection.config({"enable.idempotence": True, "linger.ms": 10, "partitioner": "murmur2_random"})


def registry_serializer(registry: RegistryAccess, output_format: str, schema: Path, topic: str) -> Serialize:
    """confluent-kafka's serializer of ``output_format`` with the schema in file ``schema``, registered
    (if it is not yet) under ``topic``'s subject, ``<topic>-value``."""
    from confluent_kafka.serialization import MessageField, SerializationContext

    from stream_clf.formats.results import serializer

    try:
        text = schema.read_text(encoding="utf-8")
        orjson.loads(text)
    except (OSError, UnicodeDecodeError, orjson.JSONDecodeError) as error:
        raise ConfigError(f"--schema {schema}: not a readable JSON schema file ({error})") from None
    client = registry.client()
    try:
        write = serializer(client, output_format, text)
    except Exception as error:  # fastavro's and jsonschema's parse errors share no base class
        raise ConfigError(f"--schema {schema}: not a valid {output_format} schema ({error})") from None
    context = SerializationContext(topic, MessageField.VALUE)

    def serialize(record: dict[str, Any]) -> bytes:
        try:
            return write(record, context)
        except Exception as error:  # a record that does not fit, or a registry that refuses the schema
            raise ConfigError(f"a record does not fit {schema} or the registry refused it: {error}") from None

    return serialize


def event_for_line(
    line: bytes, *, key_field: str | None, raw: bool, serialize: Serialize | None = None
) -> tuple[bytes | None, bytes] | None:
    """The (key, value) to send for one input line, or None to skip it."""
    if raw:
        return None, line
    if not line.strip():
        return None
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        value = line
    else:
        document = {"text": line.decode("utf-8", errors="replace")}
        value = orjson.dumps(document)
    if serialize is not None:
        value = serialize(document)
    key = document.get(key_field) if key_field else None
    if isinstance(key, str):
        return key.encode(), value
    if isinstance(key, int | float) and not isinstance(key, bool):
        return str(key).encode(), value
    return None, value


def produce_lines(
    connection: Connection,
    topic: str,
    lines: Iterable[bytes],
    *,
    key_field: str | None = None,
    raw: bool = False,
    serialize: Serialize | None = None,
    on_line: Callable[[int], None] | None = None,
) -> ProduceReport:
    """Send one event per line and wait until the broker has acknowledged (or refused) each. A line
    that ``serialize`` refuses stops the sending there (the lines before it are delivered), raising
    :class:`ConfigError` with its line number."""
    report = ProduceReport()
    producer = Producer(producer_config(connection))

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is None:
            report.sent += 1
        else:
            report.failed += 1
            report.first_error = report.first_error or error.str()

    for number, line in enumerate(lines, start=1):
        body = line.rstrip(b"\r\n")
        try:
            event = event_for_line(body, key_field=key_field, raw=raw, serialize=serialize)
        except ConfigError as error:
            producer.flush(60)
            raise ConfigError(f"line {number}: {error}") from None
        if event is None:
            report.skipped += 1
        else:
            key, value = event
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.1)
            producer.poll(0)
        if on_line:
            on_line(len(line))
    remaining = producer.flush(60)
    if remaining:
        report.failed += remaining
        report.first_error = report.first_error or f"{remaining} events still unacknowledged after 60s"
    return report
