"""The worker on a three-node KRaft cluster: it starts on fresh topics without error, again and again,
in both guarantees (creating a topic races its metadata reaching every broker), and the topics it
creates have the replication asked for, or the cluster's default capped at its brokers."""

import subprocess
import sys
import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from stream_clf.tools.broker import free_port
from tests.kafka_helpers import Topics, WorkerProcess, collect, ids_seen, keyed_events, produce, results_of
from tests.web_helpers import wait_for_status

pytestmark = pytest.mark.broker

GUARANTEES = {"at-least-once": (), "exactly-once": ("--guarantee", "exactly-once", "--instance", "cluster")}


def _fresh() -> tuple[Topics, str]:
    """Names of topics that do not exist yet: the worker creates every one of them."""
    tag = uuid.uuid4().hex[:8]
    return Topics(f"in-{tag}", f"out-{tag}", f"dlq-{tag}", f"group-{tag}"), f"control-{tag}"


def _replication(bootstrap: str, topic: str) -> tuple[set[int], str | None]:
    """The replica counts of ``topic``'s partitions, and its min.insync.replicas."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(topic, timeout=10).topics[topic]
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return {len(p.replicas) for p in metadata.partitions.values()}, future.result(timeout=30)[
        "min.insync.replicas"
    ].value


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_the_worker_starts_on_fresh_topics_five_times_in_a_row_and_replicates_what_it_creates(
    guarantee, kafka_cluster, tiny_bundle, tmp_path
):
    bootstrap = kafka_cluster.bootstrap
    for attempt in range(5):
        topics, control = _fresh()
        port = free_port()
        worker = WorkerProcess(
            bootstrap, topics, tiny_bundle, tmp_path / f"worker-{attempt}.log",
            ("--control-topic", control, "--web-port", str(port), "--replication-factor", "3",
             "--min-insync-replicas", "2", *GUARANTEES[guarantee]),
        ).start()  # fmt: skip
        try:
            wait_for_status(port, "/readyz", 200, timeout=120)
            produce(bootstrap, topics.input, keyed_events(20))
            records = collect(bootstrap, [topics.output], until=ids_seen(topics, 20), timeout=120, watch=[worker])
            assert len({result["id"] for result in results_of(records, topics)}) == 20
            assert worker.terminate() == 0
        finally:
            if worker.running:
                worker.kill()
        log = worker.log.read_text()
        assert "Traceback" not in log, log[-3000:]
        for topic in (topics.input, topics.output, topics.dlq, control, f"{control}.status"):
            assert _replication(bootstrap, topic) == ({3}, "2"), topic


def test_without_flags_the_topics_take_the_cluster_default(kafka_cluster, tiny_bundle, tmp_path):
    bootstrap = kafka_cluster.bootstrap
    topics, control = _fresh()
    port = free_port()
    worker = WorkerProcess(bootstrap, topics, tiny_bundle, tmp_path / "worker.log",
                           ("--control-topic", control, "--web-port", str(port))).start()  # fmt: skip
    try:
        wait_for_status(port, "/readyz", 200, timeout=120)
    finally:
        worker.kill()
    replicas, _ = _replication(bootstrap, topics.output)
    assert replicas == {1}, "the cluster's default.replication.factor (Kafka's own: 1)"


def test_asking_for_more_replicas_than_brokers_stops_with_one_line(kafka_bootstrap, tiny_bundle):
    topics, _ = _fresh()
    command = [sys.executable, "-m", "stream_clf", "worker", "--brokers", kafka_bootstrap, "--model", str(tiny_bundle),
               "--input", topics.input, "--web-port", str(free_port()), "--replication-factor", "3"]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines()[-1] == (
        "stream-clf worker: error: --replication-factor 3: the cluster has 1 broker(s); ask for at most that"
    )
    assert "Traceback" not in finished.stderr
