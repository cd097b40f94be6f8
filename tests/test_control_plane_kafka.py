"""The control plane against hostile records and requests, through the real broker: malformed swap
requests and statuses of every field type are skipped by the worker and by `stream-clf swap`; a
swap outside the model roots, through a link, or of another version than the one expected is
refused while the old model serves; `--swaps off` follows nothing; a dead follower is unhealthy."""

import time
import uuid
from pathlib import Path

import pytest

from stream_clf.kafka.connection import Connection
from stream_clf.kafka.control import KafkaControlFeed, ask_swap, ensure_control_topics
from stream_clf.kafka.control_records import SwapRequest
from stream_clf.model.classifier import Classifier
from stream_clf.ops.health import ConsumerState, Readiness
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.tools.broker import free_port
from stream_clf.tools.build.tiny_model import build_tiny_bundle
from stream_clf.worker.model_roots import ModelRoots
from stream_clf.worker.models import ModelHolder, ModelLoader, ModelSet
from stream_clf.worker.swaps import SwapFollower
from tests.control_records import malformed_requests, malformed_statuses
from tests.kafka_helpers import collect, ids_seen, keyed_events, produce, results_of
from tests.test_model_changes_kafka import control_topic, swap, version
from tests.web_helpers import scrape, wait_for_status

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``old`` and ``new`` side by side (one root); ``elsewhere`` in a directory of its own, outside it."""
    served, other = tmp_path_factory.mktemp("served"), tmp_path_factory.mktemp("elsewhere")
    built = {
        "old": build_tiny_bundle(served / "old", seed=21),
        "new": build_tiny_bundle(served / "new", seed=22),
        "elsewhere": build_tiny_bundle(other / "bundle", seed=23),
    }
    (served / "link").symlink_to(built["elsewhere"], target_is_directory=True)
    built["link"] = served / "link"
    return built


def test_malformed_control_records_are_skipped_and_a_valid_swap_after_them_is_applied(
    kafka_bootstrap, topics, bundles, start_worker
):
    control, port = control_topic(), free_port()
    status = f"{control}.status"
    ensure_control_topics(Connection.to(kafka_bootstrap), [control, status])
    requests, statuses = malformed_requests(topics.group), malformed_statuses(topics.group)
    produce(kafka_bootstrap, control, requests)
    produce(kafka_bootstrap, status, statuses)
    worker = start_worker(topics, bundles["old"], "--control-topic", control, "--web-port", str(port))
    wait_for_status(port, "/readyz", 200)  # catch-up read every one of them and started
    produce(kafka_bootstrap, control, requests)  # and the running follower too
    time.sleep(2)

    applied = swap(kafka_bootstrap, topics, control, "--model", str(bundles["new"]))

    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"applied, now serving {version(bundles['new'])}" in applied.stdout
    assert applied.stderr.count("warning: skipped a malformed record") == 2 * len(requests) + len(statuses)
    assert "Traceback" not in applied.stderr
    produce(kafka_bootstrap, topics.input, keyed_events(20))
    records = collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 20), timeout=120, watch=[worker])
    assert {result["model_version"] for result in results_of(records, topics)} == {version(bundles["new"])}
    # Requests: read at catch-up and by the running follower; statuses: by the dashboard's view of the group.
    skipped = [value for (name, _), value in scrape(port).items() if name == "stream_clf_control_records_skipped_total"]
    assert sum(skipped) == 2 * len(requests) + len(statuses)
    assert worker.log.read_text().count("event=control_record_skipped") == 2 * len(requests) + len(statuses)
    assert "Traceback" not in worker.log.read_text()
    worker.assert_running()


def test_a_swap_outside_the_roots_or_through_a_link_is_refused_and_the_old_model_serves(
    kafka_bootstrap, topics, bundles, start_worker
):
    control, port = control_topic(), free_port()
    worker = start_worker(topics, bundles["old"], "--control-topic", control, "--web-port", str(port))
    wait_for_status(port, "/readyz", 200)

    outside = swap(kafka_bootstrap, topics, control, "--model", str(bundles["elsewhere"]))
    linked = swap(kafka_bootstrap, topics, control, "--model", str(bundles["link"]))
    nowhere = swap(kafka_bootstrap, topics, control, "--model", "/nonexistent/x", "--expect-version", "0" * 16)
    stale = swap(kafka_bootstrap, topics, control, "--model", str(bundles["new"]), "--expect-version", "0" * 16)

    for answer in (outside, linked, nowhere):
        assert answer.returncode == 1, answer.stdout + answer.stderr
        assert "refused: the model asked for is not under a model root of this worker" in answer.stdout
        (refusal,) = [line for line in answer.stdout.splitlines() if line.strip().startswith("worker ")]
        assert "/" not in refusal.split(":", 1)[1].replace("--model-root", ""), "the refusal names no path"
    assert stale.returncode == 2, "the bundle here is another version than --expect-version says"
    assert f"the bundle {bundles['new']} here is version {version(bundles['new'])}" in stale.stderr
    produce(kafka_bootstrap, topics.input, keyed_events(20))
    records = collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 20), timeout=120, watch=[worker])
    assert {result["model_version"] for result in results_of(records, topics)} == {version(bundles["old"])}
    assert scrape(port)[("stream_clf_model_swaps_total", (("outcome", "refused"),))] == 3
    worker.assert_running()


def test_a_swap_whose_bundle_is_not_the_version_expected_is_refused_and_a_rollback_expects_the_old_one(
    kafka_bootstrap, topics, bundles, start_worker
):
    control, port = control_topic(), free_port()
    worker = start_worker(topics, bundles["old"], "--control-topic", control, "--web-port", str(port))
    wait_for_status(port, "/readyz", 200)
    # What a request for a bundle the workers see changed (or a forged one) looks like to them.
    forged = ask_swap(
        Connection.to(kafka_bootstrap), (control, f"{control}.status"), topics.group,
        target="*", model=str(bundles["new"]), expect="f" * 16, wait=60,
    )  # fmt: skip
    (answer,) = forged.answers.values()
    assert answer is not None
    assert answer.outcome == "refused"
    assert answer.reason == f"model {str(bundles['new'])!r} is version {version(bundles['new'])}, not {'f' * 16}"
    changed = swap(kafka_bootstrap, topics, control, "--model", str(bundles["new"]))
    assert changed.returncode == 0, changed.stdout
    rolled = swap(kafka_bootstrap, topics, control, "--rollback")
    assert rolled.returncode == 0, rolled.stdout
    assert f"applied, now serving {version(bundles['old'])}" in rolled.stdout, "a rollback expects the old version"
    worker.assert_running()


def test_a_worker_with_swaps_off_follows_nothing_and_says_so(kafka_bootstrap, topics, bundles, start_worker):
    control, port = control_topic(), free_port()
    worker = start_worker(topics, bundles["old"], "--control-topic", control, "--web-port", str(port),
                          "--swaps", "off")  # fmt: skip
    wait_for_status(port, "/readyz", 200)
    answer = swap(kafka_bootstrap, topics, control, "--model", str(bundles["new"]))
    assert answer.returncode == 1
    assert "does not follow swaps (started with --swaps off)" in answer.stdout
    produce(kafka_bootstrap, topics.input, keyed_events(10))
    records = collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 10), timeout=120, watch=[worker])
    assert {result["model_version"] for result in results_of(records, topics)} == {version(bundles["old"])}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_follower_that_dies_makes_the_worker_unhealthy(kafka_bootstrap, bundles):
    """Nothing the follower meets is meant to end it; should something (here, a loader that raises a
    BaseException no code may swallow) end it anyway, liveness says so instead of the worker going on
    without following swaps."""
    control = f"control-{uuid.uuid4().hex[:8]}"
    ensure_control_topics(Connection.to(kafka_bootstrap), [control, f"{control}.status"])

    def build(_bundle: object) -> None:
        raise KeyboardInterrupt

    metrics = WorkerMetrics(max_batch=8)
    holder = ModelHolder(ModelSet(ModelLoader(Classifier)(str(bundles["old"]))))
    follower = SwapFollower(
        feed=KafkaControlFeed(Connection.to(kafka_bootstrap), (control, f"{control}.status")),
        group="g",
        worker="w-1",
        inputs=["in"],
        holder=holder,
        load=ModelLoader(build),
        roots=ModelRoots([bundles["new"].parent]),
        metrics=metrics,
    )
    follower.catch_up()
    follower.start()
    readiness = Readiness(Connection.to(kafka_bootstrap), ConsumerState(), vital=[follower.failure])
    assert readiness.liveness() is None
    request = SwapRequest("g", "*", str(bundles["new"]), version(bundles["new"]))
    produce(kafka_bootstrap, control, [(request.key, request.encode())])
    deadline = time.monotonic() + 30
    while follower.failure() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "the control-topic follower died: KeyboardInterrupt" in (readiness.liveness() or "")
    follower.close()
