"""Structured log lines, one event per line, never the event text: ``key=value`` pairs or JSON.

Our own messages are already ``event=... key=value`` pairs; messages from libraries (Faust,
aiokafka, librdkafka) are prose and go into a ``msg`` field.
"""

import logging
import logging.config
import shlex
from typing import Any

import orjson

__all__ = ["LOG_FORMATS", "JsonFormatter", "KeyValueFormatter", "configure_logging", "logging_config"]

LOG_FORMATS = ("kv", "json")


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


class JsonFormatter(KeyValueFormatter):
    """Formats a record as one JSON object: ts, level, logger, then our key=value fields, or msg."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {"ts": self.formatTime(record), "level": record.levelname.lower()}
        document["logger"] = record.name
        document |= _fields(record.getMessage())
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(document).decode()


def _fields(message: str) -> dict[str, str]:
    """``event=x key=value ...`` as a dict (values may be quoted); anything else as ``msg``."""
    if message.startswith("event="):
        try:
            pairs = [token.split("=", 1) for token in shlex.split(message)]
        except ValueError:  # unbalanced quotes in a value
            pairs = []
        if pairs and all(len(pair) == 2 for pair in pairs):
            return dict(pairs)
    return {"msg": message}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def logging_config(level: str, log_format: str = "kv") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` document: lines in ``log_format`` on stderr at ``level``."""
    formatter = JsonFormatter if log_format == "json" else KeyValueFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structured": {"()": formatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "structured", "stream": "ext://sys.stderr"}
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # aiokafka logs every reconnect attempt at ERROR while a broker restarts, and the registry client's
        # HTTP library every request at INFO; keep the noise down.
        "loggers": {
            name: {"level": "WARNING" if level in ("debug", "info") else level.upper()}
            for name in ("aiokafka", "httpx", "httpx2")
        },
    }


def configure_logging(level: str, log_format: str = "kv") -> None:
    """Apply :func:`logging_config` to this process."""
    logging.config.dictConfig(logging_config(level, log_format))
