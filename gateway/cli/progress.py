"""A terminal progress bar for downloads followed through the management API (rich)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from shared.host_api import DownloadCounts


class DownloadBar:
    def __init__(self, model_id: str, *, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), disable=not enabled, transient=False,
            console=Console(stderr=True),  # stdout stays for the command's result
        )
        self.task = self.progress.add_task(model_id, total=None)

    def update(self, job: DownloadCounts) -> None:
        total = job.total_bytes or None
        self.progress.update(self.task, completed=job.downloaded_bytes, total=total)

    def __enter__(self) -> DownloadBar:
        self.progress.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()
