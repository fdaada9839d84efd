"""The OpenAPI document (`/docs/openapi.json`) as the server behaves.

litestar's generated document drifts from the server: it documents errors as its own
`{status_code, detail, extra}`, drops lower bounds of 0, knows nothing of SSE or of the keys. Here
the request and response schemas come from msgspec (the decoder the server runs, so bounds and
`additionalProperties: false` are the enforced ones), each route lists the error statuses it can
answer with OpenAI's error body, streams are documented as `text/event-stream`, the limits from
the settings become `maximum`/`maxItems`/`maxLength`, and `securitySchemes` appear when keys are on.

Nothing here is about one route or one schema: a handler declares its errors and stream chunks in its
decorator (gateway/route_docs.py), and a Struct refines its own schema (gateway/schemas/json_schema.py).
"""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.handlers import HTTPRouteHandler

from gateway.auth import route_access
from gateway.off_loop import EncodedJson
from gateway.route_docs import chunks_of, error_body_of, errors_of
from gateway.schemas.json_schema import REF, model_id_schema
from gateway.sse import EventStream
from shared.errors import ErrorBody
from shared.settings import Settings

_ERROR = {"$ref": REF.format(name="ErrorBody")}
_REASONS = {
    400: "Invalid request (the message and `param` say which field and why)",
    401: "Missing or wrong API key",
    403: "The key's role may not call this route, or the policy refuses (pull allowlist, gated model)",
    404: "Unknown model, route or job",
    409: "The model is already loaded differently",
    413: "Request body too large",
    415: "The body is not sent as application/json",
    429: "The model worker's queue can't start the request in time or is full (Retry-After)",
    500: "A bug (logged with its traceback)",
    502: "A worker process or the hub failed",
    503: "The model failed to load, is not loaded, or no host has room (Retry-After); not ready",
    504: "Timed out",
    507: "Not enough free space for the model",
}
# A 429 when the keys file sets per-key limits: on any keyed route, besides a model's queue.
_KEY_LIMIT = "The key's own limit is reached (Retry-After)"
_QUEUE_OR_KEY_LIMIT = (
    "The model worker's queue can't start the request in time or is full, or the key's own limit is"
    " reached (Retry-After)"
)


def _sse(chunk: dict[str, Any], error: dict[str, Any] = _ERROR, done: bool = True) -> dict[str, Any]:
    """An event stream whose every event (OpenAPI 3.1: `schema` is one event) has a `data` line:
    a JSON chunk, an error body (a failure after the first chunk), or `[DONE]` last (when `done`)."""
    json_data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [chunk, error]},
    }
    data = {"anyOf": [{"const": "[DONE]"}, json_data]} if done else json_data
    return {
        "schema": {"type": "object", "required": ["data"], "properties": {"data": data}},
        "description": "With `stream: true`: Server-Sent Events, `data: <chunk>`"
        + (" then `data: [DONE]`." if done else " (named by `event:`), no `[DONE]`."),
    }


def publish_truthful_openapi(app: Litestar, settings: Settings) -> None:
    """Rewrite the document litestar built (it is cached and served as is)."""
    document = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    documented = {(m, path) for path, item in document["paths"].items() for m in item}
    handlers = {key: h for key, h in _handlers(app).items() if key in documented}
    wanted: list[Any] = [ErrorBody]
    for found in handlers.values():
        declared = (chunks_of(found.opt), error_body_of(found.opt))
        wanted += [t for t in (_body_type(found), _json_type(found), *declared) if t is not None]
    schemas, components = msgspec.json.schema_components(wanted, ref_template=REF)
    by_type = {id(t): s for t, s in zip(wanted, schemas, strict=True)}
    document.setdefault("components", {})["schemas"] = components
    keys_on = bool(settings.api_keys or settings.admin_keys or settings.keys_file)
    limited = settings.keys_file is not None  # only the keys file sets per-key limits
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if (method, path) in handlers:
                _rewrite(operation, handlers[(method, path)], path, by_type, keys_on, limited)
                _model_id_parameter(operation, settings)
    if keys_on:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    _refine(components, wanted, settings)


def _handlers(app: Litestar) -> dict[tuple[str, str], HTTPRouteHandler]:
    found = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if isinstance(handler, HTTPRouteHandler) and handler.include_in_schema:
                for method in handler.http_methods:
                    found[(method.lower(), _openapi_path(route.path))] = handler
    return found


def _openapi_path(path: str) -> str:
    # litestar's `{model_id:path}` is OpenAPI's `{model_id}`.
    parts = [p.split(":")[0] + "}" if p.startswith("{") else p for p in path.split("/")]
    return "/".join(parts)


def _body_type(handler: HTTPRouteHandler) -> Any:
    data = handler.parsed_fn_signature.parameters.get("data")
    return data.annotation if data is not None else None


def _json_type(handler: HTTPRouteHandler) -> Any:
    """The JSON success type: the return annotation without its event stream and encoded alternatives."""
    annotation = handler.parsed_fn_signature.return_type.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        kept = [a for a in get_args(annotation) if a not in (EventStream, EncodedJson)]
        return kept[0] if len(kept) == 1 else Union[tuple(kept)]  # noqa: UP007
    return None if annotation is EventStream else annotation


def _streams(handler: HTTPRouteHandler) -> bool:
    return EventStream in get_args(handler.parsed_fn_signature.return_type.annotation)


def _rewrite(
    operation: dict[str, Any],
    handler: HTTPRouteHandler,
    path: str,
    by_type: dict[int, Any],
    keys_on: bool,
    limited: bool = False,
) -> None:
    body = _body_type(handler)
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": by_type[id(body)]}},
        }
    success = str(handler.status_code)
    content: dict[str, Any] = {"application/json": {"schema": by_type[id(_json_type(handler))]}}
    own_body = error_body_of(handler.opt)  # not OpenAI's (Anthropic's Messages API)
    error = by_type[id(own_body)] if own_body is not None else _ERROR
    if _streams(handler):
        content["text/event-stream"] = _sse(by_type[id(chunks_of(handler.opt))], error, done=own_body is None)
    description = operation.get("responses", {}).get(success, {}).get("description", "OK")
    responses: dict[str, Any] = {success: {"description": description, "content": content}}
    access = route_access(handler, path)
    declared = set(errors_of(handler.opt))
    statuses = declared | {500}
    reasons = dict(_REASONS)
    if keys_on and access != "open":
        statuses.add(401)
        if access == "admin":
            statuses.add(403)
        if limited:  # the key's own limits, besides a model's queue where the route reaches one
            statuses.add(429)
            reasons[429] = _QUEUE_OR_KEY_LIMIT if 429 in declared else _KEY_LIMIT
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": reasons[status],
            "content": {"application/json": {"schema": error}},
        }
    operation["responses"] = responses
    if access == "open":
        operation["security"] = []


def _model_id_parameter(operation: dict[str, Any], settings: Settings) -> None:
    """A `model_id` path parameter is a model id, whichever route takes it."""
    for parameter in operation.get("parameters", []):
        if parameter["name"] == "model_id" and parameter["in"] == "path":
            parameter["schema"] = model_id_schema(settings)


def _refine(components: dict[str, Any], wanted: list[Any], settings: Settings) -> None:
    """Let each Struct in the document refine its own schema (gateway/schemas/json_schema.py)."""
    for cls in _structs(wanted):
        refine = getattr(cls, "refine_json_schema", None)
        if refine is not None and cls.__name__ in components:
            refine(components[cls.__name__], settings)


def _structs(wanted: list[Any]) -> list[type]:
    """Every Struct class the types in `wanted` reach, each once."""
    found: dict[type, None] = {}

    def walk(info: Any) -> None:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in found:
                return
            found[info.cls] = None
            info = [field.type for field in info.fields]
        elif isinstance(info, msgspec.inspect.Type):
            info = [getattr(info, name) for name in info.__struct_fields__]
        if isinstance(info, list | tuple):
            for item in info:
                walk(item)

    walk(msgspec.inspect.multi_type_info(wanted))
    return list(found)
