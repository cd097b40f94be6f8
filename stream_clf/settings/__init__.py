"""Settings: each declared once (flag, environment variable, type, default, check, help), grouped by concern.

:mod:`~stream_clf.settings.option` is how a setting is declared, :mod:`~stream_clf.settings.parsers`
how its text is checked, :mod:`~stream_clf.settings.worker` the worker's groups, and
:mod:`~stream_clf.settings.reference` the configuration reference made from them.
"""

from stream_clf.settings.option import Option, options, resolve_group, setting
from stream_clf.settings.parsers import usable_cores
from stream_clf.settings.worker import GROUPS, WORKER_OPTIONS, ConnectionSettings, WorkerSettings

__all__ = [
    "GROUPS",
    "WORKER_OPTIONS",
    "ConnectionSettings",
    "Option",
    "WorkerSettings",
    "options",
    "resolve_group",
    "setting",
    "usable_cores",
]
