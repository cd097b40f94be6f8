"""Event values in every format the worker reads, to :class:`~stream_clf.worker.events.TextEvent`.

- ``json``: a JSON object, as :func:`~stream_clf.worker.events.decode_event` reads it;
- ``text``: the whole value is the text (what ``kcat -P`` sends), UTF-8;
- ``avro``, ``json-schema``, ``protobuf``: framed by a Schema Registry, decoded by the writer's schema;
- ``auto`` (the default): a registry-framed value by its schema, anything else as ``json``;

and each of them as the data of a CloudEvent (:mod:`stream_clf.formats.cloudevents`), binary or structured.

A registry-framed value's schema may have to be fetched first: :meth:`EventDecoder.pending` says so
without blocking, and :meth:`EventDecoder.fetch` fetches it (raising
:class:`~stream_clf.formats.registry.RegistryUnavailableError` while the registry cannot answer), so that
the loops can wait for the registry their own way, and decoding itself never waits.
"""

import contextlib
from collections.abc import Sequence
from typing import Any

from stream_clf.errors import EventError, Reason
from stream_clf.formats import INPUT_FORMATS
from stream_clf.formats.cloudevents import (
    STRUCTURED,
    RawHeaders,
    attributes,
    content_type,
    is_structured,
    kept_headers,
    structured_data,
)
from stream_clf.formats.framing import is_framed, unframe
from stream_clf.formats.paths import Fields, kind
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

    def pending(self, value: bytes | None, headers: RawHeaders | None = None) -> int | None:
        """The schema id to fetch before ``value`` can be decoded, or None (none is needed, or it is cached).
        A structured CloudEvent's framed ``data_base64`` counts too."""
        if self.schemas is None or self.format not in _REGISTRY_FORMATS or value is None:
            return None
        if headers and is_structured(kept_headers(headers)):
            with contextlib.suppress(EventError):  # decoding it says what is wrong
                _, data, _ = structured_data(value)
                value = data if isinstance(data, bytes) else None
        if not value or not is_framed(value):
            return None
        schema_id = int.from_bytes(value[1:5], "big")
        return None if self.schemas.known(schema_id) else schema_id

    def fetch(self, schema_id: int) -> None:
        """Fetch ``schema_id`` into the cache; an id no event can be decoded with is cached as such too."""
        if self.schemas is not None:
            with contextlib.suppress(EventError):  # remembered: each of its events gets this dead letter
                self.schemas.reader(schema_id)

    def __call__(self, value: bytes | None, max_bytes: int, headers: Sequence[tuple[str, bytes]] = ()) -> TextEvent:
        """The event in ``value`` (``headers``: those :func:`~stream_clf.formats.cloudevents.kept_headers`
        keeps), or :class:`EventError` saying why there is none. A CloudEvent's id is its ``ce_id``
        unless ``--id-field`` names another."""
        if not headers:
            return self._decode(value, max_bytes)
        media_type = content_type(headers)
        if media_type == STRUCTURED:
            return self._structured(checked_size(value, max_bytes), max_bytes)
        event = self._decode(value, max_bytes, media_type)
        cloud = attributes(headers)
        if cloud is None:
            return event
        event_id = event.id if self.fields.id_given else cloud["id"]
        return TextEvent(event.text, event_id, event.meta, cloudevent=cloud["id"])

    def _decode(self, value: bytes | None, max_bytes: int, media_type: str = "") -> TextEvent:
        """``value`` read as the input format says; under ``auto``, a ``text/plain`` value is the text."""
        if self.format == "text" or (self.format == "auto" and media_type == "text/plain"):
            return _plain_text(checked_size(value, max_bytes))
        if self.format == "json" or (self.format == "auto" and not (value and is_framed(value))):
            return decode_event(value, max_bytes, self.fields)
        return self._registry_event(checked_size(value, max_bytes))

    def _structured(self, value: bytes, max_bytes: int) -> TextEvent:
        """A structured-mode CloudEvent: the text inside ``data`` (a record, or the text itself), or
        inside ``data_base64``'s bytes, read as the input format (or its ``datacontenttype``) says."""
        cloud_id, data, media_type = structured_data(value)
        if isinstance(data, bytes):
            event = self._decode(data, max_bytes, media_type)
        elif isinstance(data, dict):
            meta = data.get("meta")
            event = TextEvent(self.fields.text_of(data, Reason.MISSING_TEXT), self.fields.id_of(data), meta)
        elif isinstance(data, str) and self.fields.default_text:
            event = _plain_text(data.encode())
        else:
            raise EventError(Reason.MISSING_TEXT, f"the CloudEvent's data is a {kind(data)} with no text field")
        event_id = event.id if self.fields.id_given else cloud_id
        return TextEvent(event.text, event_id, event.meta, cloudevent=cloud_id)

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
