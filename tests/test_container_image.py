"""The worker's container image, built from deploy/Dockerfile and run against the session's broker.

Runs where a Docker engine answers. The base image is ``STREAM_CLF_TEST_IMAGE_BASE`` if set, else the
Dockerfile's own default if the engine has or can pull it, else one that ``.ci/docker-engine start``
makes from Debian packages (as root, with debootstrap). The container uses the host's network, so
it reaches the broker on loopback.
"""

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.tools.broker import free_port
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS
from stream_clf.tools.samples import DEMO_TEXTS
from tests.kafka_helpers import collect, ids_seen, produce, results_of

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
TAG = "stream-clf:test"


def _docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def base_image() -> str:
    if shutil.which("docker") is None or _docker("info", check=False).returncode != 0:
        pytest.skip("no Docker engine answers (.ci/docker-engine start makes one on these machines)")
    return _base_image()


def _build(base: str, tag: str, bake: str) -> dict[str, float]:
    """Build deploy/Dockerfile as ``tag`` with ``BAKE_MODEL=bake``; its build time and size, printed."""
    started = time.monotonic()
    build = _docker(
        "build", "--network", "host", "-f", "deploy/Dockerfile", "--build-arg", f"BAKE_MODEL={bake}",
        "--build-arg", f"PYTHON={base}", "-t", tag, str(ROOT),
        timeout=1500, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    size = int(_docker("image", "inspect", "--format", "{{.Size}}", tag).stdout)
    built = {"build_seconds": time.monotonic() - started, "size_mib": size / 2**20}
    print(f"\nimage {tag} (BAKE_MODEL={bake}): built in {built['build_seconds']:.0f} s, {built['size_mib']:.0f} MiB")
    return built


@contextlib.contextmanager
def _container(tag: str, kafka_bootstrap: str, topics, *options: str) -> Iterator[str]:
    """A running container of ``tag`` on the host's network, serving ``topics``; removed after."""
    name = f"stream-clf-test-{uuid.uuid4().hex[:8]}"
    _docker(
        "run", "-d", "--name", name, "--network", "host", *options,
        "-e", f"STREAM_CLF_BROKERS={kafka_bootstrap}",
        "-e", f"STREAM_CLF_INPUT={topics.input}", "-e", f"STREAM_CLF_OUTPUT={topics.output}",
        "-e", f"STREAM_CLF_DLQ={topics.dlq}", "-e", f"STREAM_CLF_GROUP={topics.group}",
        "-e", f"STREAM_CLF_WEB_PORT={free_port()}", "-e", "STREAM_CLF_SESSION_TIMEOUT_MS=6000",
        tag,
    )  # fmt: skip
    try:
        yield name
    finally:
        _docker("rm", "-f", name, check=False)


def test_the_image_labels_events_turns_healthy_and_runs_as_non_root(
    base_image, kafka_bootstrap, topics, tiny_bundle, tmp_path
):
    _build(base_image, TAG, "none")
    # The container's user (uid 10001) must read the mounted bundle.
    models = tmp_path / "models"
    shutil.copytree(tiny_bundle, models / "tiny")
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp_path.chmod(0o755)
    mount = ("-v", f"{models}:/models:ro", "-e", "STREAM_CLF_MODEL=/models/tiny")
    with _container(TAG, kafka_bootstrap, topics, *HARDENED, *mount) as name:
        texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(20)]
        events = [(f"k{i}".encode(), orjson.dumps({"id": f"c{i}", "text": text})) for i, text in enumerate(texts)]
        produce(kafka_bootstrap, topics.input, [*events, (b"bad", b"not json")])

        records = collect(
            kafka_bootstrap,
            [topics.output, topics.dlq],
            until=lambda seen: ids_seen(topics, 20)(seen) and any(r.topic == topics.dlq for r in seen),
            timeout=120,
            settle=1,
        )
        assert sorted(r["id"] for r in results_of(records, topics)) == sorted(f"c{i}" for i in range(20))
        (dead,) = [r for r in records if r.topic == topics.dlq]
        assert dead.value == b"not json"
        assert dead.headers["error.reason"] == b"invalid_json"

        health = _wait_for_health(name, timeout=60)
        assert health == "healthy", _docker("logs", name, check=False).stderr[-2000:]
        assert _docker("exec", name, "id", "-u").stdout.strip() != "0"
        assert _docker("inspect", "--format", "{{.Config.User}}", name).stdout.strip() == "stream-clf"
        _assert_hardened(name)

        _docker("stop", "--time", "30", name, timeout=60)
        state = json.loads(_docker("inspect", "--format", "{{json .State}}", name).stdout)
        assert state["ExitCode"] == 0, "SIGTERM stops the worker cleanly"


@pytest.mark.timeout(1800)
def test_the_image_with_the_news_model_baked_in_labels_news_like_the_model(
    base_image, kafka_bootstrap, topics, news_model
):
    # The model stage installs torch (the PyPI build, with CUDA libraries) and builds the news model;
    # none of it reaches the runtime image but the int8 bundle.
    _build(base_image, f"{TAG}-news", "news")
    expected = Classifier(load_bundle(news_model.bundles["int8"])).predict(list(DEMO_TEXTS))
    with _container(f"{TAG}-news", kafka_bootstrap, topics, *HARDENED) as name:
        _assert_hardened(name)
        baked = "import os; print(os.access('/models/news-int8/model.onnx', os.W_OK))"
        assert _docker("exec", name, "python", "-c", baked).stdout.strip() == "False", "bundles are read-only"
        produce(
            kafka_bootstrap,
            topics.input,
            [(None, orjson.dumps({"id": f"n{i}", "text": text})) for i, text in enumerate(DEMO_TEXTS)],
        )
        records = collect(kafka_bootstrap, [topics.output], until=ids_seen(topics, len(DEMO_TEXTS)), timeout=180)
    labels = {result["id"]: result["label"] for result in results_of(records, topics)}
    assert labels == {f"n{i}": prediction.label for i, prediction in enumerate(expected)}


# As the Kubernetes manifests run it: nothing written but /tmp, no capabilities, no privilege gained.
HARDENED = ("--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")


def _assert_hardened(name: str) -> None:
    """The container runs with a read-only root and no capabilities, and still serves (checked by the caller)."""
    host = json.loads(_docker("inspect", "--format", "{{json .HostConfig}}", name).stdout)
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    touched = _docker("exec", name, "sh", "-c", "touch /opt/stream-clf/x", check=False)
    assert touched.returncode != 0, "the root filesystem is read-only"
    capabilities = _docker("exec", name, "sh", "-c", "grep CapEff /proc/self/status", check=False).stdout
    assert capabilities.split()[-1] == "0000000000000000", capabilities


def _base_image() -> str:
    if "STREAM_CLF_TEST_IMAGE_BASE" in os.environ:
        return os.environ["STREAM_CLF_TEST_IMAGE_BASE"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    default = re.search(r"^ARG PYTHON=(\S+)", dockerfile, re.MULTILINE).group(1)
    if _docker("image", "inspect", default, check=False).returncode == 0:
        return default
    if _docker("pull", default, timeout=600, check=False).returncode == 0:
        return default
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip(f"cannot pull {default} and cannot make a base image without root and debootstrap")
    made = subprocess.run([ROOT / ".ci" / "docker-engine", "start"], capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def _wait_for_health(name: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = "unknown"
    while time.monotonic() < deadline:
        status = _docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
        if status in ("healthy", "unhealthy"):
            return status
        time.sleep(1)
    return status
