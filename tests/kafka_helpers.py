"""Shared helpers for the integration tests: worker processes, producing events, collecting records."""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from stream_clf.kafka.connection import Connection
from stream_clf.kafka.topics import ensure_topics
from stream_clf.tools.broker import free_port
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS


@dataclass(frozen=True)
class Record:
    """One record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp: int | None = None  # ms since the epoch (the producer's CreateTime)


@dataclass(frozen=True)
class Topics:
    """A test's own input, output and dead-letter topics, and consumer group."""

    input: str
    output: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls, bootstrap: str, partitions: int = 4) -> "Topics":
        tag = uuid.uuid4().hex[:8]
        topics = cls(f"in-{tag}", f"out-{tag}", f"dlq-{tag}", f"group-{tag}")
        ensure_topics(Connection.to(bootstrap), [topics.input, topics.output, topics.dlq], partitions)
        return topics


@dataclass
class WorkerProcess:
    """A ``stream-clf worker`` subprocess, with its log in a file."""

    bootstrap: str
    topics: Topics
    model: Path
    log: Path
    extra_args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> "WorkerProcess":
        command = [
            sys.executable, "-m", "stream_clf", "worker",
            "--brokers", self.bootstrap, "--model", str(self.model),
            "--input", self.topics.input, "--output", self.topics.output, "--dlq", self.topics.dlq,
            "--group", self.topics.group, "--web-port", str(free_port()),
            "--session-timeout-ms", "6000", "--max-wait-ms", "10",
            *self.extra_args,
        ]  # fmt: skip
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=os.environ.copy())
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def assert_running(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        assert code is None, f"the worker exited with code {code}:\n{self.log_tail()}"

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush or commit."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def produce(
    bootstrap: str,
    topic: str,
    events: Iterable[tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, list]],
    config: dict[str, object] | None = None,
) -> list[Record]:
    """Produce (key, value) pairs, or (key, value, headers), in order, wait for every acknowledgement,
    return where each landed."""
    settings = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "partitioner": "murmur2_random"}
    producer = Producer(settings | (config or {}))
    landed: dict[int, Record] = {}
    failures: list[str] = []

    def delivered(index: int) -> Callable:
        def callback(error, message) -> None:
            if error is not None:
                failures.append(error.str())
                return
            landed[index] = Record(
                topic, message.partition(), message.offset(), message.key(), message.value(), {}, message.timestamp()[1]
            )

        return callback

    count = 0
    for index, (key, value, *headers) in enumerate(events):
        producer.produce(topic, key=key, value=value, headers=headers[0] if headers else None,
                         on_delivery=delivered(index))  # fmt: skip
        producer.poll(0)
        count += 1
    assert producer.flush(30) == 0, "events left unacknowledged"
    assert not failures, failures
    return [landed[index] for index in range(count)]


def produce_steadily(
    bootstrap: str, topic: str, events: list, seconds: float, landed: list[Record] | None = None
) -> threading.Thread:
    """Produce ``events`` in 50 slices spread over ``seconds``, from a thread; ``landed`` (if given)
    receives where each event landed, in order."""
    step = max(1, len(events) // 50)

    def run() -> None:
        for start in range(0, len(events), step):
            records = produce(bootstrap, topic, events[start : start + step])
            if landed is not None:
                landed.extend(records)
            time.sleep(seconds / 50)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def collect(
    bootstrap: str,
    topics: Sequence[str],
    *,
    until: Callable[[list[Record]], bool],
    timeout: float,
    settle: float = 0.0,
    watch: Sequence["WorkerProcess"] = (),
) -> list[Record]:
    """Read ``topics`` from the beginning until ``until(records)`` holds, then ``settle`` seconds more.

    The extra seconds catch records that should not exist (duplicates). Fails after ``timeout``,
    or as soon as one of the ``watch`` workers has exited.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"collector-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe(list(topics))
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    settled_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            if settled_at is None and until(records):
                settled_at = now + settle
            if settled_at is not None and now >= settled_at:
                return records
            if now > deadline:
                raise AssertionError(f"timed out after {timeout}s with {len(records)} records")
            for worker in watch:
                worker.assert_running()
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            records.append(
                Record(
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    message.key(),
                    message.value(),
                    dict(message.headers() or []),
                    message.timestamp()[1],
                )
            )
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The consumer group's committed offset of each partition (-1001 or below: none yet)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


KEYS = 50


def keyed_events(count: int, start: int = 0, keys: int = KEYS) -> list[tuple[bytes, bytes]]:
    """``count`` events over ``keys`` keys; each carries its per-key sequence number in meta."""
    events = []
    for i in range(start, start + count):
        key = f"user-{i % keys}"
        text = SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]
        events.append((key.encode(), orjson.dumps({"id": f"e{i}", "text": text, "meta": {"seq": i // keys}})))
    return events


def results_of(records: list[Record], topics: Topics) -> list[dict]:
    return [orjson.loads(record.value) for record in records if record.topic == topics.output]


def ids_seen(topics: Topics, expected: int):
    return lambda records: len({r["id"] for r in results_of(records, topics)}) >= expected
