"""Log lines: our key=value events and library prose, as key=value text or as JSON."""

import logging

import orjson

from stream_clf.ops.logs import JsonFormatter, KeyValueFormatter


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("stream_clf.worker.startup", logging.WARNING, __file__, 1, message, args, None)


def test_json_lines_carry_our_fields_and_library_prose():
    ours = orjson.loads(JsonFormatter().format(_record("event=batch_failed size=%d error=%r", 3, "bad: x y")))
    assert {key: ours[key] for key in ("level", "logger", "event", "size", "error")} == {
        "level": "warning",
        "logger": "stream_clf.worker.startup",
        "event": "batch_failed",
        "size": "3",
        "error": "bad: x y",
    }
    prose = orjson.loads(JsonFormatter().format(_record("Group Coordinator Request failed")))
    assert prose["msg"] == "Group Coordinator Request failed"
    assert "event" not in prose


def test_key_value_lines_quote_library_prose():
    line = KeyValueFormatter().format(_record('broker said "no"\nthen left'))
    assert line.endswith('level=warning logger=stream_clf.worker.startup msg="broker said \\"no\\"\\nthen left"')
