"""Faults survived, through the real broker: a worker killed again and again, a broker restarted
under the worker's feet, workers joining and leaving mid-stream. Nothing is lost; order per key holds
where it is promised."""

import math
import os
import random
import signal
import time
from collections import Counter, defaultdict

import orjson
import pytest

from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.tools.bench.mixes import load_texts
from stream_clf.tools.broker import LocalKafka, free_port
from stream_clf.worker.stopping import STOP_DEADLINE_SECONDS
from tests.kafka_helpers import (
    KEYS,
    Topics,
    WorkerProcess,
    collect,
    ids_seen,
    keyed_events,
    produce,
    produce_steadily,
    results_of,
)
from tests.web_helpers import get, scrape, wait_for_status

pytestmark = pytest.mark.broker


def test_a_worker_killed_five_times_loses_nothing(kafka_bootstrap, topics, tiny_bundle, start_worker):
    total = 5000
    rng = random.Random(5)
    feeder = produce_steadily(kafka_bootstrap, topics.input, keyed_events(total), seconds=40)
    worker = start_worker(topics, tiny_bundle, "--max-batch", "16")
    kills = 0
    while kills < 5:
        progress = ids_seen(topics, 200 * (kills + 1))
        collect(kafka_bootstrap, [topics.output], until=progress, timeout=120, watch=[worker])
        time.sleep(rng.uniform(0.0, 2.0))  # a random moment while events flow
        worker.kill()
        kills += 1
        worker = start_worker(topics, tiny_bundle, "--max-batch", "16")
    feeder.join()
    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=ids_seen(topics, total), timeout=180,
                      settle=2, watch=[worker])  # fmt: skip
    ids = Counter(result["id"] for result in results_of(records, topics))
    assert set(ids) == {f"e{i}" for i in range(total)}, "every event has a result"
    duplicates = sum(ids.values()) - total
    print(f"crash loop: {total} events, {kills} kill -9s and restarts, 0 lost, {duplicates} duplicates")


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_the_worker_rides_out_a_broker_restart(tiny_bundle, tmp_path, stop):
    broker = LocalKafka(tmp_path / "kafka", port=free_port(), controller_port=free_port())
    broker.start()
    topics = Topics.fresh(broker.bootstrap)
    worker = WorkerProcess(broker.bootstrap, topics, tiny_bundle, tmp_path / "worker.log", ("--max-batch", "16"))
    total = 2000
    events = keyed_events(total)
    try:
        produce(broker.bootstrap, topics.input, events[:1000])
        worker.start()
        collect(broker.bootstrap, [topics.output], until=ids_seen(topics, 300), timeout=120, watch=[worker])
        if stop == "sigterm":
            broker.stop()
        else:
            broker.kill()
        time.sleep(5)  # the worker keeps running with no broker
        worker.assert_running()
        broker.start()
        produce(broker.bootstrap, topics.input, events[1000:])
        records = collect(broker.bootstrap, [topics.output, topics.dlq], until=ids_seen(topics, total),
                          timeout=240, settle=2, watch=[worker])  # fmt: skip
        worker.assert_running()  # it reconnected by itself
        ids = Counter(result["id"] for result in results_of(records, topics))
        assert set(ids) == {f"e{i}" for i in range(total)}
        print(f"broker {stop} + restart: {total} events, 0 lost, {sum(ids.values()) - total} duplicates")
    finally:
        if worker.running:
            worker.kill()
        broker.kill()


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_sigterm_ends_the_worker_within_its_deadline_even_with_the_broker_frozen(tiny_bundle, tmp_path, guarantee):
    # A broker that stops answering (SIGSTOP: alive, silent) would hold a clean stop forever; the
    # orchestrator's grace period must still see the process end.
    broker = LocalKafka(tmp_path / "kafka", port=free_port(), controller_port=free_port())
    broker.start()
    topics = Topics.fresh(broker.bootstrap)
    worker = WorkerProcess(broker.bootstrap, topics, tiny_bundle, tmp_path / "worker.log", ("--guarantee", guarantee))
    try:
        produce(broker.bootstrap, topics.input, keyed_events(20_000))  # a backlog: batches are in flight
        worker.start()
        collect(broker.bootstrap, [topics.output], until=ids_seen(topics, 200), timeout=120, watch=[worker])
        os.kill(broker.pid, signal.SIGSTOP)
        started = time.monotonic()
        code = worker.terminate(timeout=60)
        elapsed = time.monotonic() - started
        assert elapsed < STOP_DEADLINE_SECONDS + 5, f"took {elapsed:.0f}s"
        assert code in (0, 1), worker.log_tail()  # 0 if it stopped cleanly in time, 1 at the deadline
        print(f"frozen broker, {guarantee}: SIGTERM to exit in {elapsed:.1f}s, exit code {code}")
    finally:
        os.kill(broker.pid, signal.SIGCONT)
        if worker.running:
            worker.kill()
        broker.kill()


def test_workers_joining_and_leaving_keep_every_event_and_key_order_and_repeat_none(
    kafka_bootstrap, topics, tiny_bundle, start_worker
):
    total = 4000
    feeder = produce_steadily(kafka_bootstrap, topics.input, keyed_events(total), seconds=30)
    first = start_worker(topics, tiny_bundle, "--max-batch", "16")
    collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 500), timeout=120, watch=[first])
    second = start_worker(topics, tiny_bundle, "--max-batch", "16")  # joins: partitions are split
    collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 1500), timeout=120, watch=[first, second])
    assert second.terminate(timeout=60) == 0  # leaves cleanly: its partitions go back to the first
    feeder.join()
    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=ids_seen(topics, total), timeout=180,
                      settle=2, watch=[first])  # fmt: skip
    results = results_of(records, topics)
    ids = Counter(result["id"] for result in results)
    assert set(ids) == {f"e{i}" for i in range(total)}
    # Per key, the first time each event appears is in the order the key's events were produced.
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for record in records:  # read in output offset order; a key always lands in the same partition
        if record.topic != topics.output:
            continue
        result = orjson.loads(record.value)
        if result["id"] in seen:
            continue
        seen.add(result["id"])
        first_seen[record.key.decode()].append(result["meta"]["seq"])
    assert len(first_seen) == KEYS
    for key, sequence in first_seen.items():
        assert sequence == sorted(sequence), f"{key}: results out of order"
    assert sum(ids.values()) == total, "partitions are handed over with what was delivered committed: no repeats"


def test_slow_inference_keeps_the_worker_in_its_group(kafka_bootstrap, topics, news_model, start_worker):
    # One thread and batches sized to take about twice the session timeout (6 s) each. Inference runs
    # beside the event loop, so heartbeats go on and the group never rebalances.
    bundle = news_model.bundles["int8"]
    classifier = Classifier(load_bundle(bundle), threads=1)
    texts = load_texts("imdb", 60)
    started = time.monotonic()
    classifier.predict(texts)
    per_text = (time.monotonic() - started) / len(texts)
    batch = math.ceil(12.0 / per_text)
    total = 2 * batch
    texts = [texts[i % len(texts)] for i in range(total)]
    produce(
        kafka_bootstrap, topics.input, [(None, orjson.dumps({"id": f"e{i}", "text": t})) for i, t in enumerate(texts)]
    )
    port = free_port()
    worker = start_worker(topics, bundle, "--threads", "1", "--max-batch", str(batch), "--max-tokens", "10000000",
                          "--max-wait-ms", "2000", "--log-level", "info", "--web-port", str(port))  # fmt: skip
    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=ids_seen(topics, total), timeout=300,
                      settle=2, watch=[worker])  # fmt: skip
    ids = Counter(result["id"] for result in results_of(records, topics))
    assert ids == Counter({f"e{i}": 1 for i in range(total)}), "no rebalance, so no event is processed twice"
    samples = scrape(port)
    batches = samples["stream_clf_inference_seconds_count", ()]
    buckets = {
        float(dict(labels)["le"]): count
        for (name, labels), count in samples.items()
        if name == "stream_clf_inference_seconds_bucket"
    }
    # Some batch took longer than this (the histogram's cumulative count below it is short).
    exceeded = max(le for le, count in buckets.items() if count < batches)
    assert exceeded >= 5.0, f"no batch took more than 5 s (longest above {exceeded} s): the test proves nothing"
    log = worker.log.read_text(errors="replace")
    assert log.count("Executing _on_partitions_assigned") == 1, "the worker was assigned partitions more than once"


def test_exactly_once_keeps_one_committed_result_per_event_through_a_crash_loop(
    kafka_bootstrap, topics, tiny_bundle, start_worker
):
    total = 3000
    rng = random.Random(11)
    port = free_port()
    eos = ("--guarantee", "exactly-once", "--instance", "eos-test", "--max-batch", "32", "--web-port", str(port))
    worker = start_worker(topics, tiny_bundle, *eos)
    assert wait_for_status(port, "/readyz", 200) == {"status": "ready"}, worker.log_tail()
    assert get(port, "/healthz")[0] == 200
    feeder = produce_steadily(kafka_bootstrap, topics.input, keyed_events(total), seconds=25)
    for kill in range(5):
        progress = ids_seen(topics, 300 * (kill + 1))
        collect(kafka_bootstrap, [topics.output], until=progress, timeout=120, watch=[worker])
        time.sleep(rng.uniform(0.0, 1.5))
        worker.kill()
        worker = start_worker(topics, tiny_bundle, *eos)
    feeder.join()
    # collect() reads with isolation.level=read_committed: aborted transactions stay invisible.
    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=ids_seen(topics, total), timeout=180,
                      settle=3, watch=[worker])  # fmt: skip
    results = results_of(records, topics)
    assert Counter(result["id"] for result in results) == Counter({f"e{i}": 1 for i in range(total)})
    sequences: dict[str, list[int]] = defaultdict(list)
    for record in records:
        if record.topic == topics.output:
            sequences[record.key.decode()].append(orjson.loads(record.value)["meta"]["seq"])
    assert all(sequence == sorted(sequence) for sequence in sequences.values())
    assert worker.terminate(timeout=30) == 0, "SIGTERM: the batch in flight commits, then a clean exit"
    print(f"exactly-once crash loop: {total} events, 5 kill -9s, 0 lost, 0 duplicates")
