"""Subcommands that change what a running group serves, or relabel history: swap, replay."""

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from stream_clf.cli.common import (
    Parser,
    add_connection,
    add_option,
    connection_from,
    options_from,
    positive_int,
    progress_bars,
    whole_number,
)
from stream_clf.errors import ConfigError, ModelError
from stream_clf.settings import WORKER_OPTIONS, Option, options, resolve_group, usable_cores
from stream_clf.settings.worker import Events

if TYPE_CHECKING:
    from stream_clf.kafka.control_records import MalformedRecordError, WorkerStatus

__all__ = ["register"]

_OPTIONS = {option.field: option for option in WORKER_OPTIONS}


def register(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    _swap(
        commands.add_parser(
            "swap",
            help="switch a running group of workers to another model, without a restart",
            description="Ask every worker of a consumer group, over the control topic, to serve another model"
            " bundle from its next micro-batch on; wait for each worker's answer (applied, or refused with the"
            " reason: the old model keeps serving). Exit 0 when every running worker applied it, 1 otherwise.",
        )
    )
    _replay(
        commands.add_parser(
            "replay",
            help="relabel a range of a topic's history with a model, apart from the live group",
            description="Classify the records of --input in [--from, --to) with --model and publish the results"
            " to --output (dead letters to --dlq), in a consumer of its own: the live group is untouched. Exits 0"
            " once every partition reached its bound.",
        )
    )


def _resolve(args: argparse.Namespace, name: str) -> object:
    option: Option = _OPTIONS[name]
    return option.resolve(getattr(args, name), os.environ)


def _swap(parser: Parser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="the bundle to serve (a path the workers can read, or a built model's name)")
    which.add_argument("--rollback", action="store_true", help="swap back to the model the last swap replaced")
    parser.add_argument(
        "--expect-version",
        metavar="HASH",
        help="the model_version the workers must find (default: computed from --model, when it is a bundle here)",
    )
    parser.add_argument("--topic", help="swap the model of this routed topic (default: the default model)")
    add_option(parser, _OPTIONS["group"])
    add_option(parser, _OPTIONS["control_topic"])
    add_option(parser, _OPTIONS["status_topic"])
    parser.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for the workers' answers; 0: do not (default: 60)"
    )
    add_connection(parser)

    def run(args: argparse.Namespace) -> int:
        from stream_clf.kafka.control import ask_swap

        if args.wait < 0:
            raise ConfigError(f"--wait {args.wait:g}: expected seconds >= 0")
        if args.rollback and args.expect_version:
            raise ConfigError("--expect-version goes with --model; a rollback expects what the last swap replaced")
        model, expect = args.model, args.expect_version
        if model is not None:
            model, expect = _versioned(model, expect)
        group = _resolve(args, "group")
        control = _resolve(args, "control_topic")
        status = _resolve(args, "status_topic") or f"{control}.status"
        swap = ask_swap(
            connection_from(args),
            (control, status),
            group,
            target=args.topic or "*",
            model=model,
            expect=expect,
            wait=args.wait,
            skipped=_warn_skipped,
        )
        target = f"topic {args.topic}" if args.topic else "the default model"
        print(f"swap {swap.request.request[:8]}: group {group}, {target} -> {swap.request.model}")
        if not swap.answers:
            print(f"no worker of group {group} is running; workers apply the swap when they start")
            return 0
        for worker, status in sorted(swap.answers.items()):
            print(f"  worker {worker}: {_answer(status, args.topic or '*', args.wait)}")
        applied = all(status is not None and status.outcome == "applied" for status in swap.answers.values())
        return 0 if applied else 1

    parser.set_defaults(run=run, parser=parser)


def _versioned(model: str, expect: str | None) -> tuple[str, str | None]:
    """The model as the request names it, and the version it must have: computed from the bundle when
    it is one here (a path, or a built model's name), else ``expect`` as given."""
    from stream_clf.model.bundle import load_bundle
    from stream_clf.model.catalog import resolve_model

    local = Path(model).expanduser()
    if local.exists():
        # The workers may run elsewhere: no relative path. Links are kept: each worker resolves them
        # itself, against its model roots.
        model = os.path.abspath(local)
    try:
        bundle = resolve_model(local)
    except ModelError:  # a built model's name that is not built here: the workers may have it
        bundle = None
    if bundle is None or not bundle.is_dir():
        if expect is None:
            raise ConfigError(
                f"--model {model}: not a bundle here, so its version cannot be computed; pass --expect-version"
                " HASH (its model_version, as `stream-clf models list` or a result shows it)"
            )
        return model, expect
    version = load_bundle(bundle).version
    if expect is not None and expect != version:
        raise ConfigError(f"--expect-version {expect}: the bundle {model} here is version {version}")
    return model, version


def _warn_skipped(topic: str, offset: int, error: "MalformedRecordError") -> None:
    print(f"stream-clf swap: warning: skipped a malformed record of {topic}, offset {offset}: {error}", file=sys.stderr)


def _answer(status: "WorkerStatus | None", target: str, wait: float) -> str:
    if status is None:
        return f"no answer within {wait:g}s"
    if not status.follows:
        return "does not follow swaps (started with --swaps off)"
    seconds = f" ({status.seconds:.2f} s)" if status.seconds is not None else ""
    if status.outcome == "applied":
        return f"applied, now serving {status.serving.get(target, {}).get('version', '?')}{seconds}"
    return f"{status.outcome}: {status.reason}{seconds}"


def _replay(parser: Parser) -> None:
    def bound(text: str) -> object:
        from stream_clf.tools.replay import parse_bound

        try:
            return parse_bound(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parser.add_argument("--input", required=True, help="topic to relabel")
    parser.add_argument("--output", required=True, help="topic for the results")
    parser.add_argument("--dlq", help="topic for dead letters (default: OUTPUT.dlq)")
    parser.add_argument("--model", required=True, type=Path, help="bundle or built model to label with")
    parser.add_argument(
        "--from", dest="start", required=True, type=bound, help="first record: OFFSET, TIME (ISO 8601) or earliest"
    )
    parser.add_argument(
        "--to", dest="end", type=bound, help="first record not read: OFFSET, TIME or latest (default: the end now)"
    )
    parser.add_argument("--max-batch", type=positive_int, default=64, help="events per micro-batch (default: 64)")
    parser.add_argument("--threads", type=positive_int, default=usable_cores(), help="(default: usable cores)")
    parser.add_argument("--top-k", type=whole_number(0), default=0, help="add the k most probable labels (default: 0)")
    add_option(parser, _OPTIONS["truncation"])
    for option in options(Events):  # events read, and results written, as the worker's are
        add_option(parser, option)
    add_connection(parser)

    def run(args: argparse.Namespace) -> int:
        from stream_clf.model.classifier import Classifier
        from stream_clf.model.windows import Windowing
        from stream_clf.tools.replay import ReplayOptions, run_replay
        from stream_clf.worker.models import ModelLoader
        from stream_clf.worker.wire_formats import event_decoder, result_format

        if args.output == args.input:
            raise ConfigError(f"--output {args.output!r} is the --input: a replay would read its own results")
        truncation = _resolve(args, "truncation")
        model = ModelLoader(
            lambda bundle: Classifier(bundle, threads=args.threads, lanes=args.threads, windowing=Windowing(truncation))
        )(str(args.model))
        events = resolve_group(Events, vars(args), os.environ)
        options = options_from(
            ReplayOptions,
            args,
            connection=connection_from(args),
            dlq=args.dlq or f"{args.output}.dlq",
            decoder=event_decoder(events),
            written=result_format(events, {"result": args.output}),
        )
        with progress_bars() as progress:
            task = progress.add_task(f"replaying {args.input} with {model.name}", total=None)
            report = run_replay(options, model, lambda done, total: progress.update(task, completed=done, total=total))
        ranges = ", ".join(f"{p}: {first}-{end}" for p, (first, end) in sorted(report.ranges.items()))
        print(
            f"replayed {report.events} events of {args.input} [{args.start}, {args.end or 'end'}) with {model.name}"
            f" ({model.version}) in {report.seconds:.1f}s: {report.results} results to {args.output},"
            f" {report.dead_letters} dead letters to {options.dlq}; offsets {ranges or 'none'}"
        )
        return 0

    parser.set_defaults(run=run, parser=parser)
