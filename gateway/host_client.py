"""The gateway's client of worker hosts' management API (httpx, JSON decoded into shared/host_api)."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx
import msgspec

from shared.errors import DukatError, WorkerFailedError, error_from_code
from shared.host_api import (
    DeleteCommand,
    Deleted,
    DownloadCommand,
    DownloadJob,
    HostState,
    LoadCommand,
    LoadEstimate,
    LocalModel,
    ModelDetails,
    UnloadCommand,
    WorkerState,
)
from shared.tokens import bearer_header

T = TypeVar("T")


class HostClient:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        load_timeout: float = 900.0,
        state_timeout: float = 2.0,
        token: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.load_timeout = load_timeout
        self.state_timeout = state_timeout  # a host slower than this to say its state counts as down
        # The internal token (DUKAT_INTERNAL_TOKEN) on every call.
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=bearer_header(token))

    async def _call(
        self, method: str, path: str, out: type[T], body: Any = None, timeout: float | None = None
    ) -> T:
        content = msgspec.json.encode(body) if body is not None else None
        headers = {"content-type": "application/json"} if content else None
        extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        try:
            resp = await self._http.request(method, path, content=content, headers=headers, **extra)
        except httpx.HTTPError as exc:
            raise WorkerFailedError(
                f"worker host {self.url} unreachable: {type(exc).__name__}: {exc}"
            ) from None
        if resp.status_code >= 400:
            raise _decode_error(resp)
        return msgspec.json.decode(resp.content, type=out)

    async def state(self) -> HostState:
        return await self._call("GET", "/state", HostState, timeout=self.state_timeout)

    async def estimate(self, cmd: LoadCommand) -> LoadEstimate:
        return await self._call("POST", "/models/estimate", LoadEstimate, cmd)

    async def local_models(self) -> list[LocalModel]:
        return await self._call("GET", "/models/local", list[LocalModel])

    async def load(self, cmd: LoadCommand) -> WorkerState:
        return await self._call("POST", "/models/load", WorkerState, cmd, timeout=self.load_timeout)

    async def unload(self, model_id: str, request_id: str = "") -> None:
        cmd = UnloadCommand(model_id=model_id, request_id=request_id)
        await self._call("POST", "/models/unload", dict, cmd)

    async def details(self, model_id: str) -> ModelDetails:
        return await self._call("GET", f"/models/details?{urlencode({'model_id': model_id})}", ModelDetails)

    async def delete(self, model_id: str) -> Deleted:
        return await self._call("POST", "/models/delete", Deleted, DeleteCommand(model_id=model_id))

    async def start_download(self, cmd: DownloadCommand) -> DownloadJob:
        return await self._call("POST", "/downloads", DownloadJob, cmd)

    async def download(self, job_id: str) -> DownloadJob:
        return await self._call("GET", f"/downloads/{quote(job_id, safe='')}", DownloadJob)

    async def close(self) -> None:
        await self._http.aclose()


def _decode_error(resp: httpx.Response) -> DukatError:
    try:
        detail = msgspec.json.decode(resp.content)["error"]
        return error_from_code(detail.get("code"), detail.get("message", ""), detail.get("param"))
    except (msgspec.DecodeError, KeyError, TypeError):
        return WorkerFailedError(f"worker host answered {resp.status_code}: {resp.text[:200]}")
