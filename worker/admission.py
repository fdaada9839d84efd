"""The places of one model worker: requests generating or queued, and places held for a request
whose generations (its n choices, its prompts) must be admitted together or not at all.

A refusal is an `overloaded` error whose `Retry-After` comes from the queue: how many requests must
finish before there is room, at the pace requests have been finishing here.
"""

from __future__ import annotations

import math

from shared.errors import InvalidRequestError, OverloadedError

_MAX_RETRY_AFTER_S = 60


class Admission:
    def __init__(self, model_id: str, *, max_pending: int, max_batch: int) -> None:
        self.model_id = model_id
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.pending = 0  # places taken: requests queued or generating
        self.reserved = 0  # places held for admitted groups, not taken yet
        self._mean_s = 1.0  # how long a request takes here (moving average)

    def reserve(self, count: int) -> None:
        """Hold `count` places, or refuse them all."""
        if count > self.max_pending:
            raise InvalidRequestError(
                f"a request of {count} generations is more than model {self.model_id!r} runs at once "
                f"with its queue ({self.max_pending}); ask for fewer choices or prompts",
                param="n",
            )
        self._check(count)
        self.reserved += count

    def take(self, *, reserved: bool) -> None:
        """A request starts: in a place held for it, or in a free one (else it is refused)."""
        if reserved:
            self.reserved -= 1
        else:
            self._check(1)
        self.pending += 1

    def give_back(self, count: int) -> None:
        """Places held and not taken (the group ended early)."""
        self.reserved -= count

    def done(self, seconds: float) -> None:
        self.pending -= 1
        self._mean_s += 0.2 * (seconds - self._mean_s)

    def _check(self, count: int) -> None:
        used = self.pending + self.reserved
        if used + count > self.max_pending:
            raise OverloadedError(
                f"model {self.model_id!r} has {used} requests in flight; retry later",
                retry_after=self.retry_after(used + count - self.max_pending),
            )

    def retry_after(self, must_finish: int) -> int:
        """Seconds until `must_finish` requests have finished, `max_batch` at a time."""
        seconds = math.ceil(must_finish / self.max_batch) * self._mean_s
        return max(1, min(_MAX_RETRY_AFTER_S, math.ceil(seconds)))
