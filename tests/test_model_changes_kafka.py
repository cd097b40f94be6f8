"""Models change while the stream runs, through the real broker: a swap mid-stream in both guarantees,
a corrupt bundle refused, a rollback, a worker that joins after a swap, the shadow and canary models
and abstentions counted right, and a replay of a range of history."""

import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.tools.broker import free_port
from stream_clf.tools.build.tiny_model import build_tiny_bundle
from stream_clf.worker.models import CANARY_BUCKETS
from tests.kafka_helpers import Topics, collect, ids_seen, keyed_events, produce, produce_steadily, results_of
from tests.web_helpers import get, scrape, wait_for_status

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny bundles: ``old`` and ``new`` differ in weights; ``lower`` lowercases, with three labels;
    ``corrupt`` has a model file that is not a model."""
    root = tmp_path_factory.mktemp("swap-bundles")
    built = {
        "old": build_tiny_bundle(root / "old", seed=11),
        "new": build_tiny_bundle(root / "new", seed=12),
        "lower": build_tiny_bundle(root / "lower", seed=13, lowercase=True, labels=("neg", "neu", "pos")),
        "corrupt": build_tiny_bundle(root / "corrupt", seed=14),
    }
    (built["corrupt"] / "model.onnx").write_bytes(b"\x08\x07 this is not an ONNX graph")
    return built


def version(bundle: Path) -> str:
    return load_bundle(bundle).version


def swap(bootstrap: str, topics: Topics, control: str, *args: str) -> subprocess.CompletedProcess:
    """``stream-clf swap`` as a user runs it."""
    command = [sys.executable, "-m", "stream_clf", "swap", "--brokers", bootstrap, "--group", topics.group]
    command += ["--control-topic", control, "--wait", "60", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def control_topic() -> str:
    return f"control-{uuid.uuid4().hex[:8]}"


def versions_per_partition(results: list[dict]) -> dict[int, list[str]]:
    """Each input partition's result versions, in input offset order, runs collapsed."""
    runs: dict[int, list[str]] = defaultdict(list)
    for result in sorted(results, key=lambda r: (r["source"]["partition"], r["source"]["offset"])):
        versions = runs[result["source"]["partition"]]
        if not versions or versions[-1] != result["model_version"]:
            versions.append(result["model_version"])
    return runs


GUARANTEES = {"at-least-once": (), "exactly-once": ("--guarantee", "exactly-once", "--instance", "swapper")}


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_swap_mid_stream_switches_each_partition_once_and_loses_or_repeats_nothing(
    guarantee, kafka_bootstrap, topics, bundles, start_worker
):
    control, port, total = control_topic(), free_port(), 5000
    worker = start_worker(topics, bundles["old"], "--control-topic", control, "--web-port", str(port),
                          *GUARANTEES[guarantee])  # fmt: skip
    wait_for_status(port, "/readyz", 200)
    events = keyed_events(total)
    landed: list = []
    feeder = produce_steadily(kafka_bootstrap, topics.input, events, seconds=20, landed=landed)
    collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 1500), timeout=120, watch=[worker])
    readiness = ReadinessWatch(port)
    asked = time.time()
    answer = swap(kafka_bootstrap, topics, control, "--model", str(bundles["new"]))
    assert readiness.stop() == {200}, "ready all through the swap"
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert f"applied, now serving {version(bundles['new'])}" in answer.stdout
    feeder.join()
    records = collect(kafka_bootstrap, [topics.output, topics.dlq], until=ids_seen(topics, total), timeout=180,
                      settle=3, watch=[worker])  # fmt: skip
    results = results_of(records, topics)

    ids = Counter(result["id"] for result in results)
    assert set(ids) == {f"e{i}" for i in range(total)}, "every event has a result"
    assert max(ids.values()) == 1, f"{sum(ids.values()) - total} duplicates"
    old, new = version(bundles["old"]), version(bundles["new"])
    runs = versions_per_partition(results)
    assert all(versions == [old, new] for versions in runs.values()), f"one switch per partition: {dict(runs)}"
    per_key = defaultdict(list)
    for record, result in _outputs(records, topics):
        per_key[record.key].append((record.partition, record.offset, result["meta"]["seq"]))
    for seen in per_key.values():
        assert len({partition for partition, _, _ in seen}) == 1, "one key, one output partition"
        assert [seq for _, _, seq in sorted(seen)] == sorted(seq for _, _, seq in seen), "per-key order kept"
    assert scrape(port)[("stream_clf_partition_assignments_total", ())] == 1, "no rebalance"

    # Latency, output record's timestamp minus input record's: the 5 s before the swap was asked
    # for, against the swap (from the request until a second after the last partition switched).
    produced = {orjson.loads(value)["id"]: record.timestamp for (_, value), record in zip(events, landed, strict=True)}
    delivered = {result["id"]: record.timestamp for record, result in _outputs(records, topics)}
    first_new: dict[int, int] = {}
    for record, result in _outputs(records, topics):
        if result["model_version"] == new:
            partition = result["source"]["partition"]
            first_new[partition] = min(first_new.get(partition, record.timestamp), record.timestamp)
    asked_ms, switched_ms = asked * 1000, max(first_new.values())
    before = [delivered[i] - at for i, at in produced.items() if asked_ms - 5000 <= at < asked_ms]
    during = [delivered[i] - at for i, at in produced.items() if asked_ms <= at <= switched_ms + 1000]
    p99_before, p99_during = np.percentile(before, 99), np.percentile(during, 99)
    print(
        f"swap, {guarantee}: switched {switched_ms - asked_ms:.0f} ms after the request; p99 latency"
        f" {p99_before:.0f} ms in the 5 s before, {p99_during:.0f} ms during ({len(during)} events)"
    )
    assert p99_during <= 2 * p99_before, (p99_before, p99_during)
    worker.assert_running()


class ReadinessWatch:
    """Asks ``/readyz`` ten times a second, from a thread, until stopped; :meth:`stop` gives the statuses seen."""

    def __init__(self, port: int) -> None:
        self._statuses: set[int] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port,))
        self._thread.start()

    def _run(self, port: int) -> None:
        while not self._done.wait(0.1):
            self._statuses.add(get(port, "/readyz")[0])

    def stop(self) -> set[int]:
        self._done.set()
        self._thread.join()
        return self._statuses


def _outputs(records, topics: Topics):
    """(record, decoded result) of each output record."""
    return [(record, orjson.loads(record.value)) for record in records if record.topic == topics.output]


def test_a_corrupt_bundle_is_refused_the_old_model_serves_on_and_a_rollback_swaps_back(
    kafka_bootstrap, topics, bundles, start_worker
):
    control, port = control_topic(), free_port()
    worker = start_worker(topics, bundles["old"], "--control-topic", control, "--web-port", str(port))
    wait_for_status(port, "/readyz", 200)
    old, new = version(bundles["old"]), version(bundles["new"])

    refused = swap(kafka_bootstrap, topics, control, "--model", str(bundles["corrupt"]))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "refused: model bundle" in refused.stdout
    assert "model.onnx cannot be loaded" in refused.stdout
    produce(kafka_bootstrap, topics.input, keyed_events(200))
    records = collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 200), timeout=90, watch=[worker])
    assert {result["model_version"] for result in results_of(records, topics)} == {old}, "the old model serves on"
    samples = scrape(port)
    assert samples[("stream_clf_model_swaps_total", (("outcome", "refused"),))] == 1
    assert samples[("stream_clf_model_swaps_total", (("outcome", "applied"),))] == 0
    assert "event=swap_refused" in worker.log.read_text()

    applied = swap(kafka_bootstrap, topics, control, "--model", str(bundles["new"]))
    assert f"applied, now serving {new}" in applied.stdout, applied.stdout + applied.stderr
    back = swap(kafka_bootstrap, topics, control, "--rollback")
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"applied, now serving {old}" in back.stdout
    produce(kafka_bootstrap, topics.input, keyed_events(200, start=200))
    records = collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 400), timeout=90, watch=[worker])
    later = [result for result in results_of(records, topics) if int(result["id"][1:]) >= 200]
    assert {result["model_version"] for result in later} == {old}
    info = {dict(labels)["version"] for (name, labels), v in scrape(port).items() if name == "stream_clf_model_info"}
    assert info == {old}, "only the model in service is reported"


def test_a_worker_that_joins_after_a_swap_serves_what_its_group_serves(kafka_bootstrap, topics, bundles, start_worker):
    control, port = control_topic(), free_port()
    first = start_worker(topics, bundles["old"], "--control-topic", control, "--web-port", str(port))
    wait_for_status(port, "/readyz", 200)
    assert swap(kafka_bootstrap, topics, control, "--model", str(bundles["new"])).returncode == 0
    first.terminate()

    # Started with the model the swap replaced: it serves the swapped one.
    joiner = start_worker(topics, bundles["old"], "--control-topic", control)
    produce(kafka_bootstrap, topics.input, keyed_events(100))
    records = collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 100), timeout=90, watch=[joiner])
    assert {result["model_version"] for result in results_of(records, topics)} == {version(bundles["new"])}
    joiner.terminate()

    # Started with another model (a new deployment): the old swap does not override it.
    redeployed = start_worker(topics, bundles["lower"], "--control-topic", control)
    produce(kafka_bootstrap, topics.input, keyed_events(100, start=100))
    records = collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, 200), timeout=90, watch=[redeployed])
    later = [result for result in results_of(records, topics) if int(result["id"][1:]) >= 100]
    assert {result["model_version"] for result in later} == {version(bundles["lower"])}
    assert "event=swap_skipped" in redeployed.log.read_text()


def test_routes_canary_shadow_and_abstentions_are_served_and_counted_right(
    kafka_bootstrap, topics, bundles, start_worker
):
    reviews = f"reviews-{uuid.uuid4().hex[:8]}"
    share, keys, total = 0.3, 200, 800
    port = free_port()
    old = Classifier(load_bundle(bundles["old"]), threads=1)
    texts = [orjson.loads(value)["text"] for _, value in keyed_events(total, keys=keys)]
    bound = float(np.median([p.score for p in old.predict(texts)]))  # about half abstain
    worker = start_worker(
        topics, bundles["old"], "--web-port", str(port), "--control-topic", control_topic(),
        "--route", f"{reviews}={bundles['lower']}",
        "--canary-model", str(bundles["new"]), "--canary-share", str(share),
        "--shadow-model", str(bundles["lower"]), "--min-confidence", f"{bound}",
    )  # fmt: skip
    wait_for_status(port, "/readyz", 200)
    produce(kafka_bootstrap, topics.input, keyed_events(total, keys=keys))
    produce(kafka_bootstrap, reviews, [(b"r", orjson.dumps({"id": f"r{i}", "text": texts[i]})) for i in range(50)])
    shadow_topic, review_topic = f"{topics.output}.shadow", f"{topics.output}.review"
    records = collect(
        kafka_bootstrap, [topics.output, shadow_topic, review_topic],
        until=lambda r: sum(x.topic == topics.output for x in r) >= total + 50
        and sum(x.topic == shadow_topic for x in r) >= total + 50,
        timeout=120, settle=2, watch=[worker],
    )  # fmt: skip
    results = {r["id"]: r for r in results_of(records, topics)}
    assert len(results) == total + 50

    # Routed topic: its own model. Canary: exactly the keys whose CRC-32 falls in the share.
    assert {results[f"r{i}"]["model_version"] for i in range(50)} == {version(bundles["lower"])}
    for i, (key, _) in enumerate(keyed_events(total, keys=keys)):
        canary = zlib.crc32(key) % CANARY_BUCKETS < share * CANARY_BUCKETS
        assert results[f"e{i}"]["model_version"] == version(bundles["new" if canary else "old"])
    served_new = sum(r["model_version"] == version(bundles["new"]) for r in results.values())
    print(f"canary share {share}: {served_new} of {total} events")

    # Shadow: one record per result, the shadow model's own answer, never in the output.
    lower = Classifier(load_bundle(bundles["lower"]), threads=1)
    direct = dict(zip([f"e{i}" for i in range(total)], lower.predict(texts), strict=True))
    direct |= dict(zip([f"r{i}" for i in range(50)], lower.predict(texts[:50]), strict=True))
    shadows = {s["id"]: s for s in (orjson.loads(r.value) for r in records if r.topic == shadow_topic)}
    assert set(shadows) == set(results)
    for event_id, shadow in shadows.items():
        assert shadow["shadow"]["label"] == direct[event_id].label
        assert shadow["live"]["label"] == results[event_id]["label"]
        assert shadow["agree"] == (shadow["live"]["label"] == shadow["shadow"]["label"])
    agreed = sum(s["agree"] for s in shadows.values())

    # Abstentions: marked in the result, and copied with the text for review.
    abstained = {i for i, r in results.items() if r["abstained"]}
    assert abstained == {i for i, r in results.items() if r["score"] < bound}
    reviewed = [orjson.loads(r.value) for r in records if r.topic == review_topic]
    assert sorted(r["id"] for r in reviewed) == sorted(abstained)
    assert all(r["text"] == texts[int(r["id"][1:])] for r in reviewed)

    samples = scrape(port)
    compared = [v for (name, _), v in samples.items() if name == "stream_clf_shadow_comparisons_total"]
    snapshot = orjson.loads(get(port, "/dashboard/stats.json")[1])
    assert sum(compared) == total + 50
    assert snapshot["shadow"]["agreement"] == pytest.approx(agreed / (total + 50))
    assert sum(v for (n, _), v in samples.items() if n == "stream_clf_abstentions_total") == len(abstained)
    roles = {dict(labels)["role"] for (n, labels), v in samples.items() if n == "stream_clf_model_info" and v == 1}
    assert roles == {"default", "route", "canary", "shadow"}
    print(f"shadow agreement {agreed}/{total + 50}; {len(abstained)} abstained")


def test_replay_relabels_exactly_the_range_asked_for(kafka_bootstrap, topics, bundles):
    moments = []
    for part in range(3):
        moments.append(datetime.now(UTC))
        produce(kafka_bootstrap, topics.input, keyed_events(100, start=100 * part))
        time.sleep(1.5)

    def replay(output: str, *bounds: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "stream_clf", "replay", "--brokers", kafka_bootstrap, "--input", topics.input,
                   "--output", output, "--model", str(bundles["new"]), *bounds]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def replayed(output: str, count: int) -> list[dict]:
        records = collect(kafka_bootstrap, [output], until=lambda r: len(r) >= count, timeout=60, settle=2)
        return [orjson.loads(record.value) for record in records]

    by_time = f"by-time-{uuid.uuid4().hex[:8]}"
    done = replay(by_time, "--from", moments[1].isoformat(), "--to", moments[2].isoformat())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replayed 100 events" in done.stdout
    results = replayed(by_time, 100)
    assert Counter(r["id"] for r in results) == Counter({f"e{i}": 1 for i in range(100, 200)}), "that batch, once"
    assert {r["model_version"] for r in results} == {version(bundles["new"])}

    by_offset = f"by-offset-{uuid.uuid4().hex[:8]}"
    done = replay(by_offset, "--from", "10", "--to", "20")
    assert done.returncode == 0, done.stdout + done.stderr
    results = replayed(by_offset, 40)
    sources = Counter((r["source"]["partition"], r["source"]["offset"]) for r in results)
    assert sources == Counter({(p, o): 1 for p in range(4) for o in range(10, 20)}), "offsets 10-19 of each partition"

    assert replay(by_offset, "--from", "yesterday").returncode == 2
