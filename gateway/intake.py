"""Large request bodies read and checked in a child process, so the gateway's loop only waits.

msgspec's decoder holds the GIL for a whole body (a 5.5 MB Responses input list of 50,000 items takes
~100 ms to decode, and as long again to turn into messages), so a thread does not free the loop: every
other request waits for the GIL. A body of `LARGE_BYTES` (gateway/limits.py) or more is first
decoded in a pool process at a lower CPU priority and checked against the request limits its route
registered (`bounds`); a refusal comes back as the same 400 the route would give, and only a body
within the limits is decoded again here. Building the Structs is what costs (msgpack back from the
child is no faster than the JSON), so what crosses back is the verdict, never the decoded request.
The bytes of large bodies being read at once are bounded (`room`).

A hand-rolled pool would add nothing: `concurrent.futures.ProcessPoolExecutor` starts the process on
first use, queues bodies, and says when its process died (a new pool is then made).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

from gateway.limits import LARGE_BYTES, decode_body
from shared.errors import InvalidRequestError, OverloadedError
from shared.processes import die_with_parent
from shared.settings import Settings

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., object])
# The intake process yields the CPU to the gateway and the model workers on the same machine.
_NICENESS = 10
_BOUNDS: dict[type, Callable[..., object]] = {}
_NOTHING = nullcontext()


def bounds(kind: type) -> Callable[[F], F]:
    """Register `check(settings, request)`: a route's limits on a `kind` body, checked before any work
    (its own route calls it too). Raises the route's DukatError."""

    def register(check: F) -> F:
        _BOUNDS[kind] = check
        return check

    return register


class Intake:
    """The pool that reads large bodies; started on the first one (most gateways never see one)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._held = 0  # bytes of large bodies being read or checked

    def room(self, size: int) -> AbstractContextManager[None]:
        """Count a large body's `size` bytes while it is read and checked; past
        DUKAT_LARGE_BODY_BYTES in all, a 429 before it is read (128 clients sending 9 MB each held
        1.1 GB here while they waited for the intake process). Small bodies count nothing (and cost
        every request no generator)."""
        return _NOTHING if size < LARGE_BYTES else self._held_room(size)

    @contextmanager
    def _held_room(self, size: int) -> Iterator[None]:
        budget = self._settings.large_body_bytes
        if self._held + size > budget:
            raise OverloadedError(
                f"this gateway is already reading {self._held} bytes of large request bodies; the limit "
                f"is {budget} (DUKAT_LARGE_BODY_BYTES): retry later"
            )
        self._held += size
        try:
            yield
        finally:
            self._held -= size

    async def check(self, body: bytes, annotation: Any) -> None:
        """Raise what reading `body` as `annotation` would raise: not JSON, too deep, a bad field, a
        route's limit. Returns when the body is within them all."""
        pool = self._pool or self._start()
        check = _BOUNDS.get(annotation)  # sent by reference: the child imports its route's module
        try:
            failure = await asyncio.wrap_future(pool.submit(read, body, annotation, self._settings, check))
        except BrokenProcessPool:
            self._pool = None  # the next body gets a new process
            log.warning("the intake process died reading a %d-byte body; it is replaced", len(body))
            raise InvalidRequestError("the request body could not be read") from None
        if failure is not None:
            raise failure

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _start(self) -> ProcessPoolExecutor:
        # spawn: a fork of a process with an event loop and threads may copy a held lock
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_prepare_child)
        return self._pool


def _prepare_child() -> None:
    os.nice(_NICENESS)
    die_with_parent()  # a gateway killed with SIGKILL leaves no intake process behind


def read(
    body: bytes, annotation: Any, settings: Settings, check: Callable[[Settings, Any], object] | None
) -> Exception | None:
    """In the intake process: the error reading `body` gives (a DukatError, pickled with its param),
    or None."""
    try:
        decoded = decode_body(body, annotation, settings.max_json_depth, strict_json=True)
        if check is not None:
            check(settings, decoded)
    except Exception as exc:  # any of them is the request's answer, raised in the gateway
        return exc
    return None
