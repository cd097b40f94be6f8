"""What travels through the worker: a consumed record on its way (:class:`InFlight`), what became of
it (:class:`Outcome`), and the records published for it (:class:`OutRecord`).

Nothing here does I/O; the batch step (:mod:`stream_clf.worker.core`) fills these in, routing
(:mod:`stream_clf.worker.routing`) turns outcomes into records, and the loops publish them.
"""

import enum
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from stream_clf.errors import EventError
from stream_clf.formats.cloudevents import RawHeaders, kept_headers
from stream_clf.model.classifier import Prediction
from stream_clf.model.windows import Plan
from stream_clf.worker.decoding import EventDecoder
from stream_clf.worker.events import Source, TextEvent

if TYPE_CHECKING:
    from stream_clf.worker.models import ServedModel

__all__ = ["Answer", "Decoder", "Form", "Headers", "InFlight", "KafkaMessage", "OutRecord", "Outcome", "Role"]

Headers = list[tuple[str, bytes]]
# Turns a record value (at most so many bytes) and its kept headers into its event, or raises EventError:
# an EventDecoder (stream_clf.worker.decoding), of one input format.
Decoder = Callable[[bytes | None, int, Headers], TextEvent]
JSON_EVENTS = EventDecoder("json")
Answer = Prediction | EventError


@dataclass(slots=True)
class InFlight:
    """One consumed record on its way through the worker: its decoded event (or rejection), its plan.

    ``ack`` tells the consumer the record is done (at-least-once; a no-op where offsets commit in
    a transaction); ``forget`` tells it the record is dropped unfinished, to be read again by whoever
    owns its partition next (at-least-once, when partitions move). ``generation`` is the consumer
    group generation it was read in. ``timestamp`` is the record's Kafka timestamp (seconds since the
    epoch); ``received`` the monotonic time the worker took it in.
    """

    source: Source
    key: bytes | None
    value: bytes | None
    outcome: TextEvent | EventError
    ack: Callable[[], object]
    forget: Callable[[], object] = lambda: None
    generation: int = 0
    timestamp: float | None = None
    received: float = field(default_factory=time.monotonic)
    headers: Headers = field(default_factory=list)  # the input headers it carries: trace context, CloudEvents
    plan: Plan | None = None
    model: "ServedModel | None" = None  # the model it was planned for
    weight: int = 0  # the bytes it holds in memory while in flight: key, value and decoded text

    @classmethod
    def decode(
        cls,
        source: Source,
        key: bytes | None,
        value: bytes | None,
        ack: Callable[[], object],
        max_bytes: int,
        *,
        timestamp: float | None = None,
        decoder: Decoder = JSON_EVENTS,
        headers: RawHeaders | None = None,
        forget: Callable[[], object] = lambda: None,
        generation: int = 0,
    ) -> "InFlight":
        kept = kept_headers(headers)
        try:
            outcome: TextEvent | EventError = decoder(value, max_bytes, kept)
        except EventError as error:
            outcome = error
        weight = len(key or b"") + len(value or b"")
        if isinstance(outcome, TextEvent):
            weight += sys.getsizeof(outcome.text)
        return cls(
            source=source, key=key, value=value, outcome=outcome, ack=ack, forget=forget, generation=generation,
            timestamp=timestamp, headers=kept, weight=weight,
        )  # fmt: skip

    @classmethod
    def unacked(cls, message: "KafkaMessage", max_bytes: int, decoder: Decoder = JSON_EVENTS) -> "InFlight":
        """A record librdkafka read, whose offset is not acked (a transaction commits it, or nothing does)."""
        _, timestamp = message.timestamp()
        source = Source(message.topic(), message.partition(), message.offset())
        return cls.decode(
            source,
            message.key(),
            message.value(),
            _no_ack,
            max_bytes,
            timestamp=timestamp / 1000 if timestamp else None,
            decoder=decoder,
            headers=message.headers(),
        )

    @property
    def tokens(self) -> int:
        """What this event costs the model (0 for a rejected one)."""
        return self.plan.tokens if self.plan else 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one event: its answer and the model that gave it, the shadow model's answer
    (when one runs), and whether the result abstained (its score below ``--min-confidence``)."""

    answer: Answer | None
    model: "ServedModel | None" = None
    shadow: Prediction | None = None
    shadow_model: "ServedModel | None" = None
    abstained: bool = False


class Role(enum.Enum):
    """What a published record is to its event: the one answer (a result or a dead letter), or a copy."""

    RESULT = "result"
    DEAD_LETTER = "dead_letter"
    REVIEW = "review"  # a copy of an abstained result, with the text
    SHADOW = "shadow"  # the shadow model's answer beside the live one

    @property
    def answers(self) -> bool:
        """Whether this is the event's one answer (a result or a dead letter), not a copy."""
        return self in (Role.RESULT, Role.DEAD_LETTER)


class Form(enum.Enum):
    """How much of a record survived the limits of its topic."""

    WHOLE = "whole"
    BARE = "bare"  # a result or review copy without the event's meta
    HEAD = "head"  # a dead letter holding only the head of the original value (with its size and SHA-256)


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to publish: an event's result or dead letter, or its review copy or shadow answer.

    ``event`` and ``outcome`` are what it was made from, so that a smaller form can be made when
    the topic refuses it; ``reason`` is a dead letter's ``error.reason``.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    role: Role = Role.RESULT
    form: Form = Form.WHOLE
    event: InFlight | None = field(default=None, repr=False)
    outcome: Outcome | None = field(default=None, repr=False)
    reason: str | None = None


class KafkaMessage(Protocol):
    """What :meth:`InFlight.unacked` reads of a confluent-kafka ``Message``."""

    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def headers(self) -> list[tuple[str, bytes | None]] | None: ...


def _no_ack() -> None:
    """Nothing to do: the offset is committed elsewhere, or not at all."""
