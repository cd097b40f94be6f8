"""The swap follower in process: a control feed in memory instead of the topics, real tiny bundles,
and loaders that fail. What it applies, refuses, skips and reports, and that nothing it reads
ends it."""

import threading
import time
from pathlib import Path

import orjson
import pytest

from stream_clf.kafka.control import ControlRecord
from stream_clf.kafka.control_records import ControlState, MalformedRecordError, SwapRequest, WorkerStatus
from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.tools.build.tiny_model import build_tiny_bundle
from stream_clf.worker.model_roots import ModelRoots
from stream_clf.worker.models import ModelHolder, ModelLoader, ModelSet
from stream_clf.worker.swaps import SwapFollower
from tests.control_records import malformed_requests

GROUP = "g"


class MemoryFeed:
    """The control topic as a list of (key, value) records; statuses as a list of reports."""

    def __init__(self, records: list[tuple[bytes | None, bytes | None]] | None = None) -> None:
        self.records = list(records or [])
        self.reports: list[tuple[bytes, bytes | None]] = []
        self.closed = False
        self._next: int | None = None
        self._lock = threading.Lock()

    def append(self, key: bytes | None, value: bytes | None) -> None:
        with self._lock:
            self.records.append((key, value))

    def read_to_end(self, skipped) -> ControlState:
        state = ControlState()
        for offset, (key, value) in enumerate(self.records):
            try:
                state.read(key, value)
            except MalformedRecordError as error:
                skipped("control", offset, error)
        state.offset = len(self.records)
        return state

    def open(self, offset: int) -> None:
        self._next = offset

    def poll(self, timeout: float) -> ControlRecord | None:
        with self._lock:
            if self._next is not None and self._next < len(self.records):
                key, value = self.records[self._next]
                self._next += 1
                return ControlRecord("control", self._next - 1, key, value)
        time.sleep(min(timeout, 0.01))
        return None

    def report(self, key: bytes, value: bytes | None) -> None:
        self.reports.append((key, value))

    def close(self) -> None:
        self.closed = True

    def statuses(self) -> list[WorkerStatus]:
        return [WorkerStatus.decode(key, value) for key, value in self.reports if value is not None]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    served, other = tmp_path_factory.mktemp("served"), tmp_path_factory.mktemp("elsewhere")
    return {
        "old": build_tiny_bundle(served / "old", seed=31),
        "new": build_tiny_bundle(served / "new", seed=32),
        "elsewhere": build_tiny_bundle(other / "bundle", seed=33),
    }


def version(bundle: Path) -> str:
    return load_bundle(bundle).version


def follower(
    feed: MemoryFeed, bundles: dict[str, Path], *, load: ModelLoader | None = None, follows: bool = True
) -> tuple[SwapFollower, ModelHolder, WorkerMetrics]:
    metrics = WorkerMetrics(max_batch=8)
    holder = ModelHolder(ModelSet(ModelLoader(Classifier)(str(bundles["old"]))))
    swaps = SwapFollower(
        feed=feed,
        group=GROUP,
        worker="w-1",
        inputs=["in"],
        holder=holder,
        load=load or ModelLoader(Classifier),
        roots=ModelRoots([bundles["old"].parent]),
        metrics=metrics,
        follows=follows,
    )
    return swaps, holder, metrics


def request(bundles: dict[str, Path], name: str, **fields: object) -> SwapRequest:
    return SwapRequest(GROUP, "*", str(bundles[name]), fields.pop("expect", None) or version(bundles[name]), **fields)


def refused(metrics: WorkerMetrics) -> float:
    return metrics.swaps.labels(outcome="refused")._value.get()


def wait_until(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the wait"
        time.sleep(0.02)


def test_at_start_the_latest_swap_of_the_group_is_applied_and_reported(bundles):
    older = request(bundles, "elsewhere", at=1.0)  # replaced by the later one: never loaded
    latest = request(bundles, "new", previous=str(bundles["old"]), at=2.0)
    feed = MemoryFeed([(older.key, older.encode()), (latest.key, latest.encode())])
    swaps, holder, _ = follower(feed, bundles)
    swaps.catch_up()
    assert holder.current.default.version == version(bundles["new"])
    (status,) = feed.statuses()
    assert (status.request, status.outcome) == (latest.request, "applied")
    assert status.serving["*"]["version"] == version(bundles["new"])
    assert status.configured["*"]["version"] == version(bundles["old"])


def test_at_start_a_swap_that_replaced_another_model_than_this_workers_is_skipped(bundles):
    """A replica started with another --model than the one the swap replaced keeps its own."""
    foreign = request(bundles, "new", configured="f" * 16)
    feed = MemoryFeed([(foreign.key, foreign.encode())])
    swaps, holder, _ = follower(feed, bundles)
    swaps.catch_up()
    assert holder.current.default.version == version(bundles["old"])
    (status,) = feed.statuses()
    assert status.outcome is None  # only what it serves


@pytest.mark.parametrize(
    ("name", "fields", "reason"),
    [
        ("new", {"expect": "f" * 16}, "is version"),
        ("elsewhere", {}, "not under a model root"),
    ],
)
def test_a_swap_of_another_version_or_outside_the_roots_is_refused_and_the_old_model_serves(
    bundles, name, fields, reason
):
    asked = request(bundles, name, **fields)
    feed = MemoryFeed([(asked.key, asked.encode())])
    swaps, holder, metrics = follower(feed, bundles)
    swaps.catch_up()
    assert holder.current.default.version == version(bundles["old"])
    (status,) = feed.statuses()
    assert status.outcome == "refused"
    assert reason in status.reason
    if name == "elsewhere":
        assert str(bundles[name].parent) not in status.reason  # a refusal names no path outside the roots
    assert refused(metrics) == 1


def test_a_loader_that_fails_refuses_the_swap_and_the_follower_follows_on(bundles):
    calls = []

    def build(bundle):
        calls.append(bundle.path)
        if len(calls) == 1:
            raise RuntimeError("out of memory, pretend")
        return Classifier(bundle)

    feed = MemoryFeed()
    swaps, holder, metrics = follower(feed, bundles, load=ModelLoader(build))
    swaps.catch_up()
    swaps.start()
    try:
        first = request(bundles, "new")
        feed.append(first.key, first.encode())
        wait_until(lambda: refused(metrics) == 1)
        assert holder.current.default.version == version(bundles["old"])
        assert feed.statuses()[-1].reason == "out of memory, pretend"
        second = request(bundles, "new")  # asked again: this time the loader succeeds
        feed.append(second.key, second.encode())
        wait_until(lambda: holder.current.default.version == version(bundles["new"]))
        assert swaps.failure() is None
    finally:
        swaps.close()


def test_malformed_records_and_other_groups_requests_are_skipped_and_a_valid_one_after_them_applies(bundles):
    feed = MemoryFeed()
    swaps, holder, metrics = follower(feed, bundles)
    swaps.catch_up()
    swaps.start()
    try:
        records = malformed_requests(GROUP)
        for key, value in records:
            feed.append(key, value)
        other = SwapRequest("another-group", "*", str(bundles["new"]), version(bundles["new"]))
        feed.append(other.key, other.encode())
        feed.append(b"status/g/w-9", orjson.dumps({"not": "a status"}))
        valid = request(bundles, "new")
        feed.append(valid.key, valid.encode())
        wait_until(lambda: holder.current.default.version == version(bundles["new"]))
        skipped = sum(sample.value for family in metrics.control_skipped.collect() for sample in family.samples)
        assert skipped == len(records) + 1
        assert [status.request for status in feed.statuses() if status.outcome] == [valid.request]
        assert swaps.failure() is None
    finally:
        swaps.close()


def test_a_worker_with_swaps_off_applies_nothing_and_says_so(bundles):
    asked = request(bundles, "new")
    feed = MemoryFeed([(asked.key, asked.encode())])
    swaps, holder, _ = follower(feed, bundles, follows=False)
    swaps.catch_up()
    swaps.start()
    assert holder.current.default.version == version(bundles["old"])
    (status,) = feed.statuses()
    assert status.follows is False
    swaps.close()


def test_closing_stops_reading_and_deletes_this_workers_status(bundles):
    feed = MemoryFeed()
    swaps, _, _ = follower(feed, bundles)
    swaps.catch_up()
    swaps.start()
    swaps.close()
    assert feed.closed
    assert feed.reports[-1] == (b"status/g/w-1", None)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_follower_ended_by_what_no_code_may_swallow_says_so(bundles):
    def build(_bundle):
        raise KeyboardInterrupt

    feed = MemoryFeed()
    swaps, _, _ = follower(feed, bundles, load=ModelLoader(build))
    swaps.catch_up()
    swaps.start()
    asked = request(bundles, "new")
    feed.append(asked.key, asked.encode())
    wait_until(lambda: swaps.failure() is not None)
    assert "KeyboardInterrupt" in swaps.failure()
