"""Exported bundles of every architecture, and the trained model, served through the real broker."""

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.tools.build.export import PARITY_TEXTS
from tests.checkpoints import ARCHITECTURES
from tests.kafka_helpers import Topics, collect, produce

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_is_served_through_kafka_with_its_own_answers(name, exported, kafka_bootstrap, start_worker):
    topics = Topics.fresh(kafka_bootstrap, partitions=2)
    texts = [*PARITY_TEXTS, *(f"{text} ({i})" for i, text in enumerate(PARITY_TEXTS[:-1]))]
    produce(
        kafka_bootstrap, topics.input, [(None, orjson.dumps({"id": str(i), "text": t})) for i, t in enumerate(texts)]
    )
    # fp32: its answers do not depend on batch mates. (int8's do, slightly: ONNX Runtime's dynamic
    # quantization scales activations per batch.)
    worker = start_worker(topics, exported[name], "--max-batch", "4")

    records = collect(
        kafka_bootstrap, [topics.output], until=lambda rs: len(rs) >= len(texts), timeout=120, watch=[worker]
    )

    expected = Classifier(load_bundle(exported[name])).predict(texts)
    results = {orjson.loads(r.value)["id"]: orjson.loads(r.value) for r in records}
    assert set(results) == {str(i) for i in range(len(texts))}
    for i, prediction in enumerate(expected):
        assert results[str(i)]["label"] == prediction.label
        assert results[str(i)]["scores"] == pytest.approx(prediction.scores, abs=1e-5)
        assert results[str(i)]["truncated"] is prediction.truncated


def eval_through_kafka(
    model: str, data: Path, kafka_bootstrap: str, topics: Topics, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``stream-clf eval --through-kafka`` against the worker consuming ``topics``; it checks the labels agree."""
    command = [sys.executable, "-m", "stream_clf", "eval", "--model", model, "--data", str(data), "--through-kafka"]
    finished = subprocess.run(
        [*command, "--brokers", kafka_bootstrap, "--input", topics.input, "--output", topics.output],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished


def test_eval_through_kafka_gives_the_direct_answers(news_model, kafka_bootstrap, start_worker, tmp_path):
    topics = Topics.fresh(kafka_bootstrap, partitions=3)
    sample = tmp_path / "sample.jsonl"
    sample.write_bytes(b"".join(news_model.heldout.read_bytes().splitlines(keepends=True)[::4]))
    start_worker(topics, news_model.bundles["fp32"], "--top-k", "2")
    finished = eval_through_kafka("news", sample, kafka_bootstrap, topics, timeout=600)
    assert "through Kafka" in finished.stdout
    assert "streaming vs direct: same label for 111/111 events" in finished.stdout


def test_the_quick_imdb_model_through_kafka_gives_the_direct_answers(imdb_quick_model, kafka_bootstrap, start_worker):
    topics = Topics.fresh(kafka_bootstrap, partitions=3)
    start_worker(topics, imdb_quick_model.bundles["fp32"])
    finished = eval_through_kafka("imdb-quick", imdb_quick_model.heldout, kafka_bootstrap, topics, timeout=900)
    assert "streaming vs direct: same label for 400/400 events" in finished.stdout
    expected = imdb_quick_model.reports["fp32"]
    assert f"accuracy: {expected.accuracy:.4f} ({expected.correct}/{expected.total})" in finished.stdout
