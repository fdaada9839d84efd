"""What JSON Schema cannot say about a request, told to schemathesis (SCHEMATHESIS_HOOKS): rules that
join two fields or depend on the model. Only schema-valid (positive) cases are filtered; every
check still runs on every case generated.

- `/v1/embeddings` needs an embedding model: without `model` the default (a chat model) answers 400
  `unsupported_task`; `dimensions` must be the model's own size; token ids must be in its vocabulary.
- `/v1/completions`: prompts x n is capped (DUKAT_MAX_GENERATIONS); `best_of` must equal `n`.
- Token ids in `logit_bias` and `stop_token_ids` must be in the model's vocabulary (else a 400).
- The tiny test models have a 512-token context: longer prompts are a 400 `context_length_exceeded`.
- Constrained decoding (a JSON schema, a regex, forced tool calls, `text.format`) depends on the model:
  a schema the grammar engine can't compile, or whose shortest output can't fit `max_tokens` in the
  model's tokens, is a 400 by design; so is a named tool_choice naming none of the tools, a
  structured_outputs with other than one key, echo of token-id prompts in a stream, and Responses
  input items that aren't well-formed items (the document types them loosely, as OpenAI does).
- The Messages API: no tools (forced tool use is constrained decoding; their descriptions count
  against the context); rerank and score need the reranker, score's `text_1` one text or one per
  `text_2`; detokenize's ids must be in the vocabulary.
- Chat and /tokenize `image_url` parts need a vision model and a decodable image: the served chat
  model is text-only, so they are a 400 by design.
"""

from __future__ import annotations

from typing import Any

import schemathesis

EMBED_MODEL = "tiny/bert"
CHAT_MODEL = "tiny/tinyllama"
RERANK_MODEL = "tiny/reranker"
EMBED_SIZE = 64
VOCAB = 512
MODELS = (EMBED_MODEL, CHAT_MODEL, RERANK_MODEL)
RERANK_ROUTES = ("/v1/rerank", "/v2/rerank", "/v1/score")
MESSAGES_ROUTES = ("/v1/messages", "/v1/messages/count_tokens")
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
    if body.get("structured_outputs") is not None or not _ids_in_vocabulary(body):
        return False
    if path == "/v1/completions":
        prompts = body.get("prompt")
        count = len(prompts) if isinstance(prompts, list) else 1
        n = body.get("n") or 1
        best_of = body.get("best_of")
        ids = _token_ids(prompts)
        return (
            count * n <= MAX_GENERATIONS and best_of in (None, n) and _text_size(prompts) <= PROMPT_CHARS
            and all(0 <= i < VOCAB for i in ids) and not (ids and body.get("stream") and body.get("echo"))
            and len(ids) <= PROMPT_CHARS
        )
    if path in ("/v1/chat/completions", "/tokenize") and _shows_images(body.get("messages")):
        return False
    if path == "/v1/chat/completions":
        return _text_size(body.get("messages")) <= PROMPT_CHARS and _free_chat(body)
    if path == "/api/models/default":  # the default model must chat
        return body.get("model") not in (EMBED_MODEL, RERANK_MODEL)
    if path in MESSAGES_ROUTES:
        choice = body.get("tool_choice") or {}
        size = _text_size(body.get("messages")) + _text_size(body.get("system"))
        return size <= PROMPT_CHARS and not body.get("tools") and choice.get("type") != "tool"
    if path in RERANK_ROUTES:
        return _text_size(body) <= PROMPT_CHARS and _pairs_match(body)
    if path == "/tokenize":  # tools: their schemas may hold integers beyond 64 bits (a 400)
        return not body.get("tools")
    if path == "/detokenize":
        return all(isinstance(i, int) and 0 <= i < VOCAB for i in body.get("tokens") or [])
    if path == "/v1/responses":
        text = body.get("text") or {}
        return (
            isinstance(body.get("input"), str) and _text_size(body.get("input")) <= PROMPT_CHARS
            and not body.get("tools") and not isinstance(body.get("tool_choice"), dict)
            and (text.get("format") or {}).get("type") in (None, "text")
        )
    return True


def _shows_images(messages: Any) -> bool:
    parts = [
        part
        for message in (messages if isinstance(messages, list) else [])
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
    ]
    return any(isinstance(part, dict) and part.get("type") == "image_url" for part in parts)


def _ids_in_vocabulary(body: dict[str, Any]) -> bool:
    bias = body.get("logit_bias") if isinstance(body.get("logit_bias"), dict) else {}
    stops = body.get("stop_token_ids") if isinstance(body.get("stop_token_ids"), list) else []
    ids = [int(k) for k in bias if k.lstrip("-").isdigit()] + [i for i in stops if isinstance(i, int)]
    return all(0 <= i < VOCAB for i in ids)


def _pairs_match(body: dict[str, Any]) -> bool:
    """/v1/score: one text_1, or as many as text_2."""
    if "text_1" not in body:
        return True
    firsts, seconds = body.get("text_1"), body.get("text_2")
    count = len(firsts) if isinstance(firsts, list) else 1
    return count == 1 or count == (len(seconds) if isinstance(seconds, list) else 1)


def _token_ids(prompts: Any) -> list[int]:
    items = prompts if isinstance(prompts, list) else []
    return [i for item in items for i in (item if isinstance(item, list) else [item]) if isinstance(i, int)]


def _free_chat(body: dict[str, Any]) -> bool:
    """No constrained decoding in a chat body (no response_format but text, no tool choice naming a
    function), and no tools: their descriptions count against the tiny models' context."""
    fmt = body.get("response_format") or {}
    named = isinstance(body.get("tool_choice"), dict) or isinstance(body.get("function_call"), dict)
    tools = body.get("tools") or body.get("functions")
    return fmt.get("type") in (None, "text") and not named and not tools


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """A request naming no model, or the other kind of model, names the served one of its kind (the
    default model can be either kind: the fuzzer may set it)."""
    body = case.body if isinstance(case.body, dict) else {}
    path = case.operation.path
    wanted = RERANK_MODEL if path in RERANK_ROUTES else CHAT_MODEL
    wanted = EMBED_MODEL if path == "/v1/embeddings" else wanted
    inference = path.startswith(("/v1/", "/v2/")) or path in ("/tokenize", "/detokenize")
    if inference and _positive(case) and body.get("model") in (None, *MODELS):
        body["model"] = wanted
    return case
