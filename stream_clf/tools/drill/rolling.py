"""``stream-clf drill``: a rolling deploy of a group of workers under a steady stream.

Replicas ``w0``..``wN-1`` serve one group on a fresh input topic. While events flow at ``rate`` per
second, each replica in turn is stopped with SIGTERM and started again under the same name (as a
StatefulSet replaces a pod, and as a Deployment's rollout replaces one replica at a time), then one
replica is added and one removed (a scale up and down, as KEDA does). Each step waits until the new
worker has joined the group and ``settle`` seconds more. Then the stream stops, every answer is awaited, and
what subscribers saw is counted (:func:`~stream_clf.tools.drill.traffic.tally`).
"""

import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from stream_clf.errors import StreamClfError
from stream_clf.kafka.connection import Connection
from stream_clf.kafka.topics import Replication, ensure_topics
from stream_clf.tools.broker import LocalCluster, free_port
from stream_clf.tools.drill.fleet import Fleet
from stream_clf.tools.drill.traffic import ResultWatch, SteadyStream, tally

__all__ = ["DrillOptions", "drill_cluster", "render_drill", "rolling_deploy"]

GUARANTEES = ("at-least-once", "exactly-once")


@dataclass(frozen=True)
class DrillOptions:
    model: Path = Path("news-int8")
    guarantees: tuple[str, ...] = GUARANTEES
    workers: int = 3
    partitions: int = 6
    rate: float = 40.0
    settle: float = 3.0
    brokers: str | None = None
    nodes: int = 3
    worker_args: tuple[str, ...] = ()
    timeout: float = 180.0


@dataclass
class _Timeline:
    """The drill's steps, each with the monotonic time it began."""

    started: float = field(default_factory=time.monotonic)
    steps: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, step: str) -> None:
        self.steps.append((time.monotonic() - self.started, step))

    def during(self, at: float) -> str:
        """The step under way ``at`` seconds after the start."""
        current = "steady"
        for began, step in self.steps:
            if began <= at:
                current = step
        return current


@contextlib.contextmanager
def drill_cluster(options: DrillOptions, root: Path) -> Iterator[tuple[str, Replication | None]]:
    """The cluster to drill on: ``--brokers``, or a local one of ``nodes`` (replication 3, 2 in sync)."""
    if options.brokers is not None:
        yield options.brokers, None
        return
    ports = [(free_port(), free_port()) for _ in range(options.nodes)]
    cluster = LocalCluster(root / "cluster", nodes=options.nodes, ports=ports)
    cluster.start()
    try:
        yield cluster.bootstrap, Replication(min(3, options.nodes), min(2, options.nodes))
    finally:
        cluster.stop()


def rolling_deploy(
    bootstrap: str,
    options: DrillOptions,
    guarantee: str,
    logs: Path,
    *,
    replication: Replication | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> dict[str, Any]:
    """Run the drill once in ``guarantee``; what subscribers saw, with the steps and the exit codes."""
    connection = Connection.to(*bootstrap.split(","))
    tag = uuid.uuid4().hex[:8]
    names = {"input": f"drill-in-{tag}", "output": f"drill-out-{tag}", "dlq": f"drill-dlq-{tag}"}
    ensure_topics(connection, list(names.values()), options.partitions, replication=replication)
    args = [
        "--model", str(options.model), "--input", names["input"], "--output", names["output"], "--dlq", names["dlq"],
        "--group", f"drill-{tag}", "--control-topic", f"drill-control-{tag}", "--guarantee", guarantee,
        *(("--replication-factor", str(replication.factor)) if replication and replication.factor else ()),
        *(("--min-insync-replicas", str(replication.min_insync)) if replication and replication.min_insync else ()),
        *options.worker_args,
    ]  # fmt: skip
    fleet = Fleet(bootstrap, args, logs)
    instances = [f"w{i}" for i in range(options.workers)]
    try:
        for instance in instances:
            fleet.start(instance)
        for instance in instances:
            fleet.await_joined(instance)
        return _under_stream(
            connection, names=names, fleet=fleet, instances=instances, options=options, progress=progress
        ) | {
            "guarantee": guarantee,
            "workers": options.workers,
            "partitions": options.partitions,
            "rate": options.rate,
        }
    finally:
        fleet.stop_all()


def _under_stream(
    connection: Connection,
    *,
    names: dict[str, str],
    fleet: Fleet,
    instances: Sequence[str],
    options: DrillOptions,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    watch = ResultWatch(connection, names["output"], names["dlq"]).start()
    stream = SteadyStream(connection, names["input"], options.rate).start()
    timeline = _Timeline()
    try:
        time.sleep(options.settle)
        since = time.monotonic()

        def step(name: str, action: Callable[[], None]) -> None:
            progress(name)
            timeline.mark(name)
            action()
            fleet.check()
            time.sleep(options.settle)

        def replace(instance: str) -> None:
            fleet.stop(instance)
            fleet.start(instance)
            fleet.await_joined(instance)

        for instance in instances:
            step(f"replace {instance}", lambda instance=instance: replace(instance))
        added = f"w{len(instances)}"
        step(f"add {added}", lambda: (fleet.start(added), fleet.await_joined(added)))
        step(f"remove {instances[0]}", lambda: fleet.stop(instances[0]))
        stream.stop()
        until = time.monotonic()
        progress("awaiting every answer")
        _await_answers(watch, stream, fleet, options.timeout)
        time.sleep(options.settle)  # answers that should not exist (repeats) arrive too
    finally:
        watch.stop()
        if not stream.failures:
            stream.stop()
    if stream.failures:
        raise StreamClfError(f"events could not be sent: {stream.failures[0]}")
    seen = tally(stream.sent, watch.answers, since, until)
    fleet.stop_all()
    return {
        **asdict(seen),
        "pause_during": timeline.during(seen.pause_at + since - timeline.started),
        "steps": timeline.steps,
        "exits": fleet.exits,
        "seconds": until - since,
    }


def _await_answers(watch: ResultWatch, stream: SteadyStream, fleet: Fleet, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not stream.sent.keys() <= watch.answered():
        fleet.check()
        if time.monotonic() > deadline:
            return  # counted as lost
        time.sleep(0.2)


def run_drill(options: DrillOptions, progress: Callable[[str], None] = lambda step: None) -> list[dict[str, Any]]:
    """The drill in each of ``options.guarantees``, on one cluster."""
    with tempfile.TemporaryDirectory(prefix="stream-clf-drill-") as scratch:
        root = Path(scratch)
        with drill_cluster(options, root) as (bootstrap, replication):
            return [
                rolling_deploy(bootstrap, options, guarantee, root, replication=replication, progress=progress)
                for guarantee in options.guarantees
            ]


def render_drill(reports: Sequence[dict[str, Any]]) -> Table:
    """One row per guarantee: what subscribers saw of the rolling deploy."""
    table = Table(title="Rolling deploy under a steady stream (each replica replaced, one added, one removed)")
    for column in ("guarantee", "events", "lost", "duplicates", "out of order", "partition paused", "during",
                   "p50", "p99", "max latency", "exit codes"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("guarantee", "during") else "right")
    for report in reports:
        latency = report["latency"]
        table.add_row(
            report["guarantee"],
            f"{report['sent']:,}",
            str(report["lost"]),
            str(report["duplicates"]),
            str(report["out_of_order"]),
            f"{report['longest_pause']:.2f} s",
            report["pause_during"],
            f"{latency['p50'] * 1000:,.0f} ms",
            f"{latency['p99'] * 1000:,.0f} ms",
            f"{latency['max'] * 1000:,.0f} ms",
            ",".join(str(code) for _, code in report["exits"]),
        )
    return table
