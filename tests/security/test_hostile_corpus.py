"""A corpus of hostile and broken requests against every route of the locked server: each one is a
4xx with an OpenAI error body (and the code it names), and the server still answers after it."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import httpx
import pytest

from tests.security.conftest import ADMIN_KEY, CHAT_MODEL, EMBED_MODEL, INFERENCE_KEY, RERANK_MODEL, Locked
from tests.support.openapi_check import validate


class Case(NamedTuple):
    method: str
    path: str
    body: Any = None  # JSON, or bytes sent as they are
    status: int = 400
    code: str | None = "invalid_request"
    key: str | None = ADMIN_KEY
    headers: dict[str, str] | None = None


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": CHAT_MODEL, "prompt": "hi", "max_tokens": 1, **fields}


def embed(**fields: Any) -> dict[str, Any]:
    return {"model": EMBED_MODEL, "input": "hi", **fields}


def message(**fields: Any) -> dict[str, Any]:
    return {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, **fields}


def rerank(**fields: Any) -> dict[str, Any]:
    return {"model": RERANK_MODEL, "query": "q", "documents": ["a", "b"], **fields}


def with_max_tokens(literal: str) -> bytes:
    """A chat body whose max_tokens is `literal` as written (not JSON a library would write)."""
    return json.dumps(chat()).replace('"max_tokens": 1', f'"max_tokens": {literal}').encode()


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def deep_json(field: str, levels: int) -> bytes:
    """`{"...chat fields", field: [[[...]]]}` nested `levels` deep, written out (json.dumps recurses)."""
    head = json.dumps(chat())[:-1]
    return f'{head}, "{field}": {"[" * levels}{"]" * levels}}}'.encode()


CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
LOAD, UNLOAD = "/api/models/load", "/api/models/unload"
PULL, DEFAULT = "/api/models/pull", "/api/models/default"
DENIED = {"status": 403, "code": "permission_denied", "key": INFERENCE_KEY}
HI = {"role": "user", "content": "hi"}
BIG = "x" * 1_000_001  # one more character than DUKAT_MAX_PROMPT_CHARS
SEGMENT_256 = "a/" + "b" * 256

HUGE_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"x": 2**70}}}
CORPUS: dict[str, Case] = {
    # ---- keys and roles
    "no key chat": Case("POST", CHAT, chat(), 401, "invalid_api_key", key=None),
    "no key models": Case("GET", "/v1/models", None, 401, "invalid_api_key", key=None),
    "no key ps": Case("GET", "/api/ps", None, 401, "invalid_api_key", key=None),
    "wrong key": Case("POST", EMBEDDINGS, embed(), 401, "invalid_api_key", key="sk-wrong"),
    "basic scheme": Case("GET", "/v1/models", None, 401, "invalid_api_key", key=None,
                         headers={"Authorization": f"Basic {INFERENCE_KEY}"}),
    "token without scheme": Case("GET", "/v1/models", None, 401, "invalid_api_key", key=None,
                                 headers={"Authorization": INFERENCE_KEY}),
    "inference key load": Case("POST", LOAD, {"model": CHAT_MODEL}, **DENIED),
    "inference key unload": Case("POST", UNLOAD, {"model": CHAT_MODEL}, **DENIED),
    "inference key pull": Case("POST", PULL, {"model": "dukat-test/tiny-gpt2"}, **DENIED),
    "inference key default": Case("POST", DEFAULT, {"model": CHAT_MODEL}, **DENIED),
    "inference key hosts": Case("GET", "/api/hosts", None, **DENIED),
    "inference key usage": Case("GET", "/api/usage", None, **DENIED),
    "inference key job": Case("GET", "/api/downloads/dl-000000000000", None, **DENIED),
    # ---- bodies that are not JSON objects
    "not json": Case("POST", CHAT, b"{not json"),
    "truncated json": Case("POST", CHAT, json.dumps(chat()).encode()[:-3]),
    "not utf-8": Case("POST", CHAT, b'{"model": "\xff\xfe", "messages": []}'),
    "empty body": Case("POST", CHAT, b""),
    "json null": Case("POST", CHAT, b"null"),
    "json array": Case("POST", CHAT, b"[]"),
    "json string": Case("POST", COMPLETIONS, b'"prompt"'),
    "json number": Case("POST", EMBEDDINGS, b"42"),
    "nan literal": Case("POST", CHAT, with_max_tokens("NaN")),
    "huge exponent": Case("POST", CHAT, with_max_tokens("1e999")),
    "tools 10k deep": Case("POST", CHAT, deep_json("tools", 10_000)),
    "response_format 10k deep": Case("POST", CHAT, deep_json("response_format", 10_000)),
    "user 100 deep": Case("POST", CHAT, deep_json("user", 100)),
    "tools 65 deep": Case("POST", CHAT, chat(tools=[{"function": deep(65)}])),
    "text/plain body": Case("POST", CHAT, json.dumps(chat()).encode(), 415, "unsupported_media_type",
                            headers={"Content-Type": "text/plain"}),
    "form body": Case("POST", LOAD, b"model=tiny%2Ftinyllama", 415, "unsupported_media_type",
                      headers={"Content-Type": "application/x-www-form-urlencoded"}),
    "no content type": Case("POST", DEFAULT, b'{"model": "tiny/tinyllama"}', 415, "unsupported_media_type",
                            headers={"Content-Type": ""}),
    "body over 10 MB": Case("POST", COMPLETIONS, json.dumps(completion(prompt="y" * 11_000_000)).encode(),
                            413, "request_too_large"),
    # ---- chat fields
    "messages missing": Case("POST", CHAT, {"model": CHAT_MODEL}),
    "messages empty": Case("POST", CHAT, chat(messages=[])),
    "messages a string": Case("POST", CHAT, chat(messages="hi")),
    "message without role": Case("POST", CHAT, chat(messages=[{"content": "hi"}])),
    "unknown role": Case("POST", CHAT, chat(messages=[{"role": "root", "content": "hi"}])),
    "role tool content a number": Case("POST", CHAT, chat(messages=[{"role": "tool", "content": 5}])),
    "user without content": Case("POST", CHAT, chat(messages=[{"role": "user"}])),
    "content a number": Case("POST", CHAT, chat(messages=[{"role": "user", "content": 5}])),
    "image part": Case("POST", CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}])),
    "temperature negative": Case("POST", CHAT, chat(temperature=-1)),
    "temperature 3": Case("POST", CHAT, chat(temperature=3)),
    "temperature a string": Case("POST", CHAT, chat(temperature="hot")),
    "top_p 0": Case("POST", CHAT, chat(top_p=0)),
    "top_p 1.5": Case("POST", CHAT, chat(top_p=1.5)),
    "max_tokens 0": Case("POST", CHAT, chat(max_tokens=0)),
    "max_tokens 2**64": Case("POST", CHAT, chat(max_tokens=2**64)),
    "max_tokens 1.5": Case("POST", CHAT, chat(max_tokens=1.5)),
    "max_completion_tokens -1": Case("POST", CHAT, chat(max_completion_tokens=-1)),
    "n 0": Case("POST", CHAT, chat(n=0)),
    "n 129": Case("POST", CHAT, chat(n=129)),
    "n over DUKAT_MAX_GENERATIONS": Case("POST", CHAT, chat(n=5)),
    "n a bool": Case("POST", CHAT, chat(n=True)),
    "stop a number": Case("POST", CHAT, chat(stop=7)),
    "seed 2**64": Case("POST", CHAT, chat(seed=2**64)),
    "top_logprobs 21": Case("POST", CHAT, chat(logprobs=True, top_logprobs=21)),
    "top_logprobs without logprobs": Case("POST", CHAT, chat(top_logprobs=3)),
    "tools a string": Case("POST", CHAT, chat(tools="all")),
    "json_schema format": Case("POST", CHAT, chat(response_format={"type": "json_schema"})),
    "two structured outputs": Case("POST", CHAT, chat(structured_outputs={"regex": "a", "choice": ["a"]})),
    "stream a string": Case("POST", CHAT, chat(stream="yes")),
    "stream_options a number": Case("POST", CHAT, chat(stream=True, stream_options=1)),
    "top_k -2": Case("POST", CHAT, chat(top_k=-2)),
    "repetition_penalty 0": Case("POST", CHAT, chat(repetition_penalty=0)),
    "frequency_penalty 3": Case("POST", CHAT, chat(frequency_penalty=3)),
    "chat over the character limit": Case("POST", CHAT, chat(messages=[{"role": "user", "content": BIG}])),
    "chat on the embedding model": Case("POST", CHAT, chat(model=EMBED_MODEL), 400, "unsupported_task"),
    "context exceeded": Case("POST", CHAT, chat(messages=[{"role": "user", "content": "word " * 3000}]),
                             400, "context_length_exceeded"),
    # ---- model ids that are paths
    "model dotdot": Case("POST", CHAT, chat(model="../../etc")),
    "model absolute": Case("POST", CHAT, chat(model="/etc")),
    "model home": Case("POST", CHAT, chat(model="~root/models")),
    "model tilde": Case("POST", EMBEDDINGS, embed(model="~")),
    "model empty segment": Case("POST", COMPLETIONS, completion(model="tiny//tinyllama")),
    "model trailing slash": Case("POST", COMPLETIONS, completion(model="tiny/tinyllama/")),
    "model newline": Case("POST", CHAT, chat(model="tiny/tiny\nllama")),
    "model nul": Case("POST", CHAT, chat(model="tiny\x00")),
    "model 300 chars": Case("POST", CHAT, chat(model="m" * 300)),
    "model segment 256 bytes": Case("POST", EMBEDDINGS, embed(model=SEGMENT_256)),
    "model hidden folder": Case("POST", CHAT, chat(model=".cache/x")),
    "model backslash": Case("POST", CHAT, chat(model="..\\..\\windows")),
    "model empty": Case("POST", CHAT, chat(model="")),
    "model a number": Case("POST", CHAT, chat(model=7)),
    "model unknown": Case("POST", CHAT, chat(model="nobody/nothing"), 404, "model_not_found"),
    # ---- completions
    "prompt missing": Case("POST", COMPLETIONS, {"model": CHAT_MODEL}),
    "prompt empty list": Case("POST", COMPLETIONS, completion(prompt=[])),
    "prompt mixes ids and text": Case("POST", COMPLETIONS, completion(prompt=[1, "a"])),
    "prompt empty token ids": Case("POST", COMPLETIONS, completion(prompt=[[]])),
    "prompt token id over the vocabulary": Case("POST", COMPLETIONS, completion(prompt=[10**9])),
    "prompt an object": Case("POST", COMPLETIONS, completion(prompt={"a": 1})),
    "prompts x n over the limit": Case("POST", COMPLETIONS, completion(prompt=["a", "b", "c"], n=2)),
    "1000 prompts x n=128": Case("POST", COMPLETIONS, completion(prompt=["a"] * 1000, n=128)),
    "n x prompt length over DUKAT_MAX_REQUEST_PROMPT_CHARS": Case(
        "POST", CHAT, chat(n=4, messages=[{"role": "user", "content": "x" * 600_000}])),
    "prompts x length over DUKAT_MAX_REQUEST_PROMPT_CHARS": Case(
        "POST", COMPLETIONS, completion(prompt=["y" * 900_000] * 3)),
    "best_of other than n": Case("POST", COMPLETIONS, completion(best_of=2)),
    "suffix": Case("POST", COMPLETIONS, completion(suffix="end")),
    "completion logprobs 6": Case("POST", COMPLETIONS, completion(logprobs=6)),
    "echo a string": Case("POST", COMPLETIONS, completion(echo="yes")),
    "echo 0": Case("POST", COMPLETIONS, completion(echo=0)),
    "prompt over the character limit": Case("POST", COMPLETIONS, completion(prompt=BIG)),
    # ---- large bodies: read in the gateway's intake process first (gateway/intake.py)
    "10,001 messages (DUKAT_MAX_MESSAGES)": Case("POST", CHAT, chat(messages=[HI] * 10_001)),
    "10,001 Responses input items": Case("POST", "/v1/responses", {"model": CHAT_MODEL,
                                                                   "input": [HI] * 10_001}),
    "a large body that is not JSON": Case("POST", CHAT, b'{"model": "m", "messages": [' + b"1," * 200_000),
    "a large body with a bad field": Case("POST", CHAT, chat(max_tokens="x", user="u" * 300_000)),
    "a large body nested too deep": Case("POST", CHAT, deep_json("metadata", 200_000)),
    # ---- embeddings
    "input missing": Case("POST", EMBEDDINGS, {"model": EMBED_MODEL}),
    "input empty list": Case("POST", EMBEDDINGS, embed(input=[])),
    "input mixed": Case("POST", EMBEDDINGS, embed(input=["a", 1])),
    "input empty token array": Case("POST", EMBEDDINGS, embed(input=[[]])),
    "input 2049 strings": Case("POST", EMBEDDINGS, embed(input=["a"] * 2049)),
    "input 10000 strings": Case("POST", EMBEDDINGS, embed(input=["a"] * 10_000)),
    "token id over the vocabulary": Case("POST", EMBEDDINGS, embed(input=[[1, 10**9]])),
    "token id negative": Case("POST", EMBEDDINGS, embed(input=[-1])),
    "input an object": Case("POST", EMBEDDINGS, embed(input={"text": "a"})),
    "dimensions 0": Case("POST", EMBEDDINGS, embed(dimensions=0)),
    "dimensions not the model's": Case("POST", EMBEDDINGS, embed(dimensions=999)),
    "encoding_format hex": Case("POST", EMBEDDINGS, embed(encoding_format="hex")),
    "embedding input over the character limit": Case("POST", EMBEDDINGS, embed(input=BIG)),
    "embeddings of a chat model": Case("POST", EMBEDDINGS, embed(model=CHAT_MODEL), 400, "unsupported_task"),
    # ---- management
    "load no model": Case("POST", LOAD, {}),
    "load unknown field": Case("POST", LOAD, {"model": CHAT_MODEL, "path": "/etc"}),
    "load bad quantization": Case("POST", LOAD, {"model": CHAT_MODEL, "quantization": "2bit"}),
    "load bad device": Case("POST", LOAD, {"model": "a/b/c", "device": "gpu7; rm -rf /"}),
    "load device named like a command": Case("POST", LOAD, {"model": CHAT_MODEL, "device": "$(reboot)"}),
    "load on a device not here": Case("POST", LOAD, {"model": EMBED_MODEL, "device": "cuda:7"}, 400,
                                      "device_unavailable"),
    "load other quantization": Case("POST", LOAD, {"model": CHAT_MODEL, "quantization": "8bit"}, 409,
                                    "conflict"),
    "load absolute path": Case("POST", LOAD, {"model": "/etc"}),
    "load dotdot": Case("POST", LOAD, {"model": "../models"}),
    "load home": Case("POST", LOAD, {"model": "~/models"}),
    "load hub id not allowed": Case("POST", LOAD, {"model": "evil/huge-model"}, 403, "pull_not_allowed"),
    "load id naming nothing": Case("POST", LOAD, {"model": "a/b/c"}, 404, "model_not_found"),
    "load over the size cap": Case("POST", LOAD, {"model": "dukat-test/big"}, 400, "model_too_large"),
    "unload not loaded": Case("POST", UNLOAD, {"model": "nobody/nothing"}, 404, "not_found"),
    "unload a path": Case("POST", UNLOAD, {"model": "/etc/passwd"}),
    "unload unknown field": Case("POST", UNLOAD, {"model": CHAT_MODEL, "force": True}),
    "default unknown": Case("POST", DEFAULT, {"model": "nobody/nothing"}, 404, "model_not_found"),
    "default a path": Case("POST", DEFAULT, {"model": "/tmp"}),
    "default a relative folder": Case("POST", DEFAULT, {"model": "models"}, 404, "model_not_found"),
    "default empty": Case("POST", DEFAULT, {"model": ""}),
    "pull not allowed": Case("POST", PULL, {"model": "evil/huge-model"}, 403, "pull_not_allowed"),
    "pull three segments": Case("POST", PULL, {"model": "a/b/c"}),
    "pull a path": Case("POST", PULL, {"model": "/etc"}),
    "pull revision dotdot": Case("POST", PULL, {"model": "dukat-test/tiny-gpt2", "revision": "../../x"}),
    "pull revision newline": Case("POST", PULL, {"model": "dukat-test/tiny-gpt2", "revision": "main\nx"}),
    "pull unknown field": Case("POST", PULL, {"model": "dukat-test/tiny-gpt2", "endpoint": "http://evil"}),
    "job id query smuggling": Case("GET", "/api/downloads/x%3Fa%3D1"),
    "job id newline": Case("GET", "/api/downloads/dl-%0a00000000000"),
    "job id traversal": Case("GET", "/api/downloads/..%2F..%2Fstate", None, 404, "not_found"),
    "job id too long": Case("GET", "/api/downloads/dl-" + "0" * 500),
    "job id unknown": Case("GET", "/api/downloads/dl-000000000000", None, 404, "not_found"),
    # ---- routes and methods
    "model path traversal": Case("GET", "/v1/models/..%2F..%2Fetc%2Fpasswd", None, 404, "model_not_found"),
    "model path nul": Case("GET", "/v1/models/%00", None, 404, "model_not_found"),
    "unknown route": Case("GET", "/v1/secrets", None, 404, "not_found"),
    "unknown api route": Case("POST", "/api/secrets", {}, 404, "not_found"),
    "post to a model's details": Case("POST", "/api/models/tiny/tinyllama", {}, 405, "method_not_allowed"),
    # ---- the Responses API and the model routes of `dukat show` / `dukat rm`
    "responses no key": Case("POST", "/v1/responses", {"input": "hi"}, 401, "invalid_api_key", key=None),
    "responses model a path": Case("POST", "/v1/responses", {"model": "/etc", "input": "hi"}),
    "responses input missing": Case("POST", "/v1/responses", {"model": CHAT_MODEL}),
    "responses input empty": Case("POST", "/v1/responses", {"model": CHAT_MODEL, "input": []}),
    "responses previous id": Case("POST", "/v1/responses", {"model": CHAT_MODEL, "input": "hi",
                                                            "previous_response_id": "resp_1"}),
    "responses unknown item": Case("POST", "/v1/responses", {"model": CHAT_MODEL, "input": [{"type": "x"}]}),
    "responses over the character limit": Case("POST", "/v1/responses", {"model": CHAT_MODEL, "input": BIG}),
    "responses 10k deep": Case("POST", "/v1/responses", json.dumps({"model": CHAT_MODEL, "input": deep(5)})
                               .replace("[[[[[1]]]]]", "[" * 10_000 + "]" * 10_000).encode()),
    "retrieve a response": Case("GET", "/v1/responses/resp_1"),  # nothing is stored: a 400 says so
    "details of a path": Case("GET", "/api/models/..%2F..%2Fetc", None),
    "details unknown": Case("GET", "/api/models/nobody/nothing", None, 404, "model_not_found"),
    "delete with an inference key": Case("POST", "/api/models/delete", {"model": CHAT_MODEL}, **DENIED),
    "delete a path": Case("POST", "/api/models/delete", {"model": "/etc"}),
    "delete dotdot": Case("POST", "/api/models/delete", {"model": "tiny/../.."}),
    "delete a loaded model": Case("POST", "/api/models/delete", {"model": CHAT_MODEL}, 409, "conflict"),
    "delete unknown": Case("POST", "/api/models/delete", {"model": "nobody/nothing"}, 404, "model_not_found"),
    "delete models": Case("DELETE", "/v1/models", None, 405, "method_not_allowed"),
    "put load": Case("PUT", LOAD, {"model": CHAT_MODEL}, 405, "method_not_allowed"),
    "get chat": Case("GET", CHAT, None, 405, "method_not_allowed"),
    # ---- rerank, score, tokenize
    "rerank no key": Case("POST", "/v1/rerank", rerank(), 401, "invalid_api_key", key=None),
    "rerank query missing": Case("POST", "/v1/rerank", {"model": RERANK_MODEL, "documents": ["a"]}),
    "rerank documents empty": Case("POST", "/v2/rerank", rerank(documents=[])),
    "rerank document without text": Case("POST", "/v1/rerank", rerank(documents=[{"title": "a"}])),
    "rerank document a number": Case("POST", "/v1/rerank", rerank(documents=[5])),
    "rerank top_n 0": Case("POST", "/v1/rerank", rerank(top_n=0)),
    "rerank 2049 documents": Case("POST", "/v1/rerank", rerank(documents=["a"] * 2049)),
    "rerank over the character limit": Case("POST", "/v2/rerank", rerank(query=BIG)),
    "rerank a document past the context": Case("POST", "/v1/rerank", rerank(documents=["word " * 3000]), 400,
                                               "context_length_exceeded"),
    "rerank on a chat model": Case("POST", "/v1/rerank", rerank(model=CHAT_MODEL), 400, "unsupported_task"),
    "rerank model a path": Case("POST", "/v2/rerank", rerank(model="../../etc")),
    "chat on the reranker": Case("POST", CHAT, chat(model=RERANK_MODEL), 400, "unsupported_task"),
    "score uneven lists": Case("POST", "/v1/score", {"model": RERANK_MODEL, "text_1": ["a", "b"],
                                                     "text_2": ["a", "b", "c"]}),
    "score text_2 missing": Case("POST", "/v1/score", {"model": RERANK_MODEL, "text_1": "a"}),
    "score text_1 empty list": Case("POST", "/v1/score", {"model": RERANK_MODEL, "text_1": [],
                                                          "text_2": "a"}),
    "score on the embedding model": Case("POST", "/v1/score", {"model": EMBED_MODEL, "text_1": "a",
                                                               "text_2": "b"}, 400, "unsupported_task"),
    "tokenize neither": Case("POST", "/tokenize", {"model": CHAT_MODEL}),
    "tokenize both": Case("POST", "/tokenize", {"model": CHAT_MODEL, "prompt": "a",
                                                "messages": [{"role": "user", "content": "a"}]}),
    "tokenize over the character limit": Case("POST", "/tokenize", {"model": CHAT_MODEL, "prompt": BIG}),
    "tokenize messages a string": Case("POST", "/tokenize", {"model": CHAT_MODEL, "messages": "hi"}),
    "tokenize model unknown": Case("POST", "/tokenize", {"model": "nobody/nothing", "prompt": "a"}, 404,
                                   "model_not_found"),
    "detokenize id over the vocabulary": Case("POST", "/detokenize", {"model": CHAT_MODEL,
                                                                      "tokens": [10**9]}),
    "detokenize id negative": Case("POST", "/detokenize", {"model": CHAT_MODEL, "tokens": [-1]}),
    "detokenize id 2**64": Case("POST", "/detokenize", {"model": CHAT_MODEL, "tokens": [2**64]}),
    "tool parameters beyond 64 bits": Case("POST", "/tokenize", {"model": CHAT_MODEL, "prompt": "hi",
                                                                 "tools": [HUGE_TOOL]}),
    "detokenize tokens a string": Case("POST", "/detokenize", {"model": CHAT_MODEL, "tokens": "1 2"}),
}

# The Messages API's routes answer in Anthropic's shape; a Case's `code` is Anthropic's error type.
MESSAGES, COUNT = "/v1/messages", "/v1/messages/count_tokens"
BAD = "invalid_request_error"


def user_blocks(*blocks: dict[str, Any]) -> dict[str, Any]:
    return message(messages=[{"role": "user", "content": list(blocks)}])


NAMED_TOOL = {
    "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "tool", "name": "g"},
}
ANTHROPIC_CORPUS: dict[str, Case] = {
    "messages no key": Case("POST", MESSAGES, message(), 401, "authentication_error", key=None),
    "messages wrong x-api-key": Case("POST", MESSAGES, message(), 401, "authentication_error", key=None,
                                     headers={"x-api-key": "sk-wrong"}),
    "messages not json": Case("POST", MESSAGES, b"{not json", 400, BAD),
    "messages json array": Case("POST", MESSAGES, b"[]", 400, BAD),
    "messages missing": Case("POST", MESSAGES, {"model": CHAT_MODEL, "max_tokens": 1}, 400, BAD),
    "messages max_tokens missing": Case("POST", MESSAGES, {"model": CHAT_MODEL, "messages": [
        {"role": "user", "content": "hi"}]}, 400, BAD),
    "messages max_tokens 0": Case("POST", MESSAGES, message(max_tokens=0), 400, BAD),
    "messages temperature 1.5": Case("POST", MESSAGES, message(temperature=1.5), 400, BAD),
    "messages system role": Case("POST", MESSAGES, message(messages=[{"role": "system", "content": "x"}]),
                                 400, BAD),
    "messages image block": Case("POST", MESSAGES, user_blocks(
        {"type": "image", "source": {"type": "url", "url": "file:///etc/passwd"}}), 400, BAD),
    "messages tool_use in a user turn": Case("POST", MESSAGES, user_blocks(
        {"type": "tool_use", "id": "x", "name": "f", "input": {}}), 400, BAD),
    "messages tool_result without id": Case("POST", MESSAGES, user_blocks(
        {"type": "tool_result", "content": "x"}), 400, BAD),
    "messages tool choice naming nothing": Case("POST", MESSAGES, message(tool_choice={"type": "tool"}),
                                                400, BAD),
    "messages tool_choice unknown tool": Case("POST", MESSAGES, message(**NAMED_TOOL), 400, BAD),
    "messages 10k deep": Case("POST", MESSAGES, json.dumps(message(metadata=deep(5)))
                              .replace("[[[[[1]]]]]", "[" * 10_000 + "]" * 10_000).encode(), 400, BAD),
    "messages server tool": Case("POST", MESSAGES, message(tools=[{"type": "web_search_20250305",
                                                                   "name": "web_search"}]), 400, BAD),
    "messages over the character limit": Case("POST", MESSAGES, message(system=BIG), 400, BAD),
    "messages 10,001 of them": Case("POST", MESSAGES, message(messages=[HI] * 10_001), 400, BAD),
    "messages model unknown": Case("POST", MESSAGES, message(model="nobody/nothing"), 404, "not_found_error"),
    "messages on the embedding model": Case("POST", MESSAGES, message(model=EMBED_MODEL), 400, BAD),
    "messages context exceeded": Case("POST", MESSAGES, message(system="word " * 3000), 400, BAD),
    "count_tokens messages empty": Case("POST", COUNT, {"model": CHAT_MODEL, "messages": []}, 400, BAD),
    "count_tokens model a path": Case("POST", COUNT, {"model": "/etc", "messages": [
        {"role": "user", "content": "hi"}]}, 400, BAD),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_a_hostile_request_is_a_4xx_openai_error_and_the_server_goes_on(
    locked: Locked, anonymous: httpx.Client, name: str
) -> None:
    case = CORPUS[name]
    headers = {**({"Authorization": f"Bearer {case.key}"} if case.key else {}), **(case.headers or {})}
    if isinstance(case.body, bytes):
        headers.setdefault("Content-Type", "application/json")
        sent = {"content": case.body}
    else:
        sent = {"json": case.body} if case.body is not None else {}
    resp = anonymous.request(case.method, case.path, headers=headers, **sent)  # type: ignore[arg-type]
    assert resp.status_code == case.status, (name, resp.status_code, resp.text[:500])
    body = resp.json()
    validate(body, "ErrorResponse")
    if case.code is not None:
        assert body["error"]["code"] == case.code, (name, body)
    assert anonymous.get("/health").status_code == 200


@pytest.mark.parametrize("name", list(ANTHROPIC_CORPUS))
def test_a_hostile_messages_request_is_a_4xx_anthropic_error(
    locked: Locked, anonymous: httpx.Client, name: str
) -> None:
    case = ANTHROPIC_CORPUS[name]
    headers = {**({"x-api-key": case.key} if case.key else {}), **(case.headers or {})}
    if isinstance(case.body, bytes):
        headers.setdefault("Content-Type", "application/json")
        sent = {"content": case.body}
    else:
        sent = {"json": case.body} if case.body is not None else {}
    resp = anonymous.request(case.method, case.path, headers=headers, **sent)  # type: ignore[arg-type]
    assert resp.status_code == case.status, (name, resp.status_code, resp.text[:500])
    body = resp.json()
    assert set(body) == {"type", "error"} and body["type"] == "error", (name, body)
    assert set(body["error"]) == {"type", "message"} and body["error"]["message"], (name, body)
    assert body["error"]["type"] == case.code, (name, body)
    assert anonymous.get("/health").status_code == 200


def test_the_corpus_is_large_and_covers_every_route(locked: Locked) -> None:
    assert len(CORPUS) >= 100
    document = httpx.get(f"{locked.url}/docs/openapi.json", timeout=30).json()
    cases = [*CORPUS.values(), *ANTHROPIC_CORPUS.values()]
    covered = {case.path.split("/dl-")[0].split("/api/downloads/")[0] for case in cases}
    for path in document["paths"]:
        stem = path.split("/{")[0]
        assert stem.startswith("/health") or any(c.startswith(stem) for c in covered), path


def test_models_still_answer_after_the_corpus(inference: httpx.Client) -> None:
    assert inference.post(CHAT, json=chat(max_tokens=2)).status_code == 200
    assert inference.post(EMBEDDINGS, json=embed()).status_code == 200


def test_a_choice_xgrammar_cannot_jump_into_is_generated(inference: httpx.Client) -> None:
    # xgrammar hands back its jump-forward string cut inside a UTF-8 character: it was a 500.
    choice = '&"\u00e5\u008c'
    body = completion(max_tokens=20, structured_outputs={"choice": [choice]})
    resp = inference.post(COMPLETIONS, json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"] == choice
