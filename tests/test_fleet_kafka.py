"""A fleet on a three-node cluster (replication 3, two in sync): what subscribers see while production
happens to it. A rolling deploy of three workers with one added and one removed, a broker killed with
SIGKILL, a partition's leader moved by reassignment: in both guarantees nothing is lost, nothing is
answered twice, and each key's answers come in order. Pauses and p99 are printed, not asserted
tightly (two shared cores). Every test leaves the cluster whole (all replicas in sync) for the next.

And the identities of exactly-once (on the session's single broker): a second live process under one
instance refuses to start, a killed one's successor takes its place, two started at once settle it.
"""

import time
import uuid
from pathlib import Path

import pytest

from stream_clf.kafka.connection import Connection
from stream_clf.kafka.topics import Replication, ensure_topics
from stream_clf.tools.drill.fleet import Fleet
from stream_clf.tools.drill.rolling import DrillOptions, rolling_deploy
from stream_clf.tools.drill.traffic import ResultWatch, SteadyStream, Tally, tally
from tests.cluster_helpers import await_whole, leader_of, reassign, replicas_of
from tests.kafka_helpers import Topics, WorkerProcess, collect, ids_seen, keyed_events, produce, results_of

pytestmark = pytest.mark.broker

GUARANTEES = ("at-least-once", "exactly-once")
REPLICATED = Replication(3, 2)
QUICK = ("--session-timeout-ms", "6000", "--max-wait-ms", "10")  # groups settle fast, batches close fast
WORKER_FLAGS = (*QUICK, "--replication-factor", "3", "--min-insync-replicas", "2")


def _assert_seen_whole(seen: Tally, *, duplicates_allowed: bool = False) -> None:
    assert seen.lost == 0, seen
    assert seen.out_of_order == 0, seen
    assert seen.dead_letters == 0, seen
    if not duplicates_allowed:
        assert seen.duplicates == 0, seen


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_rolling_deploy_and_a_scale_up_and_down_repeat_and_lose_nothing(
    guarantee, kafka_cluster, tiny_bundle, tmp_path
):
    options = DrillOptions(model=tiny_bundle, rate=40, settle=2, worker_args=QUICK)
    report = rolling_deploy(kafka_cluster.bootstrap, options, guarantee, tmp_path, replication=REPLICATED)
    print(
        f"rolling deploy, {guarantee}: {report['sent']} events, {report['lost']} lost, {report['duplicates']}"
        f" duplicates; longest pause {report['longest_pause']:.2f} s ({report['pause_during']}), p99"
        f" {report['latency']['p99'] * 1000:.0f} ms, max {report['latency']['max'] * 1000:.0f} ms"
    )
    assert [code for _, code in report["exits"]] == [0] * 7, "every worker stopped cleanly (5 in the steps, 3 after)"
    assert [step for _, step in report["steps"]] == ["replace w0", "replace w1", "replace w2", "add w3", "remove w0"]
    assert report["sent"] >= 20 * 40, "the stream flowed through every step"
    assert report["lost"] == 0
    assert report["duplicates"] == 0, "partitions are handed over with what was delivered committed"
    assert report["out_of_order"] == 0


class _Stream:
    """Workers of one group and a steady stream through them, on fresh replicated topics."""

    def __init__(self, bootstrap: str, tiny_bundle: Path, logs: Path, guarantee: str, workers: int = 2) -> None:
        self.connection = Connection.to(*bootstrap.split(","))
        tag = uuid.uuid4().hex[:8]
        self.input, self.output, self.dlq = f"in-{tag}", f"out-{tag}", f"dlq-{tag}"
        ensure_topics(self.connection, [self.input, self.output, self.dlq], 6, replication=REPLICATED)
        self.fleet = Fleet(bootstrap, [
            "--model", str(tiny_bundle), "--input", self.input, "--output", self.output, "--dlq", self.dlq,
            "--group", f"group-{tag}", "--control-topic", f"control-{tag}", "--guarantee", guarantee, *WORKER_FLAGS,
        ], logs)  # fmt: skip
        self.instances = [f"w{i}" for i in range(workers)]

    def __enter__(self) -> "_Stream":
        for instance in self.instances:
            self.fleet.start(instance)
        for instance in self.instances:
            self.fleet.await_joined(instance)
        self.watch = ResultWatch(self.connection, self.output, self.dlq).start()
        self.stream = SteadyStream(self.connection, self.input, rate=50).start()
        self.since = time.monotonic()
        return self

    def finish(self, timeout: float = 180) -> Tally:
        """Stop the stream, wait for every answer (and a few seconds for repeats), and count."""
        self.stream.stop()
        until = time.monotonic()
        deadline = until + timeout
        try:
            while not self.stream.sent.keys() <= self.watch.answered() and time.monotonic() < deadline:
                self.fleet.check()
                time.sleep(0.2)
            time.sleep(3)
        finally:
            self.watch.stop()
        self.fleet.check()
        return tally(self.stream.sent, self.watch.answers, self.since, until)

    def __exit__(self, *_: object) -> None:
        """Whatever failed, no thread of the stream or the watch outlives the test."""
        try:
            self.stream.stop()
            self.watch.stop()
        finally:
            self.fleet.stop_all()


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_broker_killed_under_load_loses_nothing_and_exactly_once_repeats_nothing(
    guarantee, kafka_cluster, tiny_bundle, tmp_path
):
    bootstrap = kafka_cluster.bootstrap
    with _Stream(bootstrap, tiny_bundle, tmp_path, guarantee) as flow:
        time.sleep(4)
        victim = next(m for m in kafka_cluster.members if m.node_id == leader_of(bootstrap, flow.input, 0))
        victim.kill()  # SIGKILL: a crash, no controlled shutdown
        time.sleep(8)
        victim.start()
        time.sleep(4)
        seen = flow.finish()
    exits = [code for _, code in flow.fleet.exits]
    await_whole(bootstrap)
    print(f"broker kill -9, {guarantee}: {seen}")
    assert exits == [0, 0], flow.fleet.failures
    _assert_seen_whole(seen, duplicates_allowed=guarantee == "at-least-once")


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_partition_leader_moved_by_reassignment_while_the_stream_flows(
    guarantee, kafka_cluster, tiny_bundle, tmp_path
):
    bootstrap = kafka_cluster.bootstrap
    with _Stream(bootstrap, tiny_bundle, tmp_path, guarantee) as flow:
        time.sleep(3)
        moved = {}
        for topic in (flow.input, flow.output):
            leader, replicas = leader_of(bootstrap, topic, 0), replicas_of(bootstrap, topic, 0)
            moved[topic, 0] = [node for node in replicas if node != leader]  # the leader leaves: leadership must move
        reassign(bootstrap, moved)
        deadline = time.monotonic() + 60
        while any(leader_of(bootstrap, t, p) not in nodes for (t, p), nodes in moved.items()):
            assert time.monotonic() < deadline, "the reassignment did not move the leaders"
            time.sleep(0.2)
        time.sleep(3)
        reassign(bootstrap, {tp: [*nodes, *({1, 2, 3} - set(nodes))] for tp, nodes in moved.items()})  # three again
        time.sleep(3)
        seen = flow.finish()
    exits = [code for _, code in flow.fleet.exits]
    await_whole(bootstrap, [flow.input, flow.output])
    assert all(len(replicas_of(bootstrap, t, p)) == 3 for t, p in moved)
    print(f"leader moved by reassignment, {guarantee}: {seen}")
    assert exits == [0, 0], flow.fleet.failures
    _assert_seen_whole(seen)


def _exactly_once(bootstrap: str, topics: Topics, bundle: Path, log: Path, instance: str) -> WorkerProcess:
    return WorkerProcess(
        bootstrap, topics, bundle, log, ("--guarantee", "exactly-once", "--instance", instance)
    ).start()


def test_a_second_live_worker_under_one_instance_refuses_to_start_and_the_first_serves_on(
    kafka_bootstrap, topics, tiny_bundle, tmp_path
):
    first = _exactly_once(kafka_bootstrap, topics, tiny_bundle, tmp_path / "first.log", "replica-0")
    try:
        collect(kafka_bootstrap, [topics.output], until=lambda _: "instance_taken" in first.log.read_text(),
                timeout=120, watch=[first])  # fmt: skip
        second = _exactly_once(kafka_bootstrap, topics, tiny_bundle, tmp_path / "second.log", "replica-0")
        assert second.process.wait(timeout=120) == 2
        lines = second.log.read_text().strip().splitlines()
        assert lines[-1].startswith("stream-clf worker: error: --instance replica-0: a live worker of group")
        assert "Traceback" not in second.log.read_text()
        produce(kafka_bootstrap, topics.input, keyed_events(40))
        records = collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 40), timeout=120, settle=2,
                          watch=[first])  # fmt: skip
        assert sorted(r["id"] for r in results_of(records, topics)) == sorted(f"e{i}" for i in range(40))
        assert "fenced" not in first.log.read_text().lower(), "the live one was never fenced"
    finally:
        first.terminate()


def test_the_successor_of_a_killed_worker_takes_its_instance_and_nothing_is_answered_twice(
    kafka_bootstrap, topics, tiny_bundle, tmp_path
):
    first = _exactly_once(kafka_bootstrap, topics, tiny_bundle, tmp_path / "first.log", "replica-0")
    produce(kafka_bootstrap, topics.input, keyed_events(200))
    collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 50), timeout=120, watch=[first])
    first.kill()  # its lease is left behind, renewed by nobody
    started = time.monotonic()
    successor = _exactly_once(kafka_bootstrap, topics, tiny_bundle, tmp_path / "successor.log", "replica-0")
    try:
        produce(kafka_bootstrap, topics.input, keyed_events(200, start=200))
        records = collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 400), timeout=180, settle=3,
                          watch=[successor])  # fmt: skip
        print(f"successor answered all 400 events {time.monotonic() - started:.1f} s after the kill")
    finally:
        successor.terminate()
    ids = [r["id"] for r in results_of(records, topics)]
    assert sorted(ids) == sorted(f"e{i}" for i in range(400)), "every event answered exactly once"
    log = successor.log.read_text()
    assert "event=instance_lease_found" in log, "it saw its dead predecessor's lease and waited it out"
    assert "event=instance_taken" in log


def test_two_workers_started_at_once_under_one_instance_one_serves_and_one_refuses(
    kafka_bootstrap, topics, tiny_bundle, tmp_path
):
    pair = [_exactly_once(kafka_bootstrap, topics, tiny_bundle, tmp_path / f"w{i}.log", "replica-0") for i in range(2)]
    try:
        deadline = time.monotonic() + 120
        while all(w.running for w in pair) and time.monotonic() < deadline:
            time.sleep(0.5)
        refused = [w for w in pair if not w.running]
        assert len(refused) == 1, "one of them refuses"
        assert refused[0].process.returncode == 2
        (serving,) = [w for w in pair if w.running]
        produce(kafka_bootstrap, topics.input, keyed_events(20))
        records = collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 20), timeout=120, watch=[serving])
        assert len(results_of(records, topics)) == 20
    finally:
        for worker in pair:
            if worker.running:
                worker.terminate()


def test_a_cooperative_worker_cannot_join_an_eager_group_and_says_so_in_one_line(
    kafka_bootstrap, topics, tiny_bundle, tmp_path
):
    eager = _exactly_once(kafka_bootstrap, topics, tiny_bundle, tmp_path / "eager.log", "eager")
    try:
        collect(kafka_bootstrap, [topics.output], until=lambda _: "instance_taken" in eager.log.read_text(),
                timeout=120, watch=[eager])  # fmt: skip
        time.sleep(2)
        flags = ("--guarantee", "exactly-once", "--instance", "cooperative", "--rebalance", "cooperative")
        cooperative = WorkerProcess(kafka_bootstrap, topics, tiny_bundle, tmp_path / "coop.log", flags).start()
        assert cooperative.process.wait(timeout=120) == 1
        (failed,) = [line for line in cooperative.log.read_text().splitlines() if "event=worker_failed" in line]
        assert "rebalance with the other protocol" in failed
        assert "Traceback" not in cooperative.log.read_text()
        eager.assert_running()
    finally:
        eager.terminate()
