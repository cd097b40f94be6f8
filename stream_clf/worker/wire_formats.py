"""How a command reads events and writes results under the ``events`` settings (``--input-format``,
``--output-format``, the Schema Registry): the worker and ``stream-clf replay`` build them here alike."""

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from stream_clf.formats.registry import SchemaBook
from stream_clf.settings.worker import Events
from stream_clf.worker.decoding import EventDecoder

__all__ = ["ResultFormat", "event_decoder", "result_format"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultFormat:
    """How results are written: ``encode(topic, json_value)`` (None: as JSON) and the media type that
    names it (in CloudEvents headers)."""

    encode: Callable[[str, bytes], bytes] | None = None
    media_type: str = "application/json"


def event_decoder(events: Events) -> EventDecoder:
    """The decoder of the input format, with its Schema Registry client when one is named."""
    registry = events.registry
    return EventDecoder(events.input_format, events.fields, SchemaBook(registry.client()) if registry else None)


def result_format(events: Events, topics: Mapping[str, str]) -> ResultFormat:
    """How results bound for ``topics`` (kind -> topic: result, review, shadow) are written; under a
    registry format their schemas are registered here, before any event is read."""
    if events.output_format == "json" or events.registry is None:
        return ResultFormat()
    from stream_clf.formats.results import ResultWriter

    writer = ResultWriter(events.registry.client(), events.output_format, topics)
    log.info("event=result_schemas format=%s subjects=%s", events.output_format, ",".join(writer.subjects))
    return ResultFormat(writer, writer.content_type)
