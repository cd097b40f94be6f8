"""The exceptions stream-clf raises, in one hierarchy users can catch.

Every message names the thing, the value and what to do about it, on one line: the CLI prints
``str(error)`` as it is and exits.
"""

from enum import StrEnum

__all__ = [
    "BrokerError",
    "ConfigError",
    "EventError",
    "ExportError",
    "ModelError",
    "PeerError",
    "Reason",
    "StreamClfError",
    "fails_alone",
]


class StreamClfError(Exception):
    """Base class of every error stream-clf raises on purpose."""


class ConfigError(StreamClfError):
    """A flag, environment variable or setting has a value the program cannot run with."""


class ModelError(StreamClfError):
    """A model bundle is missing a file, or its files disagree with each other."""


class ExportError(StreamClfError):
    """A checkpoint could not be exported, or its export failed a check (parity, labels)."""


class BrokerError(StreamClfError):
    """The Kafka broker could not be reached, started or stopped."""


class PeerError(StreamClfError):
    """A peer stream-clf is compared with (Spark NLP) could not be set up, or one of its jobs failed."""


class Reason(StrEnum):
    """Why an event went to the dead-letter topic: the ``error.reason`` header."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_TEXT = "missing_text"
    TEXT_NOT_STRING = "text_not_string"
    EMPTY_TEXT = "empty_text"
    TOO_LARGE = "too_large"
    INVALID_UTF8 = "invalid_utf8"
    INFERENCE_ERROR = "inference_error"
    RESULT_TOO_LARGE = "result_too_large"  # its result is over the output topic's limit, even without meta
    RESULT_REFUSED = "result_refused"  # the output topic refused its result for another reason of the record's own
    UNKNOWN_SCHEMA = "unknown_schema"  # registry-framed with a schema id the registry does not know
    UNDECODABLE = "undecodable"  # its body does not decode by its schema (or the schema cannot be read)
    NO_TEXT_FIELD = "no_text_field"  # registry-framed, and its record has none of the text fields


class EventError(StreamClfError):
    """An event that cannot be classified; it goes to the dead-letter topic with ``reason``."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = " ".join(detail.split())[:300]
        super().__init__(f"{reason}: {self.detail}")


def fails_alone(error: BaseException) -> bool:
    """Whether ``error`` is a failure of the work at hand, that its caller may contain (a dead letter,
    a refused swap), rather than a request to stop: any ``Exception``, and a Rust panic surfaced by a
    pyo3 extension (``pyo3_runtime.PanicException``: the tokenizers library panics on some inputs,
    and it derives from ``BaseException`` so that ``except Exception`` lets it through)."""
    return isinstance(error, Exception) or type(error).__name__ == "PanicException"
