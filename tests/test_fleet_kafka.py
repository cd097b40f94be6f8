"""A fleet on a three-node cluster (replication 3, two in sync): what subscribers see while production
happens to it. A rolling deploy of three workers with one added and one removed, a broker killed with
SIGKILL, a partition's leader moved by reassignment: in both guarantees nothing is lost, nothing is
answered twice, and each key's answers come in order. Pauses and p99 are printed, not asserted
tightly (two shared cores). Every test leaves the cluster whole (all replicas in sync) for the next.
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
    assert [code for _, code in report["exits"]] == [0] * 5, "every worker stopped cleanly"
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
        while not self.stream.sent.keys() <= self.watch.answered() and time.monotonic() < deadline:
            self.fleet.check()
            time.sleep(0.2)
        time.sleep(3)
        self.watch.stop()
        self.fleet.check()
        return tally(self.stream.sent, self.watch.answers, self.since, until)

    def __exit__(self, *_: object) -> None:
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
    assert exits == [0, 0]
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
    assert exits == [0, 0]
    _assert_seen_whole(seen)
