"""The Schema Registry's wire framing: magic byte 0, the schema id (4 bytes, big-endian), the body.

Protobuf values carry the path of their message type in the schema's file between the id and the
body: a count and that many indexes, each a zigzag varint; a count of 0 stands for ``[0]`` (the
first message, the common case, in one byte).
"""

from dataclasses import dataclass

from stream_clf.errors import EventError, Reason

__all__ = ["HEADER_BYTES", "Framed", "is_framed", "message_indexes", "unframe"]

HEADER_BYTES = 5
# Nesting deeper than this is no schema anyone writes; a longer list is a hostile or broken value.
MOST_INDEXES = 64


@dataclass(frozen=True, slots=True)
class Framed:
    """A registry-framed value: its writer's schema id and what follows the header."""

    schema_id: int
    rest: memoryview


def is_framed(value: bytes) -> bool:
    """Whether ``value`` starts as a registry-framed one does (JSON and text never start with a 0 byte)."""
    return len(value) >= HEADER_BYTES and value[0] == 0


def unframe(value: bytes) -> Framed:
    """The schema id and the rest; raises :class:`EventError` (``undecodable``) for an unframed value."""
    if not is_framed(value):
        raise EventError(Reason.UNDECODABLE, "the value is not framed as a Schema Registry writes (0, schema id)")
    return Framed(int.from_bytes(value[1:HEADER_BYTES], "big"), memoryview(value)[HEADER_BYTES:])


def message_indexes(rest: memoryview) -> tuple[tuple[int, ...], memoryview]:
    """A Protobuf value's message indexes and its body."""
    count, at = _zigzag(rest, 0)
    if count == 0:
        return (0,), rest[at:]
    if not 0 < count <= MOST_INDEXES:
        raise EventError(Reason.UNDECODABLE, f"the value names {count} message indexes")
    indexes = []
    for _ in range(count):
        index, at = _zigzag(rest, at)
        if index < 0:
            raise EventError(Reason.UNDECODABLE, f"the value names message index {index}")
        indexes.append(index)
    return tuple(indexes), rest[at:]


def _zigzag(data: memoryview, at: int) -> tuple[int, int]:
    """The zigzag varint at ``at``, and where the next one starts."""
    raw, shift = 0, 0
    while True:
        if at >= len(data) or shift > 63:
            raise EventError(Reason.UNDECODABLE, "the value's message indexes are cut short or malformed")
        byte = data[at]
        raw |= (byte & 0x7F) << shift
        at += 1
        shift += 7
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), at
