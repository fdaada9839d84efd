"""`dukat show` and `dukat rm` on the gateway: one model's details (config file + its folder on a
host + its worker) and deleting its files from every host that holds them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from shared.errors import ConflictError, ModelNotFoundError
from shared.host_api import ModelDetails

if TYPE_CHECKING:
    from gateway.manager import ModelManager


def _not_here(model_id: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"The model {model_id!r} is not here; pull it first: dukat pull {model_id} "
        "(or POST /api/models/pull)",
        param="model",
    )


async def _details(manager: ModelManager, model_id: str) -> ModelDetails | None:
    for host in await manager.host_states():
        try:
            return await manager._host(host.url).details(model_id)
        except ModelNotFoundError:
            continue
    return None


async def show_model(manager: ModelManager, model_id: str) -> dict[str, Any]:
    config = manager.config.read()
    entry = config.models.get(model_id)
    details = await _details(manager, model_id)
    if details is None and entry is None:
        raise _not_here(model_id)
    found = await manager._find(model_id)
    worker = found[1] if found else None
    shown: dict[str, Any] = msgspec.to_builtins(details) if details else {}
    shown.pop("model_id", None)
    return {
        "id": model_id,
        "description": entry.description if entry else "",
        **shown,
        "model_type": (entry.model_type if entry else None) or shown.get("model_type"),
        "quantization": manager.shown_quantization(model_id, entry, worker),
        "default_parameters": dict(entry.default_parameters) if entry else {},
        "downloaded": details is not None,
        "state": worker.status if worker else "available",
        "device": worker.device if worker else None,
        "default": model_id == (config.default_model or manager.settings.default_model),
    }


async def delete_model(manager: ModelManager, model_id: str) -> dict[str, Any]:
    found = await manager._find(model_id, fresh=True)
    if found is not None and found[1].status in ("loading", "loaded", "stopping"):
        raise ConflictError(
            f"model {model_id!r} is {found[1].status}; unload it first: dukat stop {model_id}", param="model"
        )
    config = manager.config.read()
    if model_id == (config.default_model or manager.settings.default_model):
        raise ConflictError(
            f"model {model_id!r} is the default model; set another first: dukat default OTHER", param="model"
        )
    freed, deleted = 0, False
    for host in await manager.host_states(fresh=True):
        try:
            freed += (await manager._host(host.url).delete(model_id)).freed_bytes
            deleted = True
        except ModelNotFoundError:
            continue
    if not deleted and model_id not in config.models:
        raise _not_here(model_id)
    manager.config.remove_entry(model_id)
    return {"id": model_id, "deleted": True, "freed_bytes": freed}
