"""A steady stream of keyed events, the answers subscribers read, and what they tell.

Every event carries its id and its number within its key; the watch reads the output and the
dead-letter topics with ``read_committed`` (what a subscriber sees) and notes when each answer
arrived. From both: the events lost, the answers repeated, the keys whose answers came out of order,
the longest stretch in which an input partition's subscribers got no answer while events were sent
(a partition in a rebalance, or waiting for its worker), and each event's latency from ``produce()``
to its answer.
"""

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from stream_clf.kafka.connection import Connection
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS

__all__ = ["Answer", "ResultWatch", "SteadyStream", "Tally", "tally"]

KEYS = 60


class SteadyStream:
    """Events at ``rate`` per second to ``topic`` from a thread, until :meth:`stop`; ``sent`` maps each
    id to its key, its number within the key, and the monotonic time it was handed to the producer."""

    def __init__(self, connection: Connection, topic: str, rate: float, texts: Sequence[str] = SAMPLE_TEXTS) -> None:
        self._producer = connection.producer({"enable.idempotence": True, "acks": "all", "linger.ms": 5})
        self._topic = topic
        self._rate = rate
        self._texts = texts
        self.sent: dict[str, tuple[str, int, float]] = {}
        self.failures: list[str] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-stream", daemon=True)

    def start(self) -> "SteadyStream":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending and wait until every event sent is acknowledged."""
        self._stopping.set()
        self._thread.join()
        self._producer.flush(60)

    def _run(self) -> None:
        started = time.monotonic()
        count = 0
        while not self._stopping.is_set():
            due = started + count / self._rate
            if (wait := due - time.monotonic()) > 0:
                self._stopping.wait(wait)
                continue
            key, number = f"key-{count % KEYS}", count // KEYS
            event_id = f"d{count}"
            value = orjson.dumps({"id": event_id, "text": self._texts[count % len(self._texts)], "meta": {"n": number}})
            self._producer.produce(self._topic, key=key.encode(), value=value, on_delivery=self._delivered)
            self.sent[event_id] = (key, number, time.monotonic())
            self._producer.poll(0)
            count += 1

    def _delivered(self, error: object, _message: object) -> None:
        if error is not None:
            self.failures.append(str(error))


@dataclass(frozen=True)
class Answer:
    """One result or dead letter as a subscriber read it, and when it arrived (monotonic seconds)."""

    event_id: str
    arrived: float
    dead_letter: bool
    partition: int = -1  # the input partition its event was read from (a result says; a dead letter does not)


class ResultWatch:
    """Reads ``topics`` (results and dead letters) from their start with ``read_committed``, in a thread.

    Its partitions are assigned, not subscribed: a group member's ``close()`` waits in librdkafka for
    the group's coordinator, and hung for good once after a broker was killed; an assigned reader
    belongs to no group and closes at once.
    """

    def __init__(self, connection: Connection, output: str, dlq: str) -> None:
        self._consumer: Consumer = connection.consumer(
            {
                "group.id": f"stream-clf-drill-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.assign(
            [
                TopicPartition(topic, partition, OFFSET_BEGINNING)
                for topic in (output, dlq)
                for partition in self._partitions(topic)
            ]
        )
        self._dlq = dlq
        self.answers: list[Answer] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="result-watch", daemon=True)

    def _partitions(self, topic: str) -> list[int]:
        """The topic's partitions, once the metadata shows them (it may lag a topic just created)."""
        deadline = time.monotonic() + 30
        while True:
            found = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            if found is not None and found.error is None and found.partitions:
                return sorted(found.partitions)
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} has no partitions in the cluster's metadata")
            time.sleep(0.2)

    def start(self) -> "ResultWatch":
        self._thread.start()
        return self

    def answered(self) -> set[str]:
        return {answer.event_id for answer in list(self.answers)}

    def stop(self) -> None:
        """Stop reading and close the consumer; a second call does nothing."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._thread.join()
        self._consumer.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            for message in self._consumer.consume(500, 0.1):
                if message.error() is not None or message.value() is None:
                    continue
                try:
                    answer = orjson.loads(message.value())
                    event_id = str(answer["id"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
                source = answer.get("source") if message.topic() != self._dlq else None
                partition = source.get("partition", -1) if isinstance(source, dict) else -1
                self.answers.append(Answer(event_id, time.monotonic(), message.topic() == self._dlq, partition))


@dataclass(frozen=True)
class Tally:
    """What subscribers saw of a stream: see :func:`tally`."""

    sent: int
    answered: int
    lost: int
    duplicates: int
    out_of_order: int  # answers that came after a later event's answer of the same key
    dead_letters: int
    longest_pause: float  # seconds an input partition went without an answer while events were sent
    pause_at: float  # when that pause began, in seconds from ``since``
    latency: dict[str, float] = field(default_factory=dict)  # p50, p99, max, in seconds


def tally(sent: dict[str, tuple[str, int, float]], answers: Sequence[Answer], since: float, until: float) -> Tally:
    """Count ``answers`` against the events ``sent``; pauses are looked for between ``since`` and
    ``until`` (the stream's start and end, monotonic)."""
    first: dict[str, Answer] = {}
    for answer in answers:
        first.setdefault(answer.event_id, answer)
    newest: dict[str, int] = defaultdict(lambda: -1)
    out_of_order = 0
    for answer in sorted(first.values(), key=lambda a: a.arrived):
        if answer.event_id not in sent:
            continue
        key, number, _ = sent[answer.event_id]
        if number < newest[key]:
            out_of_order += 1
        newest[key] = max(newest[key], number)
    latencies = [answer.arrived - sent[event_id][2] for event_id, answer in first.items() if event_id in sent]
    longest_pause, pause_at = _longest_pause(answers, since, until)
    return Tally(
        sent=len(sent),
        answered=len(first.keys() & sent.keys()),
        lost=len(sent.keys() - first.keys()),
        duplicates=len(answers) - len(first),
        out_of_order=out_of_order,
        dead_letters=sum(1 for answer in first.values() if answer.dead_letter),
        longest_pause=longest_pause,
        pause_at=pause_at - since,
        latency={
            "p50": float(np.percentile(latencies, 50)) if latencies else 0.0,
            "p99": float(np.percentile(latencies, 99)) if latencies else 0.0,
            "max": max(latencies, default=0.0),
        },
    )


def _longest_pause(answers: Sequence[Answer], since: float, until: float) -> tuple[float, float]:
    """The longest gap between two answers of one input partition from ``since`` on, and when it began.

    Events are sent from ``since`` to ``until``: a partition that answered nothing since ``since`` paused
    from then, and one whose answers stopped before ``until`` paused from its last one to the end of the
    stream, or to its next answer after it (a partition that stalls at the end still has its events to
    answer)."""
    arrivals: dict[int, list[float]] = defaultdict(list)
    for answer in answers:
        if answer.arrived >= since:
            arrivals[answer.partition].append(answer.arrived)
    longest, began = 0.0, since
    for times in arrivals.values():
        times.sort()
        edges = np.array([since, *times, *([until] if times[-1] < until else [])])
        gaps = np.diff(edges)
        widest = int(np.argmax(gaps))
        if gaps[widest] > longest:
            longest, began = float(gaps[widest]), float(edges[widest])
    return longest, began
