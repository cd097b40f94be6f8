"""``stream-clf demo``: the whole flow on one machine, from nothing, then a clean shutdown.

It starts a throw-away local broker and two worker processes: the trained news model on topic
``texts`` and the IMDB sentiment model on ``reviews`` (each built once, offline, if not cached;
the IMDB one as its 2-minute quick build unless the full build is there). It produces a dozen news
snippets (and one malformed event, to show the dead-letter path) and a handful of reviews, prints
the labelled results, then stops the workers with SIGTERM and the broker. Without the ``models``
extra it serves a tiny random-weight model on ``texts`` only, and says so.
"""

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from stream_clf.errors import StreamClfError
from stream_clf.kafka.connection import Connection
from stream_clf.kafka.topics import ensure_topics
from stream_clf.model.catalog import bundle_name, models_dir, resolve_model
from stream_clf.tools.broker import LocalKafka, free_port, resolve_jars
from stream_clf.tools.build.tiny_model import build_tiny_bundle
from stream_clf.tools.produce import produce_lines
from stream_clf.tools.samples import DEMO_REVIEWS, DEMO_TEXTS

__all__ = ["run_demo"]

_RESULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class _Stream:
    """One topic pair, the model a worker serves on it, and the texts the demo sends."""

    title: str
    input: str
    model: Path
    texts: tuple[str, ...]
    id_prefix: str
    malformed: bool = False  # also send one malformed event, to show the dead-letter path

    @property
    def output(self) -> str:
        return f"{self.input}.labeled"

    @property
    def dlq(self) -> str:
        return f"{self.input}.dlq"


_MALFORMED = b'{"id": "demo-bad", "txt": "a typo in the field name"}'


def run_demo(model: Path | None = None) -> int:
    """Run the demo; return the process exit code."""
    console = Console()
    started = time.monotonic()
    console.print("[bold]stream-clf demo[/]: local Kafka -> workers -> labelled results\n")
    with tempfile.TemporaryDirectory(prefix="stream-clf-demo-") as scratch:
        root = Path(scratch)
        streams = _streams(console, root, model)
        resolve_jars(quiet=False)
        kafka = LocalKafka(root / "kafka", port=free_port(), controller_port=free_port())
        with console.status("starting Kafka..."):
            kafka.start()
        console.print(f"[green]Kafka[/] ready at {kafka.bootstrap}")
        workers: list[subprocess.Popen[bytes]] = []
        codes: list[int | None] = []
        try:
            for stream in streams:
                ensure_topics(Connection.to(kafka.bootstrap), [stream.input, stream.output, stream.dlq], partitions=3)
                workers.append(_start_worker(kafka.bootstrap, stream, root / f"{stream.input}.log"))
                console.print(f"[green]worker[/] for {stream.title} started (pid {workers[-1].pid})")
            for stream in streams:
                lines = [
                    orjson.dumps({"id": f"{stream.id_prefix}-{i}", "text": t}) for i, t in enumerate(stream.texts, 1)
                ]
                produce_lines(
                    Connection.to(kafka.bootstrap),
                    stream.input,
                    [*lines, _MALFORMED] if stream.malformed else lines,
                    raw=True,
                )
            for stream, worker in zip(streams, workers, strict=True):
                with console.status(f"waiting for the {stream.title} results..."):
                    results, dead = _collect(kafka.bootstrap, stream, worker)
                console.print(_table(stream, results))
                for reason, detail in dead:
                    console.print(f"[red]dead letter[/] demo-bad -> {stream.dlq}: {reason} ({detail})")
        except StreamClfError as error:
            console.print(f"[red]demo failed:[/] {error}")
            for log in sorted(root.glob("*.log")):
                console.print(f"{log.name}:\n{log.read_text()[-2000:]}")
            return 1
        finally:
            codes = [_stop_worker(worker) for worker in workers]
            with console.status("stopping Kafka..."):
                kafka.stop()
        console.print(
            f"\nworkers stopped with exit codes {', '.join(map(str, codes))}, Kafka stopped;"
            f" {time.monotonic() - started:.0f}s in all."
        )
    return 0 if codes and all(code == 0 for code in codes) else 1


def _streams(console: Console, scratch: Path, model: Path | None) -> list[_Stream]:
    """News topics on ``texts`` and, with the models extra, review sentiment on ``reviews``."""
    if model:
        model = resolve_model(model)
        console.print(f"[green]model:[/] {model}\n")
        return [_news(model)]
    try:
        from stream_clf.tools.build.training import build_trained_model
    except ImportError:
        console.print(
            "[yellow]model:[/] tiny-random, built on the fly with random weights: its labels show the pipeline"
            " at work, not real topics. For the trained news and IMDB models: pip install 'stream-clf[models]'.\n"
        )
        return [_news(build_tiny_bundle(scratch / "model"))]
    news = _trained(console, build_trained_model, "news", "news-minilm (int8), trained offline on BBC News")
    imdb = models_dir() / bundle_name("imdb", "int8")
    if imdb.is_dir():
        console.print(f"[green]model:[/] imdb-minilm (int8), fine-tuned offline on IMDB reviews, from {imdb}")
    else:
        imdb = _trained(
            console,
            build_trained_model,
            "imdb-quick",
            "imdb-quick-minilm (int8), the IMDB model's 2-minute build"
            " (`stream-clf models build imdb` makes the full one)",
        )
    console.print()
    return [
        _news(news),
        _Stream("sentiment", "reviews", imdb, DEMO_REVIEWS, "review"),
    ]


def _news(model: Path) -> _Stream:
    return _Stream("news", "texts", model, DEMO_TEXTS, "demo", malformed=True)


def _trained(console: Console, build: Callable[..., object], name: str, description: str) -> Path:
    """A built model's int8 bundle from the cache, built now if it is not there."""
    cached = models_dir() / bundle_name(name, "int8")
    if not cached.is_dir():
        console.print(f"[green]model:[/] building the {name} model once, offline (a few minutes on 2 cores)...")
        with Progress() as progress:

            def track(description: str, total: int | None) -> Callable[[int], None]:
                task = progress.add_task(description, total=total or 1)
                return lambda n: progress.advance(task, n)

            build(name, progress=track)
    console.print(f"[green]model:[/] {description}, from {cached}")
    return cached


def _start_worker(bootstrap: str, stream: _Stream, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "stream_clf", "worker",
        "--brokers", bootstrap, "--model", str(stream.model),
        "--input", stream.input, "--output", stream.output, "--dlq", stream.dlq,
        "--group", f"stream-clf-demo-{stream.input}", "--web-port", str(free_port()),
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
    bootstrap: str, stream: _Stream, worker: subprocess.Popen[bytes]
) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    consumer = Connection.to(bootstrap).consumer(
        {"group.id": f"stream-clf-demo-reader-{stream.input}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([stream.output, stream.dlq])
    expected = len(stream.texts)
    results: dict[str, dict] = {}
    dead: list[tuple[str, str]] = []
    deadline = time.monotonic() + _RESULT_TIMEOUT
    try:
        while len(results) < expected or (stream.malformed and not dead):
            if time.monotonic() > deadline:
                raise StreamClfError(f"only {len(results)} of {expected} results after {_RESULT_TIMEOUT:.0f}s")
            if worker.poll() is not None:
                raise StreamClfError(f"the worker exited early with code {worker.returncode}")
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            if message.topic() == stream.dlq:
                headers = dict(message.headers() or [])
                dead.append((headers["error.reason"].decode(), headers["error.detail"].decode()))
            else:
                result = orjson.loads(message.value())
                results[result["id"]] = result
    finally:
        consumer.close()
    return results, dead


def _table(stream: _Stream, results: dict[str, dict]) -> Table:
    table = Table(title=f"{stream.title}: labelled results (topic {stream.output})")
    table.add_column("id", no_wrap=True, min_width=9)
    table.add_column("text", overflow="ellipsis", no_wrap=True, max_width=26)
    table.add_column("label", no_wrap=True, min_width=8)
    table.add_column("score", no_wrap=True, min_width=5)
    table.add_column("partition:offset", no_wrap=True)
    for i, text in enumerate(stream.texts, 1):
        result = results[f"{stream.id_prefix}-{i}"]
        source = result["source"]
        table.add_row(
            result["id"], text, result["label"], f"{result['score']:.3f}", f"{source['partition']}:{source['offset']}"
        )
    return table
