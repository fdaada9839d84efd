"""The places of one model worker: requests generating or queued, and places held for a request
whose generations (its n choices, its prompts) are admitted together or not at all.

A group gets its places at once (all it needs, up to a fair share: one batch of places, so a group
larger than that runs in waves and never locks other requests out) and keeps them until its last
generation has started: a place one of them frees goes to the next of the group, which queues behind
whoever came meanwhile, so one n=128 request slows the others but never shuts them out (it took
every place of the worker: 40 of 40 other requests were 429s while it ran).
A burst is queued, not refused, while the queue can serve it in time: a request is admitted when the
wait its place in the queue implies (the requests ahead of it, `max_batch` at a time, at the pace
requests have been finishing here) stays under `max_wait_s` (the first-token deadline), up to a
count cap (`max_pending`, far above a batch by default). A refusal is an `overloaded` error whose
Retry-After says when there will be room: how many requests must finish first, at that pace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.errors import OverloadedError

_MAX_RETRY_AFTER_S = 60


@dataclass
class Ticket:
    """An admitted group's hold on places."""

    unused: int  # places held and free right now
    left: int  # generations of the group still to start


class Admission:
    def __init__(
        self, model_id: str, *, max_pending: int, max_batch: int, max_wait_s: float = math.inf
    ) -> None:
        self.model_id = model_id
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.pending = 0  # places taken: requests queued or generating
        self.reserved = 0  # places held by tickets, free right now
        self._mean_s = 1.0  # how long a request takes here (moving average)

    def admit(self, count: int) -> Ticket:
        """Places for a group of `count` generations (at most a batch of them), or none
        (OverloadedError)."""
        places = min(count, self.max_batch, self.max_pending)
        self._check(places)
        self.reserved += places
        return Ticket(unused=places, left=count)

    def take(self, ticket: Ticket | None) -> None:
        """A request starts: in a place its group holds, or in a free one (else it is refused)."""
        if ticket is None:
            self._check(1)
        else:
            ticket.unused -= 1
            ticket.left -= 1
            self.reserved -= 1
            if ticket.left == 0:  # its last generation started: what it still holds goes back
                self.give_back(ticket)
        self.pending += 1

    def done(self, seconds: float, ticket: Ticket | None) -> None:
        self.pending -= 1
        self._mean_s += 0.2 * (seconds - self._mean_s)
        if ticket is not None and ticket.left > 0:
            ticket.unused += 1  # the place stays with its group
            self.reserved += 1

    def give_back(self, ticket: Ticket) -> None:
        """The group ended early: the places it holds free go back."""
        self.reserved -= ticket.unused
        ticket.unused = ticket.left = 0

    def _check(self, count: int) -> None:
        used = self.pending + self.reserved
        room = min(self.max_pending, self.in_time())
        if used + count > room:
            wait = f", a wait of about {self.wait_s(used + count):.0f} s" if room < self.max_pending else ""
            raise OverloadedError(
                f"model {self.model_id!r} has {used} requests in flight{wait}; retry later",
                retry_after=self.retry_after(used + count - room),
            )

    def wait_s(self, places: int) -> float:
        """How long the last of `places` requests waits before it starts generating."""
        return math.ceil(max(0, places - self.max_batch) / self.max_batch) * self._mean_s

    def in_time(self) -> int:
        """How many requests can be in flight with the last one still starting within `max_wait_s`."""
        if math.isinf(self.max_wait_s):
            return self.max_pending
        return self.max_batch * (1 + math.floor(self.max_wait_s / max(self._mean_s, 1e-3)))

    def retry_after(self, must_finish: int) -> int:
        """Seconds until `must_finish` requests have finished, `max_batch` at a time."""
        seconds = math.ceil(must_finish / self.max_batch) * self._mean_s
        return max(1, min(_MAX_RETRY_AFTER_S, math.ceil(seconds)))
