"""The seed's synchronous `ModelManager`: the Python API of the original project, kept as it was.

One private event loop thread owns one `AsyncModelManager`; each method runs its coroutine there and
returns what the seed returned (dicts, bools, strings). The gateway itself never uses this class.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from gateway.manager import AsyncModelManager
from shared.generation import GenerateRequest, GenerateResult, Message, params_from_mapping
from shared.model_config import ConfigStore
from shared.settings import Settings, load_settings

T = TypeVar("T")


class ModelManager:
    def __init__(
        self,
        models_dir: str | Path = "models",
        config_path: str | Path | None = None,
        default_model: str | None = None,
        device_map: str = "auto",
        *,
        hosts: list[str] | None = None,
        settings: Settings | None = None,
    ) -> None:
        overrides: dict[str, Any] = {"models_dir": str(models_dir), "device_map": device_map}
        if config_path is not None:
            overrides["config_path"] = str(config_path)
        if default_model is not None:
            overrides["default_model"] = default_model
        if hosts is not None:
            overrides["worker_hosts"] = tuple(hosts)
        self._manager = AsyncModelManager(settings or load_settings(overrides=overrides))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def settings(self) -> Settings:
        return self._manager.settings

    @property
    def config(self) -> ConfigStore:
        return self._manager.config

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:  # started on first use: a manager only constructed costs no thread
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="dukat-manager", daemon=True)
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def download_model(self, model_id: str, revision: str | None = None) -> str:
        """Download `model_id` into models_dir (with a progress bar); returns its folder."""
        from gateway.cli.progress import DownloadBar

        with DownloadBar(model_id) as bar:
            job = self._run(self._manager.download_model(model_id, revision, progress=bar.update))
        return job.path or ""

    def load_model(
        self, model_id: str, quantization: str | None = None, device: str | None = None
    ) -> dict[str, Any]:
        return msgspec.to_builtins(self._run(self._manager.load_model(model_id, quantization, device)))

    def unload_model(self, model_id: str) -> bool:
        self._run(self._manager.unload_model(model_id))
        return True

    def generate(
        self,
        prompt: str,
        model_id: str | None = None,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        **params: Any,
    ) -> tuple[str, dict[str, Any]]:
        given = {"temperature": temperature, "max_new_tokens": max_new_tokens, **params}
        sampling = params_from_mapping(given)
        messages = [Message(role="user", content=prompt)]
        if system_prompt:
            messages.insert(0, Message(role="system", content=system_prompt))
        request = GenerateRequest(messages=messages, params=sampling)
        mid, result = self._run(self._manager.dispatch.generate(model_id, request))
        return result.text, _metadata(mid, result)

    def list_available_models(self) -> list[dict[str, Any]]:
        return msgspec.to_builtins(self._run(self._manager.available_models()))

    def list_loaded_models(self) -> list[dict[str, Any]]:
        return msgspec.to_builtins(self._run(self._manager.loaded_models()))

    def set_default_model(self, model_id: str) -> bool:
        self._run(self._manager.set_default_model(model_id))
        return True

    def close(self) -> None:
        """Stop the local worker host (and with it every model worker it started); twice is fine."""
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._manager.close(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()

    def __enter__(self) -> ModelManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _metadata(model_id: str, result: GenerateResult) -> dict[str, Any]:
    t = result.timings
    return {
        "model": model_id,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "time_to_first_token_s": t.first_token_s,
        "generation_time_s": t.total_s,
        "tokens_per_second": t.tokens_per_s,
    }
