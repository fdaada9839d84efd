"""What the manager decides about one model for `dukat show`/`rm` and for the listings: its details
(config file + its folder on a host + its worker), deleting its files from every host that holds
them, the quantization every listing shows, and the 404 that says how to get a model."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.schemas.model_admin import DeletedModel, ModelShown
from shared.errors import ConflictError, ModelNotFoundError, UnsupportedModelTypeError
from shared.host_api import RUNNING_STATUSES, ModelDetails, WorkerState
from shared.model_config import ModelEntry
from shared.model_types import default_quantization, get_model_type
from shared.settings import Settings

if TYPE_CHECKING:
    from gateway.hosts import HostDirectory
    from shared.model_config import ConfigStore


def not_here(model_id: str, known: Iterable[str] = ()) -> ModelNotFoundError:
    """A model neither in the config file nor in any host's models_dir: say how to get it, and which
    of the `known` ids it may mean (Ollama's `gemma3:270m` for `google/gemma-3-270m`)."""
    close = close_ids(model_id, known)
    meant = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ModelNotFoundError(
        f"The model {model_id!r} is not here; pull it first: dukat pull {model_id} "
        f"(or POST /api/models/pull){meant}",
        param="model",
    )


def close_ids(model_id: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The `known` ids closest to `model_id`, compared by their names' letters and digits only (no
    org, no punctuation: `gemma3:270m` and `google/gemma-3-270m` are both `gemma3270m`)."""
    by_name: dict[str, list[str]] = {}
    for known_id in sorted(set(known)):
        by_name.setdefault(_bare(known_id), []).append(known_id)
    matches = difflib.get_close_matches(_bare(model_id), list(by_name), n=n, cutoff=0.75)
    return [known_id for name in matches for known_id in by_name[name]][:n]


def _bare(model_id: str) -> str:
    return re.sub(r"[^a-z0-9]", "", model_id.lower().rsplit("/", 1)[-1])


def shown_quantization(
    entry: ModelEntry | None, worker: WorkerState | None, model_type: str | None, settings: Settings
) -> str:
    """One answer for `list`, `ps` and `show`: what the worker runs, else what a load would use."""
    if worker is not None:
        return worker.quantization
    if entry is not None and entry.quantization:
        return entry.quantization
    try:
        return default_quantization(get_model_type(model_type or ""), settings.default_quantization)
    except UnsupportedModelTypeError:
        return settings.default_quantization


class ModelAdmin:
    """`dukat show` and `rm` across the hosts: reads the config file and the hosts' model folders;
    deletes files only of a model no worker runs, and never loads or unloads one."""

    def __init__(self, settings: Settings, hosts: HostDirectory, config: ConfigStore) -> None:
        self.settings = settings
        self.hosts = hosts
        self.config = config

    async def _details(self, model_id: str) -> ModelDetails | None:
        for host in await self.hosts.states():
            try:
                return await self.hosts.client(host.url).details(model_id)
            except ModelNotFoundError:
                continue
        return None

    async def show(self, model_id: str) -> ModelShown:
        config = self.config.read()
        entry = config.models.get(model_id)
        details = await self._details(model_id)
        if details is None and entry is None:
            raise not_here(model_id)
        found = await self.hosts.find(model_id)
        worker = found[1] if found else None
        files: dict[str, Any] = msgspec.structs.asdict(details) if details else {"model_id": model_id}
        model_type = (entry.model_type if entry else None) or files.get("model_type")
        return ModelShown(
            **{**files, "model_type": model_type},
            description=entry.description if entry else "",
            quantization=shown_quantization(entry, worker, model_type, self.settings),
            default_parameters=dict(entry.default_parameters) if entry else {},
            downloaded=details is not None,
            state=worker.status if worker else "available",
            device=worker.device if worker else None,
            default=model_id == config.default_or(self.settings.default_model),
        )

    async def delete(self, model_id: str) -> DeletedModel:
        config = self.config.read()
        if model_id == config.default_or(self.settings.default_model):
            raise ConflictError(
                f"model {model_id!r} is the default model; set another first: dukat default OTHER",
                param="model",
            )
        found = await self.hosts.find(model_id, fresh=True)
        if found is not None and found[1].status in RUNNING_STATUSES:
            raise ConflictError(
                f"model {model_id!r} is {found[1].status}; unload it first: dukat stop {model_id}",
                param="model",
            )
        freed, deleted = 0, False
        for host in await self.hosts.states(fresh=True):
            try:
                freed += (await self.hosts.client(host.url).delete(model_id)).freed_bytes
                deleted = True
            except ModelNotFoundError:
                continue
        if not deleted and model_id not in config.models:
            raise not_here(model_id)
        self.config.remove_entry(model_id)
        return DeletedModel(id=model_id, freed_bytes=freed)
