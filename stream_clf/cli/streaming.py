"""Subcommands that run or talk to Kafka: worker, broker, produce, tail, demo."""

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

from stream_clf.cli.common import (
    Parser,
    add_connection,
    add_option,
    add_registry,
    connection_from,
    positive_int,
    raise_interrupt,
    registry_from,
)
from stream_clf.errors import BrokerError, ConfigError
from stream_clf.formats import OUTPUT_FORMATS
from stream_clf.settings import WORKER_OPTIONS, WorkerSettings

__all__ = ["register"]

_WORKER_DESCRIPTION = (
    "Consume text events, classify them in micro-batches with an ONNX model bundle, and publish one"
    " result (or one dead letter) per event. Every flag also reads the environment variable shown."
)


def register(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    _worker(commands.add_parser("worker", help="run the classifying agent", description=_WORKER_DESCRIPTION))
    _broker(commands.add_parser("broker", help="run a local Apache Kafka broker (KRaft, no Docker)"))
    _produce(commands.add_parser("produce", help="send lines of a file or stdin as events"))
    _tail(commands.add_parser("tail", help="print the records of a topic as they arrive"))
    _demo(commands.add_parser("demo", help="start a local broker and a worker, classify sample texts, stop"))


def _worker(parser: Parser) -> None:
    for option in WORKER_OPTIONS:
        add_option(parser, option)

    def run(args: argparse.Namespace) -> int:
        from stream_clf.worker.startup import run_worker

        return run_worker(WorkerSettings.resolve(vars(args)))

    parser.set_defaults(run=run, parser=parser)


def _broker(parser: Parser) -> None:
    data_home = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "stream-clf"
    parser.add_argument("--port", type=positive_int, default=9092, help="client port on 127.0.0.1 (default: 9092)")
    parser.add_argument("--controller-port", type=positive_int, help="KRaft controller port (default: port + 1)")
    parser.add_argument(
        "--data-dir", type=Path, default=data_home / "broker", help="kept across restarts (default: %(default)s)"
    )
    parser.add_argument("--fresh", action="store_true", help="wipe the data directory first: no topics, no offsets")
    parser.add_argument("--heap", default="512m", help="JVM heap size, per node (default: 512m)")
    parser.add_argument(
        "--nodes",
        type=positive_int,
        default=1,
        help="a cluster of this many nodes, one quorum: node i listens on port + 2i and port + 2i + 1 (default: 1)",
    )

    def run(args: argparse.Namespace) -> int:
        from stream_clf.tools.broker import KAFKA_VERSION, LocalCluster, LocalKafka

        if args.nodes > 1 and args.controller_port is not None:
            raise ConfigError("--controller-port names one node's port; a cluster's follow from --port")
        kafka: LocalKafka | LocalCluster
        if args.nodes > 1:
            kafka = LocalCluster(args.data_dir, args.nodes, args.port, heap=args.heap)
        else:
            kafka = LocalKafka(args.data_dir, args.port, args.controller_port or args.port + 1, args.heap)
        if args.fresh:
            kafka.wipe()
        signal.signal(signal.SIGTERM, raise_interrupt)
        try:
            kafka.start(quiet=False)
            version = "from KAFKA_HOME" if "KAFKA_HOME" in os.environ else KAFKA_VERSION
            shape = f"{args.nodes} nodes" if args.nodes > 1 else "one node"
            print(f"Kafka {version} (KRaft, {shape}) ready at {kafka.bootstrap}", flush=True)
            logs = kafka.log_file if isinstance(kafka, LocalKafka) else args.data_dir / "node-*" / "broker.log"
            print(f"  data: {args.data_dir}\n  log:  {logs}\n  Ctrl-C or SIGTERM stops it", flush=True)
            code = kafka.wait()
        except KeyboardInterrupt:
            print("stopping Kafka...", flush=True)
            kafka.stop()
            return 0
        raise BrokerError(f"the broker exited on its own with code {code}; see the logs in {args.data_dir}")

    parser.set_defaults(run=run, parser=parser)


def _produce(parser: Parser) -> None:
    add_connection(parser)
    parser.add_argument("--topic", required=True, help="topic to write to")
    parser.add_argument("file", nargs="?", default="-", help="file of lines, or - for stdin (default: -)")
    parser.add_argument("--key-field", help="set the Kafka key from this field of each JSON line")
    parser.add_argument("--raw", action="store_true", help="send each line's bytes unchanged (test bad input)")
    parser.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default="json",
        help="write each record as JSON, or through the Schema Registry as Avro or JSON Schema (default: json)",
    )
    parser.add_argument("--schema", type=Path, help="the Avro (.avsc) or JSON Schema file of --format avro|json-schema")
    add_registry(parser)

    def run(args: argparse.Namespace) -> int:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        from stream_clf.tools.produce import produce_lines, registry_serializer

        connection = connection_from(args)
        serialize = None
        if args.format != "json":
            registry = registry_from(args)
            if args.schema is None or registry is None or args.raw:
                raise ConfigError(f"--format {args.format} needs --schema FILE and --schema-registry URL, not --raw")
            serialize = registry_serializer(registry, args.format, args.schema, args.topic)
        reading_stdin = args.file == "-"
        stream = sys.stdin.buffer if reading_stdin else open(args.file, "rb")  # noqa: SIM115 (closed below)
        size = None if reading_stdin else os.fstat(stream.fileno()).st_size
        columns = (TextColumn(f"producing to {args.topic}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
        show = size is not None and size >= 1 << 20 and sys.stderr.isatty()
        with stream, Progress(*columns, disable=not show, transient=True) as progress:
            task = progress.add_task("lines", total=size)
            report = produce_lines(
                connection,
                args.topic,
                stream,
                key_field=args.key_field,
                raw=args.raw,
                serialize=serialize,
                on_line=lambda n: progress.advance(task, n),
            )
        skipped = f", skipped {report.skipped} blank lines" if report.skipped else ""
        print(f"sent {report.sent} events to {args.topic}{skipped}")
        if report.failed:
            raise BrokerError(f"{report.failed} events were not delivered: {report.first_error}")
        return 0

    parser.set_defaults(run=run, parser=parser)


def _tail(parser: Parser) -> None:
    add_connection(parser)
    parser.add_argument("--topic", required=True, help="topic to read")
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest record, not the newest")
    parser.add_argument("--max", type=positive_int, help="stop after this many records")
    parser.add_argument("--json", action="store_true", help="print each record as one JSON object")
    parser.add_argument("--idle-timeout", type=float, help="stop after this many seconds without a record")
    add_registry(parser)  # to read registry-framed values (Avro, JSON Schema, Protobuf) by their schemas

    def run(args: argparse.Namespace) -> int:
        from stream_clf.tools.tail import tail

        connection = connection_from(args)
        registry = registry_from(args)
        signal.signal(signal.SIGTERM, raise_interrupt)
        with contextlib.suppress(KeyboardInterrupt):
            tail(
                connection,
                args.topic,
                write=lambda line: print(line, flush=True),
                from_beginning=args.from_beginning,
                max_records=args.max,
                as_json=args.json,
                idle_timeout=args.idle_timeout,
                registry=registry,
            )
        return 0

    parser.set_defaults(run=run, parser=parser)


def _demo(parser: Parser) -> None:
    parser.add_argument(
        "--model", type=Path, help="bundle to serve (default: the trained news model, built on first use)"
    )

    def run(args: argparse.Namespace) -> int:
        from stream_clf.tools.demo import run_demo

        return run_demo(args.model)

    parser.set_defaults(run=run, parser=parser)
