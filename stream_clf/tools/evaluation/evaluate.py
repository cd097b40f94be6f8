"""``stream-clf eval``: score a bundle on a labelled file, directly or through the live pipeline.

Directly, the classifier runs here on length-sorted batches. Through Kafka, every row becomes an
event on the worker's input topic and its result is read back from the output topic, then the same
rows are classified directly too: the two must agree, label for label, which is the proof that the
streaming path gives the answers the model gives.
"""

import csv
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import TopicPartition

from stream_clf.errors import ConfigError, StreamClfError
from stream_clf.kafka.connection import Connection
from stream_clf.model.classifier import Classifier, Prediction
from stream_clf.tools.produce import produce_lines

__all__ = [
    "Dataset",
    "KafkaAgreement",
    "agreement",
    "check_labels",
    "predict_direct",
    "predict_through_kafka",
    "read_dataset",
]

Advance = Callable[[int], None]


@dataclass(frozen=True)
class Dataset:
    texts: list[str]
    labels: list[str]


@dataclass(frozen=True)
class KafkaAgreement:
    """How the streaming answers compare with the direct ones."""

    same_label: int
    total: int
    max_score_diff: float


def read_dataset(
    path: Path,
    text_columns: Sequence[str] = ("text",),
    label_column: str = "label",
    label_map: Mapping[str, str] | None = None,
) -> Dataset:
    """Rows of a CSV (or TSV) file with a header, or of a JSONL file, as texts and labels.

    Several text columns (AG News's title and description) are joined with a space, in the order given.
    """
    if not path.is_file():
        raise ConfigError(f"--data {path}: no such file")
    suffix = path.suffix.lower()
    try:
        rows = _rows(path, suffix)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"--data {path}: cannot be read ({error})") from None
    if not rows:
        raise ConfigError(f"--data {path}: no rows")
    missing = [column for column in (*text_columns, label_column) if column not in rows[0]]
    if missing:
        raise ConfigError(f"--data {path}: no column {missing[0]!r}; its columns are {sorted(rows[0])}")
    label_map = label_map or {}
    texts = [" ".join(str(row.get(column) or "") for column in text_columns).strip() for row in rows]
    labels = [str(row[label_column]) for row in rows]
    return Dataset(texts, [label_map.get(label, label) for label in labels])


def _rows(path: Path, suffix: str) -> list[dict]:
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as stream:
            return list(csv.DictReader(stream, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix in (".jsonl", ".ndjson", ".json"):
        try:
            rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        except orjson.JSONDecodeError as error:
            raise ConfigError(f"--data {path}: not JSON lines ({error})") from None
        if not all(isinstance(row, dict) for row in rows):
            raise ConfigError(f"--data {path}: every line must be a JSON object")
        return rows
    raise ConfigError(f"--data {path}: expected a .csv, .tsv or .jsonl file")


def check_labels(dataset: Dataset, model_labels: Sequence[str], data: Path) -> None:
    unknown = sorted(set(dataset.labels) - set(model_labels))
    if unknown:
        raise ConfigError(
            f"--data {data} has labels {unknown[:5]} that the model does not know ({list(model_labels)});"
            " map them with --label-map FROM=TO[,...]"
        )


def predict_direct(classifier: Classifier, texts: Sequence[str], batch_size: int, advance: Advance) -> list[Prediction]:
    """Classify ``texts`` in batches of similar length; answers in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[Prediction | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for index, prediction in zip(chunk, classifier.predict([texts[i] for i in chunk]), strict=True):
            answers[index] = prediction
        advance(len(chunk))
    return [answer for answer in answers if answer is not None]


def predict_through_kafka(
    connection: Connection,
    input_topic: str,
    output_topic: str,
    texts: Sequence[str],
    *,
    model_version: str,
    timeout: float,
    advance: Advance,
) -> list[dict]:
    """Send ``texts`` to a running worker and read its results back, in input order."""
    run = uuid.uuid4().hex[:8]
    ids = [f"eval-{run}-{i}" for i in range(len(texts))]
    consumer = connection.consumer({"group.id": f"stream-clf-eval-{run}"})
    metadata = connection.admin().list_topics(output_topic, timeout=10).topics.get(output_topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise StreamClfError(
            f"topic {output_topic!r} does not exist: is a worker running with --output {output_topic}?"
        )
    start = []
    for partition in metadata.partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(output_topic, partition), timeout=10)
        start.append(TopicPartition(output_topic, partition, high))
    consumer.assign(start)
    events = (orjson.dumps({"id": event_id, "text": text}) for event_id, text in zip(ids, texts, strict=True))
    report = produce_lines(connection, input_topic, events, raw=True)
    if report.failed:
        raise StreamClfError(f"{report.failed} events were not delivered to {input_topic}: {report.first_error}")
    wanted, results = set(ids), {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < len(ids):
            if time.monotonic() > deadline:
                raise StreamClfError(
                    f"only {len(results)} of {len(ids)} results on {output_topic} after {timeout:.0f}s;"
                    f" is a worker consuming {input_topic}?"
                )
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            result = orjson.loads(message.value())
            if result.get("id") in wanted and result["id"] not in results:
                if result["model_version"] != model_version:
                    raise StreamClfError(
                        f"the worker serves {result['model']} version {result['model_version']}, but --model is"
                        f" version {model_version}: compare like with like"
                    )
                results[result["id"]] = result
                advance(1)
    finally:
        consumer.close()
    return [results[event_id] for event_id in ids]


def agreement(direct: Sequence[Prediction], streamed: Sequence[dict]) -> KafkaAgreement:
    same = sum(p.label == r["label"] for p, r in zip(direct, streamed, strict=True))
    diff = max(
        abs(p.scores[label] - r["scores"][label]) for p, r in zip(direct, streamed, strict=True) for label in p.scores
    )
    return KafkaAgreement(same_label=same, total=len(direct), max_score_diff=diff)
