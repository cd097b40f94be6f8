"""A running worker's metrics count what really happened; health and readiness tell the truth."""

import logging
import re
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from stream_clf.tools.broker import LocalKafka, free_port
from stream_clf.worker.lag import PartitionLag
from tests.kafka_helpers import Topics, WorkerProcess, collect, keyed_events, produce
from tests.web_helpers import exported_names, get, scrape, wait_for_status

pytestmark = pytest.mark.broker

GRAFANA_DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "dashboards" / "stream-clf.json"


def _until(port: int, check, timeout: float = 20):
    """Scrape until ``check(samples)`` holds (metrics are counted after delivery); return the samples."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


GUARANTEES = {"at-least-once": (), "exactly-once": ("--guarantee", "exactly-once", "--instance", "ops")}


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_metrics_count_every_event_and_dead_letter(guarantee, kafka_bootstrap, topics, tiny_bundle, start_worker):
    port = free_port()
    worker = start_worker(topics, tiny_bundle, "--web-port", str(port), *GUARANTEES[guarantee])
    assert wait_for_status(port, "/readyz", 200) == {"status": "ready"}
    assert get(port, "/healthz") == (200, b'{"status":"alive"}')
    good = [(f"k{i % 5}".encode(), orjson.dumps({"id": f"e{i}", "text": f"event number {i}"})) for i in range(40)]
    bad = [(None, b"{not json"), (None, b'{"id": "m"}'), (None, b'{"text": "   "}')]
    produce(kafka_bootstrap, topics.input, [*good, *bad])
    collect(kafka_bootstrap, [topics.output, topics.dlq], until=lambda r: len(r) >= 43, timeout=90, watch=[worker])

    def key(name: str, **labels: str) -> tuple:
        return name, tuple(sorted(labels.items()))

    samples = _until(port, lambda s: s.get(key("stream_clf_results_total")) == 40 and
                     sum(v for (n, _), v in s.items() if n == "stream_clf_dead_letters_total") == 3)  # fmt: skip
    assert samples[key("stream_clf_events_consumed_total", topic=topics.input)] == 43
    assert samples[key("stream_clf_results_total")] == 40
    dead = {dict(labels)["reason"]: v for (n, labels), v in samples.items() if n == "stream_clf_dead_letters_total"}
    assert {reason: count for reason, count in dead.items() if count} == {
        "invalid_json": 1,
        "missing_text": 1,
        "empty_text": 1,
    }
    predictions = sum(v for (n, _), v in samples.items() if n == "stream_clf_predictions_total")
    assert predictions == 40
    assert samples[key("stream_clf_event_latency_seconds_count")] == 40
    assert samples[key("stream_clf_padded_tokens_total")] >= samples[key("stream_clf_tokens_total")] > 0
    assert samples[key("stream_clf_batch_events_sum")] >= 40
    info = [dict(labels) for (n, labels), v in samples.items() if n == "stream_clf_model_info" and v == 1]
    assert [(i["model"], i["precision"]) for i in info] == [("tiny-random", "fp32")]
    assert samples[key("stream_clf_up")] == 1
    # Assignment and lag are measured every 2 seconds.
    settled = _until(port, lambda s: s.get(key("stream_clf_assigned_partitions")) == 4)
    assert settled[key("stream_clf_assigned_partitions")] == 4
    lag = {dict(labels)["partition"]: v for (n, labels), v in settled.items() if n == "stream_clf_consumer_lag_events"}
    assert lag == {"0": 0, "1": 0, "2": 0, "3": 0}
    exported = exported_names(port)
    queried = set(re.findall(r"\bstream_clf_\w+", GRAFANA_DASHBOARD.read_text()))
    assert queried, "the Grafana dashboard queries no stream-clf metric"
    assert queried <= exported, f"the Grafana dashboard queries unexported metrics: {queried - exported}"
    snapshot = orjson.loads(get(port, "/dashboard/stats.json")[1])
    assert (snapshot["events_in"], snapshot["results_out"], sum(snapshot["dead_letters"].values())) == (43, 40, 3)
    assert snapshot["lag"] == {f"{topics.input}[{partition}]": 0 for partition in range(4)}
    assert get(port, "/dashboard")[1].startswith(b"<!doctype html>")
    assert get(port, "/dashboard/uplot.iife.min.js")[0] == 200


# One event per batch, so the backlog lasts several lag measurements (one every 2 s); exactly-once
# commits a transaction per batch, so it needs fewer events for that.
@pytest.mark.parametrize(("guarantee", "total"), [("at-least-once", 8000), ("exactly-once", 1500)])
def test_lag_counts_the_backlog_down_to_zero(guarantee, total, kafka_bootstrap, topics, tiny_bundle, start_worker):
    produce(kafka_bootstrap, topics.input, [(None, orjson.dumps({"id": f"e{i}", "text": "x"})) for i in range(total)])
    port = free_port()
    start_worker(topics, tiny_bundle, "--web-port", str(port), "--max-batch", "1", *GUARANTEES[guarantee])
    seen = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status, body = get(port, "/dashboard/stats.json")
        if status == 200:
            snapshot = orjson.loads(body)
            if len(snapshot["lag"]) == 4:  # every partition measured
                seen.append((sum(snapshot["lag"].values()), snapshot["results_out"]))
            if seen and seen[-1] == (0, total):
                break
        time.sleep(0.5)
    lags = [lag for lag, _ in seen]
    assert any(0 < lag < total for lag in lags), f"no measurement while the backlog was worked off: {seen}"
    assert lags == sorted(lags, reverse=True), f"lag rose with no new events: {lags}"
    assert lags[0] <= total
    assert seen[-1] == (0, total), seen[-1]


def test_a_worker_without_partitions_is_alive_but_not_ready(kafka_bootstrap, tiny_bundle, start_worker):
    topics = Topics.fresh(kafka_bootstrap, partitions=1)
    first, second = free_port(), free_port()
    start_worker(topics, tiny_bundle, "--web-port", str(first))
    wait_for_status(first, "/readyz", 200)
    start_worker(topics, tiny_bundle, "--web-port", str(second))
    wait_for_status(second, "/healthz", 200)
    # The group rebalances; one partition, two workers: one of them is left without work.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        statuses = {get(port, "/readyz")[0] for port in (first, second)}
        if statuses == {200, 503}:
            break
        time.sleep(0.5)
    idle = first if get(first, "/readyz")[0] == 503 else second
    body = orjson.loads(get(idle, "/readyz")[1])
    assert body == {"status": "not ready", "reasons": ["no partitions assigned"]}


def test_readiness_reports_a_broker_that_went_away(tiny_bundle, tmp_path):
    broker = LocalKafka(tmp_path / "kafka", port=free_port(), controller_port=free_port())
    broker.start()
    port = free_port()
    topics = Topics.fresh(broker.bootstrap)
    worker = WorkerProcess(broker.bootstrap, topics, tiny_bundle, tmp_path / "worker.log", ("--web-port", str(port)))
    try:
        worker.start()
        wait_for_status(port, "/readyz", 200)
        broker.stop()
        body = wait_for_status(port, "/readyz", 503, timeout=60)
        assert body["status"] == "not ready"
        assert any(reason.startswith("broker unreachable") for reason in body["reasons"]), body
        assert get(port, "/healthz")[0] == 200  # alive: restarting it would not bring the broker back
    finally:
        if worker.running:
            worker.kill()
        broker.kill()


def test_the_exactly_once_lag_outlives_partitions_the_brokers_cannot_answer_for(kafka_bootstrap, topics, caplog):
    """The loop measures lag every 2 s; a partition whose end cannot be read now (its leader moving,
    here: a partition that does not exist, then a topic deleted) keeps its last lag, is said once,
    and never ends the worker (CI once lost an exactly-once worker to OFFSET_NOT_AVAILABLE)."""
    produce(kafka_bootstrap, topics.input, keyed_events(60))
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topics.group, "enable.auto.commit": False})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topics.input, p), timeout=10)[1] for p in range(4)}
        consumer.commit(offsets=[TopicPartition(topics.input, 0, 3)], asynchronous=False)
        consumer.assign([*(TopicPartition(topics.input, p) for p in range(4)), TopicPartition(topics.input, 9)])
        lag = PartitionLag(consumer)
        with caplog.at_level(logging.WARNING, logger="stream_clf.worker.lag"):
            first = lag.measure({})
            done = {(topics.input, 1): ends[1]}  # this worker committed all of partition 1
            second = lag.measure(done)
        assert first == {(topics.input, p): ends[p] - (3 if p == 0 else 0) for p in range(4)}
        assert second == {**first, (topics.input, 1): 0}
        said = [r.getMessage() for r in caplog.records if "lag_not_measured" in r.getMessage()]
        assert len(said) == 1, said
        assert f"topic={topics.input} partition=9" in said[0]

        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.delete_topics([topics.input])[topics.input].result(30)
        deadline = time.monotonic() + 30
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="stream_clf.worker.lag"):
            while not any("partition=1 " in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the deleted topic's ends were still read"
                assert lag.measure(done) == second, "a partition that cannot be measured must keep its last lag"
                time.sleep(0.5)
    finally:
        consumer.close()
