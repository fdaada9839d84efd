"""Request fields that change what is generated, each checked to take effect (a field accepted and
silently ignored is the failure these tests catch): logit_bias, presence/frequency penalties, the
sampled token in completions' top_logprobs, a forced call cut by max_tokens."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.gateway.conftest import Dukat

CHAT = "tiny/tinyllama"
PROMPT = "The weather today is"


@pytest.fixture(scope="module")
def client(dukat: Dukat) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=dukat.base_url, api_key="x", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer(dukat: Dukat) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(dukat.models_dir / CHAT)


def greedy_tokens(client: openai.OpenAI, n: int = 6, **extra: Any) -> list[str]:
    out = client.completions.create(
        model=CHAT, prompt=PROMPT, max_tokens=n, temperature=0, logprobs=1, **extra
    )
    logprobs = out.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None
    return logprobs.tokens


def token_id(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return int(ids[0])


def test_logit_bias_forces_and_bans_tokens(client: openai.OpenAI, tokenizer: Any) -> None:
    plain = greedy_tokens(client)
    forced = next(
        i for i in range(300, 400) if tokenizer.decode([i]).strip() and tokenizer.decode([i]) not in plain
    )
    assert greedy_tokens(client, logit_bias={str(forced): 100}) == [tokenizer.decode([forced])] * len(plain)
    banned = token_id(tokenizer, plain[0])
    assert greedy_tokens(client, logit_bias={str(banned): -100})[0] != plain[0]
    chat = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=4,
        temperature=0,
        logit_bias={str(forced): 100},
    )
    assert chat.choices[0].message.content == tokenizer.decode([forced] * 4)


PROMPTS = ("The weather today is", "Once upon a time", "hello hello hello", "1 2 3 4 5", "a b a b a b")


def flip_point(client: openai.OpenAI, prompt: str) -> tuple[list[str], int] | None:
    """Greedy tokens of `prompt` and the first repeated token whose lead over the best token not yet
    generated is under 2 (a penalty of 2 on it must change the output there or before); None if none."""
    out = client.completions.create(model=CHAT, prompt=prompt, max_tokens=16, temperature=0, logprobs=5)
    logprobs = out.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None and logprobs.top_logprobs is not None
    tokens = logprobs.tokens
    for i, (token, top) in enumerate(zip(tokens, logprobs.top_logprobs, strict=True)):
        if token not in tokens[:i] or "\ufffd" in token:
            continue
        others = [lp for t, lp in top.items() if t not in tokens[:i + 1] and "\ufffd" not in t]
        if others and top[token] - max(others) < 2.0:
            return tokens, i
    return None


@pytest.mark.parametrize("field", ["presence_penalty", "frequency_penalty"])
def test_penalties_change_a_repeat_they_must_change(client: openai.OpenAI, field: str) -> None:
    points = [(prompt, found) for prompt in PROMPTS if (found := flip_point(client, prompt)) is not None]
    assert points, "no prompt repeats a token the penalty must change"
    for prompt, (plain, i) in points:
        out = client.completions.create(
            model=CHAT, prompt=prompt, max_tokens=16, temperature=0, logprobs=0, **{field: 2.0}
        )
        penalised = out.choices[0].logprobs.tokens  # type: ignore[union-attr]
        assert penalised[: i + 1] != plain[: i + 1], (prompt, field)


def test_completion_top_logprobs_always_hold_the_sampled_token(client: openai.OpenAI) -> None:
    for count in (0, 1, 2):
        out = client.completions.create(
            model=CHAT, prompt=PROMPT, max_tokens=5, temperature=1.5, seed=count, logprobs=count
        )
        logprobs = out.choices[0].logprobs
        assert logprobs is not None and logprobs.top_logprobs is not None and logprobs.tokens is not None
        for token, logprob, top in zip(
            logprobs.tokens, logprobs.token_logprobs or [], logprobs.top_logprobs, strict=True
        ):
            assert top[token] == logprob and count <= len(top) <= count + 1


def test_a_forced_call_that_cant_fit_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    params = {
        "type": "object",
        "properties": {"city": {"type": "string", "minLength": 5}},
        "required": ["city"],
    }
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": params}}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        out = client.chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "Weather?"}],
            tools=tools,
            tool_choice=choice,
            max_tokens=3,  # type: ignore[arg-type]
        )
        assert out.choices[0].finish_reason == "length" and not out.choices[0].message.tool_calls
