"""stream-clf and Spark NLP on the same bundles and texts: labels, scores, accuracy when labelled.

Spark NLP's classifiers do not tokenize text themselves: they take the ``token`` column of the
pipeline's tokenizer and cut each token into pieces with the model's vocabulary. Its default
``Tokenizer`` (the pipeline the model cards write) keeps words such as ``can't`` or ``U.S.-based``
whole, and a WordPiece classifier then keeps only what it can match from the token's start, so
its pieces differ from the model's own tokenizer's. A ``RegexTokenizer`` that splits on
whitespace and around every punctuation character reproduces the pre-tokenizer BERT-style models
were trained with (BERT's ``BasicTokenizer``). Each comparison runs both pipelines.
"""

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.model.windows import Truncation, Windowing
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS
from stream_clf.tools.sparknlp.environment import SparkNlpEnvironment
from stream_clf.tools.sparknlp.runner import model_spec, run_job

__all__ = ["PARITY_TEXTS", "TOKENIZERS", "Agreement", "compare_with_spark_nlp"]

_PUNCTUATION = r"[\p{Punct}\p{IsPunctuation}\p{IsHan}]"
TOKENIZERS: dict[str, str] = {
    "default": "default",  # Spark NLP's Tokenizer, as the model cards write the pipeline
    "model": rf"\s+|(?<={_PUNCTUATION})|(?={_PUNCTUATION})",  # split like the models' own pre-tokenizer
}
PARITY_TEXTS: tuple[str, ...] = (
    *SAMPLE_TEXTS,
    "Can't stop, won't stop: e-mail me at 9am!",
    "Café owners in Zürich say naïve pricing hurt them, 😀 or not.",
    '中文 text and 100% (mixed) [brackets] "quotes" it\'s',
    "U.S.-based firm's Q3 profit rose 3.5%; shares +2.",
)


@dataclass(frozen=True)
class Agreement:
    """How one model's answers through one Spark NLP pipeline compare with stream-clf's."""

    model: str
    annotator: str
    tokenizer: str
    texts: int
    same_labels: int
    score_diffs: tuple[float, ...]  # per text, the largest |score difference| over the labels
    spark_seconds: float
    spark_accuracy: float | None = None
    head_accuracy: float | None = None  # stream-clf keeping the head, as Spark NLP does
    served_accuracy: float | None = None  # stream-clf as the bundle serves (its truncation strategy)

    @property
    def same_scores(self) -> int:
        """Texts whose scores agree to 1e-4: the same pieces went in."""
        return sum(diff < 1e-4 for diff in self.score_diffs)

    @property
    def max_score_diff(self) -> float:
        return max(self.score_diffs, default=0.0)

    @property
    def label_agreement(self) -> float:
        return self.same_labels / self.texts if self.texts else 1.0


def compare_with_spark_nlp(
    environment: SparkNlpEnvironment,
    bundles: Mapping[str, Path],
    texts: Sequence[str],
    gold: Sequence[str] | None = None,
    *,
    tokenizers: Mapping[str, str] = TOKENIZERS,
    batch_size: int = 8,
    save_to: Path | None = None,
) -> list[Agreement]:
    """Classify ``texts`` with each bundle in stream-clf and in Spark NLP (one Spark session for all).

    Spark NLP keeps the first ``max_length`` tokens of a long text (its only truncation), so labels
    and scores are compared with stream-clf keeping the head too. ``gold`` labels, when given, add
    the accuracy of each side, and of stream-clf as the bundle serves (a model built for
    ``head+tail`` reads both ends of a long review).
    With ``save_to``, Spark NLP also saves each model it loaded there (``save_to/NAME``), as its
    ``write().save()`` does.
    """
    with tempfile.TemporaryDirectory(prefix="stream-clf-parity-") as scratch:
        models, ours = [], {}
        for name, path in bundles.items():
            bundle = load_bundle(path)
            model = {"name": name, **model_spec(bundle, Path(scratch) / name, batch_size=batch_size)}
            if save_to:
                model["save"] = str(save_to / name)
            models.append(model)
            head = Classifier(bundle, windowing=Windowing(Truncation.HEAD)).predict(texts)
            served = Classifier(bundle).predict(texts) if gold is not None else head
            ours[name] = (model["annotator"], head, served)
        spec = {"models": models, "texts": list(texts), "tokenizers": tokenizers}
        answer = run_job(environment, "classify", spec, Path(scratch) / "job")
    rows = []
    for name, (annotator, predictions, served) in ours.items():
        for tokenizer in tokenizers:
            theirs = answer[name][tokenizer]
            results = theirs["results"]
            rows.append(
                Agreement(
                    model=name,
                    annotator=annotator,
                    tokenizer=tokenizer,
                    texts=len(texts),
                    same_labels=sum(r["label"] == p.label for r, p in zip(results, predictions, strict=True)),
                    score_diffs=tuple(
                        max(abs(r["scores"].get(label, 0.0) - score) for label, score in p.scores.items())
                        for r, p in zip(results, predictions, strict=True)
                    ),
                    spark_seconds=theirs["seconds"],
                    spark_accuracy=_accuracy([r["label"] for r in results], gold),
                    head_accuracy=_accuracy([p.label for p in predictions], gold),
                    served_accuracy=_accuracy([p.label for p in served], gold),
                )
            )
    return rows


def _accuracy(labels: Sequence[str | None], gold: Sequence[str] | None) -> float | None:
    if gold is None:
        return None
    return sum(label == truth for label, truth in zip(labels, gold, strict=True)) / len(gold) if gold else 0.0
