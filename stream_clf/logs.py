"""Structured log lines: ``key=value`` pairs, one event per line, never the event text.

Our own messages are already ``event=... key=value`` pairs; messages from libraries (Faust,
aiokafka, librdkafka) are prose and go into a quoted ``msg=`` field.
"""

import logging
import logging.config
from typing import Any

__all__ = ["KeyValueFormatter", "configure_logging", "logging_config"]


class KeyValueFormatter(logging.Formatter):
    """Formats a record as ``ts=... level=... logger=... event=...`` or ``... msg="..."``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        body = message if message.startswith("event=") else f"msg={_quote(message)}"
        line = f"ts={self.formatTime(record)} level={record.levelname.lower()} logger={record.name} {body}"
        if record.exc_info:
            line += f" exc={_quote(self.formatException(record.exc_info))}"
        return line

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return super().formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def logging_config(level: str) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` document: key=value lines on stderr at ``level``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"kv": {"()": KeyValueFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "kv", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # aiokafka logs every reconnect attempt at ERROR while a broker restarts; keep the noise down.
        "loggers": {"aiokafka": {"level": "WARNING" if level in ("debug", "info") else level.upper()}},
    }


def configure_logging(level: str) -> None:
    """Apply :func:`logging_config` to this process."""
    logging.config.dictConfig(logging_config(level))
