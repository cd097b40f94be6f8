"""Schemas from a Schema Registry (Confluent's API: Confluent's own, Apicurio's ``ccompat``, Redpanda's,
Karapace), each fetched once and kept by id: a cached schema costs no network call.

What the registry answers decides the event's fate. A schema id it does not know is asked again a few
times first (a replica may lag behind a producer that has just registered the schema), then remembered
as unknown for a while, so that a producer writing random ids costs one dead letter each, not one
registry call each; the retries themselves are rationed (:data:`RETRIED_PER_MINUTE`). A registry that
does not answer, or answers with an error of its own (5xx, 401: nothing the event did), raises
:class:`RegistryUnavailableError`: the caller waits and asks again, and the event is never dead-lettered for it.
"""

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_clf.errors import EventError, Reason, StreamClfError
from stream_clf.formats.readers import Reader, Source, reader_for

__all__ = ["RETRIED_PER_MINUTE", "RegistryAccess", "RegistryUnavailableError", "SchemaBook"]

LOOKUPS = 3  # asks for an id the registry does not know, before it is taken as unknown
LOOKUP_PAUSE_SECONDS = 0.5
FORGET_UNKNOWN_SECONDS = 300.0
RETRIED_PER_MINUTE = 10  # unknown ids asked more than once; beyond it, one ask each
MOST_UNKNOWN = 10_000
MOST_REFERENCE_DEPTH = 16
REQUEST_TIMEOUT_SECONDS = 5.0


class RegistryUnavailableError(StreamClfError):
    """The registry did not answer, or answered with an error that is not the event's."""


@dataclass(frozen=True)
class RegistryAccess:
    """Where the registry is and how to reach it: basic auth, and TLS with an optional client certificate."""

    url: str
    username: str | None = None
    password: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def client_config(self) -> dict[str, Any]:
        """The configuration of confluent-kafka's ``SchemaRegistryClient``."""
        config: dict[str, Any] = {"url": self.url, "timeout": REQUEST_TIMEOUT_SECONDS, "max.retries": 1}
        if self.username is not None:
            config["basic.auth.user.info"] = f"{self.username}:{self.password or ''}"
        for key, path in (("ssl.ca.location", self.ca), ("ssl.certificate.location", self.cert)):
            if path is not None:
                config[key] = str(path)
        if self.key is not None:
            config["ssl.key.location"] = str(self.key)
        return config

    def client(self) -> Any:
        """confluent-kafka's registry client (the ``registry`` extra)."""
        try:
            from confluent_kafka.schema_registry import SchemaRegistryClient
        except ImportError:
            raise StreamClfError(
                "--schema-registry needs the registry extra: pip install 'stream-clf[registry]'"
            ) from None
        return SchemaRegistryClient(self.client_config())


class SchemaBook:
    """Readers by schema id, fetched from the registry once each."""

    def __init__(
        self,
        client: Any,
        *,
        lookups: int = LOOKUPS,
        lookup_pause: float = LOOKUP_PAUSE_SECONDS,
        forget_unknown: float = FORGET_UNKNOWN_SECONDS,
        retried_per_minute: int = RETRIED_PER_MINUTE,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._lookups = lookups
        self._lookup_pause = lookup_pause
        self._forget_unknown = forget_unknown
        self._retried_per_minute = retried_per_minute
        self._sleep = sleep
        self._clock = clock
        self._readers: dict[int, Reader | EventError] = {}  # a schema that cannot be read stays so: ids are immutable
        self._unknown: collections.OrderedDict[int, float] = collections.OrderedDict()  # id -> when to ask again
        self._retries: collections.deque[float] = collections.deque()
        self.fetches = 0  # registry requests made, for the metrics and the tests

    def known(self, schema_id: int) -> bool:
        """Whether ``schema_id`` is answered without the registry: cached, or remembered as unknown."""
        if schema_id in self._readers:
            return True
        again = self._unknown.get(schema_id)
        return again is not None and self._clock() < again

    def reader(self, schema_id: int) -> Reader:
        """The reader of ``schema_id``'s bodies. Raises :class:`EventError` (``unknown_schema``,
        ``undecodable``) for a schema no event of it can get past, :class:`RegistryUnavailableError` when the
        registry cannot say."""
        cached = self._readers.get(schema_id)
        if cached is None:
            cached = self._fetch(schema_id)
        if isinstance(cached, EventError):
            raise EventError(cached.reason, cached.detail)
        return cached

    def _fetch(self, schema_id: int) -> Reader | EventError:
        again = self._unknown.get(schema_id)
        if again is not None and self._clock() < again:
            return _unknown(schema_id)
        attempts = self._lookups if self._may_retry() else 1
        for attempt in range(attempts):
            if attempt:
                self._sleep(self._lookup_pause)
            source = self._source(schema_id)
            if source is not None:
                break
        else:
            self._remember_unknown(schema_id)
            return _unknown(schema_id)
        self._unknown.pop(schema_id, None)
        try:
            result: Reader | EventError = reader_for(source)
        except EventError as error:
            result = EventError(error.reason, f"schema {schema_id}: {error.detail}")
        self._readers[schema_id] = result
        return result

    def _source(self, schema_id: int) -> Source | None:
        """The schema ``schema_id`` with its references, or None when the registry does not know it."""
        schema = self._ask(lambda: self._client.get_schema(schema_id), f"schema {schema_id}")
        return None if schema is None else self._with_references(schema, 0)

    def _with_references(self, schema: Any, depth: int) -> Source:
        if depth > MOST_REFERENCE_DEPTH:
            raise EventError(Reason.UNDECODABLE, f"schema references nest over {MOST_REFERENCE_DEPTH} deep")
        references = []
        for reference in schema.references or ():
            what = f"{reference.subject} version {reference.version}"
            registered = self._ask(lambda ref=reference: self._client.get_version(ref.subject, ref.version), what)
            if registered is None:
                raise EventError(Reason.UNKNOWN_SCHEMA, f"the schema references {what}, which the registry lacks")
            references.append((reference.name, self._with_references(registered.schema, depth + 1)))
        return Source(schema.schema_type or "AVRO", schema.schema_str or "", tuple(references))

    def _ask(self, request: Callable[[], Any], what: str) -> Any:
        """The registry's answer, None for "not found" (404), or :class:`RegistryUnavailableError`."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        self.fetches += 1
        try:
            return request()
        except SchemaRegistryError as error:
            if error.http_status_code == 404:
                return None
            status = error.http_status_code
            raise RegistryUnavailableError(f"the registry answered {status} for {what}: {error}") from None
        except Exception as error:  # httpx's transport errors, a body that is not JSON: the registry's, not the event's
            detail = f"{type(error).__name__}: {error}"
            raise RegistryUnavailableError(f"no answer from the registry for {what}: {detail}") from None

    def _may_retry(self) -> bool:
        now = self._clock()
        while self._retries and now - self._retries[0] > 60.0:
            self._retries.popleft()
        if len(self._retries) >= self._retried_per_minute:
            return False
        self._retries.append(now)
        return True

    def _remember_unknown(self, schema_id: int) -> None:
        self._unknown[schema_id] = self._clock() + self._forget_unknown
        self._unknown.move_to_end(schema_id)
        while len(self._unknown) > MOST_UNKNOWN:
            self._unknown.popitem(last=False)


def _unknown(schema_id: int) -> EventError:
    return EventError(Reason.UNKNOWN_SCHEMA, f"the registry does not know schema id {schema_id}")
