"""`dukat show` and `dukat rm` over HTTP: one model's details, deleting a model's files."""

from __future__ import annotations

import msgspec
from litestar import Request, get, post
from litestar.datastructures import State

from gateway.auth import INFERENCE, is_admin
from gateway.limits import check_model
from gateway.route_docs import JSON_BODY, answers
from gateway.schemas.model_admin import DeletedModel, DeleteRequest, ModelShown


@get(
    "/api/models/{model_id:path}",
    opt=INFERENCE | answers(400, 404, 502),
    summary="One model: type, template, license, size, state",
)
async def show(request: Request, state: State, model_id: str) -> ModelShown:
    mid = model_id.lstrip("/")
    check_model(state.manager, mid)
    shown = await state.manager.admin.show(mid)
    # Where the files lie on a host is for admins only.
    return shown if is_admin(request.scope) else msgspec.structs.replace(shown, path=None)


@post(
    "/api/models/delete",
    status_code=200,
    opt=answers(JSON_BODY, 404, 409, 502),
    summary="Delete a model's files from every host (not loaded)",
)
async def delete(state: State, data: DeleteRequest) -> DeletedModel:
    check_model(state.manager, data.model)
    return await state.manager.admin.delete(data.model)
