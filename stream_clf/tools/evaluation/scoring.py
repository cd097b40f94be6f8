"""Accuracy and per-class precision, recall, F1 and support, laid out like the Spark NLP cards.

The cards' Benchmarking sections print scikit-learn's ``classification_report``; this module
computes the same numbers and prints the same layout, without pulling scikit-learn and SciPy
(about 100 MB) into an install that only needs these few sums.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ClassScores", "ClassificationReport", "classification_report"]


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationReport:
    """Per-class scores, their macro and support-weighted averages, and accuracy."""

    accuracy: float
    correct: int
    total: int
    classes: dict[str, ClassScores]
    macro: ClassScores
    weighted: ClassScores

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClassificationReport":
        return cls(
            accuracy=data["accuracy"],
            correct=data["correct"],
            total=data["total"],
            classes={name: ClassScores(**scores) for name, scores in data["classes"].items()},
            macro=ClassScores(**data["macro"]),
            weighted=ClassScores(**data["weighted"]),
        )

    def format(self, digits: int = 4) -> str:
        """The report in scikit-learn's ``classification_report`` layout."""
        width = max(len(name) for name in [*self.classes, "weighted avg"])
        lines = [f"{'':>{width}} " + "".join(f" {h:>9}" for h in ("precision", "recall", "f1-score", "support")), ""]
        lines += [self._row(name, scores, width, digits) for name, scores in self.classes.items()]
        lines.append("")
        lines.append(f"{'accuracy':>{width}} {'':>10}{'':>10} {self.accuracy:>9.{digits}f} {self.total:>9}")
        lines.append(self._row("macro avg", self.macro, width, digits))
        lines.append(self._row("weighted avg", self.weighted, width, digits))
        return "\n".join(lines)

    @staticmethod
    def _row(name: str, scores: ClassScores, width: int, digits: int) -> str:
        cells = "".join(f" {value:>9.{digits}f}" for value in (scores.precision, scores.recall, scores.f1))
        return f"{name:>{width}} {cells} {scores.support:>9}"


def classification_report(
    truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> ClassificationReport:
    """Score ``predicted`` against ``truth``; ``labels`` fixes the classes and their order.

    A class never predicted has precision 0 (scikit-learn's ``zero_division=0``).
    """
    if len(truth) != len(predicted) or not truth:
        raise ValueError("truth and predicted must be equally long and not empty")
    classes = {}
    for label in labels:
        hits = sum(t == label and p == label for t, p in zip(truth, predicted, strict=True))
        guessed = sum(p == label for p in predicted)
        support = sum(t == label for t in truth)
        precision = hits / guessed if guessed else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        classes[label] = ClassScores(precision, recall, f1, support)
    total = len(truth)
    correct = sum(t == p for t, p in zip(truth, predicted, strict=True))

    def average(weights: Sequence[float]) -> ClassScores:
        norm = sum(weights)
        rows = list(classes.values())
        return ClassScores(
            precision=sum(w * r.precision for w, r in zip(weights, rows, strict=True)) / norm,
            recall=sum(w * r.recall for w, r in zip(weights, rows, strict=True)) / norm,
            f1=sum(w * r.f1 for w, r in zip(weights, rows, strict=True)) / norm,
            support=total,
        )

    return ClassificationReport(
        accuracy=correct / total,
        correct=correct,
        total=total,
        classes=classes,
        macro=average([1.0] * len(classes)),
        weighted=average([float(r.support) for r in classes.values()]),
    )
