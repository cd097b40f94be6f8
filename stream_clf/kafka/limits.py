"""What a topic accepts of one record: its size limit and, when it is compacted, a key.

The broker checks ``max.message.bytes`` against a whole record batch (after compression), and a
compacted topic refuses a record without a key; a refused record fails every record of its batch
with it, and a transaction with them. So the worker reads these limits once, at start, for every
topic it publishes to (whether it created them or not), checks each record before handing it
over (:meth:`TopicLimit.refusal`), and tells librdkafka not to batch past the smallest limit.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource, ResourceType

from stream_clf.errors import BrokerError
from stream_clf.kafka.connection import Connection
from stream_clf.kafka.topics import KAFKA_DEFAULT_RECORD_LIMIT, retry_unknown_topic

__all__ = ["RECORD_ERRORS", "Refusal", "TopicLimit", "producer_limits", "read_limits", "wire_size"]

# A one-record batch's framing: the batch header (61 bytes) and the record's own fields, with room.
BATCH_FRAMING = 128
# Per header: its name and value lengths and framing.
_HEADER_FRAMING = 12
# What the broker answers about a record itself, rather than about the topic or the cluster.
RECORD_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_TIMESTAMP,
    }
)
SIZE_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE})


@dataclass(frozen=True)
class Refusal:
    """Why a topic does not take a record: too large (a smaller form may fit), or another reason of its own."""

    detail: str
    size: bool = False

    @classmethod
    def of(cls, topic: str, error: KafkaError) -> "Refusal":
        """A refusal from the error librdkafka or the broker answered."""
        return cls(f"topic {topic!r} refused it: {error.str()}", size=error.code() in SIZE_ERRORS)


def wire_size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()) -> int:
    """A bound on the bytes a record takes in a batch of its own, whatever the codec (lz4, zstd and
    gzip grow incompressible data by well under 1%; the margin is 1/128)."""
    size = len(key or b"") + len(value or b"")
    size += sum(len(name) + len(data) + _HEADER_FRAMING for name, data in headers)
    return size + size // 128 + BATCH_FRAMING


@dataclass(frozen=True)
class TopicLimit:
    """What one topic accepts: records (batches) up to ``max_bytes``, and keyless ones unless compacted."""

    max_bytes: int = KAFKA_DEFAULT_RECORD_LIMIT
    compacted: bool = False

    @property
    def room(self) -> int:
        """The most bytes of key, value and headers a record may hold."""
        return (self.max_bytes - BATCH_FRAMING) * 128 // 129

    def refusal(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> Refusal | None:
        """Why ``topic`` would refuse this record; None when it takes it."""
        if self.compacted and key is None:
            return Refusal(f"topic {topic!r} is compacted and the record has no key")
        size = wire_size(key, value, headers)
        if size > self.max_bytes:
            return Refusal(f"{size} bytes, over topic {topic!r}'s limit of {self.max_bytes}", size=True)
        return None


def read_limits(connection: Connection, topics: Iterable[str]) -> dict[str, TopicLimit]:
    """Each topic's ``max.message.bytes`` and ``cleanup.policy``, as the cluster has them now."""
    admin = connection.admin()
    names = list(dict.fromkeys(topics))

    def describe() -> dict[str, TopicLimit]:
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name) for name in names])
        limits = {}
        for resource, future in futures.items():
            config = future.result(timeout=30)
            size, policy = config.get("max.message.bytes"), config.get("cleanup.policy")
            limits[resource.name] = TopicLimit(
                max_bytes=int(size.value) if size is not None and size.value else KAFKA_DEFAULT_RECORD_LIMIT,
                compacted=policy is not None and "compact" in (policy.value or ""),
            )
        return limits

    try:
        return retry_unknown_topic(describe)
    except KafkaException as error:
        raise BrokerError(f"cannot read the configuration of topics {names}: {error.args[0].str()}") from None


def producer_limits(limits: Mapping[str, TopicLimit]) -> dict[str, int]:
    """librdkafka settings that keep a producer inside every one of ``limits``: no record above the
    largest (``message.max.bytes``), and no batch above the smallest (``batch.size``; one record
    larger than that still goes, alone, in a batch of its own)."""
    largest = max((limit.max_bytes for limit in limits.values()), default=KAFKA_DEFAULT_RECORD_LIMIT)
    smallest = min((limit.max_bytes for limit in limits.values()), default=KAFKA_DEFAULT_RECORD_LIMIT)
    return {
        "message.max.bytes": min(max(largest, 1000), 1_000_000_000),
        "batch.size": max(1, min(smallest - BATCH_FRAMING, 1_000_000)),
    }
