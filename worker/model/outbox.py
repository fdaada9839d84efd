"""Frames made on the scheduler's thread, handed to the model worker's event loop once per step."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Outbox:
    """Frames made on the scheduler's thread, handed to the event loop once per scheduler step:
    one callback for all the step's requests, one write per connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._frames: dict[asyncio.StreamWriter, list[bytes]] = {}
        self._done: list[tuple[asyncio.Future[BaseException | None], BaseException | None]] = []

    def add(self, writer: asyncio.StreamWriter, frame: bytes) -> None:
        with self._lock:
            if (frames := self._frames.get(writer)) is None:
                self._frames[writer] = [frame]
            else:
                frames.append(frame)

    def resolve(self, future: asyncio.Future[BaseException | None], value: BaseException | None) -> None:
        """Once this step's frames are written, `future` gets `value`."""
        with self._lock:
            self._done.append((future, value))

    def flush(self) -> None:
        with self._lock:
            frames, done = self._frames, self._done
            if not frames and not done:
                return
            self._frames, self._done = {}, []
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to read them
            self.loop.call_soon_threadsafe(_deliver, frames, done)


def _deliver(
    frames: dict[asyncio.StreamWriter, list[bytes]],
    done: list[tuple[asyncio.Future[BaseException | None], BaseException | None]],
) -> None:
    for writer, parts in frames.items():
        if not writer.is_closing():
            writer.write(parts[0] if len(parts) == 1 else b"".join(parts))
    for future, value in done:
        if not future.done():
            future.set_result(value)
