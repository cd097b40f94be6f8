"""Long texts: head, tail, head+tail and sliding windows, with `truncated` and `chunks` telling what happened."""

import itertools
from pathlib import Path

import numpy as np
import pytest

from stream_clf.errors import ConfigError
from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.model.windows import Truncation, Windowing
from stream_clf.tools.build.tiny_model import build_tiny_bundle

MAX_LENGTH = 16  # 14 content tokens between [CLS] and [SEP]
WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A vocabulary in which every w<i> is one token, so positions in the text are positions in ids.
    return build_tiny_bundle(tmp_path_factory.mktemp("w") / "b", max_positions=MAX_LENGTH, corpus=[" ".join(WORDS)] * 3)


def _classifier(bundle: Path, strategy: Truncation, **options: int) -> Classifier:
    return Classifier(load_bundle(bundle), windowing=Windowing(strategy, **options))


def _content(classifier: Classifier, text: str) -> list[list[str]]:
    """The content tokens of each row the text becomes, special tokens stripped."""
    batch = classifier.encode([text])
    vocab = {i: t for t, i in classifier.tokenizer.get_vocab().items()}
    rows = []
    for ids, mask in zip(batch.feeds["input_ids"], batch.feeds["attention_mask"], strict=True):
        tokens = [vocab[int(i)] for i, m in zip(ids, mask, strict=True) if m]
        assert (tokens[0], tokens[-1]) == ("[CLS]", "[SEP]")
        rows.append(tokens[1:-1])
    return rows


def test_head_keeps_the_beginning(bundle):
    rows = _content(_classifier(bundle, Truncation.HEAD), " ".join(WORDS))
    assert rows == [WORDS[:14]]


def test_tail_keeps_the_end(bundle):
    assert _content(_classifier(bundle, Truncation.TAIL), " ".join(WORDS)) == [WORDS[-14:]]


def test_head_plus_tail_keeps_a_quarter_from_the_start_and_the_rest_from_the_end(bundle):
    assert _content(_classifier(bundle, Truncation.HEAD_TAIL), " ".join(WORDS)) == [WORDS[:3] + WORDS[-11:]]


def test_windows_cover_every_token_with_the_requested_overlap(bundle):
    rows = _content(_classifier(bundle, Truncation.WINDOWS_MEAN, stride=4), " ".join(WORDS))
    assert rows[0] == WORDS[:14]
    assert all(a[-4:] == b[:4] for a, b in itertools.pairwise(rows))
    assert rows[-1][-1] == WORDS[-1]
    assert len(rows) == 4  # starts at 0, 10, 20, 30


def test_short_texts_are_one_untruncated_chunk_whatever_the_strategy(bundle):
    for strategy in Truncation:
        prediction = _classifier(bundle, strategy).predict(["w1 w2 w3"])[0]  # default stride: a quarter
        assert (prediction.truncated, prediction.chunks) == (False, 1)


def test_window_probabilities_are_pooled_by_mean_or_max(bundle):
    text = " ".join(WORDS)
    windows = _content(_classifier(bundle, Truncation.WINDOWS_MEAN, stride=4), text)
    single = _classifier(bundle, Truncation.HEAD)
    per_window = np.array(
        [[single.predict([" ".join(r)])[0].scores[label] for label in single.labels] for r in windows]
    )

    mean = _classifier(bundle, Truncation.WINDOWS_MEAN, stride=4).predict([text])[0]
    assert (mean.chunks, mean.truncated) == (4, False)
    assert [mean.scores[label] for label in single.labels] == pytest.approx(per_window.mean(axis=0), abs=1e-5)

    peak = _classifier(bundle, Truncation.WINDOWS_MAX, stride=4).predict([text])[0]
    expected = per_window.max(axis=0) / per_window.max(axis=0).sum()
    assert [peak.scores[label] for label in single.labels] == pytest.approx(expected, abs=1e-5)


def test_too_many_windows_count_as_truncated(bundle):
    prediction = _classifier(bundle, Truncation.WINDOWS_MEAN, stride=4, max_windows=2).predict([" ".join(WORDS)])[0]
    assert (prediction.chunks, prediction.truncated) == (2, True)


def test_a_batch_mixes_windowed_and_short_texts_in_order(bundle):
    classifier = _classifier(bundle, Truncation.WINDOWS_MEAN, stride=4)
    predictions = classifier.predict(["w1", " ".join(WORDS), "w2 w3"])
    assert [p.chunks for p in predictions] == [1, 4, 1]
    assert predictions[0].scores == classifier.predict(["w1"])[0].scores


def test_a_stride_as_wide_as_the_window_is_refused(bundle):
    with pytest.raises(ConfigError, match="--stride 14 must be at least 0 and below the window of 14 tokens"):
        _classifier(bundle, Truncation.WINDOWS_MAX, stride=14)
