"""Event values in every format the worker reads, to :class:`~stream_clf.worker.events.TextEvent`.

- ``json``: a JSON object, as :func:`~stream_clf.worker.events.decode_event` reads it;
- ``text``: the whole value is the text (what ``kcat -P`` sends), UTF-8;
- ``avro``, ``json-schema``, ``protobuf``: framed by a Schema Registry, decoded by the writer's schema;
- ``auto`` (the default): a registry-framed value by its schema, anything else as ``json``.

A registry-framed value's schema may have to be fetched first: :meth:`EventDecoder.pending` says so
without blocking, and :meth:`EventDecoder.fetch` fetches it (raising
:class:`~stream_clf.formats.registry.RegistryUnavailableError` while the registry cannot answer), so that
the loops can wait for the registry their own way, and decoding itself never waits.
"""

import contextlib
from typing import Any

from stream_clf.errors import EventError, Reason
from stream_clf.formats import INPUT_FORMATS
from stream_clf.formats.framing import is_framed, unframe
from stream_clf.formats.paths import Fields
from stream_clf.formats.registry import SchemaBook
from stream_clf.worker.events import DEFAULT_FIELDS, TextEvent, checked_size, decode_event

__all__ = ["EventDecoder"]
_REGISTRY_FORMATS = frozenset(("auto", "avro", "json-schema", "protobuf"))


class EventDecoder:
    """Decodes values of one input format, reading the text and id where ``fields`` say."""

    def __init__(self, input_format: str = "auto", fields: Fields = DEFAULT_FIELDS, schemas: SchemaBook | None = None):
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input format {input_format!r} is none of {', '.join(INPUT_FORMATS)}")
        if input_format in _REGISTRY_FORMATS - {"auto"} and schemas is None:
            raise ValueError(f"input format {input_format} needs a schema registry")
        self.format = input_format
        self.fields = fields
        self.schemas = schemas

    def pending(self, value: bytes | None) -> int | None:
        """The schema id to fetch before ``value`` can be decoded, or None (none is needed, or it is cached)."""
        if self.schemas is None or self.format not in _REGISTRY_FORMATS or value is None or not is_framed(value):
            return None
        schema_id = int.from_bytes(value[1:5], "big")
        return None if self.schemas.known(schema_id) else schema_id

    def fetch(self, schema_id: int) -> None:
        """Fetch ``schema_id`` into the cache; an id no event can be decoded with is cached as such too."""
        if self.schemas is not None:
            with contextlib.suppress(EventError):  # remembered: each of its events gets this dead letter
                self.schemas.reader(schema_id)

    def __call__(self, value: bytes | None, max_bytes: int) -> TextEvent:
        """The event in ``value``, or :class:`EventError` saying why there is none."""
        if self.format == "json" or (self.format == "auto" and not (value and is_framed(value))):
            return decode_event(value, max_bytes, self.fields)
        value = checked_size(value, max_bytes)
        if self.format == "text":
            return _plain_text(value)
        return self._registry_event(value)

    def _registry_event(self, value: bytes) -> TextEvent:
        framed = unframe(value)
        if self.schemas is None:
            raise EventError(
                Reason.UNKNOWN_SCHEMA, f"registry-framed (schema id {framed.schema_id}) but no --schema-registry given"
            )
        reader = self.schemas.reader(framed.schema_id)
        if self.format not in ("auto", reader.format):
            raise EventError(
                Reason.UNDECODABLE, f"schema {framed.schema_id} is {reader.format}, not {self.format} (--input-format)"
            )
        record: Any = reader.read(framed.rest)
        return TextEvent(self.fields.text_of(record, Reason.NO_TEXT_FIELD), self.fields.id_of(record))


def _plain_text(value: bytes) -> TextEvent:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as bad:
        raise EventError(Reason.INVALID_UTF8, str(bad)) from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise EventError(Reason.EMPTY_TEXT, "the value is empty or only whitespace")
    return TextEvent(text)
