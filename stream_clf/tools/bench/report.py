"""``stream-clf bench``'s report: the ratios and targets judged from the measurements, and the tables."""

import math
from typing import Any

from rich.console import Group
from rich.table import Table

__all__ = ["judge", "render", "render_summary"]


def judge(report: dict[str, Any], max_wait_ms: int, bundle: Any, engine: Any) -> dict[str, Any]:
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
    bound = max_wait_ms / 1000 + 2 * report["engine"]["full_batch_seconds"]
    report["latency_bound_seconds"] = bound
    report["ratios"] = ratios
    # On a card's base shape the stream's share of the work is smaller, and so is what it may cost.
    shape = report["model"].get("shape")
    share = 0.95 if shape else 0.9
    report["targets"] = {
        f"end_to_end_at_least_{share:.0%}_of_engine".replace("%", "pct"): ratios["stream_clf_vs_engine"] >= share,
        "p99_within_bound": report["stream_clf"]["latency"]["p99"] <= bound,
    }
    if shape and "fraction_of_peak" in report["engine"]:
        report["targets"]["engine_at_least_60pct_of_peak"] = report["engine"]["fraction_of_peak"] >= 0.6
    if "with_shadow" in report:
        ratios["with_shadow_vs_without"] = report["with_shadow"]["events_per_second"] / stream_rate
    if "stream_clf_vs_baseline" in ratios:
        report["targets"]["at_least_6x_baseline"] = ratios["stream_clf_vs_baseline"] >= 6
    formats = report.get("event_formats")
    if formats:
        ratios["avro_vs_json_events"] = formats["avro_vs_json"]
        report["targets"]["avro_events_at_least_95pct_of_json"] = formats["avro_vs_json"] >= 0.95
    spark = report.get("spark_nlp")
    if spark:
        ratios["stream_clf_vs_spark_nlp"] = stream_rate / spark["events_per_second"]
        ratios["spark_nlp_p99_vs_stream_clf_p99"] = spark["latency"]["p99"] / spark["stream_clf_at_same_pace"]["p99"]
        report["targets"]["at_least_3x_spark_nlp"] = ratios["stream_clf_vs_spark_nlp"] >= 3
        report["targets"]["p99_at_most_a_tenth_of_spark_nlp"] = ratios["spark_nlp_p99_vs_stream_clf_p99"] >= 10
    return report


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


def _event_format_lines(report: dict[str, Any]) -> list[str]:
    formats = report.get("event_formats")
    if not formats:
        return []
    rounds = ", ".join(
        f"{name} " + " / ".join(f"{rate:.1f}" for rate in rates) for name, rates in formats["rounds"].items()
    )
    medians = formats["median_events_per_second"]
    return [
        f"event formats, side by side (median of {len(formats['rounds']['json'])} alternating runs): JSON"
        f" {medians['json']:.1f} events/s, Avro {medians['avro']:.1f} events/s, Avro {formats['avro_vs_json']:.1%}"
        f" of JSON; labels agree on {formats['labels_agree']:.1%} of events; runs: {rounds}"
    ]


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
        *_event_format_lines(report),
        *_spark_nlp_lines(report),
        "raw engine by configuration: "
        + ", ".join(f"{name} {rate:.1f} texts/s" for name, rate in engine["configurations"].items())
        + f" (the worker's: {engine['worker_configuration']})",
        "cores used during the end-to-end run: "
        + ", ".join(f"{name} {used:.2f}" for name, used in stream["cores"].items())
        + f" (of {machine['usable_cores']})"
        + _memory_line(stream.get("memory_bytes")),
        *_thread_line(stream.get("thread_cores")),
        *_split_line(engine, stream),
        *_loop_line(stream, exactly_once),
        *_stage_tables(report),
        "targets: " + ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in report["targets"].items()),
    ]
    return Group(*lines)


def _thread_line(cores: dict[str, float] | None) -> list[str]:
    """Where the worker's cores went during the end-to-end run, by the role of its threads."""
    used = sorted(((role, share) for role, share in (cores or {}).items() if share >= 0.005), key=lambda r: -r[1])
    if not used:
        return []
    return ["worker's cores by thread: " + ", ".join(f"{role} {share:.2f}" for role, share in used)]


def _split_line(engine: dict[str, Any], stream: dict[str, Any]) -> list[str]:
    """End to end against the engine, split in two: the cores inference had (the lanes' threads, and
    ``other``: ONNX Runtime's own pool, with librdkafka's few) against the engine's alone, and what
    inference made of each core against the engine."""
    threads, engine_cores = stream.get("thread_cores") or {}, engine.get("cores")
    inference = threads.get("lane", 0.0) + threads.get("other", 0.0)
    if not inference or not engine_cores:
        return []
    of_engine = stream["events_per_second"] / engine["texts_per_second"]
    share = inference / engine_cores
    return [
        f"end to end is {of_engine:.0%} of the engine: inference had {inference:.2f} cores"
        f" to the engine's {engine_cores:.2f} ({share:.0%}), at {of_engine / share:.0%} of the engine's rate per core"
    ]


def _loop_line(stream: dict[str, Any], exactly_once: dict[str, Any] | None) -> list[str]:
    """The per-event CPU cost of the worker's event loop (its main thread), for each guarantee measured."""
    costs = {"at-least-once": stream.get("event_loop_microseconds_per_event")}
    if exactly_once:
        costs["exactly-once"] = exactly_once.get("event_loop_microseconds_per_event")
    measured = {guarantee: cost for guarantee, cost in costs.items() if cost}
    if not measured:
        return []
    return [
        "worker's event loop (main thread), CPU per event: "
        + ", ".join(f"{guarantee} {cost:.0f} µs" for guarantee, cost in measured.items())
    ]


def _ms(seconds: float | None) -> str:
    """Milliseconds; "-" for a figure a short run could not measure (NaN, or null once in JSON)."""
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:,.0f}"


def render_summary(reports: list[dict[str, Any]]) -> Group:
    """One row per bench run (``--shape all``): the figures a card's user compares across shapes."""
    first = reports[0]
    model = first["model"]
    table = Table(
        title=f"{first['mix']['name']} mix, {first['mix']['texts']} texts, {model['max_length']} tokens"
        f" ({model['truncation']}), {model['precision']}; {first['machine']['cpu']}, {first['machine']['threads']}"
        " threads; latency at 70% of each end-to-end rate"
    )
    columns = ("model", "engine texts/s", "of peak", "end to end", "vs engine", "baseline", "vs baseline")
    columns += ("p50 / p99 ms", "p99 bound ms", "worker RSS MiB", "targets met")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    missed = []
    for report in reports:
        engine, stream, baseline = report["engine"], report["stream_clf"], report.get("baseline")
        latency, ratios, targets = stream["latency"], report["ratios"], report["targets"]
        table.add_row(
            report["model"]["shape"] or report["model"]["name"],
            f"{engine['texts_per_second']:.1f}",
            f"{engine['fraction_of_peak']:.0%}" if "fraction_of_peak" in engine else "",
            f"{stream['events_per_second']:.1f}",
            f"{ratios['stream_clf_vs_engine']:.0%}",
            f"{baseline['events_per_second']:.2f}" if baseline else "",
            f"{ratios['stream_clf_vs_baseline']:.1f}x" if baseline else "",
            f"{_ms(latency['p50'])} / {_ms(latency['p99'])}",
            _ms(report["latency_bound_seconds"]),
            f"{stream['memory_bytes']['peak'] / 2**20:.0f}" if stream.get("memory_bytes") else "",
            f"{sum(targets.values())} of {len(targets)}",
        )
        if not all(targets.values()):
            names = ", ".join(name for name, ok in targets.items() if not ok)
            missed.append(f"{report['model']['name']} missed: {names}")
    return Group(table, *missed)
