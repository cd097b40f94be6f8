"""``stream-clf produce``: send lines of a file (or stdin) as events, with confluent-kafka.

A line that is a JSON object is sent as it is; any other line becomes ``{"text": line}``; blank
lines are skipped. With ``raw`` every line's bytes are sent unchanged, blank or not, which is how
to exercise the dead-letter path.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
from confluent_kafka import KafkaError, Message, Producer

from stream_clf.kafka.connection import Connection

__all__ = ["ProduceReport", "event_for_line", "produce_lines", "producer_config"]


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


def event_for_line(line: bytes, *, key_field: str | None, raw: bool) -> tuple[bytes | None, bytes] | None:
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
    on_line: Callable[[int], None] | None = None,
) -> ProduceReport:
    """Send one event per line and wait until the broker has acknowledged (or refused) each."""
    report = ProduceReport()
    producer = Producer(producer_config(connection))

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is None:
            report.sent += 1
        else:
            report.failed += 1
            report.first_error = report.first_error or error.str()

    for line in lines:
        body = line.rstrip(b"\r\n")
        event = event_for_line(body, key_field=key_field, raw=raw)
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
