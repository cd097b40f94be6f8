"""Topic administration with confluent-kafka's AdminClient: reach the broker, create topics."""

import time
from collections.abc import Iterable, Sequence

from confluent_kafka import KafkaException
from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType

from stream_clf.errors import BrokerError
from stream_clf.kafka.clients import COMPRESSION_CODECS, admin_client
from stream_clf.kafka.security import PLAINTEXT, KafkaSecurity

__all__ = ["ensure_topics", "largest_record_limit", "publish_compression", "wait_for_broker"]

# Kafka's default record size limit (message.max.bytes) with its batch overhead.
KAFKA_DEFAULT_RECORD_LIMIT = 1_048_588


def wait_for_broker(brokers: Sequence[str], timeout: float, security: KafkaSecurity = PLAINTEXT) -> None:
    """Return once a metadata request succeeds; raise :class:`BrokerError` after ``timeout`` seconds."""
    admin = admin_client(brokers, security)
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            return
        except KafkaException as error:
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"cannot reach Kafka at {','.join(brokers)} after {timeout:.0f}s ({error.args[0].str()});"
                    " start one with `stream-clf broker` or set --brokers"
                ) from None
            time.sleep(0.5)


def ensure_topics(
    brokers: Sequence[str],
    names: Iterable[str],
    partitions: int,
    config: dict[str, str] | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = admin_client(brokers, security)
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [name for name in dict.fromkeys(names) if name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=-1, config=config or {}) for name in wanted],
        operation_timeout=30,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as error:
            if error.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise BrokerError(f"cannot create topic {name!r}: {error.args[0].str()}") from None
    return created


def largest_record_limit(brokers: Sequence[str], topics: Iterable[str], security: KafkaSecurity = PLAINTEXT) -> int:
    """The largest ``max.message.bytes`` among ``topics``: how big a record read from them can be."""
    admin = admin_client(brokers, security)
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in topics]
    limits = [KAFKA_DEFAULT_RECORD_LIMIT]
    for future in admin.describe_configs(resources).values():
        entry = future.result(timeout=30).get("max.message.bytes")
        if entry is not None and entry.value is not None:
            limits.append(int(entry.value))
    return max(limits)


def publish_compression(
    brokers: Sequence[str], topic: str, security: KafkaSecurity = PLAINTEXT, fallback: str = "lz4"
) -> str:
    """The codec to publish to ``topic`` with: the topic's own ``compression.type`` when it names one
    (so the broker stores batches as they come instead of recompressing them), else ``fallback``."""
    admin = admin_client(brokers, security)  # kept alive until the answer is in
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    entry = future.result(timeout=30).get("compression.type")
    configured = entry.value if entry is not None else None
    codec = "none" if configured == "uncompressed" else configured  # the topic's name for no codec
    return codec if codec in COMPRESSION_CODECS else fallback
