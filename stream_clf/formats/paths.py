"""Dotted paths into a decoded record (``review.body``): a JSON object, an Avro record (a dict) or a
Protobuf message, and the event's text and id read through them."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from stream_clf.errors import EventError, Reason

__all__ = ["FieldPath", "Fields", "kind", "parse_path"]

_ABSENT = object()


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A dotted path: the names of the nested fields, outermost first."""

    names: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join(self.names)

    def lookup(self, record: Any) -> Any:
        """The value at this path, or ``_ABSENT`` where a field on the way does not exist.

        A Protobuf message is read through its descriptor: a field the message type lacks is absent,
        a field it has but the body left unset reads as its default (proto3 has no "unset" for scalars).
        """
        value = record
        for name in self.names:
            if isinstance(value, dict):
                value = value.get(name, _ABSENT)
            elif hasattr(value, "DESCRIPTOR") and hasattr(value.DESCRIPTOR, "fields_by_name"):
                value = getattr(value, name) if name in value.DESCRIPTOR.fields_by_name else _ABSENT
            else:
                return _ABSENT
            if value is _ABSENT:
                return _ABSENT
        return value


def parse_path(text: str) -> FieldPath:
    """``"review.body"`` as a path; raises ``ValueError`` for an empty name (``a..b``, ``.a``)."""
    names = tuple(text.split("."))
    if not all(name.strip() == name and name for name in names):
        raise ValueError(f"{text!r} is not a dotted field path (names separated by single dots)")
    return FieldPath(names)


@dataclass(frozen=True)
class Fields:
    """Where an event's text (one path, or several joined with a space) and its id are.

    ``missing`` is the reason a record without any text field gets: JSON keeps today's
    ``missing_text``; a registry-framed record's schema simply has no such field (``no_text_field``).
    """

    text: Sequence[FieldPath] = (FieldPath(("text",)),)
    id: FieldPath = FieldPath(("id",))
    id_given: bool = False  # named by --id-field: it wins over a CloudEvent's own id

    @property
    def default_text(self) -> bool:
        """Whether the text is the default ``text`` field."""
        return tuple(self.text) == (FieldPath(("text",)),)

    def text_of(self, record: Any, missing: Reason) -> str:
        """The event's text; raises :class:`EventError` when there is none."""
        parts = []
        for path in self.text:
            value = path.lookup(record)
            if value is _ABSENT or (value is None and len(self.text) > 1):  # one of several left empty
                continue
            if not isinstance(value, str):
                raise EventError(Reason.TEXT_NOT_STRING, f'"{path}" is a {kind(value)}, not a string')
            parts.append(value)
        if not parts:
            where = " or ".join(f'"{path}"' for path in self.text)
            raise EventError(missing, f"the record has no {where} field")
        text = " ".join(parts)
        if not text.strip():
            raise EventError(Reason.EMPTY_TEXT, f'"{self.text[0]}" is empty or only whitespace')
        return text

    def id_of(self, record: Any) -> str | None:
        """The event's id: a string as it is, a number or boolean as its JSON text; none for anything
        else, and for a Protobuf message's empty string (its field left unset)."""
        value = self.id.lookup(record)
        if isinstance(value, str):
            return value if value or isinstance(record, dict) else None
        if isinstance(value, int | float):  # bool is an int too
            return orjson.dumps(value).decode()
        return None


def kind(value: Any) -> str:
    """What ``value`` is, in the words of JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict) or hasattr(value, "DESCRIPTOR"):
        return "object"
    return type(value).__name__
