"""The wire contract: decoding input events, encoding results and dead-letter headers.

Input value: a UTF-8 JSON object ``{"id": str?, "text": str, "meta": any?}`` (other formats:
:mod:`stream_clf.worker.decoding`). Anything else is rejected with one of the
:class:`~stream_clf.errors.Reason` codes, which travel in the dead-letter record's ``error.reason``
header. Nothing here needs a model or a broker.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from stream_clf.errors import EventError, Reason
from stream_clf.formats.paths import Fields, kind

__all__ = [
    "Answered",
    "Source",
    "TextEvent",
    "checked_size",
    "dead_letter_headers",
    "decode_event",
    "encode_result",
    "encode_review",
    "encode_shadow",
]

_UTF8_BOM = b"\xef\xbb\xbf"
DEFAULT_FIELDS = Fields()


class Answered(Protocol):
    """A model's answer, as the records carry it (a classifier's Prediction)."""

    label: str
    scores: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class TextEvent:
    """A valid input event."""

    text: str
    id: str | None = None
    meta: Any = None
    cloudevent: str | None = None  # the event's CloudEvents id, when it came as one


@dataclass(frozen=True, slots=True)
class Source:
    """Where an input record was read from."""

    topic: str
    partition: int
    offset: int

    @property
    def default_id(self) -> str:
        """The id given to events that carry none: ``topic:partition:offset``."""
        return f"{self.topic}:{self.partition}:{self.offset}"


def decode_event(value: bytes | None, max_bytes: int, fields: Fields = DEFAULT_FIELDS) -> TextEvent:
    """Parse and validate one JSON record value, or raise :class:`EventError` saying why not.

    A leading UTF-8 byte order mark is accepted and ignored (RFC 8259 allows parsers to). The text and
    the id are read where ``fields`` say (by default ``text`` and ``id``). A non-string id that is a
    number or a boolean is kept as its JSON text; ``null`` counts as no id. ``meta`` is echoed whatever
    JSON it holds. Unknown fields are ignored.
    """
    value = checked_size(value, max_bytes)
    if value.startswith(_UTF8_BOM):
        value = value[len(_UTF8_BOM) :]
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise EventError(Reason.INVALID_UTF8, str(bad)) from None
        raise EventError(Reason.INVALID_JSON, str(error)) from None
    if not isinstance(document, dict):
        raise EventError(Reason.NOT_AN_OBJECT, f"value is a JSON {kind(document)}")
    return TextEvent(fields.text_of(document, Reason.MISSING_TEXT), fields.id_of(document), document.get("meta"))


def checked_size(value: bytes | None, max_bytes: int) -> bytes:
    """``value``, or :class:`EventError` for a tombstone or a value over ``max_bytes``."""
    if value is None:
        raise EventError(Reason.INVALID_JSON, "record has no value (a tombstone)")
    if len(value) > max_bytes:
        raise EventError(Reason.TOO_LARGE, f"value is {len(value)} bytes, the limit is {max_bytes}")
    return value


def encode_result(
    *,
    event_id: str,
    label: str,
    scores: Mapping[str, float],
    model: str,
    model_version: str,
    source: Source,
    meta: Any,
    truncated: bool,
    chunks: int = 1,
    top_k: int = 0,
    labels: Sequence[str] | None = None,
    abstained: bool | None = None,
    meta_dropped: bool = False,
) -> bytes:
    """Serialize one result record's value.

    ``top_k`` > 0 adds ``top_k``: the k most probable labels, best first; ``labels`` (multi-label
    models) adds every label at or above its threshold; ``abstained`` (with ``--min-confidence``)
    whether the score fell below its label's bound; ``meta_dropped`` marks a result published
    without the event's ``meta``, which made it too large for the output topic.
    """
    result: dict[str, Any] = {
        "id": event_id,
        "label": label,
        "score": scores[label],
        "scores": scores,
        "model": model,
        "model_version": model_version,
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
        "meta": meta,
        "truncated": truncated,
        "chunks": chunks,
    }
    if top_k:
        ranked = sorted(scores.items(), key=lambda item: -item[1])[:top_k]
        result["top_k"] = [{"label": name, "score": score} for name, score in ranked]
    if labels is not None:
        result["labels"] = list(labels)
    if abstained is not None:
        result["abstained"] = abstained
    if meta_dropped:
        result["meta_dropped"] = True
    return orjson.dumps(result)


def encode_review(result: bytes, text: str, min_confidence: float | None) -> bytes:
    """The review copy of an abstained result: the result, the event's text, and the bound it missed."""
    return orjson.dumps({**orjson.loads(result), "text": text, "min_confidence": min_confidence})


def encode_shadow(
    *, event_id: str, source: Source, live: tuple[str, str, "Answered"], shadow: tuple[str, str, "Answered"]
) -> bytes:
    """Serialize a shadow record: the live and the shadow model's answers for one event, side by side.

    ``live`` and ``shadow`` are each (model name, model version, answer).
    """
    sides = {}
    for side, (model, version, answer) in (("live", live), ("shadow", shadow)):
        sides[side] = {
            "model": model,
            "model_version": version,
            "label": answer.label,
            "score": answer.scores[answer.label],
            "scores": answer.scores,
        }
    return orjson.dumps(
        {
            "id": event_id,
            "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
            **sides,
            "agree": live[2].label == shadow[2].label,
        }
    )


def dead_letter_headers(error: EventError, source: Source) -> list[tuple[str, bytes]]:
    """The headers a dead-letter record carries beside the original key and value bytes."""
    return [
        ("error.reason", error.reason.value.encode()),
        ("error.detail", error.detail.encode()),
        ("source.topic", source.topic.encode()),
        ("source.partition", str(source.partition).encode()),
        ("source.offset", str(source.offset).encode()),
    ]
