"""Worker configuration: one object built from flags and ``STREAM_CLF_*`` variables, checked once.

Every worker setting is an :class:`Option`: its flag, its environment variable, its default and a
parser that turns text into a value or raises :class:`ConfigError` with one readable line. A flag
wins over the environment, which wins over the default. No other module reads ``os.environ`` for
worker settings.
"""

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_clf.errors import ConfigError
from stream_clf.kafka.clients import COMPRESSION_CODECS
from stream_clf.kafka.security import MECHANISMS, PROTOCOLS, KafkaSecurity
from stream_clf.kafka.topics import Replication
from stream_clf.model.abstain import MinConfidence, parse_min_confidence
from stream_clf.model.windows import Truncation, Windowing
from stream_clf.ops.logs import LOG_FORMATS

__all__ = ["BROKERS_OPTION", "SECURITY_OPTIONS", "WORKER_OPTIONS", "Option", "WorkerSettings", "usable_cores"]

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:]+\]:\d{1,5}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
PROVIDERS = ("cpu", "cuda", "auto")
GUARANTEES = ("at-least-once", "exactly-once")
ISOLATION_LEVELS = ("read_committed", "read_uncommitted")
COMPRESSIONS = ("auto", *COMPRESSION_CODECS)
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


def _port(text: str) -> int:
    port = _whole(1)(text)
    if port > 65535:
        raise ValueError("expected a port number, 1-65535")
    return port


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


def _paths(text: str) -> tuple[Path, ...]:
    """Directories separated by the system's path separator (``:``), as in PATH."""
    paths = tuple(Path(part.strip()).expanduser() for part in text.split(os.pathsep) if part.strip())
    if not paths:
        raise ValueError("expected one or more directories")
    return paths


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


def _routes(text: str) -> dict[str, str]:
    routes = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        topic, sep, model = part.partition("=")
        if not sep or not model.strip():
            raise ValueError("expected TOPIC=MODEL[,TOPIC=MODEL...]")
        name = _topic(topic)
        if name in routes:
            raise ValueError(f"topic {name!r} is routed twice")
        routes[name] = model.strip()
    if not routes:
        raise ValueError("expected TOPIC=MODEL[,TOPIC=MODEL...]")
    return routes


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise ValueError("expected a share of keys above 0 and at most 1, e.g. 0.1")
    return value


def _switch(text: str) -> bool:
    value = text.strip().lower()
    if value not in SWITCH_VALUES:
        raise ValueError("expected on or off")
    return SWITCH_VALUES[value]


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    """A parser that accepts one of ``choices``, in any letter case."""
    folded = {choice.lower(): choice for choice in choices}

    def parse(text: str) -> str:
        value = folded.get(text.strip().lower())
        if value is None:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse


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
    secret: bool = False  # its value is never echoed in an error
    repeatable: bool = False  # the flag may be given several times (the variable joins values with os.pathsep)

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

    def resolve(self, flag_value: str | list[str] | None, environ: Mapping[str, str]) -> Any:
        """The value from the flag (each of its values, if repeatable), else the environment, else the default."""
        if isinstance(flag_value, list):
            flag_value = os.pathsep.join(flag_value)
        if flag_value is not None:
            source, text = self.flag, flag_value
        elif self.env in environ:
            source, text = self.env, environ[self.env]
        else:
            return self.default
        try:
            return self.parse(text)
        except ValueError as error:
            shown = "'***'" if self.secret else repr(text)
            raise ConfigError(f"{source}={shown}: {error}") from None


BROKERS_OPTION = Option("brokers", _brokers, ("localhost:9092",), "Kafka bootstrap servers", "HOST:PORT[,...]")

# How every client stream-clf makes connects to Kafka: the worker's, and the CLI's.
SECURITY_OPTIONS: tuple[Option, ...] = (
    Option("security_protocol", _one_of(PROTOCOLS), "PLAINTEXT", "Kafka security: " + ", ".join(PROTOCOLS), "NAME"),
    Option("sasl_mechanism", _one_of(MECHANISMS), "PLAIN", "SASL mechanism: " + ", ".join(MECHANISMS), "NAME"),
    Option("sasl_username", _text, None, "SASL user name", "USER", "none"),
    Option(
        "sasl_password", _text, None, "SASL password (prefer the environment variable)", "SECRET", "none", secret=True
    ),
    Option(
        "ssl_ca",
        _path,
        None,
        "CA certificate(s) to verify the brokers, PEM (default: the system's)",
        "FILE",
        "system CAs",
    ),
    Option("ssl_cert", _path, None, "client certificate, PEM (mutual TLS)", "FILE", "none"),
    Option("ssl_key", _path, None, "client private key, PEM", "FILE", "none"),
    Option("ssl_key_password", _text, None, "password of the client private key", "SECRET", "none", secret=True),
)


def resolve_security(flags: Mapping[str, str | None], environ: Mapping[str, str]) -> KafkaSecurity:
    """The Kafka security settings from parsed flags (field name -> text or None) and the environment."""
    values = {option.field: option.resolve(flags.get(option.field), environ) for option in SECURITY_OPTIONS}
    return _security(values)


def _security(values: Mapping[str, Any]) -> KafkaSecurity:
    return KafkaSecurity(
        protocol=values["security_protocol"],
        mechanism=values["sasl_mechanism"],
        username=values["sasl_username"],
        password=values["sasl_password"],
        ca=values["ssl_ca"],
        cert=values["ssl_cert"],
        key=values["ssl_key"],
        key_password=values["ssl_key_password"],
    )


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
    Option(
        "guarantee",
        _one_of(GUARANTEES),
        "at-least-once",
        "delivery guarantee: at-least-once, or exactly-once (Kafka transactions)",
        "MODE",
    ),
    Option(
        "isolation",
        _one_of(ISOLATION_LEVELS),
        "read_committed",
        "input events to read: read_committed (only those of committed transactions) or read_uncommitted",
        "LEVEL",
    ),
    Option(
        "compression",
        _one_of(COMPRESSIONS),
        "auto",
        "codec of published results and dead letters: auto (the output topic's compression.type, else lz4),"
        " none, gzip, snappy, lz4, zstd",
        "CODEC",
    ),
    Option(
        "instance",
        _text,
        socket.gethostname(),
        "this worker's stable name in its group: exactly-once's transactional id is group-instance",
        "NAME",
        "the host name",
    ),
    Option("partitions", _whole(1), 4, "partitions of the topics the worker creates", "N"),
    Option(
        "replication_factor",
        _whole(1),
        None,
        "replicas of each partition of the topics the worker creates",
        "N",
        "the cluster's, at most its brokers",
    ),
    Option(
        "min_insync_replicas",
        _whole(1),
        None,
        "in-sync replicas a write to the topics the worker creates needs",
        "N",
        "the cluster's, at most the replication factor",
    ),
    Option("max_event_bytes", _whole(1), 1_048_576, "largest accepted event value, in bytes", "BYTES"),
    Option(
        "max_buffered_bytes",
        _whole(1 << 20),
        256 << 20,
        "most bytes of events read and not yet finished (keys, values and texts), prefetch included",
        "BYTES",
    ),
    Option("threads", _whole(1), usable_cores(), "cores ONNX Runtime may use", "N", "the usable cores"),
    Option(
        "lanes",
        _whole(1),
        None,
        "ONNX Runtime calls run at once on the CPU, each on threads/lanes cores (1: one call on all threads)",
        "N",
        "--threads",
    ),
    Option("provider", _one_of(PROVIDERS), "cpu", "ONNX Runtime execution provider: cpu, cuda, or auto", "NAME"),
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
        None,
        "texts past max_length: " + ", ".join(t.value for t in Truncation),
        "STRATEGY",
        "the bundle's, else head",
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
    Option(
        "route",
        _routes,
        {},
        "serve each of these topics with its own model (the topics are consumed too); other topics get --model",
        "TOPIC=MODEL[,...]",
        "none",
    ),
    Option(
        "canary_model",
        _text,
        None,
        "a model that serves --canary-share of the keys (by key hash) of the topics --model serves",
        "DIR",
        "none",
    ),
    Option("canary_share", _share, 0.1, "share of keys the canary model serves", "SHARE"),
    Option(
        "shadow_model",
        _text,
        None,
        "a model that also classifies every event; its answers go to --shadow-topic, never to --output",
        "DIR",
        "none",
    ),
    Option("shadow_topic", _topic, None, "topic for the shadow model's answers", "TOPIC", "OUTPUT.shadow"),
    Option(
        "min_confidence",
        parse_min_confidence,
        None,
        "results scoring below it are marked abstained and copied, with their text, to --review-topic",
        "P|LABEL=P[,...]",
        "none",
    ),
    Option("review_topic", _topic, None, "topic for results below --min-confidence", "TOPIC", "OUTPUT.review"),
    Option(
        "control_topic",
        _topic,
        "stream-clf.control",
        "compacted topic of swap requests (written by `stream-clf swap`), which the worker follows",
        "TOPIC",
    ),
    Option(
        "status_topic",
        _topic,
        None,
        "compacted topic the worker reports what it serves on, and the outcome of each swap",
        "TOPIC",
        "CONTROL_TOPIC.status",
    ),
    Option("swaps", _switch, True, "follow swap requests on --control-topic (off: serve --model only)", "on|off", "on"),
    Option(
        "model_root",
        _paths,
        None,
        "a directory a swap may load bundles from (repeat it for several); a swap naming another is refused",
        "DIR",
        "the directories of the bundles the worker starts with, and the built models",
        repeatable=True,
    ),
    Option("session_timeout_ms", _whole(1000), 30_000, "consumer group session timeout, in ms", "MS"),
    Option(
        "stall_seconds",
        _whole(1),
        120,
        "events waiting and none finished for this long: /healthz answers 503 (the worker is stalled)",
        "SECONDS",
    ),
    Option("web_host", _text, "127.0.0.1", "address the worker's web server binds to", "ADDRESS"),
    Option("web_port", _port, 6066, "port of the worker's web server", "PORT"),
    Option("log_level", _one_of(LOG_LEVELS), "info", "log level: " + ", ".join(LOG_LEVELS), "LEVEL"),
    Option(
        "log_format", _one_of(LOG_FORMATS), "kv", "log lines as key=value pairs (kv) or JSON objects (json)", "FORMAT"
    ),
    *SECURITY_OPTIONS,
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
    guarantee: str
    isolation: str
    compression: str
    instance: str
    partitions: int
    replication_factor: int | None
    min_insync_replicas: int | None
    max_event_bytes: int
    max_buffered_bytes: int
    threads: int
    lanes: int | None
    provider: str
    spinning: bool
    truncation: Truncation | None
    stride: int | None
    max_windows: int
    top_k: int
    thresholds: dict[str, float]
    route: dict[str, str]
    canary_model: str | None
    canary_share: float
    shadow_model: str | None
    shadow_topic: str | None
    min_confidence: MinConfidence | None
    review_topic: str | None
    control_topic: str
    status_topic: str | None
    swaps: bool
    model_root: tuple[Path, ...] | None
    session_timeout_ms: int
    stall_seconds: int
    web_host: str
    web_port: int
    log_level: str
    log_format: str
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str | None
    sasl_password: str | None = field(repr=False)
    ssl_ca: Path | None
    ssl_cert: Path | None
    ssl_key: Path | None
    ssl_key_password: str | None = field(repr=False)

    @classmethod
    def resolve(cls, flags: Mapping[str, str | None], environ: Mapping[str, str] | None = None) -> "WorkerSettings":
        """Build settings from parsed flags (field name -> text or None) and the environment."""
        environ = os.environ if environ is None else environ
        values = {opt.field: opt.resolve(flags.get(opt.field), environ) for opt in WORKER_OPTIONS}
        missing = [opt for opt in WORKER_OPTIONS if opt.required and values[opt.field] is None]
        if missing:
            opt = missing[0]
            raise ConfigError(f"{opt.flag} is required: pass {opt.flag} {opt.metavar} or set {opt.env}")
        if values["route"]:  # a routed topic is consumed, whether or not --input names it
            values["input"] = tuple(dict.fromkeys((*values["input"], *values["route"])))
        settings = cls(**values)
        settings._check_topics()
        if settings.lanes is not None and settings.lanes > settings.threads:
            raise ConfigError(
                f"--lanes {settings.lanes} is more than --threads {settings.threads}: a lane needs a core"
            )
        _security(values)  # a bad combination stops the worker here, with one line
        return settings

    def _check_topics(self) -> None:
        outputs = {
            "--output": self.output,
            "--dlq": self.dlq,
            "--control-topic": self.control_topic,
            "--status-topic": self.status_output,
        }
        if self.shadow_model is not None:
            outputs["--shadow-topic"] = self.shadow_output
        if self.min_confidence is not None:
            outputs["--review-topic"] = self.review_output
        for flag, name in outputs.items():
            if name in self.input:
                raise ConfigError(f"topic {name!r} ({flag}) is also an input: the worker would read its own records")
        seen: dict[str, str] = {}
        for flag, name in outputs.items():
            if name in seen:
                raise ConfigError(f"{seen[name]} and {flag} are both {name!r}: give each its own topic")
            seen[name] = flag

    @property
    def status_output(self) -> str:
        """Where the worker reports what it serves."""
        return self.status_topic or f"{self.control_topic}.status"

    @property
    def replication(self) -> Replication:
        """The replication of the topics the worker creates."""
        return Replication(self.replication_factor, self.min_insync_replicas)

    @property
    def shadow_output(self) -> str:
        """Where the shadow model's answers go."""
        return self.shadow_topic or f"{self.output}.shadow"

    @property
    def review_output(self) -> str:
        """Where results below --min-confidence are copied."""
        return self.review_topic or f"{self.output}.review"

    @property
    def published_topics(self) -> list[str]:
        """Every topic the worker publishes records to."""
        topics = [self.output, self.dlq]
        if self.shadow_model is not None:
            topics.append(self.shadow_output)
        if self.min_confidence is not None:
            topics.append(self.review_output)
        return topics

    @property
    def security(self) -> KafkaSecurity:
        return _security({option.field: getattr(self, option.field) for option in SECURITY_OPTIONS})

    @property
    def inference_lanes(self) -> int:
        """ONNX Runtime calls at once: ``--lanes``, else one per thread."""
        return self.lanes or self.threads

    @property
    def windowing(self) -> Windowing:
        return Windowing(self.truncation, self.stride, self.max_windows)

    def classifier_options(self) -> dict[str, Any]:
        """How the worker runs each model: the keyword arguments of a ``Classifier``."""
        return {
            "threads": self.threads,
            "lanes": self.inference_lanes,
            "windowing": self.windowing,
            "thresholds": self.thresholds,
            "bucket_size": self.bucket_size,
            "bucket_tokens": self.bucket_tokens,
            "provider": self.provider,
            "spinning": self.spinning,
        }
