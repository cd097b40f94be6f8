"""Which model answers each event, in process (no broker): swaps between batches, routes, the canary
share, the shadow model's comparisons, abstentions, and the flags that set them up."""

import zlib
from pathlib import Path

import orjson
import pytest

from stream_clf.errors import ConfigError, ModelError
from stream_clf.model.abstain import MinConfidence, parse_min_confidence
from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.settings import WorkerSettings
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS, build_tiny_bundle
from stream_clf.tools.replay import Bound, parse_bound
from stream_clf.worker.core import BatchStep
from stream_clf.worker.events import Source
from stream_clf.worker.models import CANARY_BUCKETS, ModelHolder, ModelLoader, ModelSet, ServedModel
from stream_clf.worker.records import InFlight
from stream_clf.worker.routing import Routing


def _load(path: Path) -> ServedModel:
    return ModelLoader(lambda bundle: Classifier(bundle, threads=1))(str(path))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ServedModel]:
    """Three tiny models: ``a`` and ``b`` differ in weights, ``lower`` also lowercases its input."""
    root = tmp_path_factory.mktemp("models")
    return {
        "a": _load(build_tiny_bundle(root / "a", seed=1)),
        "b": _load(build_tiny_bundle(root / "b", seed=2)),
        "lower": _load(build_tiny_bundle(root / "lower", seed=3, lowercase=True, labels=("neg", "neu", "pos"))),
    }


def events(count: int, topic: str = "texts", keys: int = 40) -> list[InFlight]:
    def ack() -> None:
        pass

    return [
        InFlight.decode(
            Source(topic, i % 4, i),
            f"user-{i % keys}".encode(),
            orjson.dumps({"id": f"e{i}", "text": SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]}),
            ack,
            1 << 20,
        )
        for i in range(count)
    ]


def results(processed, topic: str = "out") -> list[dict]:
    return [orjson.loads(record.value) for record in processed.records if record.topic == topic]


def test_a_swap_between_planning_and_classifying_answers_the_whole_batch_with_the_new_model(models):
    holder = ModelHolder(ModelSet(models["a"]))
    step = BatchStep(holder, Routing("out", "dlq"), WorkerMetrics(max_batch=64))
    batch = events(12)
    step.plan(batch)
    assert {record.model for record in batch} == {models["a"]}
    previous = holder.swap("*", models["lower"])  # another tokenizer and other labels
    assert previous is models["a"]

    processed = step.classify(batch, holder.current)

    answered = results(processed)
    assert {result["model_version"] for result in answered} == {models["lower"].version}
    direct = models["lower"].classifier.predict([SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(12)])
    assert [result["label"] for result in answered] == [prediction.label for prediction in direct]
    assert {record.model for record in batch} == {models["lower"]}, "the stale plans were made again"


def test_routes_canary_and_default_each_answer_their_own_events(models):
    share = 0.3
    served = ModelSet(models["a"], routes={"reviews": models["lower"]}, canary=models["b"], canary_share=share)
    step = BatchStep(ModelHolder(served), Routing("out", "dlq"), WorkerMetrics(max_batch=256))
    batch = events(200) + events(50, topic="reviews")

    processed = step(batch)

    versions = {result["id"] + result["source"]["topic"]: result["model_version"] for result in results(processed)}
    for record in batch:
        expected = models["a"].version
        if record.source.topic == "reviews":
            expected = models["lower"].version
        elif zlib.crc32(record.key) % CANARY_BUCKETS < share * CANARY_BUCKETS:
            expected = models["b"].version
        assert versions[record.outcome.id + record.source.topic] == expected
    canary_keys = {
        r.key for r in batch if r.source.topic == "texts" and versions[r.outcome.id + "texts"] == models["b"].version
    }
    assert 0 < len(canary_keys) < 40, "a share of the keys, and every event of a key on one model"


def test_the_shadow_model_answers_beside_the_live_one_and_is_compared(models):
    metrics = WorkerMetrics(max_batch=64)
    step = BatchStep(
        ModelHolder(ModelSet(models["a"], shadow=models["lower"])), Routing("out", "dlq", shadow="out.shadow"), metrics
    )
    batch = events(24)

    processed = step(batch)
    processed.count(metrics)

    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(24)]
    live = [p.label for p in models["a"].classifier.predict(texts)]
    shadow = [p.label for p in models["lower"].classifier.predict(texts)]
    shadows = results(processed, "out.shadow")
    assert [s["live"]["label"] for s in shadows] == live
    assert [s["shadow"]["label"] for s in shadows] == shadow
    assert [s["agree"] for s in shadows] == [a == b for a, b in zip(live, shadow, strict=True)]
    assert {s["shadow"]["model_version"] for s in shadows} == {models["lower"].version}
    assert [r["model_version"] for r in results(processed)] == [models["a"].version] * 24, "never in the output"
    snapshot = metrics.snapshot()["shadow"]
    assert snapshot["compared"] == 24
    assert snapshot["agreement"] == sum(a == b for a, b in zip(live, shadow, strict=True)) / 24
    for label in set(live):
        assert sum(snapshot["table"][label].values()) == live.count(label)
    assert snapshot["cost"] > 0


def test_results_below_min_confidence_are_published_marked_and_copied_for_review(models):
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(24)]
    scores = [p.score for p in models["a"].classifier.predict(texts)]
    bound = sorted(scores)[12]  # about half the results fall below it
    metrics = WorkerMetrics(max_batch=64)
    routing = Routing("out", "dlq", review="out.review", min_confidence=MinConfidence(default=bound))
    step = BatchStep(ModelHolder(ModelSet(models["a"])), routing, metrics)

    processed = step(events(24))
    processed.count(metrics)

    published = results(processed)
    assert [r["abstained"] for r in published] == [score < bound for score in scores]
    reviews = results(processed, "out.review")
    assert [r["id"] for r in reviews] == [r["id"] for r in published if r["abstained"]]
    assert all(r["text"] == texts[int(r["id"][1:])] and r["min_confidence"] == bound for r in reviews)
    assert sum(metrics.snapshot()["abstentions"].values()) == len(reviews) > 0


def test_min_confidence_takes_one_bound_per_label_or_for_all():
    assert parse_min_confidence("0.7") == MinConfidence(0.7, {})
    both = parse_min_confidence("0.7, neg=0.9")
    assert (both.bound("neg"), both.bound("pos")) == (0.9, 0.7)
    assert parse_min_confidence("neg=0.8").bound("pos") is None
    for bad in ("", "1.5", "neg=", "=0.5", "0.5,0.6", "neg=high"):
        with pytest.raises(ValueError):  # noqa: PT011 (each message is checked through the settings below)
            parse_min_confidence(bad)
    with pytest.raises(ConfigError, match=r"--min-confidence names \['neutral'\]"):
        MinConfidence(per_label={"neutral": 0.5}).check(("neg", "pos"), "imdb")


def test_worker_flags_for_models_and_their_topics_are_checked_at_start():
    base = {"model": "m"}
    routed = WorkerSettings.resolve({**base, "input": "texts", "route": "reviews=imdb,tweets=sentiment"}, {})
    assert routed.topics.input == ("texts", "reviews", "tweets"), "a routed topic is consumed too"
    assert routed.models.route == {"reviews": "imdb", "tweets": "sentiment"}
    shadowed = WorkerSettings.resolve({**base, "shadow_model": "b", "min_confidence": "0.6"}, {})
    assert shadowed.published_topics == ["texts.labeled", "texts.dlq", "texts.labeled.shadow", "texts.labeled.review"]
    errors = {
        "route": ("reviews", "expected TOPIC=MODEL"),
        "canary_share": ("1.5", "above 0 and at most 1"),
        "min_confidence": ("2", "probabilities in \\[0, 1\\]"),
    }
    for field, (value, message) in errors.items():
        with pytest.raises(ConfigError, match=message):
            WorkerSettings.resolve({**base, field: value}, {})
    with pytest.raises(ConfigError, match=r"\(--shadow-topic\) is also an input"):
        WorkerSettings.resolve({**base, "shadow_model": "b", "shadow_topic": "texts"}, {})
    with pytest.raises(ConfigError, match="--output and --review-topic are both"):
        WorkerSettings.resolve({**base, "min_confidence": "0.5", "review_topic": "texts.labeled"}, {})


def test_a_bundle_that_cannot_load_is_refused_by_the_loader(tmp_path, models):
    broken = build_tiny_bundle(tmp_path / "broken")
    (broken / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"model\.onnx cannot be loaded"):
        _load(broken)
    checked = ModelLoader(
        lambda bundle: Classifier(bundle, threads=1),
        lambda bundle: MinConfidence(per_label={"neutral": 0.5}).check(bundle.labels, bundle.name),
    )
    with pytest.raises(ConfigError, match="neutral"):
        checked(str(load_bundle(models["a"].bundle.path).path))


def test_replay_bounds_are_offsets_times_or_the_ends():
    assert parse_bound("1200") == Bound(offset=1200)
    assert parse_bound("earliest") == Bound(keyword="earliest")
    assert parse_bound("2026-11-25T10:00:00Z") == Bound(time_ms=1795600800000)
    assert parse_bound("2026-11-25T11:00:00+01:00") == parse_bound("2026-11-25T10:00:00")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_bound("yesterday")
