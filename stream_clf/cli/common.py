"""What every subcommand shares: the one-line-error parser, env-aware options, progress bars."""

import argparse
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from stream_clf.errors import ConfigError, StreamClfError
from stream_clf.formats.registry import RegistryAccess
from stream_clf.kafka.connection import Connection
from stream_clf.settings import ConnectionSettings, Option, options, resolve_group
from stream_clf.settings.worker import Events

__all__ = [
    "Parser",
    "add_connection",
    "add_data_columns",
    "add_labelled_data",
    "add_option",
    "add_registry",
    "connection_from",
    "needs_extra",
    "options_from",
    "parse_label_map",
    "positive_int",
    "progress_bars",
    "raise_interrupt",
    "read_texts",
    "registry_from",
]


T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``stream-clf worker: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_option(parser: argparse.ArgumentParser, option: Option) -> None:
    """A flag for ``option`` whose help names its default and its environment variable."""
    parser.add_argument(
        option.flag,
        dest=option.field,
        metavar=option.metavar,
        default=None,
        action="append" if option.repeatable else "store",
        help=f"{option.help} (default: {option.describe_default()}; env {option.env})",
    )


def add_connection(parser: argparse.ArgumentParser) -> None:
    """The flags of how to reach Kafka (brokers and security), as the worker has them."""
    for option in options(ConnectionSettings):
        add_option(parser, option)


def connection_from(args: argparse.Namespace) -> Connection:
    """The connection the flags of :func:`add_connection` (or their environment variables) describe."""
    return ConnectionSettings.resolve(vars(args))


def add_registry(parser: argparse.ArgumentParser) -> None:
    """The flags of how to reach the Schema Registry (URL, basic auth, TLS), as the worker has them."""
    for option in options(Events):
        if option.field.startswith("schema_registry"):
            add_option(parser, option)


def registry_from(args: argparse.Namespace) -> RegistryAccess | None:
    """The Schema Registry the flags of :func:`add_registry` (or their environment variables) name."""
    return resolve_group(Events, vars(args), os.environ).registry


def options_from(options: type[T], args: argparse.Namespace, **given: object) -> T:
    """A command's options dataclass from its parsed flags: each field of the same name as a flag,
    then ``given`` (the fields whose value is not a flag's as it was typed)."""
    flags = {name: value for name, value in vars(args).items() if name not in given}
    return options(**{f.name: flags[f.name] for f in dataclasses.fields(options) if f.name in flags}, **given)


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


positive_int = whole_number(1)


def raise_interrupt(*_: object) -> NoReturn:
    """A SIGTERM handler that stops the command the way Ctrl-C does."""
    raise KeyboardInterrupt


def progress_bars() -> Progress:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    return Progress(*columns)


def tracker(progress: Progress) -> Callable[[str, int | None], Callable[[int], None]]:
    """A ``track(description, total)`` callback that adds a bar to ``progress`` and returns its advance."""

    def track(description: str, total: int | None) -> Callable[[int], None]:
        task = progress.add_task(description, total=total or 1)
        return lambda n: progress.advance(task, n)

    return track


def needs_extra(error: ImportError, extra: str) -> StreamClfError:
    """The error for a command whose optional dependencies are not installed."""
    return StreamClfError(f"this command needs {error.name}: pip install 'stream-clf[{extra}]'")


def read_texts(path: Path) -> list[str]:
    """Non-blank lines of a text file."""
    try:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror}") from None
    if not texts:
        raise ConfigError(f"{path}: no texts in it")
    return texts


def add_data_columns(parser: argparse.ArgumentParser) -> None:
    """``--text-column`` and ``--label-column``: where a labelled file's texts and labels are."""
    parser.add_argument(
        "--text-column",
        action="append",
        metavar="COLUMN",
        help="the text's column; repeat to join several with a space, e.g. title and description (default: text)",
    )
    parser.add_argument("--label-column", default="label", help="(default: label)")


def add_labelled_data(parser: argparse.ArgumentParser) -> None:
    """``--data`` (required), its columns and ``--label-map``: a labelled file to score a model on."""
    parser.add_argument("--data", type=Path, required=True, help="CSV, TSV or JSONL file with text and label")
    add_data_columns(parser)
    parser.add_argument(
        "--label-map", type=parse_label_map, help="rename the file's labels to the model's: FROM=TO[,...]"
    )


def parse_label_map(text: str) -> dict[str, str]:
    """An argparse type: ``FROM=TO[,FROM=TO...]``, the file's labels renamed to the model's."""
    mapping = {}
    for part in (p for p in text.split(",") if p.strip()):
        source, sep, target = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected FROM=TO[,FROM=TO...], got {text!r}")
        mapping[source.strip()] = target.strip()
    return mapping
