"""The three-node cluster in tests: who leads a partition, moving replicas, and waiting until every
partition is whole again (all replicas in sync) so that the next test finds the cluster as it was."""

import asyncio
import time
from collections.abc import Iterable, Mapping

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import AlterPartitionReassignmentsRequest
from confluent_kafka.admin import AdminClient

__all__ = ["await_whole", "leader_of", "reassign", "replicas_of"]


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def leader_of(bootstrap: str, topic: str, partition: int) -> int:
    """The node id leading ``topic``'s ``partition``."""
    return _admin(bootstrap).list_topics(topic, timeout=10).topics[topic].partitions[partition].leader


def replicas_of(bootstrap: str, topic: str, partition: int) -> list[int]:
    return list(_admin(bootstrap).list_topics(topic, timeout=10).topics[topic].partitions[partition].replicas)


def await_whole(bootstrap: str, topics: Iterable[str] | None = None, timeout: float = 120) -> None:
    """Wait until every partition (of ``topics``, or of every topic) has a leader and all its replicas in sync."""
    admin = _admin(bootstrap)
    wanted = set(topics) if topics is not None else None
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=10).topics
        broken = [
            (name, p.id)
            for name, topic in metadata.items()
            if wanted is None or name in wanted
            for p in topic.partitions.values()
            if p.leader < 0 or set(p.isrs) != set(p.replicas)
        ]
        if not broken:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"partitions not whole after {timeout}s: {broken[:5]}")
        time.sleep(0.5)


def reassign(bootstrap: str, moves: Mapping[tuple[str, int], list[int]]) -> None:
    """Move each partition's replicas to the node ids given (the first is its preferred leader), through
    Kafka's AlterPartitionReassignments API (confluent-kafka's admin client has no call for it)."""

    async def send() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            by_topic: dict[str, list] = {}
            for (topic, partition), replicas in moves.items():
                by_topic.setdefault(topic, []).append((partition, replicas, {}))
            request = AlterPartitionReassignmentsRequest(30_000, [(t, p, {}) for t, p in by_topic.items()], {})
            response = await admin._send_to_controller(request)  # no public call for it in aiokafka either
            errors = [
                (topic, partition, code, message)
                for topic, partitions, *_ in response.responses
                for partition, code, message, *_ in partitions
                if code != 0
            ]
            assert response.error_code == 0, response.error_message
            assert not errors, errors
        finally:
            await admin.close()

    asyncio.run(send())
