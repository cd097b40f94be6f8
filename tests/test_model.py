"""Bundles are checked at load with one-line errors; the classifier pads, truncates and scores right."""

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import orjson
import pytest

from stream_clf.errors import ModelError
from stream_clf.model.bundle import MANIFEST, load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.model.lanes import WIDE_ROWS, Layout
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS, build_tiny_bundle


@pytest.fixture
def bundle_dir(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may break."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def _edit_json(path: Path, **changes) -> None:
    document = orjson.loads(path.read_bytes())
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    path.write_bytes(orjson.dumps(document))


def _assert_one_line_error(path: Path, match: str) -> None:
    with pytest.raises(ModelError, match=match) as caught:
        Classifier(load_bundle(path))
    assert "\n" not in str(caught.value)


def test_a_missing_directory_is_named(tmp_path):
    _assert_one_line_error(tmp_path / "nowhere", "no such directory")


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json", "config.json"])
def test_a_missing_file_is_named(bundle_dir, name):
    (bundle_dir / name).unlink()
    _assert_one_line_error(bundle_dir, f"{name} is missing")


def test_missing_labels_are_reported(bundle_dir):
    _edit_json(bundle_dir / "config.json", id2label=None)
    _assert_one_line_error(bundle_dir, "no id2label")


def test_label_indices_must_run_from_zero(bundle_dir):
    _edit_json(bundle_dir / "config.json", id2label={"1": "a", "2": "b"})
    _assert_one_line_error(bundle_dir, "indices 0..n-1")


def test_labels_must_match_the_model_output_width(bundle_dir):
    _edit_json(bundle_dir / "config.json", id2label={"0": "a", "1": "b", "2": "c"})
    _assert_one_line_error(bundle_dir, "shape \\[1, 2\\] but config.json names 3 labels")


def test_input_names_must_be_those_of_a_sequence_classifier(bundle_dir):
    model = onnx.load(str(bundle_dir / "model.onnx"))
    model.graph.input[1].name = "mask"
    for node in model.graph.node:
        node.input[:] = ["mask" if name == "attention_mask" else name for name in node.input]
    onnx.save(model, str(bundle_dir / "model.onnx"))
    _assert_one_line_error(bundle_dir, "takes inputs \\['input_ids', 'mask', 'token_type_ids'\\]")


def test_a_corrupt_model_file_is_reported(bundle_dir):
    (bundle_dir / "model.onnx").write_bytes(b"not a model")
    _assert_one_line_error(bundle_dir, "model.onnx cannot be loaded")


def test_max_length_beyond_the_model_positions_is_refused(bundle_dir):
    _edit_json(bundle_dir / MANIFEST, max_length=1024)
    _assert_one_line_error(bundle_dir, "max_length 1024 exceeds the model's 512 positions")


def test_bad_activation_is_refused(bundle_dir):
    _edit_json(bundle_dir / MANIFEST, activation="relu")
    _assert_one_line_error(bundle_dir, "activation 'relu'")


def test_without_a_manifest_the_card_defaults_apply(bundle_dir):
    (bundle_dir / MANIFEST).unlink()
    (bundle_dir / "tokenizer_config.json").write_bytes(b'{"do_lower_case": true}')
    bundle = load_bundle(bundle_dir)
    assert (bundle.max_length, bundle.case_sensitive, bundle.activation) == (512, False, "softmax")
    assert bundle.name == "bundle"


@pytest.mark.parametrize(
    ("fusion", "max_length", "wide_rows"),
    [
        ({"MultiHeadAttention": 2, "SkipLayerNormalization": 4}, 512, WIDE_ROWS),  # fused, long rows
        ({"MultiHeadAttention": 2}, 256, None),  # fused, rows of 256 or fewer: a lane per thread
        (None, 512, None),  # as exported: a lane per thread at any length
        ({"MultiHeadAttention": 0}, 512, None),  # a fusion that matched no attention
        ("yes", 512, None),  # a hand-written manifest's odd record is not a fused graph
        ([{"MultiHeadAttention": 2}], 512, None),
    ],
)
def test_the_lanes_default_follows_the_manifests_fusion_and_max_length(bundle_dir, fusion, max_length, wide_rows):
    _edit_json(bundle_dir / MANIFEST, fusion=fusion, max_length=max_length)
    bundle = load_bundle(bundle_dir)
    assert Classifier(bundle, threads=2, lanes=None).layout == Layout(2, 2, wide_rows)
    assert Classifier(bundle, threads=1, lanes=None).layout == Layout(1, 1), "one thread has nothing to share"
    assert Classifier(bundle, threads=2, lanes=1).layout == Layout(2, 1), "--lanes given wins"


def test_a_fused_long_model_runs_a_batch_of_long_rows_alone_and_one_of_short_rows_in_lanes(bundle_dir):
    _edit_json(bundle_dir / MANIFEST, fusion={"MultiHeadAttention": 2}, max_length=512)
    classifier = Classifier(load_bundle(bundle_dir), threads=2, lanes=None, bucket_size=2)
    shorts = [f"short text number {n}" for n in range(8)]
    reviews = [*shorts[:5], " ".join(SAMPLE_TEXTS * 40), *shorts[5:]]  # one long row makes the batch wide
    short_plans, review_plans = classifier.plan(shorts), classifier.plan(reviews)
    review_rows = [row for text_plan in review_plans for row in text_plan.rows]
    assert classifier.wide(review_rows)
    assert not classifier.wide([row for p in short_plans for row in p.rows])
    spans, run = [], classifier.run

    def slowed(feeds: dict[str, np.ndarray], *, wide: bool = False) -> np.ndarray:  # long enough to overlap
        started = time.perf_counter()
        time.sleep(0.03)
        logits = run(feeds, wide=wide)
        spans.append((started, time.perf_counter(), wide))
        return logits

    classifier.run = slowed
    with ThreadPoolExecutor(2) as batches:  # as the worker: two batches at once
        answers = list(batches.map(classifier.infer, [review_plans, short_plans, review_plans]))

    def overlap(a: tuple, b: tuple) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    wide = [span for span in spans if span[2]]
    assert len(wide) == 2 * len(classifier.buckets([r for p in review_plans for r in p.rows])), (
        "every call of a wide batch"
    )
    for span in wide:
        assert not any(overlap(span, other) for other in spans if other is not span), "a wide call ran beside another"
    narrow = [span for span in spans if not span[2]]
    assert any(overlap(a, b) for a in narrow for b in narrow if a is not b), (
        "a short batch's calls never ran two at once"
    )
    one_call = Classifier(load_bundle(bundle_dir), threads=2, lanes=1)
    assert answers[0] == answers[2] == one_call.infer(review_plans)
    assert answers[1] == one_call.infer(short_plans)


@pytest.mark.parametrize("lanes", [1, 2])
def test_calls_from_two_batches_at_once_never_run_more_than_the_lanes(tiny_bundle, lanes):
    # The worker classifies two batches at once; one call on every core must not meet another.
    classifier = Classifier(load_bundle(tiny_bundle), threads=2, lanes=lanes)
    feeds = classifier.encode(["a short text", "the match ended in a draw"]).feeds
    running, most, lock = 0, 0, threading.Lock()

    def build() -> dict[str, np.ndarray]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return feeds

    with ThreadPoolExecutor(2) as batches:
        answers = list(batches.map(lambda _: classifier.run_all([build] * 3), range(2)))
    assert most == lanes
    assert all(len(logits) == 3 for logits in answers)


def test_the_version_is_a_content_hash(bundle_dir, tiny_bundle):
    assert load_bundle(bundle_dir).version == load_bundle(tiny_bundle).version
    _edit_json(bundle_dir / "config.json", id2label={"0": "neg", "1": "pos"})
    assert load_bundle(bundle_dir).version != load_bundle(tiny_bundle).version


def test_batches_pad_only_to_their_longest_member(tiny_bundle):
    classifier = Classifier(load_bundle(tiny_bundle))
    short, longer = classifier.encode(["ok"]), classifier.encode(["ok", SAMPLE_TEXTS[0]])
    assert short.shape == (1, 4)  # [CLS] o k [SEP]
    assert longer.shape[1] == len(classifier.encode([SAMPLE_TEXTS[0]]).feeds["input_ids"][0])
    assert longer.feeds["attention_mask"][0].sum() == 4


def test_padding_does_not_change_a_prediction(tiny_bundle):
    classifier = Classifier(load_bundle(tiny_bundle))
    together = classifier.predict(list(SAMPLE_TEXTS))
    alone = [classifier.predict([text])[0] for text in SAMPLE_TEXTS]
    for a, b in zip(together, alone, strict=True):
        assert a.label == b.label
        assert a.scores == pytest.approx(b.scores, abs=1e-5)


def test_scores_are_probabilities_over_the_config_labels(tiny_bundle):
    classifier = Classifier(load_bundle(tiny_bundle))
    for prediction in classifier.predict(list(SAMPLE_TEXTS)):
        assert set(prediction.scores) == {"negative", "positive"}
        assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.score == max(prediction.scores.values())


def test_texts_longer_than_max_length_are_truncated_and_flagged(tmp_path):
    classifier = Classifier(load_bundle(build_tiny_bundle(tmp_path / "b", max_positions=32)))
    long_text = " ".join(SAMPLE_TEXTS)
    batch = classifier.encode([long_text, "ok"])
    assert batch.shape[1] == 32
    assert batch.truncated == [True, False]
    assert [p.truncated for p in classifier.predict([long_text, "ok"])] == [True, False]


def test_a_case_insensitive_bundle_gives_the_same_answer_for_any_case(tmp_path):
    cased = Classifier(load_bundle(build_tiny_bundle(tmp_path / "cased")))
    uncased = Classifier(load_bundle(build_tiny_bundle(tmp_path / "uncased", lowercase=True)))
    text = "Shares Rallied After The Central Bank Held Rates"
    assert cased.encode([text]).feeds["input_ids"].tolist() != cased.encode([text.lower()]).feeds["input_ids"].tolist()
    assert np.array_equal(uncased.encode([text]).feeds["input_ids"], uncased.encode([text.upper()]).feeds["input_ids"])
    assert uncased.predict([text])[0].scores == uncased.predict([text.swapcase()])[0].scores
