"""Parsers of setting values: each turns a flag's or variable's text into a value, or raises
``ValueError`` with the reason in words (the caller adds which setting and which text)."""

import os
import re
from collections.abc import Callable
from pathlib import Path

from stream_clf.formats.paths import FieldPath, parse_path
from stream_clf.model.windows import Truncation

__all__ = [
    "brokers",
    "field_path",
    "field_paths",
    "one_of",
    "path",
    "paths",
    "port",
    "routes",
    "share",
    "switch",
    "text",
    "thresholds",
    "topic",
    "topics",
    "truncation",
    "url",
    "usable_cores",
    "whole",
]

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:]+\]:\d{1,5}$")
_SWITCH_VALUES = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def whole(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"expected a whole number >= {minimum}") from None
        if value < minimum:
            raise ValueError(f"expected a whole number >= {minimum}")
        return value

    return parse


def port(raw: str) -> int:
    port = whole(1)(raw)
    if port > 65535:
        raise ValueError("expected a port number, 1-65535")
    return port


def topic(raw: str) -> str:
    name = raw.strip()
    if not _TOPIC.match(name) or name in (".", ".."):
        raise ValueError("a topic name is 1-249 of the characters A-Z a-z 0-9 . _ -")
    return name


def topics(raw: str) -> tuple[str, ...]:
    names = tuple(topic(part) for part in raw.split(",") if part.strip())
    if not names:
        raise ValueError("expected one or more comma-separated topic names")
    if len(set(names)) != len(names):
        raise ValueError("a topic is named twice")
    return names


def brokers(raw: str) -> tuple[str, ...]:
    addresses = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not addresses or not all(_HOST_PORT.match(address) for address in addresses):
        raise ValueError("expected host:port[,host:port...]")
    return addresses


def text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("expected a non-empty value")
    return raw.strip()


def path(raw: str) -> Path:
    return Path(text(raw)).expanduser()


def paths(raw: str) -> tuple[Path, ...]:
    """Directories separated by the system's path separator (``:``), as in PATH."""
    paths = tuple(Path(part.strip()).expanduser() for part in raw.split(os.pathsep) if part.strip())
    if not paths:
        raise ValueError("expected one or more directories")
    return paths


def field_paths(raw: str) -> tuple[FieldPath, ...]:
    """Dotted field paths, separated by commas (or, repeated flags, the path separator)."""
    parts = [part.strip() for part in raw.replace(os.pathsep, ",").split(",") if part.strip()]
    if not parts:
        raise ValueError("expected one or more dotted field paths")
    return tuple(parse_path(part) for part in parts)


def field_path(raw: str) -> FieldPath:
    return parse_path(text(raw))


def url(raw: str) -> str:
    """An http(s) URL."""
    value = text(raw).rstrip("/")
    if not value.startswith(("http://", "https://")) or len(value.split("//", 1)[1]) == 0:
        raise ValueError("expected an http:// or https:// URL")
    return value


def truncation(raw: str) -> Truncation:
    try:
        return Truncation(raw.strip().lower())
    except ValueError:
        raise ValueError(f"expected one of {', '.join(t.value for t in Truncation)}") from None


def thresholds(raw: str) -> dict[str, float]:
    thresholds = {}
    for part in (p for p in raw.split(",") if p.strip()):
        label, sep, value = part.rpartition("=")
        try:
            probability = float(value)
        except ValueError:
            probability = -1.0
        if not sep or not label.strip() or not 0.0 <= probability <= 1.0:
            raise ValueError("expected label=probability[,label=probability...] with probabilities in [0, 1]")
        thresholds[label.strip()] = probability
    return thresholds


def routes(raw: str) -> dict[str, str]:
    routes = {}
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        named, sep, model = part.partition("=")
        if not sep or not model.strip():
            raise ValueError("expected TOPIC=MODEL[,TOPIC=MODEL...]")
        name = topic(named)
        if name in routes:
            raise ValueError(f"topic {name!r} is routed twice")
        routes[name] = model.strip()
    if not routes:
        raise ValueError("expected TOPIC=MODEL[,TOPIC=MODEL...]")
    return routes


def share(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise ValueError("expected a share of keys above 0 and at most 1, e.g. 0.1")
    return value


def switch(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in _SWITCH_VALUES:
        raise ValueError("expected on or off")
    return _SWITCH_VALUES[value]


def one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    """A parser that accepts one of ``choices``, in any letter case."""
    folded = {choice.lower(): choice for choice in choices}

    def parse(raw: str) -> str:
        value = folded.get(raw.strip().lower())
        if value is None:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse
