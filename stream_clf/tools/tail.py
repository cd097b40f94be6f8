"""``stream-clf tail``: print the records of a topic as they arrive, with confluent-kafka.

Results print as ``id  label  score``; dead letters as their reason and detail; ``--json`` prints
one JSON object per record instead (a result's value as it is; a dead letter with its headers,
and its value as text when it is UTF-8, else base64). With a Schema Registry, registry-framed values
(``--output-format avro``'s results, a producer's Avro, JSON Schema or Protobuf events) are read by
their schemas and printed the same way.
"""

import base64
import contextlib
import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Message

from stream_clf.errors import EventError
from stream_clf.formats.framing import is_framed, unframe
from stream_clf.formats.registry import RegistryAccess, SchemaBook
from stream_clf.kafka.connection import Connection

__all__ = ["format_record", "tail"]


def tail(
    connection: Connection,
    topic: str,
    *,
    write: Callable[[str], None],
    from_beginning: bool = False,
    max_records: int | None = None,
    as_json: bool = False,
    idle_timeout: float | None = None,
    registry: RegistryAccess | None = None,
) -> int:
    """Print records until ``max_records`` were printed or ``idle_timeout`` seconds pass without one."""
    schemas = SchemaBook(registry.client()) if registry is not None else None
    consumer = connection.reader("tail", {"auto.offset.reset": "earliest" if from_beginning else "latest"})
    consumer.subscribe([topic])
    printed = 0
    last = time.monotonic()
    try:
        while max_records is None or printed < max_records:
            message = consumer.poll(0.2)
            if message is None or message.error():
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    break
                continue
            write(format_record(message, as_json=as_json, schemas=schemas))
            printed += 1
            last = time.monotonic()
    finally:
        consumer.close()
    return printed


def format_record(message: Message, *, as_json: bool, schemas: SchemaBook | None = None) -> str:
    """One line for one record; ``schemas`` reads registry-framed values."""
    headers = {name: value.decode("utf-8", errors="replace") for name, value in (message.headers() or [])}
    value = message.value()
    if "error.reason" in headers:
        return _dead_letter(message, headers, as_json=as_json)
    if value is None:
        return "null"
    if schemas is not None and is_framed(value):
        return _framed(value, schemas, as_json=as_json)
    if as_json:
        return _text_or_base64(value) or "null"
    try:
        return _line(orjson.loads(value))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        return value.decode("utf-8", errors="replace")


def _dead_letter(message: Message, headers: dict[str, str], *, as_json: bool) -> str:
    if as_json:
        return orjson.dumps(
            {
                "key": _text_or_base64(message.key()),
                "value": _text_or_base64(message.value()),
                "headers": headers,
                "partition": message.partition(),
                "offset": message.offset(),
            }
        ).decode()
    source = f"{headers.get('source.topic')}:{headers.get('source.partition')}:{headers.get('source.offset')}"
    return f"{source}  DEAD LETTER  {headers['error.reason']}: {headers.get('error.detail', '')}"


def _framed(value: bytes, schemas: SchemaBook, *, as_json: bool) -> str:
    """A registry-framed value read by its schema: a result as a result's line, anything else as JSON."""
    framed = unframe(value)
    try:
        record = schemas.reader(framed.schema_id).read(framed.rest)
    except EventError as error:
        return f"(schema {framed.schema_id}: {error.detail})"
    if not as_json:
        with contextlib.suppress(KeyError, TypeError, AttributeError, ValueError):
            return _line(record)
    return orjson.dumps(record, default=str).decode()


def _line(result: Any) -> str:
    """``id  label  score`` of a result (raising KeyError, TypeError... for any other record)."""
    flag = "  (truncated)" if result.get("truncated") else ""
    return f"{result['id']}  {result['label']}  {result['score']:.3f}{flag}"


def _text_or_base64(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode()
