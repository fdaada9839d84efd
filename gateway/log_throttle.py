"""One warning line per reason and period: a server answering 503s while a model loads (or while
overloaded) would otherwise write the same line hundreds of times and bury a real fault."""

from __future__ import annotations

import logging
import time


class WarningThrottle:
    """Owns when each reason was last logged and how many repeats were held back since."""

    def __init__(self, period_s: float = 30.0) -> None:
        self.period_s = period_s
        self._reasons: dict[str, tuple[float, int]] = {}  # reason -> (logged at, held back since)

    def warn(self, logger: logging.Logger, reason: str, line: str) -> None:
        """Log `line` at WARNING unless `reason` was logged within the period (then count it)."""
        now = time.monotonic()
        last = self._reasons.get(reason)
        if last is not None and now - last[0] < self.period_s:
            self._reasons[reason] = (last[0], last[1] + 1)
            return
        held = last[1] if last is not None else 0
        self._reasons[reason] = (now, 0)
        more = f" ({held} more like it in the last {self.period_s:.0f} s)" if held else ""
        logger.warning("%s%s", line, more)
