"""Waiting for the Schema Registry: an event whose schema is not cached waits, in read order, until the
registry answers; it is never dead-lettered because the registry is down.

While it waits the consumer state says so (readiness names the registry; liveness counts the wait as
waiting, not as a stall, up to :data:`~stream_clf.ops.health.REGISTRY_WAIT_SECONDS`), a gauge is up and
each failed ask is counted. The asks back off from :data:`FIRST_PAUSE_SECONDS` to
:data:`MOST_PAUSE_SECONDS`. How a loop pauses is its own: the Faust agent awaits, the exactly-once loop
keeps polling its paused consumer (so that it stays in its group) with no transaction open.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from stream_clf.formats.cloudevents import RawHeaders
from stream_clf.formats.registry import RegistryUnavailableError
from stream_clf.ops.health import ConsumerState
from stream_clf.ops.metrics import WorkerMetrics
from stream_clf.worker.decoding import EventDecoder

__all__ = ["FIRST_PAUSE_SECONDS", "MOST_PAUSE_SECONDS", "SchemaWait"]

log = logging.getLogger(__name__)

FIRST_PAUSE_SECONDS = 0.5
MOST_PAUSE_SECONDS = 10.0


class SchemaWait:
    """Fetches the schemas that events need before they are decoded, waiting out the registry's outages."""

    def __init__(self, decoder: EventDecoder, state: ConsumerState, metrics: WorkerMetrics) -> None:
        self.decoder = decoder
        self._state = state
        self._metrics = metrics

    def missing(self, records: Iterable[tuple[bytes | None, RawHeaders | None]]) -> list[int]:
        """The schema ids ``records`` (value, headers) need that are not cached, each once, in read order."""
        pending = self.decoder.pending
        return list(dict.fromkeys(i for value, headers in records if (i := pending(value, headers)) is not None))

    def fetch(self, schema_ids: Iterable[int], pause: Callable[[float], object]) -> None:
        """Fetch ``schema_ids``, calling ``pause(seconds)`` between asks while the registry is unavailable."""
        for schema_id in schema_ids:
            delay = FIRST_PAUSE_SECONDS
            while (failure := self._ask(schema_id)) is not None:
                self._waiting(failure)
                pause(delay)
                delay = min(MOST_PAUSE_SECONDS, delay * 2)
        self._done()

    async def fetch_async(self, schema_id: int, pause: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        """:meth:`fetch` for an event loop: the asks run in a thread, the pauses are awaited."""
        delay = FIRST_PAUSE_SECONDS
        while (failure := await asyncio.to_thread(self._ask, schema_id)) is not None:
            self._waiting(failure)
            await pause(delay)
            delay = min(MOST_PAUSE_SECONDS, delay * 2)
        self._done()

    def _ask(self, schema_id: int) -> str | None:
        try:
            self.decoder.fetch(schema_id)
        except RegistryUnavailableError as error:
            return str(error)
        return None

    def _waiting(self, failure: str) -> None:
        if self._state.registry_waiting is None:
            log.warning("event=schema_registry_unavailable error=%r", failure)
        self._state.wait_for_registry(failure)
        self._metrics.registry_waiting.set(1)
        self._metrics.registry_unavailable.inc()

    def _done(self) -> None:
        if self._state.registry_waiting is not None:
            log.info("event=schema_registry_back")
            self._state.wait_for_registry(None)
            self._metrics.registry_waiting.set(0)
