"""What to feed the model when a text is longer than ``max_length`` tokens.

Strategies (``--truncation``):

- ``head``: the first tokens (the default unless the bundle names another, as in the Spark NLP cards);
- ``tail``: the last tokens;
- ``head+tail``: the first quarter of the budget from the start and the rest from the end, the
  best of the truncations in Sun et al., "How to Fine-Tune BERT for Text Classification" (2019);
- ``windows-mean`` / ``windows-max``: every token, in overlapping windows (``--stride`` tokens of
  overlap, a quarter of the window unless set) classified separately, their probabilities averaged
  or maxed per label. At most ``max_windows`` windows are used; beyond that the text counts as
  truncated.

A window is the tokenizer's own special tokens (``[CLS] ... [SEP]``, ``<s> ... </s>``) around a
slice of the text's content tokens, so every strategy yields exactly what the tokenizer would for
that slice.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from tokenizers import Tokenizer

__all__ = ["DEFAULT_TRUNCATION", "Plan", "Row", "Template", "Truncation", "Windowing", "plan", "reach"]


class Truncation(StrEnum):
    HEAD = "head"
    TAIL = "tail"
    HEAD_TAIL = "head+tail"
    WINDOWS_MEAN = "windows-mean"
    WINDOWS_MAX = "windows-max"

    @property
    def windowed(self) -> bool:
        return self in (Truncation.WINDOWS_MEAN, Truncation.WINDOWS_MAX)


DEFAULT_TRUNCATION = Truncation.HEAD


@dataclass(frozen=True)
class Windowing:
    """A truncation strategy and its parameters; strategy None means the bundle's own (see ModelBundle)."""

    strategy: Truncation | None = None
    stride: int | None = None
    max_windows: int = 16

    def overlap(self, window: int) -> int:
        """Tokens shared by consecutive windows of ``window`` tokens."""
        return window // 4 if self.stride is None else self.stride


@dataclass(frozen=True)
class Template:
    """The special tokens a tokenizer puts around a single sequence, found by probing it."""

    prefix_ids: tuple[int, ...]
    prefix_types: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    suffix_types: tuple[int, ...]

    @classmethod
    def probe(cls, tokenizer: Tokenizer) -> "Template | None":
        """The template, or None when the post-processor is not ``prefix + text + suffix``."""
        content = tokenizer.encode("hello", add_special_tokens=False).ids
        full = tokenizer.encode("hello", add_special_tokens=True)
        for start in range(len(full.ids) - len(content) + 1):
            if full.ids[start : start + len(content)] == content:
                end = start + len(content)
                return cls(
                    tuple(full.ids[:start]),
                    tuple(full.type_ids[:start]),
                    tuple(full.ids[end:]),
                    tuple(full.type_ids[end:]),
                )
        return None

    @property
    def overhead(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)

    def wrap(self, content: Sequence[int]) -> "Row":
        """Ids and type ids of one model input row holding ``content``."""
        ids = [*self.prefix_ids, *content, *self.suffix_ids]
        types = [*self.prefix_types, *([0] * len(content)), *self.suffix_types]
        return ids, types


Row = tuple[list[int], list[int]]  # one model input: token ids and token type ids


@dataclass(frozen=True)
class Plan:
    """The model input rows for one text."""

    rows: list[Row]
    truncated: bool

    @property
    def tokens(self) -> int:
        """What the text costs the model: its rows' lengths summed."""
        return sum(len(ids) for ids, _ in self.rows)


def reach(max_length: int, template: Template, windowing: Windowing) -> tuple[int, int]:
    """The most content tokens :func:`plan` reads from the start and from the end of a text: a text
    cut to more than that many at each end gets the plan its whole would (see :mod:`~stream_clf.model.cuts`)."""
    budget = max_length - template.overhead
    strategy = windowing.strategy or DEFAULT_TRUNCATION
    if strategy is Truncation.HEAD:
        return budget, 0
    if strategy is Truncation.TAIL:
        return 0, budget
    if strategy is Truncation.HEAD_TAIL:
        return budget // 4, budget - budget // 4
    overlap = windowing.overlap(budget)
    return windowing.max_windows * (budget - overlap) + overlap, 0


def plan(content: list[int], template: Template, max_length: int, windowing: Windowing) -> Plan:
    """Cut one text's content tokens (ids made without special tokens) into rows."""
    budget = max_length - template.overhead
    fits = len(content) <= budget
    strategy = windowing.strategy or DEFAULT_TRUNCATION
    if fits:
        return Plan([template.wrap(content)], truncated=False)
    if strategy is Truncation.HEAD:
        return Plan([template.wrap(content[:budget])], truncated=True)
    if strategy is Truncation.TAIL:
        return Plan([template.wrap(content[-budget:])], truncated=True)
    if strategy is Truncation.HEAD_TAIL:
        head = budget // 4
        return Plan([template.wrap(content[:head] + content[len(content) - (budget - head) :])], truncated=True)
    overlap = windowing.overlap(budget)
    starts = list(range(0, len(content) - overlap, budget - overlap))
    kept = starts[: windowing.max_windows]
    return Plan([template.wrap(content[s : s + budget]) for s in kept], truncated=len(kept) < len(starts))
