"""One setting, declared once: a dataclass field whose metadata says how it is read and what it means.

A settings group is a frozen dataclass whose fields are made with :func:`setting`; the field's name
gives the flag (``--max-batch``) and the environment variable (``STREAM_CLF_MAX_BATCH``), its
annotation the type, its default the default. :func:`options` reads a group's declarations back as
:class:`Option` objects, from which the CLI's flags, the settings object and the configuration
reference are all made. A flag wins over the environment, which wins over the default.
"""

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from stream_clf.errors import ConfigError

__all__ = ["Flags", "Option", "options", "read_values", "require", "resolve_group", "setting"]

# Parsed flags: a field name and the flag's text (a list of texts when repeatable), or None when not given.
Flags = Mapping[str, str | list[str] | None]
G = TypeVar("G")


@dataclass(frozen=True)
class _Declaration:
    parse: Callable[[str], Any]
    help: str
    metavar: str
    shown_default: str | None
    required: bool
    secret: bool
    repeatable: bool


def setting(
    parse: Callable[[str], Any],
    default: Any,
    help: str,
    metavar: str = "VALUE",
    shown_default: str | None = None,
    *,
    required: bool = False,
    secret: bool = False,
    repeatable: bool = False,
) -> Any:
    """A settings field: ``parse`` turns the flag's or variable's text into the value or raises
    ``ValueError`` with a readable reason; ``shown_default`` is how help and the reference name a default
    that is computed (the host name, the usable cores); ``secret`` values are never echoed in an error;
    a ``repeatable`` flag may be given several times (its variable joins the values with ``os.pathsep``)."""
    declaration = _Declaration(parse, help, metavar, shown_default, required, secret, repeatable)
    metadata = {"setting": declaration}
    if isinstance(default, dict):  # a mutable default is copied for each settings object
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata, repr=not secret)
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


@dataclass(frozen=True)
class Option:
    """One setting as the CLI and the reference see it: where it comes from, how it is parsed, what it means."""

    field: str
    group: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str = "VALUE"
    shown_default: str | None = None
    required: bool = False
    secret: bool = False
    repeatable: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return "STREAM_CLF_" + self.field.upper()

    def describe_default(self) -> str:
        if self.required:
            return "required"
        if self.shown_default is not None:
            return self.shown_default
        if isinstance(self.default, tuple):
            return ",".join(self.default)
        return str(self.default)

    def resolve(self, flag_value: str | list[str] | None, environ: Mapping[str, str]) -> Any:
        """The value from the flag (each of its values, if repeatable), else the environment, else the default."""
        if isinstance(flag_value, list):
            flag_value = os.pathsep.join(flag_value)
        if flag_value is not None:
            source, text = self.flag, flag_value
        elif self.env in environ:
            source, text = self.env, environ[self.env]
        else:
            return self.default
        try:
            return self.parse(text)
        except ValueError as error:
            shown = "'***'" if self.secret else repr(text)
            raise ConfigError(f"{source}={shown}: {error}") from None


def options(group: type) -> tuple[Option, ...]:
    """The settings ``group`` declares, in declaration order; its ``GROUP`` names the concern."""
    found = []
    for field in dataclasses.fields(group):
        declaration = field.metadata.get("setting")
        if declaration is None:
            continue
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        found.append(
            Option(
                field.name,
                group.GROUP,
                declaration.parse,
                default,
                declaration.help,
                declaration.metavar,
                declaration.shown_default,
                declaration.required,
                declaration.secret,
                declaration.repeatable,
            )
        )
    return tuple(found)


def read_values(group: type, flags: Flags, environ: Mapping[str, str]) -> dict[str, Any]:
    """Each of ``group``'s settings from ``flags``, else ``environ``, else its default (each checked)."""
    return {option.field: option.resolve(flags.get(option.field), environ) for option in options(group)}


def require(group: type, values: Mapping[str, Any]) -> None:
    """Stop with one line if a required setting of ``group`` was given nowhere."""
    for option in options(group):
        if option.required and values[option.field] is None:
            raise ConfigError(f"{option.flag} is required: pass {option.flag} {option.metavar} or set {option.env}")


def resolve_group(group: type[G], flags: Flags, environ: Mapping[str, str]) -> G:
    """``group`` with each of its settings from ``flags``, else ``environ``, else its default."""
    values = read_values(group, flags, environ)
    require(group, values)
    return group(**values)
