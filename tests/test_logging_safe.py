"""Logging calls can never raise (issue 8: ``log.error("mqtt_worker_error", event=...)`` raised
TypeError inside the MQTT worker's error handler and killed the thread)."""

from __future__ import annotations

import json

from edge_inspector.logging import get_logger, setup_logging


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]


def test_event_keyword_is_kept_not_raised(capsys):
    setup_logging("INFO", json_logs=True)
    get_logger("t").error("mqtt_worker_error", event="puback", error="boom")
    (line,) = _lines(capsys)
    assert line["event"] == "mqtt_worker_error" and line["event_field"] == "puback" and line["error"] == "boom"


def test_broken_calls_log_a_failure_line_instead_of_raising(capsys):
    setup_logging("INFO", json_logs=True)
    log = get_logger("t")
    log.info("bad %s %s format", 1)  # positional args that do not fit the format
    log.warning()  # no event at all
    lines = _lines(capsys)
    assert lines[0]["event"] == "logging_call_failed" and lines[0]["logged_event"] == "bad %s %s format"
    assert "not enough arguments" in lines[0]["error"]
    assert lines[1]["event"] == "log_call_without_event"


def test_level_filtering_still_applies(capsys):
    setup_logging("WARNING", json_logs=True)
    get_logger("t").info("hidden", event="x")
    assert _lines(capsys) == []
    setup_logging("INFO", json_logs=True)
