"""The ``stream-clf`` command: one entry point, one subcommand per job.

Exit codes: 0 on a clean stop (Ctrl-C and SIGTERM included), 2 on a usage, configuration or
model error (printed as one line), 1 when something outside (the broker, a delivery, an export
check) failed.
"""

import logging
import sys
from collections.abc import Sequence

from stream_clf import __version__
from stream_clf.cli import benchmarks, control, modelling, peers, streaming
from stream_clf.cli.common import Parser
from stream_clf.errors import ConfigError, ModelError, StreamClfError
from stream_clf.kafka.connection import client_logger
from stream_clf.ops.logs import configure_logging

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    parser = Parser(prog="stream-clf", description="Classify text events on Kafka in real time with ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"stream-clf {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    streaming.register(commands)
    control.register(commands)
    modelling.register(commands)
    benchmarks.register(commands)
    peers.register(commands)
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
