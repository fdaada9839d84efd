"""What JSON Schema cannot say about a request, told to schemathesis (SCHEMATHESIS_HOOKS): rules that
join two fields or depend on the model. Only schema-valid (positive) cases are filtered; every
check still runs on every case generated.

- `/v1/embeddings` needs an embedding model: without `model` the default (a chat model) answers 400
  `unsupported_task`; `dimensions` must be the model's own size; token ids must be in its vocabulary.
- `/v1/completions`: prompts x n is capped (DUKAT_MAX_GENERATIONS); `best_of` must equal `n`; token ids
  must be in the model's vocabulary.
- The tiny test models have a 512-token context: longer prompts are a 400 `context_length_exceeded`.
- The test machine offers no GPU: a load on `cuda:N` is a 400 `device_unavailable`.
- A `tool_choice` (or `function_call`) naming a function must name one of the request's tools.
- What the grammar compiler (xgrammar) takes of a JSON schema or a regex is its own: a construct it
  cannot compile is a 400 naming it, as is a choice list whose shortest output needs more than
  `max_tokens`. Fuzzed schemas, regexes and choices are left to the tools tests.
- The default model must be a chat model.
"""

from __future__ import annotations

from typing import Any

import schemathesis

EMBED_MODEL = "tiny/bert"
CHAT_MODEL = "tiny/tinyllama"
EMBED_SIZE = 64
VOCAB = 512
MODELS = (EMBED_MODEL, CHAT_MODEL)
MAX_GENERATIONS = 4
# Characters a prompt may hold and still fit the tiny models' context (a character can be 4 tokens).
PROMPT_CHARS = 100


def _positive(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    return bool(meta is None or meta.generation.mode.is_positive)


def _text_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_size(v) for v in value)
    if isinstance(value, dict):
        return sum(_text_size(v) for v in value.values())
    return 0


def _in_vocabulary(value: Any) -> bool:
    """Whether every token id in a prompt/input (an id, ids, or lists of ids) is one the model has."""
    items = value if isinstance(value, list) else []
    ids = [i for item in items for i in (item if isinstance(item, list) else [item])]
    # JSON Schema's integers include 5.0: the server takes it as 5.
    return all(isinstance(i, str) or 0 <= i < VOCAB for i in ids)


def _grammar_free(body: dict[str, Any]) -> bool:
    """No fuzzed JSON schema or regex for the grammar compiler."""
    outputs = body.get("structured_outputs") or {}
    response_format = body.get("response_format") or {}
    text_format = (body.get("text") or {}).get("format") or {}
    tools = body.get("tools") or []
    schemas = [
        outputs.get("json"), outputs.get("regex"), outputs.get("choice"),
        (response_format.get("json_schema") or {}).get("schema"),
        text_format.get("schema"), *[((t.get("function") or t).get("parameters")) for t in tools],
    ]
    return not any(schemas)


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    body = case.body if isinstance(case.body, dict) else None
    if body is None or not _positive(case):
        return True
    if not _grammar_free(body):
        return False
    if isinstance(body.get("tool_choice"), dict) or isinstance(body.get("function_call"), dict):
        return False  # a named function must be one of the request's tools
    path = case.operation.path
    if path == "/v1/embeddings":
        inputs = body.get("input")
        return (
            body.get("dimensions") in (None, EMBED_SIZE)
            and _in_vocabulary(inputs)
            and _text_size(inputs) <= PROMPT_CHARS
        )
    if path == "/v1/completions":
        prompts = body.get("prompt")
        if not _in_vocabulary(prompts):
            return False
        one = not isinstance(prompts, list) or all(isinstance(p, int | float) for p in prompts)  # text or ids
        count = 1 if one else len(prompts)
        n = body.get("n") or 1
        best_of = body.get("best_of")
        return count * n <= MAX_GENERATIONS and best_of in (None, n) and _text_size(prompts) <= PROMPT_CHARS
    if path == "/api/models/default":  # the default model must chat
        return body.get("model") != EMBED_MODEL
    if path == "/api/models/load":  # no GPU here: a cuda device is a 400 naming what is offered
        return not str(body.get("device") or "").startswith("cuda")
    if path == "/v1/chat/completions":
        return _text_size(body.get("messages")) <= PROMPT_CHARS
    if path == "/v1/responses":
        return _text_size([body.get("input"), body.get("instructions")]) <= PROMPT_CHARS
    return True


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """A request naming no model, or the other kind of model, names the served one of its kind (the
    default model can be either: the fuzzer may set it)."""
    body = case.body if isinstance(case.body, dict) else {}
    wanted = EMBED_MODEL if case.operation.path == "/v1/embeddings" else CHAT_MODEL
    if case.operation.path.startswith("/v1/") and _positive(case) and body.get("model") in (None, *MODELS):
        body["model"] = wanted
    return case
