"""The control plane: swap requests asked of a consumer group, and what each of its workers serves.

::

    stream-clf swap ──► control topic (compacted, one partition) ──► every worker of the group
      writes a request  swap/GROUP[/TOPIC]: the model to serve, and    loads, checks and warms it
      (operators)       the version expected                          beside the old one, then
                                                                      switches between batches
      waits for the ◄── status topic (compacted, one partition)  ◄── reports what it serves and
      workers' answers  status/GROUP/WORKER                           how each swap ended (workers)

The records and their checks are in :mod:`~stream_clf.kafka.control_records`. Requests and
statuses live on two topics so that each principal's ACLs are minimal: operators write requests
and read statuses, workers read requests and write statuses; a worker's credential cannot ask
for a swap.

Workers are named ``INSTANCE-XXXXXXXX`` (a random suffix per process) and their consumers'
client id is ``stream-clf.WORKER``, so the consumer group's member list says which statuses
belong to workers that are running.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka.errors import KafkaError as AIOKafkaError
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from stream_clf.errors import BrokerError, ConfigError
from stream_clf.kafka.connection import Connection
from stream_clf.kafka.control_records import ControlState, MalformedRecordError, SwapRequest, WorkerStatus
from stream_clf.kafka.groups import GroupMember, GroupReader
from stream_clf.kafka.topics import Replication, ensure_topics

__all__ = [
    "CLIENT_ID_PREFIX",
    "ControlFeed",
    "ControlRecord",
    "KafkaControlFeed",
    "Skipped",
    "SwapAnswers",
    "ask_swap",
    "control_producer",
    "ensure_control_topics",
    "group_workers",
    "log_skipped",
    "new_worker_id",
    "read_control",
]

log = logging.getLogger(__name__)

CLIENT_ID_PREFIX = "stream-clf."
_CONTROL_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
# Told where a malformed record was (offset) and why it was skipped.
Skipped = Callable[[str, int, MalformedRecordError], None]


def new_worker_id(instance: str) -> str:
    """A name for one worker process: its instance and a random suffix (two workers may share a host)."""
    return f"{instance}-{uuid.uuid4().hex[:8]}"


def log_skipped(topic: str, offset: int, error: MalformedRecordError) -> None:
    """One log line for a malformed control-plane record."""
    log.warning(
        "event=control_record_skipped topic=%s offset=%d kind=%s reason=%r", topic, offset, error.kind, str(error)
    )


def ensure_control_topics(
    connection: Connection,
    topics: Sequence[str],
    replication: Replication | None = None,
) -> None:
    """Create the control and status topics if missing: compacted, one partition (one order for every record)."""
    ensure_topics(connection, topics, 1, _CONTROL_CONFIG, replication=replication)


def read_control(
    connection: Connection,
    topic: str,
    timeout: float = 30.0,
    skipped: Skipped = log_skipped,
) -> ControlState:
    """Read a control-plane topic from its start to its end as of now; ``skipped`` is told of each
    malformed record, which is left out."""
    consumer = connection.reader("control")
    state = ControlState()
    deadline = time.monotonic() + timeout
    try:
        low, high = _watermarks(consumer, topic, deadline)
        if high <= low:
            state.offset = high
            return state
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        while state.offset < high:
            if time.monotonic() > deadline:
                raise BrokerError(f"control topic {topic!r}: not read to its end within {timeout:.0f}s")
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                _raise_if_denied(topic, message.error())
                continue
            try:
                state.read(message.key(), message.value())
            except MalformedRecordError as error:
                skipped(topic, message.offset() or 0, error)
            state.offset = (message.offset() or 0) + 1
        return state
    except KafkaException as error:
        raise BrokerError(f"control topic {topic!r} cannot be read: {error.args[0].str()}") from None
    finally:
        consumer.close()


def _raise_if_denied(topic: str, error: KafkaError) -> None:
    """Stop at once where asking again cannot help: the principal may not read the topic."""
    if error.fatal() or error.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED):
        raise BrokerError(f"topic {topic!r} cannot be read: {error.str()} (see the ACLs in docs/security.md)")


def _watermarks(consumer: Any, topic: str, deadline: float) -> tuple[int, int]:
    """The control partition's first and next offsets; a topic just created may take a moment to
    have a leader, so this asks again until ``deadline``."""
    while True:
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
        except KafkaException as failure:
            _raise_if_denied(topic, failure.args[0])
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def control_producer(connection: Connection) -> Any:
    """A producer for control records: idempotent, every write acknowledged by all replicas."""
    return connection.producer({"enable.idempotence": True, "acks": "all", "linger.ms": 0})


def group_workers(connection: Connection, group: str) -> list[str]:
    """The stream-clf workers that are members of ``group`` now, by name."""

    async def members() -> list[GroupMember]:
        reader = GroupReader(connection, group)
        try:
            return await reader.members()
        finally:
            await reader.close()

    try:
        found = asyncio.run(members())
    except (AIOKafkaError, OSError, TimeoutError) as error:
        raise BrokerError(f"consumer group {group!r} cannot be described: {error}") from None
    return sorted(
        member.client_id[len(CLIENT_ID_PREFIX) :] for member in found if member.client_id.startswith(CLIENT_ID_PREFIX)
    )


@dataclass(frozen=True)
class SwapAnswers:
    """A swap as sent, and each running worker's answer to it (None: no answer within the wait)."""

    request: SwapRequest
    answers: dict[str, WorkerStatus | None]


def ask_swap(
    connection: Connection,
    topics: tuple[str, str],
    group: str,
    *,
    target: str,
    model: str | None,
    expect: str | None,
    wait: float = 60.0,
    skipped: Skipped = log_skipped,
) -> SwapAnswers:
    """Ask ``group`` to serve ``target`` with ``model`` of version ``expect`` (``model`` None: roll back
    to what the last swap replaced), then wait up to ``wait`` seconds for every running worker of
    the group to answer. ``topics`` are the control and the status topic."""
    control, status_topic = topics
    ensure_control_topics(connection, topics)
    state = read_control(connection, control, skipped=skipped)
    statuses = read_control(connection, status_topic, skipped=skipped)
    workers = group_workers(connection, group)
    live = [status for worker, status in statuses.group_statuses(group).items() if worker in workers]
    last = state.swaps.get((group, target))
    if model is None:
        if last is None or last.previous is None or last.previous_version is None:
            raise ConfigError(f"nothing to roll back: group {group!r} has no swap of {_target_name(target)} on record")
        model, expect = last.previous, last.previous_version
    if expect is None:
        raise ConfigError(f"--model {model}: give the version it must have, --expect-version HASH")
    serving = [status.serving[target] for status in live if target in status.serving]
    configured = [status.configured[target]["version"] for status in live if target in status.configured]
    request = SwapRequest(
        group,
        target,
        model,
        expect,
        previous=serving[0]["model"] if serving else (last.model if last else None),
        previous_version=serving[0]["version"] if serving else (last.expect if last else None),
        configured=configured[0] if configured else (last.configured if last else None),
    )
    producer = control_producer(connection)
    producer.produce(control, key=request.key, value=request.encode())
    if producer.flush(30):
        raise BrokerError(f"control topic {control!r}: the swap was not acknowledged within 30s")
    answers: dict[str, WorkerStatus | None] = dict.fromkeys(workers)
    for worker in workers:  # a worker started with --swaps off will not answer: its status says so
        known = statuses.statuses.get((group, worker))
        if known is not None and not known.follows:
            answers[worker] = known
    if any(answer is None for answer in answers.values()) and wait > 0:
        _await_answers(
            connection,
            status_topic,
            request,
            answers=answers,
            offset=statuses.offset,
            wait=wait,
            skipped=skipped,
        )
    return SwapAnswers(request, answers)


def _await_answers(
    connection: Connection,
    topic: str,
    request: SwapRequest,
    *,
    answers: dict[str, WorkerStatus | None],
    offset: int,
    wait: float,
    skipped: Skipped,
) -> None:
    consumer = connection.reader("control")
    consumer.assign([TopicPartition(topic, 0, offset)])
    state = ControlState()
    deadline = time.monotonic() + wait
    try:
        while any(answer is None for answer in answers.values()) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            try:
                status = state.read(message.key(), message.value())
            except MalformedRecordError as error:
                skipped(topic, message.offset(), error)
                continue
            if isinstance(status, WorkerStatus) and status.worker in answers and status.request == request.request:
                answers[status.worker] = status
    finally:
        consumer.close()


@dataclass(frozen=True)
class ControlRecord:
    """One record of the control topic as read: where it was, its key and its value (None: a tombstone)."""

    topic: str
    offset: int
    key: bytes | None
    value: bytes | None


class ControlFeed(Protocol):
    """Where a worker's swap follower reads requests and reports its status: the control and status
    topics (:class:`KafkaControlFeed`), or a stand-in in memory for a test."""

    def read_to_end(self, skipped: Skipped) -> ControlState:
        """The control topic read from its start to its end as of now; ``skipped`` hears of each malformed record."""
        ...

    def open(self, offset: int) -> None:
        """Start reading requests from ``offset`` on."""
        ...

    def poll(self, timeout: float) -> ControlRecord | None:
        """The next request record, or None when none came within ``timeout`` seconds."""
        ...

    def report(self, key: bytes, value: bytes | None) -> None:
        """Write (or with None delete) a status record, and wait for it to be acknowledged."""
        ...

    def close(self) -> None:
        """Stop reading requests."""
        ...


class KafkaControlFeed:
    """The control plane on Kafka: requests read from ``topics[0]``, statuses written to ``topics[1]``."""

    def __init__(self, connection: Connection, topics: tuple[str, str]) -> None:
        self._connection = connection
        self._control, self._status = topics
        self._producer = control_producer(connection)
        self._consumer: Any = None

    def read_to_end(self, skipped: Skipped) -> ControlState:
        return read_control(self._connection, self._control, skipped=skipped)

    def open(self, offset: int) -> None:
        self._consumer = self._connection.reader("swaps")
        self._consumer.assign([TopicPartition(self._control, 0, offset)])

    def poll(self, timeout: float) -> ControlRecord | None:
        message = self._consumer.poll(timeout)
        if message is None or message.error():
            return None
        return ControlRecord(self._control, message.offset() or 0, message.key(), message.value())

    def report(self, key: bytes, value: bytes | None) -> None:
        self._producer.produce(self._status, key=key, value=value, on_delivery=_status_written)
        self._producer.flush(10)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def _status_written(error: KafkaError | None, message: Any) -> None:
    if error is not None:
        log.error("event=status_not_written topic=%s error=%r", message.topic(), error.str())


def _target_name(target: str) -> str:
    return "the default model" if target == "*" else f"topic {target!r}"
