"""Measurements through a real broker: a worker process between an input and an output topic.

Throughput: the input topic is filled at once; a service that batches (stream-clf's worker, Spark
NLP) is ready first and counted from the filled topic to the last result, so that its first batch
counts; the naive baseline, one event at a time, from its first result to its last, so that its
start-up is left out. Latency: with the worker warm, events are sent
at a fixed fraction of that rate, and each one's time from ``produce()`` to its result arriving at
a consumer is recorded.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer, Message, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from stream_clf.errors import StreamClfError
from stream_clf.kafka.connection import Connection
from stream_clf.kafka.topics import ensure_topics
from stream_clf.ops.metrics.threads import cpu_seconds
from stream_clf.tools.broker import free_port
from stream_clf.worker.publisher import produce
from stream_clf.worker.records import OutRecord

__all__ = [
    "CpuMeter",
    "EventEncoder",
    "RunningService",
    "StageSample",
    "StreamResult",
    "Track",
    "json_event",
    "measure_latency",
    "measure_swap",
    "measure_throughput",
    "p50_p99",
    "paced_texts",
    "percentile",
    "resident_bytes",
    "start_service",
]

Advance = Callable[[int], None]
# Writes one event's value from its (id, text): JSON by default, a registry format to compare it with.
EventEncoder = Callable[[str, str], bytes]
# A progress bar's maker: ``track(description, total)`` returns its advance.
Track = Callable[[str, int | None], Advance]
LOOP = "service event loop"


class CpuMeter:
    """CPU used by named processes (or threads) between :meth:`mark` and :meth:`read` (from /proc, Linux only).

    It tells where the machine went during the end-to-end run: to the worker, or to the broker and
    the benchmark's own clients that share its cores. ``threads`` are measured alone: a process's main
    thread is its event loop.
    """

    def __init__(self, pids: dict[str, int], threads: dict[str, int] | None = None) -> None:
        self._stats = {name: Path(f"/proc/{pid}/stat") for name, pid in pids.items()}
        self._stats.update({name: Path(f"/proc/{pid}/task/{pid}/stat") for name, pid in (threads or {}).items()})
        self._start: dict[str, float] = {}
        self._started = 0.0

    def mark(self) -> None:
        self._start = {name: _cpu_seconds(stat) for name, stat in self._stats.items()}
        self._started = time.monotonic()

    def read(self) -> tuple[dict[str, float], dict[str, float]]:
        """The average cores each one used since :meth:`mark`, and its CPU seconds."""
        elapsed = time.monotonic() - self._started
        if not self._start or elapsed <= 0:
            return {}, {}
        used = {name: _cpu_seconds(stat) - self._start[name] for name, stat in self._stats.items()}
        return {name: seconds / elapsed for name, seconds in used.items()}, used


def _cpu_seconds(stat: Path) -> float:
    """User plus system CPU seconds of a process (or thread) so far; 0 where /proc cannot tell."""
    return cpu_seconds(stat) or 0.0


def resident_bytes(pid: int) -> dict[str, int]:
    """Resident memory now (``rss``) and at its peak (``peak``), from /proc; empty where it cannot tell."""
    names = {"VmRSS": "rss", "VmHWM": "peak"}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    memory = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name in names:
            memory[names[name]] = int(value.split()[0]) * 1024
    return memory


@dataclass(frozen=True)
class StageSample:
    """The worker's stage clocks (seconds per stage and state), inference lanes and CPU seconds of its
    threads by role, read from /metrics."""

    seconds: dict[tuple[str, str], float]
    lanes: int
    threads: dict[str, float]

    @classmethod
    def scrape(cls, port: int) -> "StageSample":
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        seconds, lanes, threads = {}, 1, {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "stream_clf_stage_seconds_total":
                    seconds[sample.labels["stage"], sample.labels["state"]] = sample.value
                elif sample.name == "stream_clf_inference_lanes":
                    lanes = int(sample.value)
                elif sample.name == "stream_clf_thread_cpu_seconds_total":
                    threads[sample.labels["thread"]] = sample.value
        return cls(seconds, lanes, threads)

    def thread_cores(self, earlier: "StageSample", wall: float) -> dict[str, float]:
        """The cores each role of the worker's threads used over ``wall`` seconds since ``earlier``."""
        return {role: (seconds - earlier.threads.get(role, 0.0)) / wall for role, seconds in self.threads.items()}

    def shares(self, earlier: "StageSample", wall: float) -> dict[str, dict[str, float]]:
        """Each stage's share of ``wall`` seconds in each state since ``earlier``; the lanes' busy
        share is of all lanes' time, and the rest of it is their starved share."""
        shares: dict[str, dict[str, float]] = {}
        for (stage, state), total in self.seconds.items():
            width = self.lanes if stage == "lanes" else 1
            shares.setdefault(stage, {})[state] = (total - earlier.seconds.get((stage, state), 0.0)) / (wall * width)
        if "lanes" in shares:
            shares["lanes"]["starved"] = max(0.0, 1.0 - shares["lanes"].get("busy", 0.0))
        return shares


@dataclass(frozen=True)
class StreamResult:
    """A throughput run: ``counted`` events in ``seconds`` (see :func:`measure_throughput`)."""

    events: int
    counted: int
    seconds: float
    cores: dict[str, float]
    labels: dict[str, str]
    stages: dict[str, dict[str, float]] | None = None
    memory: dict[str, int] | None = None
    loop_seconds: float | None = None  # CPU seconds of the service's main thread (its event loop)
    threads: dict[str, float] | None = None  # cores used by the worker's threads, by role (with ``stages``)

    @property
    def events_per_second(self) -> float:
        return self.counted / self.seconds

    @property
    def loop_microseconds_per_event(self) -> float | None:
        """CPU time the service's event loop spent per event counted: its per-event Python cost."""
        return None if not self.loop_seconds else self.loop_seconds / self.counted * 1e6


@dataclass
class RunningService:
    """A worker (stream-clf's or the baseline) consuming ``input`` and producing ``output``."""

    process: subprocess.Popen[bytes]
    input: str
    output: str
    log: Path
    web_port: int
    group: str

    def wait_ready(self, timeout: float) -> None:
        """Wait until the worker's ``/readyz`` answers 200 (stream-clf's worker only)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:  # not listening yet, or 503
                pass
            time.sleep(0.5)
        raise StreamClfError(f"the worker was not ready after {timeout:.0f}s; see {self.log}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def check(self) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            raise StreamClfError(f"the service under test exited with {self.process.returncode}: {' | '.join(tail)}")


def start_service(module_args: Sequence[str], bootstrap: str, partitions: int, log: Path) -> RunningService:
    """Create fresh topics and start ``python -m <module_args> --brokers ... --input ... --output ...``."""
    tag = uuid.uuid4().hex[:8]
    topics = (f"bench-in-{tag}", f"bench-out-{tag}", f"bench-dlq-{tag}")
    ensure_topics(Connection.to(bootstrap), topics, partitions)
    web_port = free_port()
    command = [
        sys.executable, "-m", *module_args, "--brokers", bootstrap, "--input", topics[0], "--output", topics[1],
        "--dlq", topics[2], "--group", f"bench-{tag}", "--web-port", str(web_port),
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return RunningService(process, topics[0], topics[1], log, web_port, f"bench-{tag}")


def json_event(event_id: str, text: str) -> bytes:
    """An event as the worker reads it by default: ``{"id", "text"}``."""
    return orjson.dumps({"id": event_id, "text": text})


def _produce(
    bootstrap: str,
    topic: str,
    events: Sequence[tuple[str, str]],
    pace: float | None = None,
    encode: EventEncoder = json_event,
) -> dict[str, float]:
    """Send (id, text) events written by ``encode``; with ``pace`` (events/s), evenly spaced. Returns
    each id's send time."""
    # The topic's own limit decides what it takes; the producer's default (1,000,000 bytes) would
    # refuse a megabyte text before the broker could take it.
    producer = Connection.to(bootstrap).producer({"linger.ms": 5, "message.max.bytes": 64 << 20})
    sent: dict[str, float] = {}
    started = time.monotonic()
    for index, (event_id, text) in enumerate(events):
        if pace:
            delay = started + index / pace - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        sent[event_id] = time.monotonic()
        # A record librdkafka refuses is a BrokerError: one line from the CLI.
        produce(producer, OutRecord(topic, None, encode(event_id, text), []))
        producer.poll(0)
    producer.flush(60)
    return sent


def _consumer(bootstrap: str, topic: str) -> Consumer:
    consumer = Connection.to(bootstrap).reader("bench")
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    return consumer


def _collect(
    consumer: Consumer,
    ids: set[str],
    service: RunningService,
    timeout: float,
    advance: Advance,
    *,
    on_first: Callable[[], None] = lambda: None,
    results: dict[str, dict] | None = None,
) -> dict[str, float]:
    """Arrival time of each id's result; ``on_first`` is called when the first one arrives, and
    ``results`` (if given) receives each result."""
    arrived: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(arrived) < len(ids):
        if time.monotonic() > deadline:
            raise StreamClfError(f"only {len(arrived)} of {len(ids)} results after {timeout:.0f}s")
        service.check()
        for message in _arrived(consumer):
            if message.error():
                continue
            result = orjson.loads(message.value())
            event_id = result.get("id")
            if event_id in ids and event_id not in arrived:
                if not arrived:
                    on_first()
                arrived[event_id] = time.monotonic()
                if results is not None:
                    results[event_id] = result
                advance(1)
    return arrived


def _arrived(consumer: Consumer) -> list[Message]:
    """The messages available now, waiting up to 0.2 s for the first.

    Not ``consume(n, timeout)`` alone: it waits until ``n`` messages or the timeout, which would
    add up to the timeout to every latency measured.
    """
    first = consumer.poll(0.2)
    return [] if first is None else [first, *consumer.consume(500, 0)]


def measure_throughput(
    bootstrap: str,
    service: RunningService,
    texts: Sequence[str],
    timeout: float,
    advance: Advance,
    *,
    others: dict[str, int] | None = None,
    stages: bool = False,
    from_filled: bool = False,
    encode: EventEncoder = json_event,
) -> StreamResult:
    """Events per second from a pre-filled input topic, first result to last.

    With ``from_filled``, from the moment the topic is filled to the last result instead: for a
    service that answers a micro-batch at a time, first-to-last would count a whole batch for free.
    Also the cores used meanwhile by the service (and the CPU time of its event loop), this process
    (the benchmark's clients) and ``others`` (name to pid: the broker); the service's resident memory
    at the end; each event's label; and with ``stages``, the share of the time each of its stages
    spent busy, starved and blocked, and the cores its threads used, by role. ``encode`` writes the
    events (JSON unless a format is being compared).
    """
    events = [(f"t{i}", text) for i, text in enumerate(texts)]
    _produce(bootstrap, service.input, events, encode=encode)
    filled = time.monotonic()
    pids = {"service": service.process.pid, "bench clients": os.getpid(), **(others or {})}
    meter = CpuMeter(pids, threads={LOOP: service.process.pid})
    if from_filled:
        meter.mark()
    consumer = _consumer(bootstrap, service.output)
    first: list[tuple[float, StageSample]] = []

    def on_first() -> None:
        if not from_filled:
            meter.mark()
        if stages:
            first.append((time.monotonic(), StageSample.scrape(service.web_port)))

    results: dict[str, dict] = {}
    try:
        ids = {event_id for event_id, _ in events}
        arrived = _collect(consumer, ids, service, timeout, advance, on_first=on_first, results=results)
        cores, used = meter.read()
        cores.pop(LOOP, None)
        shares = threads = None
        if first:
            started, earlier = first[0]
            now, wall = StageSample.scrape(service.web_port), time.monotonic() - started
            shares, threads = now.shares(earlier, wall), now.thread_cores(earlier, wall)
    finally:
        consumer.close()
    times = sorted(arrived.values())
    start = filled if from_filled else times[0]
    return StreamResult(
        events=len(times),
        counted=len(times) if from_filled else len(times) - 1,
        seconds=times[-1] - start,
        cores=cores,
        loop_seconds=used.get(LOOP),
        labels={event_id: result.get("label") for event_id, result in results.items()},
        stages=shares,
        threads=threads,
        memory=resident_bytes(service.process.pid),
    )


def measure_latency(
    bootstrap: str, service: RunningService, texts: Sequence[str], *, pace: float, timeout: float, advance: Advance
) -> list[float]:
    """Produce-to-result seconds of each event sent at ``pace`` events per second."""
    tag = uuid.uuid4().hex[:8]
    events = [(f"l{tag}-{i}", text) for i, text in enumerate(texts)]
    consumer = _consumer(bootstrap, service.output)
    sent: dict[str, float] = {}
    sender = threading.Thread(target=lambda: sent.update(_produce(bootstrap, service.input, events, pace)))
    sender.start()
    try:
        arrived = _collect(consumer, {event_id for event_id, _ in events}, service, timeout, advance)
    finally:
        sender.join()
        consumer.close()
    return sorted(arrived[event_id] - sent[event_id] for event_id in arrived)


def measure_swap(
    bootstrap: str,
    service: RunningService,
    texts: Sequence[str],
    *,
    pace: float,
    swap: Callable[[], float | None],
    timeout: float,
    advance: Advance,
) -> dict[str, float | int | None]:
    """Latency around a model swap asked for half-way through a paced load.

    ``swap`` asks for it and returns the seconds the worker took to load, check and warm the new
    model (None if it did not apply it). Compared: produce-to-result latency of the events sent in
    the 5 s before the request, and of those sent from the request until a second after the first
    result of the new model arrived.
    """
    tag = uuid.uuid4().hex[:8]
    events = [(f"s{tag}-{i}", text) for i, text in enumerate(texts)]
    consumer = _consumer(bootstrap, service.output)
    sent: dict[str, float] = {}
    results: dict[str, dict] = {}
    asked: list[float] = []
    loaded: list[float | None] = []

    def ask() -> None:
        time.sleep(len(events) / pace / 2)
        asked.append(time.monotonic())
        loaded.append(swap())

    sender = threading.Thread(target=lambda: sent.update(_produce(bootstrap, service.input, events, pace)))
    swapper = threading.Thread(target=ask)
    sender.start()
    swapper.start()
    try:
        arrived = _collect(consumer, {event_id for event_id, _ in events}, service, timeout, advance, results=results)
    finally:
        sender.join()
        swapper.join()
        consumer.close()
    versions = {event_id: result.get("model_version") for event_id, result in results.items()}
    first_version = versions[events[0][0]]
    switched = min((arrived[i] for i, v in versions.items() if v != first_version), default=None)
    before = [arrived[i] - at for i, at in sent.items() if asked[0] - 5 <= at < asked[0]]
    during = [arrived[i] - at for i, at in sent.items() if switched and asked[0] <= at <= switched + 1]
    return {
        "load_seconds": loaded[0],
        "request_to_first_new_result_seconds": switched - asked[0] if switched else None,
        "p99_before": percentile(before, 99) if before else None,
        "p99_during": percentile(during, 99) if during else None,
        "events_during": len(during),
    }


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q))


def p50_p99(latencies: Sequence[float]) -> dict[str, float]:
    """The median and 99th percentile of latencies, as the reports record them."""
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)}


def paced_texts(texts: Sequence[str], pace: float, seconds: float) -> list[str]:
    """The texts of a paced load: ``seconds`` of events at ``pace`` events/s (20 at least), cycled."""
    count = max(20, round(pace * seconds))
    return [texts[i % len(texts)] for i in range(count)]
