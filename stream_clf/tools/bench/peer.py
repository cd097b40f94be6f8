"""Spark NLP beside stream-clf: Structured Streaming on the same broker, bundle and texts.

Spark NLP reads its own input topic and writes its own output topic, with the folder exported from
the bundle stream-clf serves (:mod:`stream_clf.tools.sparknlp.folders`) and the tokenizer that
reproduces the model's pre-tokenizer, so the two outputs' labels are comparable. Measured as for
stream-clf: throughput from a filled topic (to the last result: Spark answers a micro-batch at a
time), produce-to-result latency at a paced load, the cores of its JVM and of its Python driver.

Spark is tuned, not left at its defaults: ``local[threads]`` (the worker's threads), the
classifier's ``batchSize``, ``maxOffsetsPerTrigger`` large enough for whole batches on every core,
micro-batches back to back (no trigger interval: the lowest latency Structured Streaming offers
short of its experimental continuous mode, which does not run ML pipelines).
"""

import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stream_clf.errors import PeerError, StreamClfError
from stream_clf.kafka.connection import Connection
from stream_clf.kafka.topics import ensure_topics
from stream_clf.model.bundle import load_bundle
from stream_clf.tools.bench.streaming import (
    RunningService,
    Track,
    measure_latency,
    measure_throughput,
    p50_p99,
    paced_texts,
    resident_bytes,
)
from stream_clf.tools.sparknlp.environment import spark_nlp_environment
from stream_clf.tools.sparknlp.parity import TOKENIZERS
from stream_clf.tools.sparknlp.runner import SparkJob, model_spec

__all__ = ["SparkTuning", "measure_spark_nlp"]


@dataclass(frozen=True)
class SparkTuning:
    """Spark NLP's knobs in the benchmark (see the module's docstring for why these)."""

    batch_size: int = 32
    max_offsets_per_trigger: int = 2000
    trigger_ms: int = 0
    warm_up_events: int = 64


def measure_spark_nlp(
    bootstrap: str,
    bundle_path: Path,
    texts: Sequence[str],
    *,
    threads: int,
    pace: float | None,
    latency_seconds: float,
    root: Path,
    track: Track,
    others: dict[str, int],
    timeout: float,
    tuning: SparkTuning = SparkTuning(),
) -> dict[str, Any]:
    """Throughput, latency (at ``pace`` events/s, or 70% of Spark's own rate), labels and cores."""
    bundle = load_bundle(bundle_path)
    advance = track("setting up Spark NLP (once: its packages and jars into the cache)", 1)
    environment = spark_nlp_environment(quiet=True)
    model = model_spec(bundle, root / "spark-nlp-model", batch_size=tuning.batch_size)
    advance(1)
    tag = uuid.uuid4().hex[:8]
    topics = (f"bench-spark-in-{tag}", f"bench-spark-out-{tag}")
    ensure_topics(Connection.to(bootstrap), topics, 4)
    ready, stop = root / "spark-ready", root / "spark-stop"
    spec = {
        "cores": threads,
        "bootstrap": bootstrap,
        "input_topic": topics[0],
        "output_topic": topics[1],
        "checkpoint": str(root / "spark-checkpoint"),
        "ready": str(ready),
        "stop": str(stop),
        "tokenizer": TOKENIZERS["model"],
        "max_offsets_per_trigger": tuning.max_offsets_per_trigger,
        "trigger_ms": tuning.trigger_ms,
        "model": model,
    }
    job = SparkJob(environment, "stream", spec, root / "spark-job")
    service = RunningService(job.process, topics[0], topics[1], job.log, web_port=0, group="")
    try:
        jvm = _wait_ready(job, ready, timeout=300)
        warm = list(texts[: tuning.warm_up_events])
        measure_latency(
            bootstrap, service, warm, pace=1000, timeout=timeout, advance=track("Spark NLP warm-up", len(warm))
        )
        throughput = measure_throughput(
            bootstrap,
            service,
            texts,
            timeout,
            track("Spark NLP Structured Streaming end to end", len(texts)),
            others={"spark JVM": jvm, **others},
            from_filled=True,
        )
        memory = resident_bytes(jvm)
        pace = pace or 0.7 * throughput.events_per_second
        paced = paced_texts(texts, pace, latency_seconds)
        latency = measure_latency(
            bootstrap,
            service,
            paced,
            pace=pace,
            timeout=timeout,
            advance=track(f"Spark NLP latency at {pace:.0f} events/s", len(paced)),
        )
        stop.touch()
        answer = job.wait(120)
    except StreamClfError:
        job.check()  # the job's own error, when it failed, rather than "the service exited"
        raise
    finally:
        if job.process.poll() is None:
            stop.touch()
            job.process.terminate()
            job.process.wait(60)
    batches = [batch for batch in answer["batches"] if batch["rows"]]
    cores = {("spark driver (python)" if name == "service" else name): used for name, used in throughput.cores.items()}
    return {
        "events_per_second": throughput.events_per_second,
        "labels": throughput.labels,
        "cores": cores,
        "memory_bytes": memory,
        "latency": {"load_events_per_second": pace, **p50_p99(latency)},
        "micro_batches": {
            "count": len(batches),
            "mean_rows": sum(batch["rows"] for batch in batches) / len(batches) if batches else 0,
        },
        "tuning": {**asdict(tuning), "master": f"local[{threads}]", "tokenizer": "model's pre-tokenizer (regex)"},
        "annotator": model["annotator"],
    }


def _wait_ready(job: SparkJob, ready: Path, timeout: float) -> int:
    """The JVM's pid, once the streaming query runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.check()
        if ready.is_file() and ready.read_text().strip():
            return int(ready.read_text())
        time.sleep(0.5)
    raise PeerError(f"Spark NLP's streaming query did not start within {timeout:.0f}s; see {job.log}")
