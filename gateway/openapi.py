"""The OpenAPI document (`/docs/openapi.json`) as the server behaves.

litestar's generated document drifts from the server: it documents errors as its own
`{status_code, detail, extra}`, drops lower bounds of 0, knows nothing of SSE or of the keys. Here
the request and response schemas come from msgspec (the decoder the server runs, so bounds and
`additionalProperties: false` are the enforced ones), each route lists the error statuses it can
answer with OpenAI's error body, streams are documented as `text/event-stream`, the limits from
the settings become `maximum`/`maxItems`/`maxLength`, and `securitySchemes` appear when keys are on.
"""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.handlers import HTTPRouteHandler

from gateway.anthropic_errors import AnthropicErrorBody
from gateway.auth import route_access
from gateway.schemas import ChatCompletionChunk, CompletionResponse
from gateway.schemas.common import INT64_MAX
from gateway.schemas.message_events import MessageEvent
from gateway.schemas.response_events import ResponseEvent
from gateway.sse import EventStream
from shared.errors import ErrorBody
from shared.model_ids import HUB_ID_PATTERN, MODEL_ID_PATTERN
from shared.settings import Settings

REF = "#/components/schemas/{name}"
_ERROR = {"$ref": REF.format(name="ErrorBody")}
_REASONS = {
    400: "Invalid request (the message and `param` say which field and why)",
    401: "Missing or wrong API key",
    403: "The key's role may not call this route, or the policy refuses (pull allowlist, gated model)",
    404: "Unknown model, route or job",
    409: "The model is already loaded differently",
    413: "Request body too large",
    415: "The body is not sent as application/json",
    429: "The model worker's queue can't start the request in time or is full, or the key's own limit is"
    " reached (Retry-After)",
    500: "A bug (logged with its traceback)",
    502: "A worker process or the hub failed",
    503: "The model failed to load, is not loaded, or no host has room (Retry-After); not ready",
    504: "Timed out",
    507: "Not enough free space for the model",
}
_REACHES_A_MODEL = (404, 429, 502, 503, 504)
# What each route can answer besides its success (keys add 401, admin routes 403).
ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/chat/completions"): (400, 413, 415, *_REACHES_A_MODEL),
    ("post", "/v1/completions"): (400, 413, 415, *_REACHES_A_MODEL),
    ("post", "/v1/embeddings"): (400, 413, 415, *_REACHES_A_MODEL),
    ("post", "/v1/responses"): (400, 413, 415, *_REACHES_A_MODEL),
    ("post", "/v1/messages"): (400, 413, 415, *_REACHES_A_MODEL),
    ("post", "/v1/messages/count_tokens"): (400, 413, 415, *_REACHES_A_MODEL),
    ("post", "/v1/rerank"): (400, 413, 415, *_REACHES_A_MODEL),
    ("post", "/v2/rerank"): (400, 413, 415, *_REACHES_A_MODEL),
    ("post", "/v1/score"): (400, 413, 415, *_REACHES_A_MODEL),
    ("post", "/tokenize"): (400, 413, 415, *_REACHES_A_MODEL),
    ("post", "/detokenize"): (400, 413, 415, *_REACHES_A_MODEL),
    ("get", "/v1/models"): (),
    ("get", "/v1/models/{model_id}"): (404,),
    ("get", "/api/models"): (),
    ("get", "/api/ps"): (),
    ("get", "/api/hosts"): (),
    ("post", "/api/models/pull"): (400, 403, 413, 415, 502, 503),
    ("get", "/api/downloads/{job_id}"): (400, 404, 502),
    ("post", "/api/models/load"): (400, 403, 404, 409, 413, 415, 502, 503, 504, 507),
    ("post", "/api/models/unload"): (400, 404, 413, 415, 502),
    ("post", "/api/models/default"): (400, 404, 413, 415),
    ("get", "/health"): (),
    ("get", "/api/models/{model_id}"): (400, 404, 502),
    ("post", "/api/models/delete"): (400, 404, 409, 413, 415, 502),
    ("get", "/health/live"): (),
    ("get", "/health/ready"): (503,),
    ("get", "/api/usage"): (),
}
# The chunks of a stream, per route (an event's `data`).
_CHUNKS: dict[tuple[str, str], Any] = {
    ("post", "/v1/chat/completions"): ChatCompletionChunk,
    ("post", "/v1/completions"): CompletionResponse,
    ("post", "/v1/responses"): ResponseEvent,
    ("post", "/v1/messages"): MessageEvent,
}
# Routes whose errors are not OpenAI's body (Anthropic's Messages API answers in its own shape).
_ERROR_BODIES: dict[tuple[str, str], Any] = {
    ("post", "/v1/messages"): AnthropicErrorBody,
    ("post", "/v1/messages/count_tokens"): AnthropicErrorBody,
}


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
        wanted += [t for t in (_body_type(found), _json_type(found)) if t is not None]
    wanted += [*_CHUNKS.values(), *_ERROR_BODIES.values()]
    schemas, components = msgspec.json.schema_components(wanted, ref_template=REF)
    by_type = {id(t): s for t, s in zip(wanted, schemas, strict=True)}
    document.setdefault("components", {})["schemas"] = components
    keys_on = bool(settings.api_keys or settings.admin_keys or settings.keys_file)
    limited = settings.keys_file is not None  # only the keys file sets per-key limits
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if (method, path) in handlers:
                _rewrite(operation, handlers[(method, path)], (method, path), by_type, keys_on, limited)
    if keys_on:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    _apply_limits(components, settings)
    _apply_refusals(components)
    _model_id_path_parameter(document, settings)


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
    """The JSON success type: the return annotation without its event stream alternative."""
    annotation = handler.parsed_fn_signature.return_type.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        kept = [a for a in get_args(annotation) if a is not EventStream]
        return kept[0] if len(kept) == 1 else Union[tuple(kept)]  # noqa: UP007
    return None if annotation is EventStream else annotation


def _streams(handler: HTTPRouteHandler) -> bool:
    return EventStream in get_args(handler.parsed_fn_signature.return_type.annotation)


def _rewrite(
    operation: dict[str, Any],
    handler: HTTPRouteHandler,
    key: tuple[str, str],
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
    error = by_type[id(_ERROR_BODIES[key])] if key in _ERROR_BODIES else _ERROR
    if _streams(handler):
        content["text/event-stream"] = _sse(by_type[id(_CHUNKS[key])], error, done=key not in _ERROR_BODIES)
    description = operation.get("responses", {}).get(success, {}).get("description", "OK")
    responses: dict[str, Any] = {success: {"description": description, "content": content}}
    access = route_access(handler, key[1])
    statuses = set(ERRORS.get(key, (400, 404))) | {500}
    if keys_on and access != "open":
        statuses.add(401)
        if access == "admin":
            statuses.add(403)
        if limited:
            statuses.add(429)  # the key's own limits
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": _REASONS[status],
            "content": {"application/json": {"schema": error}},
        }
    operation["responses"] = responses
    if access == "open":
        operation["security"] = []


def _apply_limits(components: dict[str, Any], settings: Settings) -> None:
    """The settings' limits as schema bounds, where one field carries them."""
    n_max = min(128, settings.max_generations)
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        _bound(components, name, "n", "integer", maximum=n_max)
    _bound(components, "CompletionRequest", "best_of", "integer", maximum=n_max)
    text = {"type": "string", "maxLength": settings.max_prompt_chars}
    prompts = {"type": "array", "minItems": 1, "maxItems": settings.max_generations, "items": text}
    token = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
    ids = {"type": "array", "minItems": 1, "maxItems": settings.max_prompt_chars, "items": token}
    if "CompletionRequest" in components:
        # Texts or token ids (one list, or a list of lists), never mixed; no empty list.
        many_ids = {"type": "array", "minItems": 1, "maxItems": settings.max_generations, "items": ids}
        components["CompletionRequest"]["properties"]["prompt"] = {"anyOf": [text, prompts, ids, many_ids]}
    if "EmbeddingRequest" in components:
        # Strings or token-id arrays, never mixed; no empty list, no empty array.
        many = {"minItems": 1, "maxItems": settings.max_embedding_inputs, "type": "array"}
        components["EmbeddingRequest"]["properties"]["input"] = {
            "anyOf": [text, {**many, "items": text}, ids, {**many, "items": ids}]
        }
    _model_ids(components, settings)
    for schema in components.values():  # Ollama's keep_alive: a duration, seconds, 0 or -1
        keep_alive = schema.get("properties", {}).get("keep_alive")
        for alternative in (keep_alive or {}).get("anyOf", []):
            if alternative.get("type") == "string":
                alternative["pattern"] = KEEP_ALIVE_PATTERN


# shared/keep_alive.py: "5m", "1h30m", "90s", "500ms", or seconds, signed (upper case too).
KEEP_ALIVE_PATTERN = r"^\s*[+-]?([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?([mM][sS]|[sSmMhH]))+)\s*$"
# Bodies naming a model (shared/model_ids.py; an id the config file lists is taken as written, even
# a path, but the document describes what any client may send).
_MODEL_BODIES = (
    "ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "CreateResponseRequest", "LoadRequest",
    "UnloadRequest", "SetDefaultRequest", "DeleteRequest", "MessagesRequest", "CountTokensRequest",
    "RerankRequest", "ScoreTextsRequest", "TokenizeRequest", "DetokenizeRequest",
)


def _model_ids(components: dict[str, Any], settings: Settings) -> None:
    for name in _MODEL_BODIES:
        _bound(components, name, "model", "string", maxLength=settings.max_model_id_length)
        _bound(components, name, "model", "string", pattern=MODEL_ID_PATTERN)
    _bound(components, "DownloadRequest", "model", "string", pattern=HUB_ID_PATTERN, maxLength=193)


def _model_id_path_parameter(document: dict[str, Any], settings: Settings) -> None:
    for path in ("/v1/models/{model_id}", "/api/models/{model_id}"):
        operation = document["paths"].get(path, {}).get("get", {})
        for parameter in operation.get("parameters", []):
            if parameter["name"] == "model_id":
                parameter["schema"] = {
                    "type": "string", "pattern": MODEL_ID_PATTERN, "maxLength": settings.max_model_id_length,
                }


def _apply_refusals(components: dict[str, Any]) -> None:
    """What the decoders take only to refuse with a clear message (a 400 naming the field) is left out
    of the document: it is not an accepted value. Keep in step with the `check()`s of the schemas and
    with worker/model/prompts.py and gateway/schemas/tools.py."""
    message = components.get("Message")
    if message is not None:
        # Content required except on an assistant turn (tool calls) or a tool result.
        props = message["properties"]
        speaking = [r for r in props["role"]["enum"] if r not in ("assistant", "tool", "function")]
        message["anyOf"] = [
            {"properties": {"role": {"enum": ["assistant", "tool", "function"]}}},
            {"properties": {"role": {"enum": speaking}, "content": {"not": {"type": "null"}}},
             "required": ["content"]},
        ]
    if "TextPart" in components:
        components["TextPart"]["properties"]["type"] = {"const": "text", "default": "text"}
    if "ChatCompletionRequest" in components:
        # top_logprobs only with logprobs: true.
        components["ChatCompletionRequest"]["anyOf"] = [
            {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]},
            {"properties": {"top_logprobs": {"anyOf": [{"type": "null"}, {"const": 0}]}}},
        ]
    streamed = {  # stream_options only with stream: true
        "anyOf": [
            {"properties": {"stream": {"const": True}}, "required": ["stream"]},
            {"properties": {"stream_options": {"type": "null"}}},
        ]
    }
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        if name in components:
            components[name]["allOf"] = [streamed]
    if "ChatCompletionRequest" in components:  # tool_choice only with tools; logit_bias keys are ids
        components["ChatCompletionRequest"]["allOf"].append({"anyOf": [
            {"properties": {"tool_choice": {"type": "null"}}},
            {"properties": {"tools": {"type": "array", "minItems": 1}}, "required": ["tools"]},
        ]})
        props = components["ChatCompletionRequest"]["properties"]
        props["modalities"] = {"anyOf": [{"type": "array", "items": {"const": "text"}}, {"type": "null"}]}
        props["audio"] = props["web_search_options"] = {"type": "null", "default": None}
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        bias = components.get(name, {}).get("properties", {}).get("logit_bias", {})
        for alternative in bias.get("anyOf", []):
            if alternative.get("type") == "object":
                alternative["propertyNames"] = {"pattern": "^-?[0-9]+$"}
    if "ResponseFormat" in components:
        # json_schema needs its json_schema.
        components["ResponseFormat"]["anyOf"] = [
            {"properties": {"type": {"enum": ["text", "json_object"]}}},
            {
                "properties": {"json_schema": {"$ref": REF.format(name="JsonSchemaFormat")}},
                "required": ["json_schema"],
            },
        ]
    if "StructuredOutputs" in components:  # exactly one of json, regex, choice
        components["StructuredOutputs"]["oneOf"] = [
            {"properties": {key: {"not": {"type": "null"}}}, "required": [key]}
            for key in ("json", "regex", "choice")
        ]
    if "CreateResponseRequest" in components:
        _responses_request(components["CreateResponseRequest"]["properties"])
    _client_requests(components)
    if "FunctionTool" in components:
        components["FunctionTool"]["properties"]["type"] = {"const": "function", "default": "function"}
    completion = components.get("CompletionRequest", {}).get("properties", {})
    if completion:
        empty = {"type": "string", "maxLength": 0}  # a suffix is refused; "" is no suffix
        completion["suffix"] = {"anyOf": [empty, {"type": "null"}], "default": None}


def _responses_request(props: dict[str, Any]) -> None:
    """/v1/responses: no state (previous_response_id, conversation: only null; background: not true),
    and the input items it reads (gateway/schemas/responses.py: message, function_call,
    function_call_output; text parts)."""
    props["previous_response_id"] = {"type": "null", "default": None}
    props["conversation"] = {"type": "null", "default": None}
    props["background"] = {"anyOf": [{"const": False}, {"type": "null"}], "default": None}
    text: dict[str, Any] = {"type": "string"}
    part = {
        "type": "object", "required": ["type"],
        "properties": {"type": {"enum": ["input_text", "output_text", "text"]}, "text": {}},
    }
    content = {"anyOf": [text, {"type": "array", "items": part}]}
    message = {
        "type": "object", "required": ["role", "content"],
        "properties": {
            "type": {"const": "message"}, "role": {"enum": ["user", "system", "developer", "assistant"]},
            "content": content,
        },
    }
    call = {
        "type": "object", "required": ["type", "call_id", "name", "arguments"],
        "properties": {"type": {"const": "function_call"}, "call_id": text, "name": text, "arguments": text},
    }
    output = {
        "type": "object", "required": ["type", "call_id", "output"],
        "properties": {"type": {"const": "function_call_output"}, "call_id": text, "output": content},
    }
    items = {"type": "array", "minItems": 1, "items": {"anyOf": [message, call, output]}}
    props["input"] = {"anyOf": [text, items]}


def _client_requests(components: dict[str, Any]) -> None:
    """The Messages API's content blocks by role (gateway/schemas/messages.py), a rerank's documents,
    tokenize's prompt or messages: what those decoders take as any object, they read as these."""
    text: dict[str, Any] = {"type": "string"}
    text_block = {"type": "object", "required": ["type", "text"],
                  "properties": {"type": {"const": "text"}, "text": text}}
    thinking = {"type": "object", "required": ["type"],
                "properties": {"type": {"enum": ["thinking", "redacted_thinking"]}}}
    use = {"type": "object", "required": ["type", "id", "name", "input"], "properties": {
        "type": {"const": "tool_use"}, "id": text, "name": text, "input": {"type": "object"}}}
    result = {"type": "object", "required": ["type", "tool_use_id"], "properties": {
        "type": {"const": "tool_result"}, "tool_use_id": text, "is_error": {"type": ["boolean", "null"]},
        "content": {"anyOf": [text, {"type": "null"}, {"type": "array", "items": text_block}]}}}
    texts = {"anyOf": [text, {"type": "array", "items": text_block}]}

    def turn(role: str, block: dict[str, Any]) -> dict[str, Any]:
        blocks = {"type": "array", "items": {"anyOf": [text_block, block, thinking]}}
        return {"type": "object", "required": ["role", "content"],
                "properties": {"role": {"const": role}, "content": {"anyOf": [text, blocks]}}}

    if "MessageParam" in components:
        components["MessageParam"] = {"anyOf": [turn("user", result), turn("assistant", use)]}
    for name in ("MessagesRequest", "CountTokensRequest"):
        if name in components:
            components[name]["properties"]["system"] = {"anyOf": [texts, {"type": "null"}], "default": None}
    if "AnthropicToolChoice" in components:  # `tool` names its tool
        components["AnthropicToolChoice"]["anyOf"] = [
            {"properties": {"type": {"enum": ["auto", "any", "none"]}}},
            {"properties": {"name": text}, "required": ["name"]},
        ]
    if "AnthropicTool" in components:
        components["AnthropicTool"]["properties"]["type"] = {"enum": ["custom", None], "default": None}
    if "RerankRequest" in components:
        document = {"type": "object", "required": ["text"], "properties": {"text": text}}
        components["RerankRequest"]["properties"]["documents"]["items"] = {"anyOf": [text, document]}
    if "TokenizeRequest" in components:  # a prompt or messages, not both
        components["TokenizeRequest"]["anyOf"] = [
            {"properties": {"prompt": text, "messages": {"type": "null"}}, "required": ["prompt"]},
            {"properties": {"messages": {"type": "array"}, "prompt": {"type": "null"}},
             "required": ["messages"]},
        ]


def _bound(components: dict[str, Any], name: str, field: str, kind: str, **bounds: int | str) -> None:
    schema = components.get(name, {}).get("properties", {}).get(field)
    if schema is None:
        return
    for alternative in schema.get("anyOf", [schema]):
        if alternative.get("type") == kind:
            alternative.update(bounds)
