"""Every librdkafka client stream-clf makes (confluent-kafka), configured in one place.

Each client gets the bootstrap servers, the security settings, a logger that sends librdkafka's
lines to Python logging instead of stderr, and an error callback; then the caller's overrides, in
librdkafka's own property names. Constructing a client does no network I/O; librdkafka connects
on first use.
"""

import logging
import uuid
from collections.abc import Mapping, Sequence

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient

from stream_clf.kafka.security import PLAINTEXT, KafkaSecurity

__all__ = ["COMPRESSION_CODECS", "admin_client", "client_config", "client_logger", "consumer", "producer", "reader"]

client_logger = logging.getLogger("stream_clf.librdkafka")
# The codecs Kafka defines; a record batch in any of them is read by every stream-clf client.
COMPRESSION_CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def client_config(
    brokers: Sequence[str], security: KafkaSecurity = PLAINTEXT, overrides: Mapping[str, object] | None = None
) -> dict[str, object]:
    """librdkafka properties for a client of ``brokers``: the shared settings, then ``overrides``."""
    return {
        "bootstrap.servers": ",".join(brokers),
        "logger": client_logger,
        "error_cb": _log_error,
        **security.librdkafka(),
        **(overrides or {}),
    }


def producer(
    brokers: Sequence[str], security: KafkaSecurity = PLAINTEXT, overrides: Mapping[str, object] | None = None
) -> Producer:
    """A producer with the shared settings and ``overrides``."""
    return Producer(client_config(brokers, security, overrides))


def consumer(
    brokers: Sequence[str], security: KafkaSecurity = PLAINTEXT, overrides: Mapping[str, object] | None = None
) -> Consumer:
    """A consumer with the shared settings and ``overrides`` (which name at least ``group.id``)."""
    return Consumer(client_config(brokers, security, overrides))


def reader(
    brokers: Sequence[str],
    purpose: str,
    security: KafkaSecurity = PLAINTEXT,
    overrides: Mapping[str, object] | None = None,
) -> Consumer:
    """A consumer that only reads: a consumer group of its own (``stream-clf-PURPOSE-xxxxxxxx``), so it
    never shares work with another, and nothing committed."""
    group = f"stream-clf-{purpose}-{uuid.uuid4().hex[:8]}"
    return consumer(brokers, security, {"group.id": group, "enable.auto.commit": False, **(overrides or {})})


def admin_client(brokers: Sequence[str], security: KafkaSecurity = PLAINTEXT) -> AdminClient:
    """An admin client with the shared settings."""
    return AdminClient(client_config(brokers, security))


def _log_error(error: KafkaError) -> None:
    # librdkafka retries connection errors by itself; these lines say why it is retrying. A fatal
    # error also surfaces where the client is used (a failed poll, produce or transaction).
    level = logging.ERROR if error.fatal() else logging.WARNING
    client_logger.log(level, "event=kafka_error code=%s error=%r", error.name(), error.str())
