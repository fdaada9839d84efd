"""The OpenAPI document comes from the routes and schemas themselves: a handler's decorator declares
its errors and stream chunks, a Struct refines its own schema; gateway/openapi.py keeps no list."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, get, post
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.handlers import HTTPRouteHandler
from msgspec import Struct

from gateway.app import ROUTES, create_app
from gateway.openapi import publish_truthful_openapi
from gateway.route_docs import JSON_BODY, REACHES_A_MODEL, answers
from gateway.sse import EventStream
from shared.model_ids import MODEL_ID_PATTERN
from shared.settings import Settings


class Inner(Struct, kw_only=True):
    word: str

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        schema["properties"]["word"]["maxLength"] = settings.max_prompt_chars


class Outer(Struct, kw_only=True):
    inner: list[Inner]


class Tick(Struct, kw_only=True):
    n: int


@post("/made-up", status_code=200, opt=answers(JSON_BODY, 409, chunks=Tick))
async def made_up(data: Outer) -> Outer | EventStream:
    return data


@get("/made-up/{model_id:path}", opt=answers(404))
async def made_up_model(model_id: str) -> Outer:
    return Outer(inner=[])


def _document(*handlers: Any, settings: Settings) -> dict[str, Any]:
    app = Litestar(route_handlers=list(handlers))
    publish_truthful_openapi(app, settings)
    return app.plugins.get(OpenAPIPlugin).provide_openapi_schema()


def test_a_route_is_documented_with_the_errors_and_chunks_its_decorator_declares() -> None:
    document = _document(made_up, made_up_model, settings=Settings())
    post_answers = document["paths"]["/made-up"]["post"]["responses"]
    assert sorted(post_answers, key=int) == ["200", "400", "409", "413", "415", "500"]
    stream = post_answers["200"]["content"]["text/event-stream"]["schema"]["properties"]["data"]
    chunk = stream["anyOf"][1]["contentSchema"]["anyOf"][0]
    assert chunk == {"$ref": "#/components/schemas/Tick"}
    get_answers = document["paths"]["/made-up/{model_id}"]["get"]["responses"]
    assert sorted(get_answers, key=int) == ["200", "404", "500"]


def test_a_struct_refines_its_own_schema_wherever_it_is_reached() -> None:
    document = _document(made_up, settings=Settings(max_prompt_chars=321))
    assert document["components"]["schemas"]["Inner"]["properties"]["word"]["maxLength"] == 321


def test_a_model_id_path_parameter_is_documented_as_a_model_id() -> None:
    document = _document(made_up_model, settings=Settings(max_model_id_length=99))
    (parameter,) = document["paths"]["/made-up/{model_id}"]["get"]["parameters"]
    assert parameter["schema"] == {"type": "string", "pattern": MODEL_ID_PATTERN, "maxLength": 99}


def test_every_documented_gateway_route_declares_its_errors() -> None:
    documented = [h for h in ROUTES if isinstance(h, HTTPRouteHandler) and h.include_in_schema]
    assert documented
    assert [h.paths for h in documented if "errors" not in h.opt] == []


def test_inference_routes_answer_what_reaching_a_model_can() -> None:
    document = create_app(Settings()).plugins.get(OpenAPIPlugin).provide_openapi_schema()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"):
        statuses = {int(s) for s in document["paths"][path]["post"]["responses"]}
        assert statuses == {200, 500, *JSON_BODY, *REACHES_A_MODEL}, path
