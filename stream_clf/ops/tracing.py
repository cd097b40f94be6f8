"""Micro-batch spans (``--otel URL``): each micro-batch the worker classifies is one span, linked to
the traces its events came with (their W3C ``traceparent`` and ``tracestate`` headers), exported over
OTLP/HTTP by the OpenTelemetry SDK (the ``otel`` extra).

A batch serves many traces at once, so its span is a child of none of them: OpenTelemetry's
messaging conventions model that as links, one per event that carried a valid trace context. An
event whose ``traceparent`` is missing or malformed adds no link and changes nothing else.
"""

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from stream_clf.errors import StreamClfError

__all__ = ["SPAN_NAME", "BatchSpan", "BatchTracing", "NoTracing", "OtelTracing"]

SPAN_NAME = "stream-clf micro-batch"
_TRACE_HEADERS = ("traceparent", "tracestate")
Headers = Sequence[tuple[str, bytes]]


class BatchSpan(Protocol):
    def is_recording(self) -> bool: ...

    def set_attribute(self, key: str, value: Any) -> None: ...


class BatchTracing(Protocol):
    """Opens a span for a micro-batch of events with these headers; closes once its records are routed."""

    def batch(self, headers: Sequence[Headers]) -> contextlib.AbstractContextManager[BatchSpan]: ...

    def close(self) -> None: ...


class _NoSpan:
    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: Any) -> None:
        """Nothing is traced."""


class NoTracing:
    """No ``--otel``: batches are not traced."""

    @contextlib.contextmanager
    def batch(self, headers: Sequence[Headers]) -> Iterator[BatchSpan]:
        yield _NoSpan()

    def close(self) -> None:
        """Nothing to flush."""


class OtelTracing:
    """Spans exported to ``endpoint`` (OTLP/HTTP), from a service named ``stream-clf``, instance ``instance``."""

    def __init__(self, endpoint: str, instance: str, max_links: int) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import SpanLimits, TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            raise StreamClfError("--otel needs the otel extra: pip install 'stream-clf[otel]'") from None
        resource = Resource.create({"service.name": "stream-clf", "service.instance.id": instance})
        # A batch links every event it holds: the SDK's default (128 links) would drop some.
        self._provider = TracerProvider(resource=resource, span_limits=SpanLimits(max_links=max(128, max_links)))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self._provider.get_tracer("stream_clf")
        self._propagator = TraceContextTextMapPropagator()

    def batch(self, headers: Sequence[Headers]) -> contextlib.AbstractContextManager[BatchSpan]:
        from opentelemetry.trace import Link, SpanKind

        links = [Link(context) for context in map(self._context, headers) if context is not None]
        attributes = {"messaging.system": "kafka", "messaging.batch.message_count": len(headers)}
        return self._tracer.start_as_current_span(SPAN_NAME, kind=SpanKind.CONSUMER, links=links, attributes=attributes)

    def close(self) -> None:
        """Export the spans still buffered, then stop."""
        self._provider.shutdown()

    def _context(self, headers: Headers) -> Any:
        """The span context an event's trace headers name, or None (absent or malformed)."""
        from opentelemetry import trace

        carrier = {name: value.decode("latin-1") for name, value in headers if name in _TRACE_HEADERS}
        if "traceparent" not in carrier:
            return None
        context = trace.get_current_span(self._propagator.extract(carrier)).get_span_context()
        return context if context.is_valid else None
