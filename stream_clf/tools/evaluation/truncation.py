"""``stream-clf eval --truncation all``: every truncation strategy scored on the same file, side by side.

Long texts are where the strategies differ, so the table says how many texts exceed the model's
length, and for each strategy its accuracy, its throughput (texts per second, classified here as
``eval`` classifies, on one machine in one run, so the ratios hold), and how many model rows a
text costs on average.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from stream_clf.model.classifier import Classifier
from stream_clf.model.windows import Truncation
from stream_clf.tools.evaluation.evaluate import Dataset, predict_direct
from stream_clf.tools.evaluation.scoring import classification_report

__all__ = ["StrategyScore", "TruncationTable", "compare_truncations"]


@dataclass(frozen=True)
class StrategyScore:
    strategy: Truncation
    accuracy: float
    texts_per_second: float
    rows_per_text: float


@dataclass(frozen=True)
class TruncationTable:
    """Every strategy's score on one dataset, and how many of its texts the model cannot read whole."""

    texts: int
    too_long: int
    max_length: int
    default: Truncation
    scores: list[StrategyScore]

    def format(self) -> str:
        best = max(self.scores, key=lambda score: score.accuracy)
        lines = [
            f"{self.too_long} of {self.texts} texts ({self.too_long / self.texts:.1%}) exceed {self.max_length} tokens",
            "",
            f"{'truncation':14s} {'accuracy':>9s} {'texts/s':>9s} {'rows/text':>10s}",
        ]
        for score in self.scores:
            marks = " (the bundle's default)" if score.strategy is self.default else ""
            marks += " (most accurate)" if score is best else ""
            lines.append(
                f"{score.strategy.value:14s} {score.accuracy:>9.2%} {score.texts_per_second:>9.1f}"
                f" {score.rows_per_text:>10.2f}{marks}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "texts": self.texts,
            "too_long": self.too_long,
            "max_length": self.max_length,
            "default": self.default.value,
            "scores": [{**vars(score), "strategy": score.strategy.value} for score in self.scores],
        }


def compare_truncations(
    classifier: Classifier,
    dataset: Dataset,
    batch_size: int,
    progress: Callable[[str, int], Callable[[int], None]],
) -> TruncationTable:
    """Score ``dataset`` with each strategy, keeping the classifier's stride and window limit."""
    scores = []
    too_long = 0
    for strategy in Truncation:
        variant = classifier.with_windowing(replace(classifier.windowing, strategy=strategy))
        advance = progress(f"classifying with {strategy.value}", len(dataset.texts))
        started = time.perf_counter()
        predictions = predict_direct(variant, dataset.texts, batch_size, advance)
        elapsed = time.perf_counter() - started
        report = classification_report(dataset.labels, [p.label for p in predictions], classifier.labels)
        if strategy is Truncation.HEAD:  # a head-truncated text is one that does not fit
            too_long = sum(p.truncated for p in predictions)
        scores.append(
            StrategyScore(
                strategy=strategy,
                accuracy=report.accuracy,
                texts_per_second=len(dataset.texts) / elapsed,
                rows_per_text=sum(p.chunks for p in predictions) / len(predictions),
            )
        )
    return TruncationTable(
        texts=len(dataset.texts),
        too_long=too_long,
        max_length=classifier.bundle.max_length,
        default=classifier.bundle.truncation,
        scores=scores,
    )
