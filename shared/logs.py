"""The one logging setup of Dukat's processes (gateway, worker host, model worker): one format, on
stderr, at DUKAT_LOG_LEVEL."""

from __future__ import annotations

import logging
import re
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# A line of FORMAT as a child process printed it: its parent logs it again under its own timestamp.
_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) (.*)")
# One line per HTTP request they make (hub files, host calls) would drown our own log.
_QUIET = ("httpx", "httpx2")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT, stream=sys.stderr)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def parse_line(line: str) -> tuple[int, str, str] | None:
    """(level, logger name, message) of a child's FORMAT line; None for any other line (a
    traceback's, a library's print), which the parent logs as it is."""
    found = _LINE.fullmatch(line)
    if found is None:
        return None
    return logging.getLevelNamesMapping()[found[1]], found[2], found[3]
