"""Human log lines cannot be forged by values from outside (found by an outside probe:
an ops command's ``client`` with a newline wrote a log line of its own)."""

from __future__ import annotations

import json
import logging
import sys

from gateway.logs import HumanFormatter, JsonFormatter


def record(*args: object) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": "command %s from %s: ok", "args": args,
                                  "levelname": "INFO", "name": "iotgw.mqtt.ops"})


def test_control_characters_are_escaped_in_human_lines() -> None:
    line = HumanFormatter().format(record("write", "evil\nFAKE ERROR\r\x1b[2J\tend"))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "evil\\x0aFAKE ERROR\\x0d\\x1b[2J\tend: ok" in line


def test_unicode_line_separators_are_escaped_too() -> None:
    line = HumanFormatter().format(record("write", "evil\u2028FAKE4\x85FAKE5\u2029x"))
    assert len(line.splitlines()) == 1, line
    assert "evil\\u2028FAKE4\\x85FAKE5\\u2029x" in line


def test_tracebacks_keep_their_lines() -> None:
    rec = record("write", "ops")
    try:
        raise ValueError("boom")
    except ValueError:
        rec.exc_info = sys.exc_info()
    text = HumanFormatter().format(rec)
    assert text.splitlines()[0].endswith("command write from ops: ok")
    assert "ValueError: boom" in text.splitlines()[-1]


def test_json_lines_stay_one_line() -> None:
    line = JsonFormatter().format(record("write", "evil\nFAKE"))
    assert "\n" not in line and json.loads(line)["msg"] == "command write from evil\nFAKE: ok"
