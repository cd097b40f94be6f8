"""Texts whose token lengths follow a chosen distribution: what the benchmark feeds the model.

Speed depends on how many tokens a text has, not on which: the texts are English sentences strung
together until the bundle's own tokenizer counts the drawn length. The IMDB-like mix is lognormal
with a median of 230 tokens and about 9% past 512 (as in the perf notes); the tweet mix has a
median of 25 tokens.
"""

import math
import random
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from stream_clf.errors import ConfigError
from stream_clf.model.tiny_model import SAMPLE_TEXTS
from stream_clf.samples import DEMO_TEXTS

__all__ = ["MIXES", "Mix", "load_texts"]


@dataclass(frozen=True)
class Mix:
    """A lognormal distribution of token counts."""

    name: str
    median: int
    sigma: float
    longest: int

    def lengths(self, count: int, seed: int) -> list[int]:
        rng = random.Random(seed)  # noqa: S311 (reproducible, not secret)
        return [
            max(4, min(self.longest, round(rng.lognormvariate(math.log(self.median), self.sigma))))
            for _ in range(count)
        ]


MIXES = {
    mix.name: mix
    for mix in (
        Mix("imdb", median=230, sigma=0.6, longest=2500),  # P(> 512 tokens) = 9%
        Mix("tweets", median=25, sigma=0.5, longest=120),
    )
}


def load_texts(mix: str, count: int, tokenizer: Tokenizer, seed: int = 7) -> list[str]:
    """``count`` texts of the named mix (or the lines of a file), cycled if a file has fewer."""
    if mix not in MIXES:
        path = Path(mix)
        if not path.is_file():
            raise ConfigError(f"--mix {mix!r}: neither {', '.join(MIXES)} nor a file of texts")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise ConfigError(f"--mix {mix}: the file has no texts")
        return [lines[i % len(lines)] for i in range(count)]
    words = [word for sentence in (*SAMPLE_TEXTS, *DEMO_TEXTS) for word in sentence.split()]
    # Word-piece counts add up word by word closely enough to hit a drawn length within a token or two.
    cost = {word: len(tokenizer.encode(word, add_special_tokens=False).ids) for word in set(words)}
    rng = random.Random(seed)  # noqa: S311 (reproducible, not secret)
    texts = []
    for length in MIXES[mix].lengths(count, seed):
        start, taken, total = rng.randrange(len(words)), [], 0
        while total < length:
            word = words[(start + len(taken)) % len(words)]
            taken.append(word)
            total += cost[word]
        texts.append(" ".join(taken))
    return texts
