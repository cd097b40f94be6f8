"""The ``stream-clf`` command: one entry point, one subcommand per job.

Exit codes: 0 on a clean stop (Ctrl-C and SIGTERM included), 2 on a usage, configuration or
model error (printed as one line), 1 when something outside (the broker, a delivery) failed.
"""

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from stream_clf import __version__
from stream_clf.errors import BrokerError, ConfigError, ModelError, StreamClfError
from stream_clf.logs import configure_logging
from stream_clf.settings import BROKERS_OPTION, WORKER_OPTIONS, Option, WorkerSettings
from stream_clf.topics import client_logger

__all__ = ["build_parser", "main"]

_WORKER_DESCRIPTION = (
    "Consume text events, classify them in micro-batches with an ONNX model bundle, and publish one"
    " result (or one dead letter) per event. Every flag also reads the environment variable shown."
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``stream-clf worker: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_option(parser: argparse.ArgumentParser, option: Option) -> None:
    parser.add_argument(
        option.flag,
        dest=option.field,
        metavar=option.metavar,
        default=None,
        help=f"{option.help} (default: {option.describe_default()}; env {option.env})",
    )


def _raise_interrupt(*_: object) -> NoReturn:
    raise KeyboardInterrupt


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "stream-clf"


def _cmd_worker(args: argparse.Namespace) -> int:
    from stream_clf.worker import run_worker

    settings = WorkerSettings.resolve(vars(args))
    run_worker(settings)
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    from stream_clf.broker import KAFKA_VERSION, LocalKafka

    kafka = LocalKafka(
        data_dir=args.data_dir,
        port=args.port,
        controller_port=args.controller_port or args.port + 1,
        heap=args.heap,
    )
    if args.fresh:
        kafka.wipe()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        kafka.start(quiet=False)
        version = "from KAFKA_HOME" if "KAFKA_HOME" in os.environ else KAFKA_VERSION
        print(f"Kafka {version} (KRaft) ready at {kafka.bootstrap}", flush=True)
        print(f"  data: {kafka.data_dir}\n  log:  {kafka.log_file}\n  Ctrl-C or SIGTERM stops it", flush=True)
        code = kafka.wait()
    except KeyboardInterrupt:
        print("stopping Kafka...", flush=True)
        kafka.stop()
        return 0
    raise BrokerError(f"the broker exited on its own with code {code}; see {kafka.log_file}")


def _cmd_produce(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from stream_clf.produce import produce_lines

    brokers = BROKERS_OPTION.resolve(args.brokers, os.environ)
    reading_stdin = args.file == "-"
    stream = sys.stdin.buffer if reading_stdin else open(args.file, "rb")  # noqa: SIM115 (closed below)
    size = None if reading_stdin else os.fstat(stream.fileno()).st_size
    columns = (TextColumn(f"producing to {args.topic}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    show = size is not None and size >= 1 << 20 and sys.stderr.isatty()
    with stream, Progress(*columns, disable=not show, transient=True) as progress:
        task = progress.add_task("lines", total=size)
        report = produce_lines(
            brokers,
            args.topic,
            stream,
            key_field=args.key_field,
            raw=args.raw,
            on_line=lambda n: progress.advance(task, n),
        )
    print(
        f"sent {report.sent} events to {args.topic}"
        + (f", skipped {report.skipped} blank lines" if report.skipped else "")
    )
    if report.failed:
        raise BrokerError(f"{report.failed} events were not delivered: {report.first_error}")
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    from stream_clf.tail import tail

    brokers = BROKERS_OPTION.resolve(args.brokers, os.environ)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        tail(
            brokers,
            args.topic,
            write=lambda line: print(line, flush=True),
            from_beginning=args.from_beginning,
            max_records=args.max,
            as_json=args.json,
            idle_timeout=args.idle_timeout,
        )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from stream_clf.demo import run_demo

    return run_demo()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stream-clf", description="Classify text events on Kafka in real time with ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"stream-clf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    worker = commands.add_parser("worker", help="run the classifying agent", description=_WORKER_DESCRIPTION)
    for option in WORKER_OPTIONS:
        _add_option(worker, option)
    worker.set_defaults(run=_cmd_worker, parser=worker)

    broker = commands.add_parser("broker", help="run a local Apache Kafka broker (KRaft, no Docker)")
    broker.add_argument("--port", type=_positive_int, default=9092, help="client port on 127.0.0.1 (default: 9092)")
    broker.add_argument("--controller-port", type=_positive_int, help="KRaft controller port (default: port + 1)")
    broker.add_argument(
        "--data-dir", type=Path, default=_data_home() / "broker", help="kept across restarts (default: %(default)s)"
    )
    broker.add_argument("--fresh", action="store_true", help="wipe the data directory first: no topics, no offsets")
    broker.add_argument("--heap", default="512m", help="JVM heap size (default: 512m)")
    broker.set_defaults(run=_cmd_broker, parser=broker)

    produce = commands.add_parser("produce", help="send lines of a file or stdin as events")
    _add_option(produce, BROKERS_OPTION)
    produce.add_argument("--topic", required=True, help="topic to write to")
    produce.add_argument("file", nargs="?", default="-", help="file of lines, or - for stdin (default: -)")
    produce.add_argument("--key-field", help="set the Kafka key from this field of each JSON line")
    produce.add_argument("--raw", action="store_true", help="send each line's bytes unchanged (test bad input)")
    produce.set_defaults(run=_cmd_produce, parser=produce)

    tail = commands.add_parser("tail", help="print the records of a topic as they arrive")
    _add_option(tail, BROKERS_OPTION)
    tail.add_argument("--topic", required=True, help="topic to read")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest record, not the newest")
    tail.add_argument("--max", type=_positive_int, help="stop after this many records")
    tail.add_argument("--json", action="store_true", help="print each record as one JSON object")
    tail.add_argument("--idle-timeout", type=float, help="stop after this many seconds without a record")
    tail.set_defaults(run=_cmd_tail, parser=tail)

    demo = commands.add_parser("demo", help="start a local broker and a worker, classify sample texts, stop")
    demo.set_defaults(run=_cmd_demo, parser=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command != "worker":  # the worker sets up logging with Faust
        configure_logging("warning")
        client_logger.setLevel(logging.ERROR)  # librdkafka's retry notices are not the user's concern
    try:
        return args.run(args)
    except (ConfigError, ModelError) as error:
        print(f"stream-clf {args.command}: error: {error}", file=sys.stderr)
        return 2
    except StreamClfError as error:
        print(f"stream-clf {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
