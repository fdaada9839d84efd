"""Constrained decoding, tool calls, logprobs and vLLM's extensions through the engine's one path
(the scheduler, its batch, the reply) on a tiny random-weight model."""

from __future__ import annotations

import json
import math
import threading

import jsonschema
import pytest

from shared.errors import InvalidRequestError
from shared.generation import Constraint, GenerateRequest, GenerateResult, Message, SamplingParams, ToolUse
from tests.worker.conftest import EngineFor

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "height": {"type": "number"},
        "member": {"type": "boolean"},
        "role": {"enum": ["admin", "user", "guest"]},
        "pets": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"kind": {"type": "string"}, "legs": {"type": "integer"}},
                "required": ["kind", "legs"],
            },
        },
    },
    "required": ["name", "age", "height", "member", "role", "pets"],
}
HI = [Message(role="user", content="Describe a person as JSON.")]


def request(**kwargs: object) -> GenerateRequest:
    params = kwargs.pop("params", SamplingParams(temperature=1.0, max_new_tokens=256))
    return GenerateRequest(messages=HI, params=params, **kwargs)  # type: ignore[arg-type]


def run_together(engine, requests: list[GenerateRequest]) -> list[GenerateResult]:
    """Generate concurrently, so the rows share the scheduler's batch."""
    results: list[GenerateResult | None] = [None] * len(requests)

    def one(i: int) -> None:
        results[i] = engine.generate(requests[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def test_strict_schema_outputs_validate_for_many_seeds_beside_free_rows(engine_for: EngineFor) -> None:
    engine = engine_for("tinyllama")
    schema = Constraint(kind="json", schema=json.dumps(PERSON))
    constrained = [
        request(constraint=schema, params=SamplingParams(temperature=1.5, seed=s, max_new_tokens=256))
        for s in range(10)
    ]
    free = [request(params=SamplingParams(temperature=1.0, seed=s, max_new_tokens=64)) for s in range(3)]
    results = run_together(engine, constrained + free)
    for result in results[:10]:
        jsonschema.validate(json.loads(result.text), PERSON)
        assert result.completion_tokens <= 256 and result.finish_reason == "stop"
    alone = engine.generate(free[0])
    assert results[10].text == alone.text  # a free row beside constrained ones is unchanged


def test_a_forced_call_is_a_valid_call_of_an_offered_tool(engine_for: EngineFor) -> None:
    engine = engine_for("tinyllama")
    params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": params}}]
    calls_schema = {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "properties": {"name": {"const": "get_weather"}, "arguments": params},
            "required": ["name", "arguments"],
        },
    }
    req = request(
        tools=ToolUse(tools=tools, parsing="calls"),
        constraint=Constraint(kind="json", schema=json.dumps(calls_schema)),
        params=SamplingParams(temperature=1.0, seed=3, max_new_tokens=48),
    )
    result = engine.generate(req)
    assert result.finish_reason == "tool_calls" and result.text == ""
    assert result.tool_calls and result.tool_calls[0].function.name == "get_weather"
    assert result.tool_calls[0].id.startswith("call_")
    jsonschema.validate(json.loads(result.tool_calls[0].function.arguments), params)  # type: ignore[arg-type]


def test_a_budget_too_small_for_the_schema_is_a_400_before_generating(engine_for: EngineFor) -> None:
    engine = engine_for("tinyllama")
    schema = Constraint(kind="json", schema=json.dumps(PERSON))
    with pytest.raises(InvalidRequestError, match="raise max_tokens"):
        engine.generate(request(constraint=schema, params=SamplingParams(max_new_tokens=8)))


def test_logprobs_of_greedy_tokens_are_their_top_alternative(engine_for: EngineFor) -> None:
    engine = engine_for("tinyllama")
    result = engine.generate(request(logprobs=3, params=SamplingParams(temperature=0, max_new_tokens=6)))
    assert result.logprobs is not None and len(result.logprobs) == result.completion_tokens
    for entry in result.logprobs:
        assert entry.logprob is not None and entry.logprob <= 0
        assert len(entry.top) == 3 and entry.top[0].token == entry.token
        assert math.isclose(entry.top[0].logprob, entry.logprob)
        assert bytes(entry.bytes).decode(errors="replace") == entry.token
    assert "".join(e.token for e in result.logprobs) == result.text


def test_echo_with_no_new_tokens_scores_a_token_id_prompt(engine_for: EngineFor) -> None:
    engine = engine_for("tinyllama")
    ids = engine._loaded.tokenizer("the cat sat on the mat").input_ids  # type: ignore[union-attr]
    req = GenerateRequest(prompt_ids=ids, echo=True, logprobs=1, params=SamplingParams(max_new_tokens=0))
    result = engine.generate(req)
    assert result.completion_tokens == 0 and result.text == ""
    assert result.prompt_logprobs is not None and len(result.prompt_logprobs) == len(ids)
    assert result.prompt_logprobs[0].logprob is None
    assert all(e.logprob is not None and e.logprob <= 0 for e in result.prompt_logprobs[1:])
    assert "cat sat" in (result.prompt_text or "")


def test_out_of_vocabulary_token_ids_are_a_400(engine_for: EngineFor) -> None:
    with pytest.raises(InvalidRequestError, match="outside this model's vocabulary"):
        engine_for("tinyllama").generate(GenerateRequest(prompt_ids=[1, 10**9]))


def test_min_tokens_ignore_eos_and_stop_token_ids(engine_for: EngineFor) -> None:
    engine = engine_for("tinyllama")
    eos = engine._loaded.tokenizer.eos_token_id  # type: ignore[union-attr]
    base = {"temperature": 1.0, "max_new_tokens": 24}
    for seed in range(3):
        longer = engine.generate(request(params=SamplingParams(**base, seed=seed, min_tokens=24)))
        assert longer.completion_tokens == 24
        ignoring = engine.generate(request(params=SamplingParams(**base, seed=seed, ignore_eos=True)))
        assert ignoring.completion_tokens == 24
    first = engine.generate(request(params=SamplingParams(temperature=0, max_new_tokens=5), logprobs=0))
    assert first.logprobs
    token = engine._grammars_for(engine._loaded).vocab.index(bytes(first.logprobs[1].bytes))  # type: ignore[union-attr,arg-type]
    stopped = engine.generate(
        request(params=SamplingParams(temperature=0, max_new_tokens=5, stop_token_ids=[token]))
    )
    assert stopped.finish_reason == "stop" and stopped.completion_tokens <= 2
    assert eos is not None
