"""Configuration: flags beat the environment, which beats defaults; a bad value stops the worker
with one readable line and exit code 2, before it touches a broker."""

import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from stream_clf.errors import ConfigError
from stream_clf.formats.paths import FieldPath
from stream_clf.kafka.security import KafkaSecurity
from stream_clf.model.abstain import MinConfidence
from stream_clf.model.windows import Truncation
from stream_clf.settings import WORKER_OPTIONS, ConnectionSettings, WorkerSettings


def flat(settings: WorkerSettings) -> dict[str, object]:
    """Every setting by its name, whichever group holds it."""
    groups = [getattr(settings, group.name) for group in fields(settings)]
    return {item.name: getattr(group, item.name) for group in groups for item in fields(group)}


def resolve_security(flags: dict[str, str], environ: dict[str, str]) -> KafkaSecurity:
    return ConnectionSettings.resolve(flags, environ).security


def test_defaults_run_on_one_machine(tmp_path):
    settings = WorkerSettings.resolve({"model": str(tmp_path)}, environ={})
    assert settings.connection.brokers == ("localhost:9092",)
    topics = settings.topics
    assert (topics.input, topics.output, topics.dlq) == (("texts",), "texts.labeled", "texts.dlq")
    assert settings.models.model == tmp_path


def test_every_setting_reads_its_environment_variable(tmp_path):
    pem = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in pem.values():
        path.write_text("-----BEGIN CERTIFICATE-----\n")
    environ = {
        "STREAM_CLF_BROKERS": "k1:9092, k2:9093",
        "STREAM_CLF_INPUT": "a,b",
        "STREAM_CLF_OUTPUT": "out",
        "STREAM_CLF_DLQ": "dead",
        "STREAM_CLF_MODEL": "/models/x",
        "STREAM_CLF_MAX_BATCH": "64",
        "STREAM_CLF_MAX_WAIT_MS": "5",
        "STREAM_CLF_MAX_TOKENS": "4096",
        "STREAM_CLF_BUCKET_SIZE": "4",
        "STREAM_CLF_BUCKET_TOKENS": "512",
        "STREAM_CLF_GROUP": "g",
        "STREAM_CLF_GUARANTEE": "Exactly-Once",
        "STREAM_CLF_ISOLATION": "READ_UNCOMMITTED",
        "STREAM_CLF_COMPRESSION": "Zstd",
        "STREAM_CLF_INSTANCE": "worker-3",
        "STREAM_CLF_PARTITIONS": "12",
        "STREAM_CLF_REPLICATION_FACTOR": "3",
        "STREAM_CLF_MIN_INSYNC_REPLICAS": "2",
        "STREAM_CLF_MAX_EVENT_BYTES": "1000",
        "STREAM_CLF_MAX_BUFFERED_BYTES": "64_000_000",
        "STREAM_CLF_THREADS": "3",
        "STREAM_CLF_LANES": "3",
        "STREAM_CLF_PROVIDER": "Auto",
        "STREAM_CLF_SPINNING": "on",
        "STREAM_CLF_TRUNCATION": "windows-max",
        "STREAM_CLF_STRIDE": "64",
        "STREAM_CLF_MAX_WINDOWS": "4",
        "STREAM_CLF_TOP_K": "2",
        "STREAM_CLF_THRESHOLDS": "toxic=0.7, spam=0.25",
        "STREAM_CLF_ROUTE": "reviews=/models/imdb",
        "STREAM_CLF_CANARY_MODEL": "/models/y",
        "STREAM_CLF_CANARY_SHARE": "0.25",
        "STREAM_CLF_SHADOW_MODEL": "/models/z",
        "STREAM_CLF_SHADOW_TOPIC": "out.z",
        "STREAM_CLF_MIN_CONFIDENCE": "0.6,spam=0.9",
        "STREAM_CLF_REVIEW_TOPIC": "review",
        "STREAM_CLF_CONTROL_TOPIC": "ctl",
        "STREAM_CLF_STATUS_TOPIC": "ctl-status",
        "STREAM_CLF_SWAPS": "off",
        "STREAM_CLF_MODEL_ROOT": "/models:/srv/bundles",
        "STREAM_CLF_SESSION_TIMEOUT_MS": "10000",
        "STREAM_CLF_REBALANCE": "Cooperative",
        "STREAM_CLF_STATIC_MEMBERSHIP": "on",
        "STREAM_CLF_STALL_SECONDS": "45",
        "STREAM_CLF_WEB_HOST": "0.0.0.0",
        "STREAM_CLF_WEB_PORT": "7000",
        "STREAM_CLF_LOG_LEVEL": "DEBUG",
        "STREAM_CLF_LOG_FORMAT": "JSON",
        "STREAM_CLF_OTEL": "http://collector:4318/v1/traces",
        "STREAM_CLF_SECURITY_PROTOCOL": "sasl_ssl",
        "STREAM_CLF_SASL_MECHANISM": "scram-sha-512",
        "STREAM_CLF_SASL_USERNAME": "alice",
        "STREAM_CLF_SASL_PASSWORD": "alice-secret",
        "STREAM_CLF_SSL_CA": str(pem["ca"]),
        "STREAM_CLF_SSL_CERT": str(pem["cert"]),
        "STREAM_CLF_SSL_KEY": str(pem["key"]),
        "STREAM_CLF_SSL_KEY_PASSWORD": "key-secret",
        "STREAM_CLF_INPUT_FORMAT": "avro",
        "STREAM_CLF_TEXT_FIELD": "review.title:review.body",
        "STREAM_CLF_ID_FIELD": "review.id",
        "STREAM_CLF_OUTPUT_FORMAT": "avro",
        "STREAM_CLF_SCHEMA_REGISTRY": "https://registry:8081/",
        "STREAM_CLF_SCHEMA_REGISTRY_USER": "bob",
        "STREAM_CLF_SCHEMA_REGISTRY_PASSWORD": "bob-secret",
        "STREAM_CLF_SCHEMA_REGISTRY_CA": str(pem["ca"]),
        "STREAM_CLF_SCHEMA_REGISTRY_CERT": str(pem["cert"]),
        "STREAM_CLF_SCHEMA_REGISTRY_KEY": str(pem["key"]),
    }
    assert {option.env for option in WORKER_OPTIONS} == set(environ)
    settings = WorkerSettings.resolve({}, environ=environ)
    assert flat(settings) == {
        "brokers": ("k1:9092", "k2:9093"),
        "input": ("a", "b", "reviews"),
        "output": "out",
        "dlq": "dead",
        "model": Path("/models/x"),
        "max_batch": 64,
        "max_wait_ms": 5,
        "max_tokens": 4096,
        "bucket_size": 4,
        "bucket_tokens": 512,
        "group": "g",
        "guarantee": "exactly-once",
        "isolation": "read_uncommitted",
        "compression": "zstd",
        "instance": "worker-3",
        "partitions": 12,
        "replication_factor": 3,
        "min_insync_replicas": 2,
        "max_event_bytes": 1000,
        "max_buffered_bytes": 64_000_000,
        "threads": 3,
        "lanes": 3,
        "provider": "auto",
        "spinning": True,
        "truncation": Truncation.WINDOWS_MAX,
        "stride": 64,
        "max_windows": 4,
        "top_k": 2,
        "thresholds": {"toxic": 0.7, "spam": 0.25},
        "route": {"reviews": "/models/imdb"},
        "canary_model": "/models/y",
        "canary_share": 0.25,
        "shadow_model": "/models/z",
        "shadow_topic": "out.z",
        "min_confidence": MinConfidence(0.6, {"spam": 0.9}),
        "review_topic": "review",
        "control_topic": "ctl",
        "status_topic": "ctl-status",
        "swaps": False,
        "model_root": (Path("/models"), Path("/srv/bundles")),
        "session_timeout_ms": 10000,
        "rebalance": "cooperative",
        "static_membership": True,
        "stall_seconds": 45,
        "web_host": "0.0.0.0",
        "web_port": 7000,
        "log_level": "debug",
        "log_format": "json",
        "otel": "http://collector:4318/v1/traces",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "alice",
        "sasl_password": "alice-secret",
        "ssl_ca": pem["ca"],
        "ssl_cert": pem["cert"],
        "ssl_key": pem["key"],
        "ssl_key_password": "key-secret",
        "input_format": "avro",
        "text_field": (FieldPath(("review", "title")), FieldPath(("review", "body"))),
        "id_field": FieldPath(("review", "id")),
        "output_format": "avro",
        "schema_registry": "https://registry:8081",
        "schema_registry_user": "bob",
        "schema_registry_password": "bob-secret",
        "schema_registry_ca": pem["ca"],
        "schema_registry_cert": pem["cert"],
        "schema_registry_key": pem["key"],
    }


def test_a_flag_wins_over_the_environment():
    settings = WorkerSettings.resolve(
        {"max_batch": "8", "model": "m"}, environ={"STREAM_CLF_MAX_BATCH": "64", "STREAM_CLF_MODEL": "x"}
    )
    assert (settings.batching.max_batch, settings.models.model) == (8, Path("m"))


@pytest.mark.parametrize(
    ("flags", "environ", "message"),
    [
        ({"max_batch": "abc"}, {}, "--max-batch='abc': expected a whole number >= 1"),
        ({}, {"STREAM_CLF_MAX_BATCH": "0"}, "STREAM_CLF_MAX_BATCH='0': expected a whole number >= 1"),
        ({"max_wait_ms": "-1"}, {}, "--max-wait-ms='-1': expected a whole number >= 0"),
        ({"provider": "tpu"}, {}, "--provider='tpu': expected one of cpu, cuda, auto"),
        ({}, {"STREAM_CLF_SPINNING": "maybe"}, "STREAM_CLF_SPINNING='maybe': expected on or off"),
        ({"brokers": "localhost"}, {}, "--brokers='localhost': expected host:port"),
        ({"input": "bad topic"}, {}, "--input='bad topic': a topic name is"),
        ({"input": "a,a"}, {}, "a topic is named twice"),
        ({"output": "texts"}, {}, "'texts' (--output) is also an input"),
        ({"dlq": "texts.labeled"}, {}, "--output and --dlq are both"),
        ({"log_level": "loud"}, {}, "expected one of debug, info, warning, error"),
        ({"session_timeout_ms": "10"}, {}, "expected a whole number >= 1000"),
        ({"truncation": "middle"}, {}, "expected one of head, tail, head+tail, windows-mean, windows-max"),
        ({"thresholds": "toxic:0.5"}, {}, "expected label=probability"),
        ({"thresholds": "toxic=1.5"}, {}, "with probabilities in [0, 1]"),
        ({"threads": "2", "lanes": "3"}, {}, "--lanes 3 is more than --threads 2: a lane needs a core"),
        ({"rebalance": "sticky"}, {}, "--rebalance='sticky': expected one of eager, cooperative"),
        ({"rebalance": "cooperative"}, {}, "--rebalance cooperative and --static-membership need --guarantee"),
        ({}, {"STREAM_CLF_STATIC_MEMBERSHIP": "on"}, "need --guarantee exactly-once"),
    ],
)
def test_a_bad_value_is_one_readable_error(flags, environ, message):
    with pytest.raises(ConfigError) as caught:
        WorkerSettings.resolve({"model": "m", **flags}, environ=environ)
    assert message in str(caught.value)


def test_the_model_is_required():
    with pytest.raises(ConfigError, match="--model is required: pass --model DIR or set STREAM_CLF_MODEL"):
        WorkerSettings.resolve({}, environ={})


def _worker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_clf", "worker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--max-batch", "lots"], {}, "--max-batch='lots': expected a whole number >= 1"),
        ([], {"STREAM_CLF_PARTITIONS": "zero"}, "STREAM_CLF_PARTITIONS='zero'"),
        ([], {}, "--model is required"),
        (["--model", "/nonexistent/bundle"], {}, "model bundle '/nonexistent/bundle': no such directory"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        (["--web-port", "70000"], {}, "--web-port='70000': expected a port number, 1-65535"),
        (["--compression", "brotli"], {}, "--compression='brotli': expected one of auto, none, gzip"),
        ([], {"STREAM_CLF_ISOLATION": "dirty"}, "STREAM_CLF_ISOLATION='dirty': expected one of read_committed"),
        (["--model", "m", "--lanes", "0"], {}, "--lanes='0': expected a whole number >= 1"),
    ],
)
def test_the_worker_stops_at_start_with_one_line_and_exit_code_2(args, env, message):
    finished = _worker(*args, env=env)
    assert finished.returncode == 2
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, finished.stderr
    assert lines[0].startswith("stream-clf worker: error: ")
    assert message in lines[0]


def test_a_broken_bundle_stops_the_worker_with_one_line(tiny_bundle, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("tokenizer.json", "config.json"):
        (broken / name).write_bytes((tiny_bundle / name).read_bytes())
    finished = _worker("--model", str(broken))
    assert finished.returncode == 2
    assert finished.stderr.strip() == f"stream-clf worker: error: model bundle '{broken}': model.onnx is missing;" + (
        " a bundle holds model.onnx, tokenizer.json, config.json"
    )


def test_help_names_every_flag_with_its_default_and_variable():
    shown = subprocess.run(
        [sys.executable, "-m", "stream_clf", "worker", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flat = " ".join(shown.split())
    for option in WORKER_OPTIONS:
        assert option.flag in flat
        assert f"env {option.env}" in flat


def test_security_settings_become_librdkafka_properties(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    security = resolve_security(
        {"security_protocol": "sasl_ssl", "sasl_mechanism": "SCRAM-SHA-256", "ssl_ca": str(ca)},
        {"STREAM_CLF_SASL_USERNAME": "alice", "STREAM_CLF_SASL_PASSWORD": "s3cret"},
    )
    assert security.librdkafka() == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "alice",
        "sasl.password": "s3cret",
        "ssl.ca.location": str(ca),
    }
    assert "s3cret" not in repr(security)
    assert resolve_security({}, {}).librdkafka() == {"security.protocol": "plaintext"}


@pytest.mark.parametrize(
    ("flags", "environ", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, {}, "needs --sasl-username and --sasl-password"),
        ({"security_protocol": "KERBEROS"}, {}, "expected one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        ({"security_protocol": "SSL", "ssl_cert": "/nope/cert.pem"}, {}, "--ssl-cert and --ssl-key go together"),
        ({"security_protocol": "SSL", "ssl_ca": "/nope/ca.pem"}, {}, "--ssl-ca /nope/ca.pem: no such file"),
        ({"ssl_ca": "/nope/ca.pem"}, {}, "need --security-protocol SSL or SASL_SSL"),
    ],
)
def test_bad_security_settings_stop_with_one_line(flags, environ, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_security(flags, environ)


def test_a_secret_is_never_echoed_in_an_error():
    with pytest.raises(ConfigError) as caught:
        WorkerSettings.resolve({"model": "m"}, environ={"STREAM_CLF_SASL_PASSWORD": "   "})
    assert str(caught.value) == "STREAM_CLF_SASL_PASSWORD='***': expected a non-empty value"


def test_each_group_takes_its_settings_from_flags_beside_the_environment(tmp_path):
    """Flags and variables mixed across groups: each setting from its flag if given, else its variable."""
    environ = {
        "STREAM_CLF_BROKERS": "env-broker:9092",
        "STREAM_CLF_MAX_BATCH": "16",
        "STREAM_CLF_WEB_PORT": "7001",
        "STREAM_CLF_MODEL_ROOT": f"{tmp_path}/env-root",
        "STREAM_CLF_LOG_FORMAT": "json",
    }
    flags = {"model": "m", "web_port": "7002", "model_root": [str(tmp_path / "a"), str(tmp_path / "b")]}
    settings = WorkerSettings.resolve(flags, environ)
    assert settings.connection.brokers == ("env-broker:9092",)
    assert settings.batching.max_batch == 16
    assert settings.web.web_port == 7002  # the flag, not the variable
    assert settings.control.model_root == (tmp_path / "a", tmp_path / "b")  # each value of a repeated flag
    assert settings.logs.log_format == "json"
    assert settings.models.model == Path("m")
    assert settings.connection.connect().bootstrap == "env-broker:9092"


def test_every_setting_is_declared_once_with_its_own_flag_and_variable():
    names = [option.field for option in WORKER_OPTIONS]
    assert len(names) == len(set(names))
    assert len({option.env for option in WORKER_OPTIONS}) == len(names)
    declared = {item.name for group in fields(WorkerSettings) for item in fields(group.type)}
    assert declared == set(names), "every field of a settings group is a declared setting"


def test_the_connection_of_every_other_command_reads_the_same_settings(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    connection = ConnectionSettings.resolve(
        {"brokers": "k1:9092,k2:9092", "security_protocol": "SSL"}, {"STREAM_CLF_SSL_CA": str(ca)}
    )
    assert connection.brokers == ("k1:9092", "k2:9092")
    assert connection.config()["ssl.ca.location"] == str(ca)
    assert connection.faust_brokers() == ["kafka://k1:9092", "kafka://k2:9092"]


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        ({"input_format": "avro"}, "--input-format avro needs --schema-registry URL"),
        ({"output_format": "avro"}, "--output-format avro needs --schema-registry URL"),
        ({"output_format": "xml"}, "xml"),
        ({"text_field": ["review..body"]}, "is not a dotted field path"),
        ({"schema_registry": "registry:8081"}, "expected an http:// or https:// URL"),
    ],
)
def test_event_format_settings_that_cannot_work_stop_with_one_line(flags, said):
    with pytest.raises(ConfigError, match=said):
        WorkerSettings.resolve({"model": "m", **flags}, environ={})
