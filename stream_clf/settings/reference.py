"""The configuration reference, made from the settings' declarations: one table per group.

``python -m stream_clf.settings.reference docs/configuration.md`` rewrites the part of the page
between the two markers; with ``--check`` it changes nothing and exits 1 when the page differs from
what the declarations make (CI runs it so), naming the command that brings it up to date.
"""

import argparse
import sys
from pathlib import Path

from stream_clf.settings.option import options
from stream_clf.settings.worker import GROUPS

__all__ = ["BEGIN", "END", "reference", "with_reference"]

BEGIN = "<!-- settings reference: made by `python -m stream_clf.settings.reference docs/configuration.md` -->"
END = "<!-- end of settings reference -->"


def reference() -> str:
    """Markdown: for each group of settings a heading, what the group is for, and a table of its settings."""
    parts = []
    for group in GROUPS:
        rows = [
            f"| `{option.flag}` | `{option.env}` | {option.describe_default()} | {option.help} |"
            for option in options(group)
        ]
        parts.append(
            "\n".join(
                [
                    f"### {group.GROUP.capitalize()}",
                    "",
                    " ".join((group.__doc__ or "").split()),
                    "",
                    "| Flag | Environment variable | Default | Meaning |",
                    "|---|---|---|---|",
                    *rows,
                ]
            )
        )
    return "\n\n".join(parts)


def with_reference(page: str) -> str:
    """``page`` with the part between its markers replaced by :func:`reference`."""
    head, begin, rest = page.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the page has no {BEGIN!r} ... {END!r} markers")
    return f"{head}{BEGIN}\n{reference()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_clf.settings.reference", description=__doc__)
    parser.add_argument("page", type=Path, help="the Markdown page holding the markers")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the page is out of date")
    args = parser.parse_args(argv)
    try:
        page = args.page.read_text(encoding="utf-8")
        made = with_reference(page)
    except (OSError, ValueError) as error:
        print(f"{parser.prog}: error: {args.page}: {error}", file=sys.stderr)
        return 2
    if args.check:
        if made != page:
            print(f"{args.page} is not what the settings declare: run {parser.prog} {args.page}", file=sys.stderr)
            return 1
        return 0
    args.page.write_text(made, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
