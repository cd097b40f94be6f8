"""The user's commands against real brokers: broker, produce, tail, and the demo."""

import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from stream_clf.kafka.connection import Connection
from stream_clf.kafka.topics import ensure_topics
from stream_clf.tools.broker import free_port
from stream_clf.tools.samples import DEMO_REVIEWS
from tests.kafka_helpers import Topics, collect

pytestmark = pytest.mark.broker


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stream_clf", *args]


def _read_until(process: subprocess.Popen[str], text: str, timeout: float) -> str:
    """Read the process's stdout until a line contains ``text``; fail if it exits or time runs out."""
    seen = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                line = process.stdout.readline()
                if not line and process.poll() is not None:
                    break
                seen.append(line)
                if text in line:
                    return "".join(seen)
    raise AssertionError(f"no {text!r} within {timeout}s; output so far: {''.join(seen)!r}")


def _broker(data_dir: Path, port: int, *flags: str) -> subprocess.Popen[str]:
    command = _cli("broker", "--port", str(port), "--controller-port", str(free_port()), "--data-dir", str(data_dir))
    return subprocess.Popen([*command, *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(60)


def test_broker_command_keeps_topics_across_restarts_and_fresh_wipes_them(tmp_path):
    data_dir, port = tmp_path / "data", free_port()
    bootstrap = f"127.0.0.1:{port}"

    first = _broker(data_dir, port)
    try:
        assert f"ready at {bootstrap}" in _read_until(first, "ready at", 120)
        ensure_topics(Connection.to(bootstrap), ["kept-topic"], partitions=2)
    finally:
        assert _stop(first) == 0

    second = _broker(data_dir, port)
    try:
        _read_until(second, "ready at", 120)
        assert "kept-topic" in Connection.to(bootstrap).admin().list_topics(timeout=10).topics
    finally:
        assert _stop(second) == 0

    fresh = _broker(data_dir, port, "--fresh")
    try:
        _read_until(fresh, "ready at", 120)
        assert "kept-topic" not in Connection.to(bootstrap).admin().list_topics(timeout=10).topics
    finally:
        assert _stop(fresh) == 0


def test_broker_command_refuses_a_port_in_use(kafka_bootstrap, tmp_path):
    port = int(kafka_bootstrap.rsplit(":", 1)[1])
    finished = subprocess.run(
        _cli("broker", "--port", str(port), "--data-dir", str(tmp_path)), capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in finished.stderr


def test_produce_sends_text_and_json_lines_and_tail_prints_them(kafka_bootstrap, tmp_path):
    topics = Topics.fresh(kafka_bootstrap, partitions=2)
    lines = tmp_path / "events.txt"
    lines.write_text('plain text line\n\n{"id": "j1", "text": "a json event", "user": "ann"}\n{"text": "keyless"}\n')
    produced = subprocess.run(
        _cli("produce", "--brokers", kafka_bootstrap, "--topic", topics.input, "--key-field", "user", str(lines)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert produced.returncode == 0, produced.stderr
    assert produced.stdout.strip() == f"sent 3 events to {topics.input}, skipped 1 blank lines"

    records = collect(kafka_bootstrap, [topics.input], until=lambda rs: len(rs) >= 3, timeout=30)
    values = {orjson.loads(r.value)["text"]: r for r in records}
    assert orjson.loads(values["plain text line"].value) == {"text": "plain text line"}
    assert values["a json event"].value == b'{"id": "j1", "text": "a json event", "user": "ann"}'
    assert values["a json event"].key == b"ann"
    assert values["keyless"].key is None

    tailed = subprocess.run(
        _cli("tail", "--brokers", kafka_bootstrap, "--topic", topics.input, "--from-beginning", "--max", "3", "--json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tailed.returncode == 0, tailed.stderr
    assert sorted(tailed.stdout.splitlines()) == sorted(r.value.decode() for r in records)


def test_demo_runs_from_nothing_and_stops_cleanly(news_model, imdb_quick_model):
    finished = subprocess.run(_cli("demo"), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "news-minilm (int8), trained offline on BBC News" in finished.stdout
    for topic in ("business", "sports", "politics", "tech"):
        assert f"│ {topic} " in finished.stdout
    assert "missing_text" in finished.stdout
    reviews = [line for line in finished.stdout.splitlines() if "│ review-" in line]
    assert len(reviews) == len(DEMO_REVIEWS)
    assert {"pos", "neg"} <= {cell.strip() for line in reviews for cell in line.split("│")}
    assert "workers stopped with exit codes 0, 0" in finished.stdout


def test_demo_serves_any_bundle_it_is_given(tiny_bundle):
    finished = subprocess.run(_cli("demo", "--model", str(tiny_bundle)), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "labelled results" in finished.stdout
    assert "workers stopped with exit codes 0," in finished.stdout
