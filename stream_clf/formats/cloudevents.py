"""CloudEvents over Kafka (the spec's Kafka protocol binding) and W3C trace context in headers.

- **Binary mode**: the attributes travel as ``ce_*`` headers (``ce_specversion``, ``ce_id``, ``ce_source``,
  ``ce_type``), the data is the value, in whichever input format.
- **Structured mode**: ``content-type: application/cloudevents+json``; the value is one JSON object with
  the attributes and ``data`` (JSON) or ``data_base64`` (bytes).

An event's result carries CloudEvents headers of its own when the event was one: its ``ce_id`` is made from
the source topic, partition and offset, so a result published again (a redelivery) has the same id and a
subscriber can drop the duplicate; ``ce_subject`` names the source event's id.
"""

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from stream_clf.errors import EventError, Reason

__all__ = [
    "KEPT",
    "SPEC_VERSION",
    "STRUCTURED",
    "RawHeaders",
    "attributes",
    "content_type",
    "is_structured",
    "kept_headers",
    "media_type",
    "result_headers",
    "structured_data",
    "trace_headers",
]

SPEC_VERSION = "1.0"
STRUCTURED = "application/cloudevents+json"
TRACE = ("traceparent", "tracestate")
KEPT = frozenset((*TRACE, "content-type"))
RESULT_SOURCE = "stream-clf"
MOST_HEADER_BYTES = 8192  # a header value longer than this is not one of ours to carry


# A record's headers as the clients give them: librdkafka's pairs, or Faust's mapping.
RawHeaders = Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None]


def kept_headers(headers: RawHeaders | None) -> list[tuple[str, bytes]]:
    """The input headers the worker uses: CloudEvents attributes, the content type, trace context."""
    if not headers:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    kept = []
    for name, value in pairs:
        if value is None or len(value) > MOST_HEADER_BYTES:
            continue
        lower = name.lower() if isinstance(name, str) else ""
        if lower in KEPT or lower.startswith("ce_"):
            kept.append((lower, bytes(value)))
    return kept


def attributes(headers: Sequence[tuple[str, bytes]]) -> dict[str, str] | None:
    """A binary-mode CloudEvent's attributes (without the ``ce_`` prefix), or None when it is none."""
    found = {name[3:]: value.decode("utf-8", "replace") for name, value in headers if name.startswith("ce_")}
    return found if "specversion" in found and "id" in found else None


def content_type(headers: Sequence[tuple[str, bytes]]) -> str:
    """The value's media type, lower case, without parameters ("" when no ``content-type`` says)."""
    for name, value in headers:
        if name == "content-type":
            return media_type(value.decode("latin-1"))
    return ""


def media_type(content_type: str) -> str:
    """``text/plain; charset=utf-8`` -> ``text/plain``."""
    return content_type.split(";", 1)[0].strip().lower()


def is_structured(headers: Sequence[tuple[str, bytes]]) -> bool:
    """Whether the value is a structured-mode CloudEvent."""
    return content_type(headers) == STRUCTURED


def structured_data(value: bytes) -> tuple[str, Any, str]:
    """A structured-mode CloudEvent's id, its data (a JSON value from ``data``, bytes from ``data_base64``)
    and the data's media type. Raises :class:`EventError` when the value is no CloudEvent."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        raise EventError(Reason.INVALID_JSON, f"a structured CloudEvent that is not JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("id"), str) or "specversion" not in document:
        raise EventError(Reason.NOT_AN_OBJECT, "a structured CloudEvent needs specversion and a string id")
    declared = document.get("datacontenttype")
    data_type = media_type(declared) if isinstance(declared, str) else ""
    if "data_base64" in document:
        try:
            return document["id"], base64.b64decode(document["data_base64"], validate=True), data_type
        except (binascii.Error, TypeError, ValueError):
            raise EventError(Reason.UNDECODABLE, "data_base64 is not base64") from None
    if "data" not in document:
        raise EventError(Reason.MISSING_TEXT, "the CloudEvent has no data")
    return document["id"], document["data"], data_type


def trace_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The event's W3C trace context, to carry onto its records."""
    return [(name, value) for name, value in headers if name in TRACE]


def result_headers(
    topic: str, partition: int, offset: int, subject: str, kind: str, *, media_type: str = "application/json"
) -> list[tuple[str, bytes]]:
    """The CloudEvents headers of a record published for the event at ``topic``/``partition``/``offset``
    (``kind``: result, review, shadow), whose own id was ``subject``; ``media_type``: how its value is written."""
    return [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", f"{topic}:{partition}:{offset}:{kind}".encode()),
        ("ce_source", f"/{RESULT_SOURCE}/{topic}".encode()),
        ("ce_type", f"dev.stream-clf.{kind}".encode()),
        ("ce_subject", subject.encode()),
        ("content-type", media_type.encode()),
    ]
