"""Worker configuration: one object built from flags and ``STREAM_CLF_*`` variables, checked once.

Every worker setting is an :class:`Option`: its flag, its environment variable, its default and a
parser that turns text into a value or raises :class:`ConfigError` with one readable line. A flag
wins over the environment, which wins over the default. No other module reads ``os.environ`` for
worker settings.
"""

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_clf.errors import ConfigError
from stream_clf.logs import LOG_FORMATS
from stream_clf.windows import Truncation, Windowing

__all__ = ["BROKERS_OPTION", "WORKER_OPTIONS", "Option", "WorkerSettings", "usable_cores"]

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:]+\]:\d{1,5}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
PROVIDERS = ("cpu", "cuda", "auto")
SWITCH_VALUES = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def _whole(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"expected a whole number >= {minimum}") from None
        if value < minimum:
            raise ValueError(f"expected a whole number >= {minimum}")
        return value

    return parse


def _topic(text: str) -> str:
    name = text.strip()
    if not _TOPIC.match(name) or name in (".", ".."):
        raise ValueError("a topic name is 1-249 of the characters A-Z a-z 0-9 . _ -")
    return name


def _topics(text: str) -> tuple[str, ...]:
    names = tuple(_topic(part) for part in text.split(",") if part.strip())
    if not names:
        raise ValueError("expected one or more comma-separated topic names")
    if len(set(names)) != len(names):
        raise ValueError("a topic is named twice")
    return names


def _brokers(text: str) -> tuple[str, ...]:
    addresses = tuple(part.strip() for part in text.split(",") if part.strip())
    if not addresses or not all(_HOST_PORT.match(address) for address in addresses):
        raise ValueError("expected host:port[,host:port...]")
    return addresses


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("expected a non-empty value")
    return text.strip()


def _path(text: str) -> Path:
    return Path(_text(text)).expanduser()


def _truncation(text: str) -> Truncation:
    try:
        return Truncation(text.strip().lower())
    except ValueError:
        raise ValueError(f"expected one of {', '.join(t.value for t in Truncation)}") from None


def _thresholds(text: str) -> dict[str, float]:
    thresholds = {}
    for part in (p for p in text.split(",") if p.strip()):
        label, sep, value = part.rpartition("=")
        try:
            probability = float(value)
        except ValueError:
            probability = -1.0
        if not sep or not label.strip() or not 0.0 <= probability <= 1.0:
            raise ValueError("expected label=probability[,label=probability...] with probabilities in [0, 1]")
        thresholds[label.strip()] = probability
    return thresholds


def _provider(text: str) -> str:
    provider = text.strip().lower()
    if provider not in PROVIDERS:
        raise ValueError(f"expected one of {', '.join(PROVIDERS)}")
    return provider


def _switch(text: str) -> bool:
    value = text.strip().lower()
    if value not in SWITCH_VALUES:
        raise ValueError("expected on or off")
    return SWITCH_VALUES[value]


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}")
    return value


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level


@dataclass(frozen=True)
class Option:
    """One setting: where it comes from, how it is parsed, and what it means."""

    field: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str = "VALUE"
    shown_default: str | None = None
    required: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return "STREAM_CLF_" + self.field.upper()

    def describe_default(self) -> str:
        if self.required:
            return "required"
        if self.shown_default is not None:
            return self.shown_default
        if isinstance(self.default, tuple):
            return ",".join(self.default)
        return str(self.default)

    def resolve(self, flag_value: str | None, environ: Mapping[str, str]) -> Any:
        """The value from the flag, else the environment, else the default."""
        if flag_value is not None:
            source, text = self.flag, flag_value
        elif self.env in environ:
            source, text = self.env, environ[self.env]
        else:
            return self.default
        try:
            return self.parse(text)
        except ValueError as error:
            raise ConfigError(f"{source}={text!r}: {error}") from None


BROKERS_OPTION = Option("brokers", _brokers, ("localhost:9092",), "Kafka bootstrap servers", "HOST:PORT[,...]")

WORKER_OPTIONS: tuple[Option, ...] = (
    BROKERS_OPTION,
    Option("input", _topics, ("texts",), "topics to consume, comma-separated", "TOPIC[,...]"),
    Option("output", _topic, "texts.labeled", "topic for labelled results", "TOPIC"),
    Option("dlq", _topic, "texts.dlq", "dead-letter topic for events that cannot be classified", "TOPIC"),
    Option(
        "model", _path, None, "model bundle directory, or a built model: news, news-int8, ...", "DIR", required=True
    ),
    Option("max_batch", _whole(1), 64, "most events in one micro-batch", "N"),
    Option("max_wait_ms", _whole(0), 20, "longest wait for a micro-batch to fill, in ms", "MS"),
    Option("max_tokens", _whole(1), 8192, "most tokens in one micro-batch (its token budget)", "TOKENS"),
    Option("bucket_size", _whole(1), 8, "most rows per ONNX Runtime call (rows sorted by length)", "N"),
    Option("bucket_tokens", _whole(1), 4096, "most padded tokens per ONNX Runtime call", "TOKENS"),
    Option("group", _text, "stream-clf", "Kafka consumer group (and Faust app id)", "NAME"),
    Option("partitions", _whole(1), 4, "partitions of the topics the worker creates", "N"),
    Option("max_event_bytes", _whole(1), 1_048_576, "largest accepted event value, in bytes", "BYTES"),
    Option("threads", _whole(1), usable_cores(), "ONNX Runtime intra-op threads", "N", "the usable cores"),
    Option("provider", _provider, "cpu", "ONNX Runtime execution provider: cpu, cuda, or auto", "NAME"),
    Option(
        "spinning",
        _switch,
        False,
        "let idle ONNX Runtime threads busy-wait: on suits dedicated cores; off leaves them to the event loop",
        "on|off",
        "off",
    ),
    Option(
        "truncation",
        _truncation,
        Truncation.HEAD,
        "texts past max_length: " + ", ".join(t.value for t in Truncation),
        "STRATEGY",
        "head",
    ),
    Option(
        "stride",
        _whole(0),
        None,
        "tokens of overlap between windows (windows-* truncation)",
        "TOKENS",
        "a quarter of the window",
    ),
    Option("max_windows", _whole(1), 16, "most windows per text; beyond them it counts as truncated", "N"),
    Option("top_k", _whole(0), 0, "add the k most probable labels to each result (0: leave out)", "K"),
    Option(
        "thresholds",
        _thresholds,
        {},
        "per-label probability thresholds of a multi-label model",
        "LABEL=P[,...]",
        "0.5 each",
    ),
    Option("session_timeout_ms", _whole(1000), 30_000, "consumer group session timeout, in ms", "MS"),
    Option("web_host", _text, "127.0.0.1", "address the worker's web server binds to", "ADDRESS"),
    Option("web_port", _whole(1), 6066, "port of the worker's web server", "PORT"),
    Option("log_level", _log_level, "info", "log level: " + ", ".join(LOG_LEVELS), "LEVEL"),
    Option("log_format", _log_format, "kv", "log lines as key=value pairs (kv) or JSON objects (json)", "FORMAT"),
)


@dataclass(frozen=True)
class WorkerSettings:
    """Everything the worker needs to know, validated."""

    brokers: tuple[str, ...]
    input: tuple[str, ...]
    output: str
    dlq: str
    model: Path
    max_batch: int
    max_wait_ms: int
    max_tokens: int
    bucket_size: int
    bucket_tokens: int
    group: str
    partitions: int
    max_event_bytes: int
    threads: int
    provider: str
    spinning: bool
    truncation: Truncation
    stride: int | None
    max_windows: int
    top_k: int
    thresholds: dict[str, float]
    session_timeout_ms: int
    web_host: str
    web_port: int
    log_level: str
    log_format: str

    @classmethod
    def resolve(cls, flags: Mapping[str, str | None], environ: Mapping[str, str] | None = None) -> "WorkerSettings":
        """Build settings from parsed flags (field name -> text or None) and the environment."""
        environ = os.environ if environ is None else environ
        values = {opt.field: opt.resolve(flags.get(opt.field), environ) for opt in WORKER_OPTIONS}
        missing = [opt for opt in WORKER_OPTIONS if opt.required and values[opt.field] is None]
        if missing:
            opt = missing[0]
            raise ConfigError(f"{opt.flag} is required: pass {opt.flag} {opt.metavar} or set {opt.env}")
        settings = cls(**values)
        settings._check_topics()
        return settings

    def _check_topics(self) -> None:
        for name in (self.output, self.dlq):
            if name in self.input:
                raise ConfigError(
                    f"topic {name!r} is both an input and an output: the worker would read its own records"
                )
        if self.output == self.dlq:
            raise ConfigError(f"--output and --dlq are both {self.output!r}: give dead letters their own topic")

    @property
    def windowing(self) -> Windowing:
        return Windowing(self.truncation, self.stride, self.max_windows)
