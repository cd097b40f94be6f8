"""How to reach this Kafka cluster: one object that makes every client stream-clf uses.

A :class:`Connection` holds the bootstrap servers and the security settings, and makes every
librdkafka client (confluent-kafka) with them: a logger that sends librdkafka's lines to Python
logging instead of stderr, an error callback, then the caller's overrides in librdkafka's own
property names. It also gives Faust the same cluster in Faust's terms. Start-up hands this one
object down instead of brokers and security in pairs. Making a client does no network I/O;
librdkafka connects on first use.
"""

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient

from stream_clf.kafka.security import PLAINTEXT, KafkaSecurity

if TYPE_CHECKING:  # Faust is imported only where a worker runs: `stream-clf --help` stays fast
    from faust.types.auth import CredentialsT

__all__ = ["COMPRESSION_CODECS", "Connection", "client_logger"]

client_logger = logging.getLogger("stream_clf.librdkafka")
# The codecs Kafka defines; a record batch in any of them is read by every stream-clf client.
COMPRESSION_CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


@dataclass(frozen=True)
class Connection:
    """The bootstrap servers and security of one Kafka cluster, and the clients made with them."""

    brokers: tuple[str, ...] = ("localhost:9092",)
    security: KafkaSecurity = PLAINTEXT

    def __post_init__(self) -> None:
        object.__setattr__(self, "brokers", tuple(self.brokers))  # a list given is kept as a tuple

    @classmethod
    def to(cls, *brokers: str, security: KafkaSecurity = PLAINTEXT) -> "Connection":
        """A connection to ``brokers`` (``host:port`` each)."""
        return cls(tuple(brokers), security)

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers as Kafka writes them: ``host:port,host:port``."""
        return ",".join(self.brokers)

    def config(self, overrides: Mapping[str, object] | None = None) -> dict[str, object]:
        """librdkafka properties for a client of this cluster: the shared settings, then ``overrides``."""
        return {
            "bootstrap.servers": self.bootstrap,
            "logger": client_logger,
            "error_cb": _log_error,
            **self.security.librdkafka(),
            **(overrides or {}),
        }

    def producer(self, overrides: Mapping[str, object] | None = None) -> Producer:
        """A producer with the shared settings and ``overrides``."""
        return Producer(self.config(overrides))

    def consumer(self, overrides: Mapping[str, object]) -> Consumer:
        """A consumer with the shared settings and ``overrides`` (which name at least ``group.id``)."""
        return Consumer(self.config(overrides))

    def reader(self, purpose: str, overrides: Mapping[str, object] | None = None) -> Consumer:
        """A consumer that only reads: a consumer group of its own (``stream-clf-PURPOSE-xxxxxxxx``), so it
        never shares work with another, and nothing committed."""
        group = f"stream-clf-{purpose}-{uuid.uuid4().hex[:8]}"
        return self.consumer({"group.id": group, "enable.auto.commit": False, **(overrides or {})})

    def admin(self) -> AdminClient:
        """An admin client with the shared settings."""
        return AdminClient(self.config())

    def faust_brokers(self) -> list[str]:
        """The bootstrap servers as Faust's ``broker`` setting names them."""
        return [f"kafka://{address}" for address in self.brokers]

    def faust_credentials(self) -> "CredentialsT | None":
        """Credentials for Faust's ``broker_credentials`` (None for PLAINTEXT)."""
        return self.security.faust_credentials()


def _log_error(error: KafkaError) -> None:
    # librdkafka retries connection errors by itself; these lines say why it is retrying. A fatal
    # error also surfaces where the client is used (a failed poll, produce or transaction).
    level = logging.ERROR if error.fatal() else logging.WARNING
    client_logger.log(level, "event=kafka_error code=%s error=%r", error.name(), error.str())
