"""A consumer group seen from outside: its members with their assignments, and its committed offsets.

Read with aiokafka's admin client, pure Python, not confluent-kafka's: librdkafka's group calls
(DescribeConsumerGroups, ListConsumerGroupOffsets) abort the whole process on an internal assertion
when a broker connection drops under them (librdkafka #4605; the fix, #5397, is not released in
2.16). A worker asks these questions all the time, and must outlive a broker's death: the suite's
broker-restart test caught one such abort. Every call here raises an ordinary exception instead.
"""

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocol
from aiokafka.structs import TopicPartition

from stream_clf.kafka.connection import Connection

__all__ = ["GroupMember", "GroupReader"]

_REQUEST_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class GroupMember:
    """One member of a group: its client id and host, and the partitions it was assigned."""

    client_id: str
    host: str
    partitions: tuple[tuple[str, int], ...]


class GroupReader:
    """Questions about ``group``, on ``connection``'s cluster, asked from an asyncio loop (one loop for
    the reader's life: aiokafka's client belongs to the loop it started in)."""

    def __init__(self, connection: Connection, group: str) -> None:
        self._connection = connection
        self._group = group
        self._admin: AIOKafkaAdminClient | None = None

    async def _client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=list(self._connection.brokers),
                client_id="stream-clf-group-reader",
                request_timeout_ms=_REQUEST_TIMEOUT_MS,
                **self._connection.security.aiokafka(),
            )
            await admin.start()
            self._admin = admin
        return self._admin

    async def members(self) -> list[GroupMember]:
        """The group's members now (none while it is empty), each with its assignment."""
        admin = await self._client()
        (response,) = await admin.describe_consumer_groups([self._group])
        members = []
        for group in response.groups:
            for member in group[5]:
                _member_id, client_id, host, _metadata, assignment = member[:5]
                partitions = ConsumerProtocol.ASSIGNMENT.decode(assignment).partitions() if assignment else []
                members.append(
                    GroupMember(client_id, host.lstrip("/"), tuple(sorted((p.topic, p.partition) for p in partitions)))
                )
        return members

    async def committed(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The group's committed offset of each of ``partitions`` (-1 where it has none)."""
        admin = await self._client()
        found = await admin.list_consumer_group_offsets(
            self._group, partitions=[TopicPartition(topic, partition) for topic, partition in partitions]
        )
        offsets = {(tp.topic, tp.partition): meta.offset for tp, meta in found.items()}
        return {key: offsets.get(key, -1) for key in partitions}

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
