"""A tokenizer that panics (a Rust panic, which Python sees as pyo3's PanicException, a BaseException)
costs the event that made it panic one dead letter, never the process: through the real tokenizers
library and the worker's batch step."""

import json
from pathlib import Path

import orjson
import pytest

from stream_clf.errors import fails_alone
from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.tools.build.tiny_model import build_tiny_bundle
from stream_clf.worker.core import BatchStep
from stream_clf.worker.events import Source
from stream_clf.worker.models import ModelHolder, ModelLoader, ModelSet, ServedModel
from stream_clf.worker.records import InFlight
from stream_clf.worker.routing import Routing

# onig gives up on this pattern past its retry limit on a long run of a's not followed by b; the
# tokenizers library then panics ("Onig: Regex search error: retry-limit-in-match over").
CATASTROPHIC = "(a|aa)+b"
PANICKING_TEXT = "a" * 40 + "c"


@pytest.fixture(scope="module")
def panicking_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid bundle whose tokenizer.json splits words with a backtracking regex: it loads, warms up
    and classifies ordinary texts, and panics on one text."""
    bundle = build_tiny_bundle(tmp_path_factory.mktemp("panics") / "bundle")
    tokenizer = json.loads((bundle / "tokenizer.json").read_text())
    split = {"type": "Split", "pattern": {"Regex": CATASTROPHIC}, "behavior": "Isolated", "invert": False}
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, tokenizer["pre_tokenizer"]]}
    (bundle / "tokenizer.json").write_text(json.dumps(tokenizer))
    return bundle


def test_the_tokenizer_really_panics_past_python_s_exception(panicking_bundle):
    classifier = Classifier(load_bundle(panicking_bundle))
    with pytest.raises(BaseException) as raised:  # noqa: PT011 (the point is that it is no Exception)
        classifier.plan([PANICKING_TEXT])
    assert not isinstance(raised.value, Exception)
    assert type(raised.value).__name__ == "PanicException"
    assert fails_alone(raised.value)


def test_a_panicking_text_is_dead_lettered_and_its_batch_is_labelled(panicking_bundle):
    model = ModelLoader(Classifier)(str(panicking_bundle))
    assert isinstance(model, ServedModel), "the bundle loads and warms up: ordinary texts do not panic"
    metrics = WorkerMetrics(max_batch=8)
    step = BatchStep(ModelHolder(ModelSet(model)), Routing("out", "dlq"), metrics)
    texts = ["a fine film", PANICKING_TEXT, "a dull film", "aaaa but not enough to panic"]

    def ack() -> None:
        pass

    batch = [
        InFlight.decode(Source("in", 0, offset), b"k", orjson.dumps({"id": f"e{offset}", "text": text}), ack, 1 << 20)
        for offset, text in enumerate(texts)
    ]
    processed = step(batch)

    assert [record.topic for record in processed.records] == ["out", "dlq", "out", "out"]
    letter = processed.records[1]
    assert dict(letter.headers)["error.reason"] == b"inference_error"
    assert b"PanicException" in dict(letter.headers)["error.detail"]
    assert letter.value == batch[1].value
