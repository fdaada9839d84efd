"""The JSON log formatter: fields, `extra=` fields, tracebacks, a child's line passed through."""

from __future__ import annotations

import json
import logging
import sys

from shared.logs import CHILD_RECORD, JsonFormatter, json_record
from shared.processes import child_line


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "gateway.access", "levelname": "INFO", "levelno": 20, "msg": msg})
    rec.__dict__.update(extra)
    return rec


def test_a_record_is_one_json_line_with_its_extra_fields() -> None:
    line = JsonFormatter("gateway").format(record("GET /x 200", request_id="r1", status=200, key=None))
    assert "\n" not in line
    out = json.loads(line)
    assert out["process"] == "gateway" and out["message"] == "GET /x 200" and out["level"] == "INFO"
    assert (out["request_id"], out["status"], out["key"]) == ("r1", 200, None)
    assert out["time"].endswith("Z") and "T" in out["time"]


def test_a_traceback_stays_inside_the_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    line = JsonFormatter("model_worker").format(rec)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_a_childs_json_line_passes_through_as_its_own_object() -> None:
    child = {"time": "t", "level": "WARNING", "logger": "worker.model", "process": "model_worker", "pid": 7,
             "message": "slow"}  # fmt: skip
    level, text, parsed = child_line(json.dumps(child))
    assert (level, text, parsed) == (logging.WARNING, "slow", child)
    line = JsonFormatter("worker_host").format(record("[m] slow", **{CHILD_RECORD: parsed}))
    assert json.loads(line) == child
    assert child_line("Traceback (most recent call last):")[2] is None
    assert json_record("{not json") is None and json_record("[1]") is None
