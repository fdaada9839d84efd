"""The gateway's client of worker hosts' management API (httpx, JSON decoded into shared/host_api)."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import msgspec

from shared import host_api as api
from shared.bearer_tokens import bearer_header
from shared.errors import DukatError, WorkerFailedError, error_from_code

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
        self, endpoint: api.Endpoint, out: type[T], body: Any = None, *, path: str = "", **extra: Any
    ) -> T:
        """`endpoint` called (at `path` when its parameters are filled in), its JSON decoded as `out`."""
        method, path = endpoint.method, path or endpoint.path
        content = msgspec.json.encode(body) if body is not None else None
        headers = {"content-type": "application/json"} if content else None
        try:
            resp = await self._http.request(method, path, content=content, headers=headers, **extra)
        except httpx.TimeoutException as exc:  # it is there, but busy (or still starting): the cause says so
            waited = extra.get("timeout", self._http.timeout.read)
            raise WorkerFailedError(
                f"worker host {self.url} did not answer within {waited:g} s (busy or still starting)"
            ) from exc
        except httpx.HTTPError as exc:
            raise WorkerFailedError(
                f"worker host {self.url} unreachable: {type(exc).__name__}: {exc}"
            ) from None
        if resp.status_code >= 400:
            raise _decode_error(resp)
        return msgspec.json.decode(resp.content, type=out)

    async def state(self) -> api.HostState:
        return await self._call(api.STATE, api.HostState, timeout=self.state_timeout)

    async def estimate(self, cmd: api.LoadCommand) -> api.LoadEstimate:
        return await self._call(api.ESTIMATE, api.LoadEstimate, cmd)

    async def local_models(self) -> list[api.LocalModel]:
        return await self._call(api.LOCAL_MODELS, list[api.LocalModel])

    async def load(self, cmd: api.LoadCommand) -> api.WorkerState:
        return await self._call(api.LOAD, api.WorkerState, cmd, timeout=self.load_timeout)

    async def unload(self, model_id: str, request_id: str = "") -> api.Unloaded:
        cmd = api.UnloadCommand(model_id=model_id, request_id=request_id)
        return await self._call(api.UNLOAD, api.Unloaded, cmd)

    async def details(self, model_id: str) -> api.ModelDetails:
        query = urlencode({"model_id": model_id})
        return await self._call(api.DETAILS, api.ModelDetails, path=f"{api.DETAILS.path}?{query}")

    async def delete(self, model_id: str) -> api.Deleted:
        return await self._call(api.DELETE, api.Deleted, api.DeleteCommand(model_id=model_id))

    async def start_download(self, cmd: api.DownloadCommand) -> api.DownloadJob:
        return await self._call(api.START_DOWNLOAD, api.DownloadJob, cmd)

    async def download(self, job_id: str) -> api.DownloadJob:
        return await self._call(api.DOWNLOAD, api.DownloadJob, path=api.DOWNLOAD.at(job_id=job_id))

    async def close(self) -> None:
        await self._http.aclose()


def _decode_error(resp: httpx.Response) -> DukatError:
    try:
        detail = msgspec.json.decode(resp.content)["error"]
        return error_from_code(detail.get("code"), detail.get("message", ""), detail.get("param"))
    except (msgspec.DecodeError, KeyError, TypeError):
        return WorkerFailedError(f"worker host answered {resp.status_code}: {resp.text[:200]}")
