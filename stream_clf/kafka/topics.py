"""Topic administration with confluent-kafka's AdminClient: reach the broker, create topics.

On a cluster, a topic just created is known to its controller first and to the other brokers a
moment later; a metadata or config request that reaches one of them meanwhile answers
``UNKNOWN_TOPIC_OR_PART``. So :func:`ensure_topics` returns only once every broker answers the new
topics' metadata with a leader for each partition, and :func:`retry_unknown_topic` asks again
where a request may still meet a broker that lags.
"""

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from stream_clf.errors import BrokerError, ConfigError
from stream_clf.kafka.connection import COMPRESSION_CODECS, Connection

__all__ = [
    "Replication",
    "ensure_topics",
    "publish_compression",
    "retry_unknown_topic",
    "wait_for_broker",
]

# Kafka's default record size limit (message.max.bytes) with its batch overhead.
KAFKA_DEFAULT_RECORD_LIMIT = 1_048_588
# How long a new topic may take to reach every broker.
TOPIC_WAIT_SECONDS = 30.0
T = TypeVar("T")


@dataclass(frozen=True)
class Replication:
    """The replication of the topics stream-clf creates: ``factor`` replicas per partition (None: the
    cluster's ``default.replication.factor``, but at most its brokers), and ``min_insync`` replicas a
    write needs (None: the cluster's ``min.insync.replicas``, but at most the factor)."""

    factor: int | None = None
    min_insync: int | None = None

    def resolve(self, admin: AdminClient) -> tuple[int, dict[str, str]]:
        """The replication factor to create topics with, and the topic settings that go with it."""
        brokers = admin.list_topics(timeout=10).brokers
        if self.factor is not None and self.factor > len(brokers):
            raise ConfigError(
                f"--replication-factor {self.factor}: the cluster has {len(brokers)} broker(s); ask for at most that"
            )
        defaults = {} if self.factor is not None and self.min_insync is not None else _broker_defaults(admin, brokers)
        factor = self.factor or min(int(defaults.get("default.replication.factor", 1)), len(brokers))
        if self.min_insync is not None and self.min_insync > factor:
            raise ConfigError(
                f"--min-insync-replicas {self.min_insync} is more than the replication factor {factor}:"
                " no write could ever succeed"
            )
        min_insync = self.min_insync
        if min_insync is None and int(defaults.get("min.insync.replicas", 1)) > factor:
            min_insync = factor  # the cluster's default would refuse every write to these topics
        return factor, {} if min_insync is None else {"min.insync.replicas": str(min_insync)}


def _broker_defaults(admin: AdminClient, brokers: Mapping[int, object]) -> dict[str, str]:
    """One broker's ``default.replication.factor`` and ``min.insync.replicas``."""
    resource = ConfigResource(ResourceType.BROKER, str(min(brokers)))
    (future,) = admin.describe_configs([resource]).values()
    config = future.result(timeout=30)
    return {
        name: entry.value
        for name in ("default.replication.factor", "min.insync.replicas")
        if (entry := config.get(name)) is not None and entry.value is not None
    }


def retry_unknown_topic(call: Callable[[], T], timeout: float = TOPIC_WAIT_SECONDS) -> T:
    """``call()``, asked again while a broker answers that a topic is unknown (it may not have learnt
    of a topic just created); the last error is raised after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KafkaException as error:
            if error.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_for_broker(connection: Connection, timeout: float) -> None:
    """Return once a metadata request succeeds; raise :class:`BrokerError` after ``timeout`` seconds."""
    admin = connection.admin()
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            return
        except KafkaException as error:
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"cannot reach Kafka at {connection.bootstrap} after {timeout:.0f}s ({error.args[0].str()});"
                    " start one with `stream-clf broker` or set --brokers"
                ) from None
            time.sleep(0.5)


def ensure_topics(
    connection: Connection,
    names: Iterable[str],
    partitions: int,
    config: dict[str, str] | None = None,
    *,
    replication: Replication | None = None,
) -> list[str]:
    """Create the topics that do not exist yet (with ``replication``: by default the cluster's) and
    wait until every broker knows them; return the names created."""
    admin = connection.admin()
    wanted = list(dict.fromkeys(names))
    try:
        existing = set(admin.list_topics(timeout=10).topics)
        wanted = [name for name in wanted if name not in existing]
        if not wanted:
            return []
        factor, replicated = (replication or Replication()).resolve(admin)
        topics = [
            NewTopic(
                name, num_partitions=partitions, replication_factor=factor, config={**replicated, **(config or {})}
            )
            for name in wanted
        ]
        futures = admin.create_topics(topics, operation_timeout=30)
    except KafkaException as error:
        raise BrokerError(f"cannot create topics {wanted}: {error.args[0].str()}") from None
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as error:
            if error.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise BrokerError(f"cannot create topic {name!r}: {error.args[0].str()}") from None
    _await_everywhere(admin, connection, wanted)
    return created


def _await_everywhere(admin: AdminClient, connection: Connection, topics: list[str]) -> None:
    """Return once each broker of the cluster answers metadata with a leader for every partition of ``topics``."""
    deadline = time.monotonic() + TOPIC_WAIT_SECONDS
    members = admin.list_topics(timeout=10).brokers
    for member in members.values():
        one = Connection.to(f"{member.host}:{member.port}", security=connection.security).admin()
        while not _known(one, topics):
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"topics {topics} were created but broker {member.id} does not know them after"
                    f" {TOPIC_WAIT_SECONDS:.0f}s"
                )
            time.sleep(0.2)


def _known(admin: AdminClient, topics: list[str]) -> bool:
    try:
        metadata = admin.list_topics(timeout=5).topics
    except KafkaException:
        return False
    return all(
        name in metadata
        and metadata[name].error is None
        and metadata[name].partitions
        and all(partition.leader >= 0 for partition in metadata[name].partitions.values())
        for name in topics
    )


def publish_compression(connection: Connection, topic: str, fallback: str = "lz4") -> str:
    """The codec to publish to ``topic`` with: the topic's own ``compression.type`` when it names one
    (so the broker stores batches as they come instead of recompressing them), else ``fallback``."""
    admin = connection.admin()  # kept alive until the answer is in

    def describe() -> object:
        (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
        return future.result(timeout=30).get("compression.type")

    entry = retry_unknown_topic(describe)
    configured = entry.value if entry is not None else None
    codec = "none" if configured == "uncompressed" else configured  # the topic's name for no codec
    return codec if codec in COMPRESSION_CODECS else fallback
