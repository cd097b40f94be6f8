"""Abstaining: results the model is unsure of are marked, and a copy goes to people for review.

``--min-confidence 0.7`` sets one bound for every label; ``--min-confidence neg=0.8,pos=0.6`` one
per label, and ``0.7,neg=0.9`` both (the bare number for labels not named). A result whose score is
below the bound of its label is still published, with ``"abstained": true``, and a copy of it, with
the event's text, goes to the review topic.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from stream_clf.errors import ConfigError

__all__ = ["MinConfidence", "parse_min_confidence"]


@dataclass(frozen=True)
class MinConfidence:
    """The least score a label's result may have without abstaining."""

    default: float | None = None
    per_label: Mapping[str, float] = field(default_factory=dict)

    def bound(self, label: str) -> float | None:
        """The bound for ``label``, or None when it has none."""
        return self.per_label.get(label, self.default)

    def abstains(self, label: str, score: float) -> bool:
        bound = self.bound(label)
        return bound is not None and score < bound

    def check(self, labels: Sequence[str], model: str) -> None:
        """Raise :class:`ConfigError` when a per-label bound names a label ``model`` does not have."""
        unknown = sorted(set(self.per_label) - set(labels))
        if unknown:
            raise ConfigError(f"--min-confidence names {unknown}, which are not labels of '{model}': {list(labels)}")


def parse_min_confidence(text: str) -> MinConfidence:
    """``P``, ``label=P,...`` or both; every P a probability in [0, 1]."""
    default, per_label = None, {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        label, sep, value = part.rpartition("=")
        probability = _probability(value)
        if probability is None or (sep and not label.strip()):
            raise ValueError("expected P or label=P[,label=P...] with probabilities in [0, 1], e.g. 0.7 or neg=0.8")
        if sep:
            per_label[label.strip()] = probability
        elif default is None:
            default = probability
        else:
            raise ValueError("two bare bounds: give one P for every label, and label=P for the others")
    if default is None and not per_label:
        raise ValueError("expected P or label=P[,label=P...]")
    return MinConfidence(default, per_label)


def _probability(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None
