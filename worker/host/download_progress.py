"""A download's progress: reports of its counts as bytes arrive, and, when asked, one visible bar.

huggingface_hub draws a tqdm bar per file (`tqdm_class=`); a silent one of ours feeds the tracker,
which sums the files into one count that never goes backwards (a resumed file restarts its bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from tqdm import tqdm

from shared.host_api import DownloadCounts


class DownloadProgress(DownloadCounts, kw_only=True):
    """One report of a download in progress: its counts, and the file it is at."""

    model_id: str
    current_file: str | None = None
    done: bool = False


ProgressCallback = Callable[[DownloadProgress], None]


class DownloadTracker:
    """Turns huggingface_hub's per-file progress bar updates into DownloadProgress reports and,
    when asked, one visible bar for the whole model."""

    def __init__(
        self, model_id: str, sizes: dict[str, int], callback: ProgressCallback | None, visible: bool
    ) -> None:
        self.model_id, self.sizes, self.callback = model_id, sizes, callback
        self.total = sum(sizes.values())
        self.finished_bytes = 0  # bytes of the files already complete
        self.file_bytes = 0  # bytes of the current file so far
        self.reported = 0
        self.files_done = 0
        self.current: str | None = None
        self.bar = tqdm(total=self.total, unit="B", unit_scale=True, unit_divisor=1024, desc=model_id,
                        disable=not visible)
        self.bar_class = _bar_class(self)

    def start(self, name: str) -> None:
        self.current, self.file_bytes = name, 0
        self.bar.set_postfix_str(name, refresh=False)
        self.report()

    def add(self, n: int) -> None:
        if n:
            self.file_bytes += n
            self.report()

    def finish(self, name: str) -> None:
        # Exact even when the file was already here and no byte came over the network.
        self.finished_bytes += self.sizes[name]
        self.files_done, self.current, self.file_bytes = self.files_done + 1, None, 0
        self.report()

    def report(self, *, done: bool = False) -> None:
        size = self.sizes.get(self.current or "", 0)
        in_file = min(max(self.file_bytes, 0), size) if size else max(self.file_bytes, 0)
        # Monotonic: a resume that restarts a file must not move the count backwards.
        self.reported = max(self.reported, self.finished_bytes + in_file)
        self.total = max(self.total, self.reported)
        self.bar.total = self.total
        self.bar.update(self.reported - self.bar.n)
        if self.callback is not None:
            self.callback(DownloadProgress(
                model_id=self.model_id, downloaded_bytes=self.reported, total_bytes=self.total,
                files_done=self.files_done, files_total=len(self.sizes), current_file=self.current, done=done,
            ))

    def close(self) -> None:
        self.bar.close()


def _bar_class(tracker: DownloadTracker) -> type[tqdm]:
    """A silent tqdm that huggingface_hub creates per file (`tqdm_class=`) and feeds with bytes."""

    class _FileBar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            tracker.add(int(kwargs.get("initial") or 0))

        def update(self, n: float | None = 1) -> bool | None:
            tracker.add(int(n or 0))
            return None

        def update_transfer(self, n: float | None = 1) -> None:
            pass  # network bytes (the same as update() over plain HTTP): counted once, via update()

    return cast(type[tqdm], _FileBar)
