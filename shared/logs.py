"""The one logging setup of Dukat's processes (gateway, worker host, model worker): on stderr, at
DUKAT_LOG_LEVEL, as text or (DUKAT_LOG_FORMAT=json) one JSON object a line."""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, Literal

import msgspec

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LogFormat = Literal["text", "json"]
# A line of FORMAT as a child process printed it: its parent logs it again under its own timestamp.
_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) (.*)")
# One line per HTTP request they make (hub files, host calls) would drown our own log.
_QUIET = ("httpx", "httpx2")
# `extra=` key of a child process's JSON record that a parent logs on its behalf: the JSON line is
# the child's own object (flat, with the child's process and pid), not one wrapped in the parent's.
CHILD_RECORD = "child_record"
# What every LogRecord has; anything else on a record came from `extra=` and goes into the JSON.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line for log collectors (Loki, Cloud Logging, Elasticsearch): time (UTC,
    RFC 3339), level, logger, the process's role and pid, the message, the fields a call passed as
    `extra=` (request_id, model, key, status, timings) and a traceback when there is one."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process
        self._encoder = msgspec.json.Encoder(enc_hook=str)

    def format(self, record: logging.LogRecord) -> str:
        child = getattr(record, CHILD_RECORD, None)
        if child is not None:
            return self._encoder.encode(child).decode()
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": self.process,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name != CHILD_RECORD and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return self._encoder.encode(out).decode()


def setup_logging(level: str, log_format: LogFormat = "text", process: str = "") -> None:
    """`process` names the process in JSON lines: gateway, worker_host, model_worker."""
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter(process))
        logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    else:
        logging.basicConfig(level=level.upper(), format=FORMAT, stream=sys.stderr)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def json_record(line: str) -> dict[str, Any] | None:
    """`line` as the JSON object a JsonFormatter wrote (a child process's stderr), else None."""
    if not line.startswith("{"):
        return None
    try:
        found = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None
    return found if isinstance(found, dict) else None


def parse_line(line: str) -> tuple[int, str, str] | None:
    """(level, logger name, message) of a child's FORMAT line; None for any other line (a
    traceback's, a library's print), which the parent logs as it is."""
    found = _LINE.fullmatch(line)
    if found is None:
        return None
    return logging.getLevelNamesMapping()[found[1]], found[2], found[3]
