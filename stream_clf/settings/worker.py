"""The worker's settings, each declared once and grouped by concern.

Each group is a frozen dataclass whose fields are :func:`~stream_clf.settings.option.setting`
declarations: the flag, the environment variable, the type, the default, the parser that checks it
and the help. ``stream-clf worker``'s flags, :class:`WorkerSettings` and the configuration reference
(``docs/configuration.md``) are all made from these declarations. No other module reads
``os.environ`` for worker settings.
"""

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from stream_clf.errors import ConfigError
from stream_clf.formats import INPUT_FORMATS, OUTPUT_FORMATS
from stream_clf.formats.paths import FieldPath, Fields
from stream_clf.formats.registry import RegistryAccess
from stream_clf.kafka.connection import COMPRESSION_CODECS, Connection
from stream_clf.kafka.security import MECHANISMS, PROTOCOLS, KafkaSecurity
from stream_clf.kafka.topics import Replication
from stream_clf.model.abstain import MinConfidence, parse_min_confidence
from stream_clf.model.lanes import WIDE_ROWS
from stream_clf.model.windows import Truncation, Windowing
from stream_clf.ops.logs import LOG_FORMATS
from stream_clf.settings import parsers as p
from stream_clf.settings.option import Flags, Option, options, read_values, require, resolve_group, setting

__all__ = [
    "GROUPS",
    "WORKER_OPTIONS",
    "Batching",
    "ConnectionSettings",
    "ControlPlane",
    "Delivery",
    "Events",
    "Inference",
    "Logs",
    "Models",
    "Topics",
    "Web",
    "WorkerSettings",
]

LOG_LEVELS = ("debug", "info", "warning", "error")
PROVIDERS = ("cpu", "cuda", "auto")
GUARANTEES = ("at-least-once", "exactly-once")
ISOLATION_LEVELS = ("read_committed", "read_uncommitted")
REBALANCE_PROTOCOLS = ("eager", "cooperative")
COMPRESSIONS = ("auto", *COMPRESSION_CODECS)


@dataclass(frozen=True)
class ConnectionSettings:
    """How every client stream-clf makes reaches Kafka: the worker's, and every other command's."""

    GROUP: ClassVar[str] = "connection"
    brokers: tuple[str, ...] = setting(p.brokers, ("localhost:9092",), "Kafka bootstrap servers", "HOST:PORT[,...]")
    security_protocol: str = setting(
        p.one_of(PROTOCOLS), "PLAINTEXT", "Kafka security: " + ", ".join(PROTOCOLS), "NAME"
    )
    sasl_mechanism: str = setting(p.one_of(MECHANISMS), "PLAIN", "SASL mechanism: " + ", ".join(MECHANISMS), "NAME")
    sasl_username: str | None = setting(p.text, None, "SASL user name", "USER", "none")
    sasl_password: str | None = setting(
        p.text, None, "SASL password (prefer the environment variable)", "SECRET", "none", secret=True
    )
    ssl_ca: Path | None = setting(
        p.path, None, "CA certificate(s) to verify the brokers, PEM (default: the system's)", "FILE", "system CAs"
    )
    ssl_cert: Path | None = setting(p.path, None, "client certificate, PEM (mutual TLS)", "FILE", "none")
    ssl_key: Path | None = setting(p.path, None, "client private key, PEM", "FILE", "none")
    ssl_key_password: str | None = setting(
        p.text, None, "password of the client private key", "SECRET", "none", secret=True
    )

    def __post_init__(self) -> None:
        _ = self.security  # a bad combination stops here, with one line

    @cached_property
    def security(self) -> KafkaSecurity:
        return KafkaSecurity(
            protocol=self.security_protocol,
            mechanism=self.sasl_mechanism,
            username=self.sasl_username,
            password=self.sasl_password,
            ca=self.ssl_ca,
            cert=self.ssl_cert,
            key=self.ssl_key,
            key_password=self.ssl_key_password,
        )

    def connect(self) -> Connection:
        """The connection that makes every client."""
        return Connection(self.brokers, self.security)

    @classmethod
    def resolve(cls, flags: Flags, environ: Mapping[str, str] | None = None) -> Connection:
        """The connection from parsed flags and the environment (any command that talks to Kafka)."""
        return resolve_group(cls, flags, os.environ if environ is None else environ).connect()


@dataclass(frozen=True)
class Topics:
    """What the worker reads and writes, and how the topics it creates are made."""

    GROUP: ClassVar[str] = "topics"
    input: tuple[str, ...] = setting(p.topics, ("texts",), "topics to consume, comma-separated", "TOPIC[,...]")
    output: str = setting(p.topic, "texts.labeled", "topic for labelled results", "TOPIC")
    dlq: str = setting(p.topic, "texts.dlq", "dead-letter topic for events that cannot be classified", "TOPIC")
    partitions: int = setting(p.whole(1), 4, "partitions of the topics the worker creates", "N")
    replication_factor: int | None = setting(
        p.whole(1),
        None,
        "replicas of each partition of the topics the worker creates",
        "N",
        "the cluster's, at most its brokers",
    )
    min_insync_replicas: int | None = setting(
        p.whole(1),
        None,
        "in-sync replicas a write to the topics the worker creates needs",
        "N",
        "the cluster's, at most the replication factor",
    )

    @property
    def replication(self) -> Replication:
        """The replication of the topics the worker creates."""
        return Replication(self.replication_factor, self.min_insync_replicas)


@dataclass(frozen=True)
class Events:
    """How input events are written: the format, where the text and the id are, and the Schema Registry."""

    GROUP: ClassVar[str] = "events"
    input_format: str = setting(
        p.one_of(INPUT_FORMATS),
        "auto",
        "how input values are written: "
        + ", ".join(INPUT_FORMATS)
        + " (auto: registry-framed by its schema, else JSON)",
        "FORMAT",
    )
    text_field: tuple[FieldPath, ...] = setting(
        p.field_paths,
        (FieldPath(("text",)),),
        "dotted path of the text in each event (repeat it to join several fields with a space)",
        "PATH",
        "text",
        repeatable=True,
    )
    id_field: FieldPath | None = setting(
        p.field_path, None, "dotted path of the event id (it wins over a CloudEvent's ce_id)", "PATH", "id, or ce_id"
    )
    output_format: str = setting(
        p.one_of(OUTPUT_FORMATS),
        "json",
        "how results, review copies and shadow answers are written: "
        + ", ".join(OUTPUT_FORMATS)
        + " (avro, json-schema: through the Schema Registry, their schemas registered at start)",
        "FORMAT",
    )
    schema_registry: str | None = setting(
        p.url, None, "Schema Registry URL (Confluent's API) for registry-framed events and results", "URL", "none"
    )
    schema_registry_user: str | None = setting(p.text, None, "Schema Registry basic-auth user", "USER", "none")
    schema_registry_password: str | None = setting(
        p.text,
        None,
        "Schema Registry basic-auth password (prefer the environment variable)",
        "SECRET",
        "none",
        secret=True,
    )
    schema_registry_ca: Path | None = setting(
        p.path, None, "CA certificate(s) to verify the Schema Registry, PEM", "FILE", "system CAs"
    )
    schema_registry_cert: Path | None = setting(
        p.path, None, "client certificate for the Schema Registry, PEM (mutual TLS)", "FILE", "none"
    )
    schema_registry_key: Path | None = setting(p.path, None, "client key for the Schema Registry, PEM", "FILE", "none")

    def __post_init__(self) -> None:
        if self.input_format in ("avro", "json-schema", "protobuf") and self.schema_registry is None:
            raise ConfigError(f"--input-format {self.input_format} needs --schema-registry URL")
        if self.output_format != "json" and self.schema_registry is None:
            raise ConfigError(f"--output-format {self.output_format} needs --schema-registry URL")

    @property
    def fields(self) -> Fields:
        """Where the text and the id are."""
        return Fields(self.text_field, self.id_field or FieldPath(("id",)), id_given=self.id_field is not None)

    @property
    def registry(self) -> RegistryAccess | None:
        """How to reach the Schema Registry, if one is named."""
        if self.schema_registry is None:
            return None
        return RegistryAccess(
            self.schema_registry,
            self.schema_registry_user,
            self.schema_registry_password,
            self.schema_registry_ca,
            self.schema_registry_cert,
            self.schema_registry_key,
        )


@dataclass(frozen=True)
class Delivery:
    """The consumer group, the guarantee, and the bounds on what is read and not yet finished."""

    GROUP: ClassVar[str] = "delivery"
    group: str = setting(p.text, "stream-clf", "Kafka consumer group (and Faust app id)", "NAME")
    guarantee: str = setting(
        p.one_of(GUARANTEES),
        "at-least-once",
        "delivery guarantee: at-least-once, or exactly-once (Kafka transactions)",
        "MODE",
    )
    isolation: str = setting(
        p.one_of(ISOLATION_LEVELS),
        "read_committed",
        "input events to read: read_committed (only those of committed transactions) or read_uncommitted",
        "LEVEL",
    )
    compression: str = setting(
        p.one_of(COMPRESSIONS),
        "auto",
        "codec of published results and dead letters: auto (the output topic's compression.type, else lz4),"
        " none, gzip, snappy, lz4, zstd",
        "CODEC",
    )
    instance: str = setting(
        p.text,
        socket.gethostname(),
        "this worker's stable name in its group: exactly-once's transactional id is group-instance",
        "NAME",
        "the host name",
    )
    max_event_bytes: int = setting(p.whole(1), 1_048_576, "largest accepted event value, in bytes", "BYTES")
    max_buffered_bytes: int = setting(
        p.whole(1 << 20),
        256 << 20,
        "most bytes of events read and not yet finished (keys, values and texts), prefetch included",
        "BYTES",
    )
    session_timeout_ms: int = setting(p.whole(1000), 30_000, "consumer group session timeout, in ms", "MS")
    rebalance: str = setting(
        p.one_of(REBALANCE_PROTOCOLS),
        "eager",
        "how the group moves partitions (exactly-once): eager (every member gives up all of them at each"
        " rebalance) or cooperative (only those that move); every member of a group must use the same",
        "PROTOCOL",
    )
    static_membership: bool = setting(
        p.switch,
        False,
        "exactly-once: join the group as --instance (group.instance.id): a restart within the session timeout"
        " moves no partition, a replica that does not come back holds its partitions until it expires",
        "on|off",
        "off",
    )
    stall_seconds: int = setting(
        p.whole(1),
        120,
        "events waiting and none finished for this long: /healthz answers 503 (the worker is stalled)",
        "SECONDS",
    )

    def __post_init__(self) -> None:
        if not self.exactly_once and (self.rebalance != "eager" or self.static_membership):
            raise ConfigError(
                "--rebalance cooperative and --static-membership need --guarantee exactly-once"
                " (Faust's consumer rebalances eagerly, as a dynamic member)"
            )

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly-once"

    @property
    def transactional_id(self) -> str:
        """Exactly-once's transactional id: stable across restarts of this instance."""
        return f"{self.group}-{self.instance}"


@dataclass(frozen=True)
class Batching:
    """How events are grouped into micro-batches and rows into ONNX Runtime calls."""

    GROUP: ClassVar[str] = "batching"
    max_batch: int = setting(p.whole(1), 64, "most events in one micro-batch", "N")
    max_wait_ms: int = setting(p.whole(0), 20, "longest wait for a micro-batch to fill, in ms", "MS")
    max_tokens: int = setting(p.whole(1), 8192, "most tokens in one micro-batch (its token budget)", "TOKENS")
    bucket_size: int = setting(p.whole(1), 8, "most rows per ONNX Runtime call (rows sorted by length)", "N")
    bucket_tokens: int = setting(p.whole(1), 4096, "most padded tokens per ONNX Runtime call", "TOKENS")


@dataclass(frozen=True)
class Inference:
    """Where and on how many cores ONNX Runtime runs."""

    GROUP: ClassVar[str] = "inference"
    threads: int = setting(p.whole(1), p.usable_cores(), "cores ONNX Runtime may use", "N", "the usable cores")
    lanes: int | None = setting(
        p.whole(1),
        None,
        "ONNX Runtime calls run at once on the CPU, each on threads/lanes cores (1: one call on all threads)",
        "N",
        f"--threads; a fused model runs batches with rows past {WIDE_ROWS} tokens on all threads",
    )
    provider: str = setting(p.one_of(PROVIDERS), "cpu", "ONNX Runtime execution provider: cpu, cuda, or auto", "NAME")
    spinning: bool = setting(
        p.switch,
        False,
        "let idle ONNX Runtime threads busy-wait: on suits dedicated cores; off leaves them to the event loop",
        "on|off",
        "off",
    )

    def __post_init__(self) -> None:
        if self.lanes is not None and self.lanes > self.threads:
            raise ConfigError(f"--lanes {self.lanes} is more than --threads {self.threads}: a lane needs a core")


@dataclass(frozen=True)
class Models:
    """The models served, how long texts are read, and what each result carries."""

    GROUP: ClassVar[str] = "models"
    model: Path = setting(
        p.path, None, "model bundle directory, or a built model: news, news-int8, ...", "DIR", required=True
    )
    truncation: Truncation | None = setting(
        p.truncation,
        None,
        "texts past max_length: " + ", ".join(t.value for t in Truncation),
        "STRATEGY",
        "the bundle's, else head",
    )
    stride: int | None = setting(
        p.whole(0),
        None,
        "tokens of overlap between windows (windows-* truncation)",
        "TOKENS",
        "a quarter of the window",
    )
    max_windows: int = setting(p.whole(1), 16, "most windows per text; beyond them it counts as truncated", "N")
    top_k: int = setting(p.whole(0), 0, "add the k most probable labels to each result (0: leave out)", "K")
    thresholds: dict[str, float] = setting(
        p.thresholds, {}, "per-label probability thresholds of a multi-label model", "LABEL=P[,...]", "0.5 each"
    )
    route: dict[str, str] = setting(
        p.routes,
        {},
        "serve each of these topics with its own model (the topics are consumed too); other topics get --model",
        "TOPIC=MODEL[,...]",
        "none",
    )
    canary_model: str | None = setting(
        p.text,
        None,
        "a model that serves --canary-share of the keys (by key hash) of the topics --model serves",
        "DIR",
        "none",
    )
    canary_share: float = setting(p.share, 0.1, "share of keys the canary model serves", "SHARE")
    shadow_model: str | None = setting(
        p.text,
        None,
        "a model that also classifies every event; its answers go to --shadow-topic, never to --output",
        "DIR",
        "none",
    )
    shadow_topic: str | None = setting(p.topic, None, "topic for the shadow model's answers", "TOPIC", "OUTPUT.shadow")
    min_confidence: MinConfidence | None = setting(
        parse_min_confidence,
        None,
        "results scoring below it are marked abstained and copied, with their text, to --review-topic",
        "P|LABEL=P[,...]",
        "none",
    )
    review_topic: str | None = setting(
        p.topic, None, "topic for results below --min-confidence", "TOPIC", "OUTPUT.review"
    )

    @property
    def windowing(self) -> Windowing:
        return Windowing(self.truncation, self.stride, self.max_windows)

    def extra_models(self) -> list[str]:
        """The canary and shadow models, where given."""
        return [model for model in (self.canary_model, self.shadow_model) if model]


@dataclass(frozen=True)
class ControlPlane:
    """Model changes while the stream runs: where swap requests and statuses live, and what may be loaded."""

    GROUP: ClassVar[str] = "control plane"
    control_topic: str = setting(
        p.topic,
        "stream-clf.control",
        "compacted topic of swap requests (written by `stream-clf swap`), which the worker follows",
        "TOPIC",
    )
    status_topic: str | None = setting(
        p.topic,
        None,
        "compacted topic the worker reports what it serves on, and the outcome of each swap",
        "TOPIC",
        "CONTROL_TOPIC.status",
    )
    swaps: bool = setting(
        p.switch, True, "follow swap requests on --control-topic (off: serve --model only)", "on|off", "on"
    )
    model_root: tuple[Path, ...] | None = setting(
        p.paths,
        None,
        "a directory a swap may load bundles from (repeat it for several); a swap naming another is refused",
        "DIR",
        "the directories of the bundles the worker starts with, and the built models",
        repeatable=True,
    )

    @property
    def status_output(self) -> str:
        """Where the worker reports what it serves."""
        return self.status_topic or f"{self.control_topic}.status"

    @property
    def topics(self) -> tuple[str, str]:
        """The control (requests) and status topics."""
        return self.control_topic, self.status_output


@dataclass(frozen=True)
class Web:
    """The worker's web server: health, metrics, the dashboard."""

    GROUP: ClassVar[str] = "web"
    web_host: str = setting(p.text, "127.0.0.1", "address the worker's web server binds to", "ADDRESS")
    web_port: int = setting(p.port, 6066, "port of the worker's web server", "PORT")


@dataclass(frozen=True)
class Logs:
    """What the worker logs, and in which form; and where its traces go."""

    GROUP: ClassVar[str] = "logs"
    log_level: str = setting(p.one_of(LOG_LEVELS), "info", "log level: " + ", ".join(LOG_LEVELS), "LEVEL")
    log_format: str = setting(
        p.one_of(LOG_FORMATS), "kv", "log lines as key=value pairs (kv) or JSON objects (json)", "FORMAT"
    )
    otel: str | None = setting(
        p.url,
        None,
        "export one span per micro-batch, linked to its events' traces, over OTLP/HTTP to this URL"
        " (the collector's /v1/traces; needs the otel extra)",
        "URL",
        "none",
    )


GROUPS: tuple[type, ...] = (
    ConnectionSettings,
    Topics,
    Events,
    Delivery,
    Batching,
    Inference,
    Models,
    ControlPlane,
    Web,
    Logs,
)
WORKER_OPTIONS: tuple[Option, ...] = tuple(option for group in GROUPS for option in options(group))


@dataclass(frozen=True)
class WorkerSettings:
    """Everything the worker needs to know, validated, one group per concern."""

    connection: ConnectionSettings = field(default_factory=ConnectionSettings)
    topics: Topics = field(default_factory=Topics)
    events: Events = field(default_factory=Events)
    delivery: Delivery = field(default_factory=Delivery)
    batching: Batching = field(default_factory=Batching)
    inference: Inference = field(default_factory=Inference)
    models: Models = field(default_factory=Models)
    control: ControlPlane = field(default_factory=ControlPlane)
    web: Web = field(default_factory=Web)
    logs: Logs = field(default_factory=Logs)

    @classmethod
    def resolve(cls, flags: Flags, environ: Mapping[str, str] | None = None) -> "WorkerSettings":
        """Build settings from parsed flags (field name -> text or None) and the environment."""
        environ = os.environ if environ is None else environ
        # Every value is read and checked before any is found missing: a bad value is the first error.
        values = {item.name: read_values(item.type, flags, environ) for item in fields(cls)}
        for item in fields(cls):
            require(item.type, values[item.name])
        groups = {item.name: item.type(**values[item.name]) for item in fields(cls)}
        if groups["models"].route:  # a routed topic is consumed, whether or not --input names it
            inputs = tuple(dict.fromkeys((*groups["topics"].input, *groups["models"].route)))
            groups["topics"] = replace(groups["topics"], input=inputs)
        settings = cls(**groups)
        settings._check_topics()
        return settings

    def _check_topics(self) -> None:
        outputs = {
            "--output": self.topics.output,
            "--dlq": self.topics.dlq,
            "--control-topic": self.control.control_topic,
            "--status-topic": self.control.status_output,
        }
        if self.models.shadow_model is not None:
            outputs["--shadow-topic"] = self.shadow_output
        if self.models.min_confidence is not None:
            outputs["--review-topic"] = self.review_output
        for flag, name in outputs.items():
            if name in self.topics.input:
                raise ConfigError(f"topic {name!r} ({flag}) is also an input: the worker would read its own records")
        seen: dict[str, str] = {}
        for flag, name in outputs.items():
            if name in seen:
                raise ConfigError(f"{seen[name]} and {flag} are both {name!r}: give each its own topic")
            seen[name] = flag

    @property
    def shadow_output(self) -> str:
        """Where the shadow model's answers go."""
        return self.models.shadow_topic or f"{self.topics.output}.shadow"

    @property
    def review_output(self) -> str:
        """Where results below --min-confidence are copied."""
        return self.models.review_topic or f"{self.topics.output}.review"

    @property
    def published_topics(self) -> list[str]:
        """Every topic the worker publishes records to."""
        published = [self.topics.output, self.topics.dlq]
        if self.models.shadow_model is not None:
            published.append(self.shadow_output)
        if self.models.min_confidence is not None:
            published.append(self.review_output)
        return published

    def classifier_options(self) -> dict[str, Any]:
        """How the worker runs each model: the keyword arguments of a ``Classifier``."""
        return {
            "threads": self.inference.threads,
            "lanes": self.inference.lanes,
            "windowing": self.models.windowing,
            "thresholds": self.models.thresholds,
            "bucket_size": self.batching.bucket_size,
            "bucket_tokens": self.batching.bucket_tokens,
            "provider": self.inference.provider,
            "spinning": self.inference.spinning,
        }
