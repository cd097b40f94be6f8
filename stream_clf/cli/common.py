"""What every subcommand shares: the one-line-error parser, env-aware options, progress bars."""

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from stream_clf.errors import ConfigError, StreamClfError
from stream_clf.settings import Option

__all__ = [
    "Parser",
    "add_option",
    "needs_extra",
    "positive_int",
    "progress_bars",
    "raise_interrupt",
    "read_texts",
]


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
        help=f"{option.help} (default: {option.describe_default()}; env {option.env})",
    )


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
