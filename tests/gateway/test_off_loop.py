"""Answers encoded in pieces (gateway/off_loop.py) are byte for byte what one `encode` gives."""

from __future__ import annotations

import msgspec

from gateway.off_loop import encoded_in_pieces, logprob_values
from gateway.schemas.chat import chat_response
from gateway.schemas.completions import completion_response
from shared.generation import GenerateResult, TokenLogprob, TopLogprob


def result(tokens: int, top: int, echo: int = 0) -> GenerateResult:
    def logprobs(count: int, first: str) -> list[TokenLogprob]:
        return [
            TokenLogprob(
                token=f'{first}{i}"\\\u00e9',  # escapes and non-ASCII inside the slices too
                logprob=None if i == 0 and first == "p" else -0.5 * i,
                bytes=f"{first}{i}".encode(),
                top=[TopLogprob(token=f"alt{j}", logprob=-1.0 - j, bytes=bytes([97, j])) for j in range(top)],
            )
            for i in range(count)
        ]

    return GenerateResult(
        text="t" * tokens,
        finish_reason="length",
        prompt_tokens=echo or 3,
        completion_tokens=tokens,
        logprobs=logprobs(tokens, "g"),
        prompt_text="p" * echo if echo else None,
        prompt_logprobs=logprobs(echo, "p") if echo else None,
    )


def test_a_chat_answer_with_long_logprob_lists_encodes_as_one_encode_would() -> None:
    results = [result(700, 5), result(3, 0), result(256, 2), result(257, 1)]
    whole = msgspec.json.encode(chat_response(results, "m", "rid", created=1))
    assert encoded_in_pieces(chat_response(results, "m", "rid", created=1)) == whole
    assert logprob_values(results) == 700 * 6 + 3 + 256 * 3 + 257 * 2


def test_a_completion_answer_with_an_echoed_prompt_encodes_as_one_encode_would() -> None:
    results = [result(300, 3, echo=600), result(10, 3, echo=600)]
    whole = msgspec.json.encode(completion_response(results, "m", "rid", created=1))
    assert encoded_in_pieces(completion_response(results, "m", "rid", created=1)) == whole
    assert logprob_values(results) == (300 + 600 + 10 + 600) * 4


def test_plain_values_and_lists_of_any_length_round_trip() -> None:
    class Holder(msgspec.Struct, omit_defaults=True):
        rows: list[int]
        nested: list[list[int]]
        short: list[str] = msgspec.field(default_factory=list)

    def value() -> Holder:
        return Holder(rows=list(range(1000)), nested=[list(range(300)), []], short=["a"])

    assert encoded_in_pieces(value()) == msgspec.json.encode(value())
