"""The control topic: model swaps asked of a consumer group, and what each of its workers serves.

::

    stream-clf swap ──► control topic (compacted, one partition) ──► every worker of the group
      waits for the      swap/GROUP[/TOPIC]: the model to serve       loads, checks and warms it
      workers' answers   status/GROUP/WORKER: what a worker serves ◄─ beside the old one, then
                                                                      switches between batches

Records are JSON, keyed so that compaction keeps the latest of each:

- ``swap/GROUP`` (the default model) or ``swap/GROUP/TOPIC`` (a topic's route): a
  :class:`SwapRequest`.
- ``status/GROUP/WORKER``: a :class:`WorkerStatus`, written by each worker at start and after
  each swap it applied or refused. A worker that stops cleanly deletes its own (a tombstone).

Workers are named ``INSTANCE-XXXXXXXX`` (a random suffix per process) and their consumers'
client id is ``stream-clf.WORKER``, so the consumer group's member list says which statuses
belong to workers that are running.
"""

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from stream_clf.errors import BrokerError, ConfigError
from stream_clf.kafka import clients
from stream_clf.kafka.security import PLAINTEXT, KafkaSecurity
from stream_clf.kafka.topics import ensure_topics

__all__ = [
    "CLIENT_ID_PREFIX",
    "ControlState",
    "SwapAnswers",
    "SwapRequest",
    "WorkerStatus",
    "ask_swap",
    "control_producer",
    "ensure_control_topic",
    "group_workers",
    "new_worker_id",
    "read_control",
]

CLIENT_ID_PREFIX = "stream-clf."
_CONTROL_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}


def new_worker_id(instance: str) -> str:
    """A name for one worker process: its instance and a random suffix (two workers may share a host)."""
    return f"{instance}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class SwapRequest:
    """Serve ``target`` (``*``: the default model; else a topic's route) with ``model`` from now on.

    ``model`` is a bundle path or a built model's name, as the workers see it. ``previous`` is what
    the group served when the swap was asked for (a rollback swaps back to it); ``configured`` the
    version of the model the workers were started with for that target, so a worker started later
    with another ``--model`` (a new deployment) is not overridden by an old swap.
    """

    group: str
    target: str
    model: str
    request: str = field(default_factory=lambda: uuid.uuid4().hex)
    previous: str | None = None
    configured: str | None = None
    at: float = field(default_factory=time.time)

    @property
    def key(self) -> bytes:
        return swap_key(self.group, self.target)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))


@dataclass(frozen=True)
class WorkerStatus:
    """What one worker serves, and how the last swap it was asked for ended.

    ``serving`` and ``configured`` map each target (``*`` or a topic) to ``{"model", "version"}``:
    what serves it now, and what the worker was started with.
    """

    group: str
    worker: str
    serving: Mapping[str, Mapping[str, str]]
    configured: Mapping[str, Mapping[str, str]]
    request: str | None = None
    outcome: str | None = None  # applied, refused, or skipped (at start: the worker's --model changed)
    reason: str | None = None
    seconds: float | None = None  # from the swap's arrival to its model serving
    at: float = field(default_factory=time.time)

    @property
    def key(self) -> bytes:
        return status_key(self.group, self.worker)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))


def swap_key(group: str, target: str) -> bytes:
    return f"swap/{group}".encode() if target == "*" else f"swap/{group}/{target}".encode()


def status_key(group: str, worker: str) -> bytes:
    return f"status/{group}/{worker}".encode()


@dataclass
class ControlState:
    """The latest record of each key on the control topic, decoded; and the offset read up to."""

    swaps: dict[tuple[str, str], SwapRequest] = field(default_factory=dict)
    statuses: dict[tuple[str, str], WorkerStatus] = field(default_factory=dict)
    offset: int = 0

    def read(self, key: bytes | None, value: bytes | None) -> SwapRequest | WorkerStatus | None:
        """Take one record in; return what it holds (None for a tombstone or a record not understood)."""
        name = (key or b"").decode(errors="replace")
        kind, _, rest = name.partition("/")
        try:
            document: dict[str, Any] = orjson.loads(value) if value is not None else {}
        except orjson.JSONDecodeError:
            return None
        if kind == "swap":
            group, _, target = rest.partition("/")
            if value is None:
                self.swaps.pop((group, target or "*"), None)
                return None
            request = _build(SwapRequest, document)
            if request is not None:
                self.swaps[request.group, request.target] = request
            return request
        if kind == "status":
            group, _, worker = rest.partition("/")
            if value is None:
                self.statuses.pop((group, worker), None)
                return None
            status = _build(WorkerStatus, document)
            if status is not None:
                self.statuses[status.group, status.worker] = status
            return status
        return None

    def group_statuses(self, group: str) -> dict[str, WorkerStatus]:
        return {worker: status for (g, worker), status in self.statuses.items() if g == group}


def _build(kind: type, document: dict[str, Any]) -> Any:
    try:
        return kind(**document)
    except TypeError:  # a record of another version of stream-clf, or not ours
        return None


def ensure_control_topic(brokers: Sequence[str], topic: str, security: KafkaSecurity = PLAINTEXT) -> None:
    """Create the control topic if missing: compacted, one partition (one order for every record)."""
    ensure_topics(brokers, [topic], 1, _CONTROL_CONFIG, security=security)


def read_control(
    brokers: Sequence[str], topic: str, security: KafkaSecurity = PLAINTEXT, timeout: float = 30.0
) -> ControlState:
    """Read the control topic from its start to its end as of now."""
    consumer = clients.reader(brokers, "control", security)
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
            if message is None or message.error():
                continue
            state.read(message.key(), message.value())
            state.offset = message.offset() + 1
        return state
    except KafkaException as error:
        raise BrokerError(f"control topic {topic!r} cannot be read: {error.args[0].str()}") from None
    finally:
        consumer.close()


def _watermarks(consumer: Any, topic: str, deadline: float) -> tuple[int, int]:
    """The control partition's first and next offsets; a topic just created may take a moment to
    have a leader, so this asks again until ``deadline``."""
    while True:
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def control_producer(brokers: Sequence[str], security: KafkaSecurity = PLAINTEXT) -> Any:
    """A producer for control records: idempotent, every write acknowledged by all replicas."""
    return clients.producer(brokers, security, {"enable.idempotence": True, "acks": "all", "linger.ms": 0})


def group_workers(brokers: Sequence[str], group: str, security: KafkaSecurity = PLAINTEXT) -> list[str]:
    """The stream-clf workers that are members of ``group`` now, by name."""
    admin = clients.admin_client(brokers, security)
    try:
        (future,) = admin.describe_consumer_groups([group], request_timeout=30).values()
        description = future.result()
    except KafkaException as error:
        raise BrokerError(f"consumer group {group!r} cannot be described: {error.args[0].str()}") from None
    return sorted(
        member.client_id[len(CLIENT_ID_PREFIX) :]
        for member in description.members
        if member.client_id.startswith(CLIENT_ID_PREFIX)
    )


@dataclass(frozen=True)
class SwapAnswers:
    """A swap as sent, and each running worker's answer to it (None: no answer within the wait)."""

    request: SwapRequest
    answers: dict[str, WorkerStatus | None]


def ask_swap(
    brokers: Sequence[str],
    topic: str,
    group: str,
    *,
    target: str,
    model: str | None,
    security: KafkaSecurity = PLAINTEXT,
    wait: float = 60.0,
) -> SwapAnswers:
    """Ask ``group`` to serve ``target`` with ``model`` (None: roll back to what the last swap replaced),
    then wait up to ``wait`` seconds for every running worker of the group to answer."""
    ensure_control_topic(brokers, topic, security)
    state = read_control(brokers, topic, security)
    workers = group_workers(brokers, group, security)
    live = [status for worker, status in state.group_statuses(group).items() if worker in workers]
    last = state.swaps.get((group, target))
    if model is None:
        if last is None or last.previous is None:
            raise ConfigError(f"nothing to roll back: group {group!r} has no swap of {_target_name(target)} on record")
        model = last.previous
    serving = [status.serving[target]["model"] for status in live if target in status.serving]
    configured = [status.configured[target]["version"] for status in live if target in status.configured]
    request = SwapRequest(
        group,
        target,
        model,
        previous=serving[0] if serving else (last.model if last else None),
        configured=configured[0] if configured else (last.configured if last else None),
    )
    producer = control_producer(brokers, security)
    producer.produce(topic, key=request.key, value=request.encode())
    if producer.flush(30):
        raise BrokerError(f"control topic {topic!r}: the swap was not acknowledged within 30s")
    answers: dict[str, WorkerStatus | None] = dict.fromkeys(workers)
    if workers and wait > 0:
        _await_answers(brokers, topic, security, request, answers=answers, offset=state.offset, wait=wait)
    return SwapAnswers(request, answers)


def _await_answers(
    brokers: Sequence[str],
    topic: str,
    security: KafkaSecurity,
    request: SwapRequest,
    *,
    answers: dict[str, WorkerStatus | None],
    offset: int,
    wait: float,
) -> None:
    consumer = clients.reader(brokers, "control", security)
    consumer.assign([TopicPartition(topic, 0, offset)])
    state = ControlState()
    deadline = time.monotonic() + wait
    try:
        while any(answer is None for answer in answers.values()) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            status = state.read(message.key(), message.value())
            if isinstance(status, WorkerStatus) and status.worker in answers and status.request == request.request:
                answers[status.worker] = status
    finally:
        consumer.close()


def _target_name(target: str) -> str:
    return "the default model" if target == "*" else f"topic {target!r}"
