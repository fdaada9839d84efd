"""What JSON Schema cannot say about a request, told to schemathesis (SCHEMATHESIS_HOOKS): rules that
join two fields or depend on the model. Only schema-valid (positive) cases are filtered; every
check still runs on every case generated.

- `/v1/embeddings` needs an embedding model: without `model` the default (a chat model) answers 400
  `unsupported_task`; `dimensions` must be the model's own size; token ids must be in its vocabulary.
- `/v1/completions`: prompts x n is capped (DUKAT_MAX_GENERATIONS); `best_of` must equal `n`.
- The tiny test models have a 512-token context: longer prompts are a 400 `context_length_exceeded`.
- The test machine offers no GPU: a load on `cuda:N` is a 400 `device_unavailable`.
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


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    body = case.body if isinstance(case.body, dict) else None
    if body is None or not _positive(case):
        return True
    path = case.operation.path
    if path == "/v1/embeddings":
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else []
        ids = [i for item in items for i in (item if isinstance(item, list) else [item])]
        return (
            body.get("dimensions") in (None, EMBED_SIZE)
            and all(not isinstance(i, int) or 0 <= i < VOCAB for i in ids)
            and _text_size(inputs) <= PROMPT_CHARS
        )
    if path == "/v1/completions":
        prompts = body.get("prompt")
        count = len(prompts) if isinstance(prompts, list) else 1
        n = body.get("n") or 1
        best_of = body.get("best_of")
        return count * n <= MAX_GENERATIONS and best_of in (None, n) and _text_size(prompts) <= PROMPT_CHARS
    if path == "/api/models/load":  # no GPU here: a cuda device is a 400 naming what is offered
        return not str(body.get("device") or "").startswith("cuda")
    if path == "/v1/chat/completions":
        return _text_size(body.get("messages")) <= PROMPT_CHARS
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
