"""Downloads as background jobs on the worker host, whose progress a client can follow.

One job per model at a time: asking again for a model being downloaded returns the running job.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

from shared.errors import DukatError, NotFoundError
from shared.host_api import DownloadCounts, DownloadJob
from worker.host.download_progress import DownloadProgress
from worker.host.downloads import download_model

log = logging.getLogger(__name__)


class DownloadJobs:
    def __init__(self, models_dir: Path, *, keep: int = 100, max_bytes: int | None = None) -> None:
        self.models_dir = models_dir
        self.max_bytes = max_bytes
        self.keep = keep
        self._jobs: dict[str, DownloadJob] = {}
        self._done: dict[str, asyncio.Future[Path]] = {}

    def list(self) -> list[DownloadJob]:
        return list(self._jobs.values())

    def get(self, job_id: str) -> DownloadJob:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFoundError(f"no download job {job_id!r}", param="job_id") from None

    def start(self, model_id: str, revision: str | None = None, file: str | None = None) -> DownloadJob:
        for job in self._jobs.values():
            same = job.model_id == model_id and job.revision == revision and job.file == file
            if same and job.status in ("queued", "running"):
                return job
        job = DownloadJob(
            id=f"dl-{uuid.uuid4().hex[:12]}", model_id=model_id, revision=revision, file=file,
            status="queued", started_at=time.time(),
        )
        self._jobs[job.id] = job
        done = asyncio.ensure_future(self._run(job))
        # The error is kept on the job; a download nobody waits on must not warn.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._done[job.id] = done
        self._forget_old()
        return job

    async def wait(self, job_id: str) -> Path:
        """The downloaded folder; raises the job's typed error if it failed."""
        return await asyncio.shield(self._done[job_id])

    async def _run(self, job: DownloadJob) -> Path:
        loop = asyncio.get_running_loop()

        def on_progress(p: DownloadProgress) -> None:
            loop.call_soon_threadsafe(self._update, job, p)

        job.status = "running"
        try:
            path = await asyncio.to_thread(
                download_model, job.model_id, self.models_dir, revision=job.revision, file=job.file,
                progress=on_progress, max_bytes=self.max_bytes,
            )
        except DukatError as exc:
            job.status, job.error, job.error_code = "failed", exc.message, exc.code
            raise
        except Exception as exc:
            log.exception("download of %s failed", job.model_id)
            job.status, job.error, job.error_code = "failed", f"{type(exc).__name__}: {exc}", "internal_error"
            raise
        finally:
            job.finished_at = time.time()
        job.status, job.path = "done", str(path)
        log.info(
            "pulled model=%s bytes=%d seconds=%.1f path=%s",
            job.model_id, job.downloaded_bytes, job.finished_at - job.started_at, path,
        )
        return path

    @staticmethod
    def _update(job: DownloadJob, p: DownloadProgress) -> None:
        for name in DownloadCounts.__struct_fields__:  # the counts are one record, shared by both
            setattr(job, name, getattr(p, name))

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.status in ("done", "failed")]
        for job in sorted(finished, key=lambda j: j.started_at)[: max(0, len(self._jobs) - self.keep)]:
            self._jobs.pop(job.id, None)
            self._done.pop(job.id, None)
