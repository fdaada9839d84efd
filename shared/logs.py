"""The one logging setup of Dukat's processes (gateway, worker host, model worker): one format, on
stderr, at DUKAT_LOG_LEVEL."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# One line per HTTP request they make (hub files, host calls) would drown our own log.
_QUIET = ("httpx", "httpx2")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT, stream=sys.stderr)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
