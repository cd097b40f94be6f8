"""``stream-clf tail``: print the records of a topic as they arrive, with confluent-kafka.

Results print as ``id  label  score``; dead letters as their reason and detail; ``--json`` prints
one JSON object per record instead (a result's value as it is; a dead letter with its headers,
and its value as text when it is UTF-8, else base64).
"""

import base64
import time
from collections.abc import Callable

import orjson
from confluent_kafka import Message

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
) -> int:
    """Print records until ``max_records`` were printed or ``idle_timeout`` seconds pass without one."""
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
            write(format_record(message, as_json=as_json))
            printed += 1
            last = time.monotonic()
    finally:
        consumer.close()
    return printed


def format_record(message: Message, *, as_json: bool) -> str:
    """One line for one record."""
    headers = {name: value.decode("utf-8", errors="replace") for name, value in (message.headers() or [])}
    value = message.value()
    if "error.reason" in headers:
        if as_json:
            return orjson.dumps(
                {
                    "key": _text_or_base64(message.key()),
                    "value": _text_or_base64(value),
                    "headers": headers,
                    "partition": message.partition(),
                    "offset": message.offset(),
                }
            ).decode()
        source = f"{headers.get('source.topic')}:{headers.get('source.partition')}:{headers.get('source.offset')}"
        return f"{source}  DEAD LETTER  {headers['error.reason']}: {headers.get('error.detail', '')}"
    if as_json or value is None:
        return _text_or_base64(value) or "null"
    try:
        result = orjson.loads(value)
        flag = "  (truncated)" if result.get("truncated") else ""
        return f"{result['id']}  {result['label']}  {result['score']:.3f}{flag}"
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return value.decode("utf-8", errors="replace")


def _text_or_base64(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode()
