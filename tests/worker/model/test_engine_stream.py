"""Streaming: deltas agree with whole replies, and incremental detokenization is exact."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.generation import GenerateRequest, GenerateResult, Message, SamplingParams
from tests.worker.conftest import EngineFor
from worker.model.detokenize import IncrementalDetokenizer, StreamDetokenizer, detokenizer
from worker.model.engine import Engine

MULTIBYTE = "Tokyo is 東京, café au lait, naïve Zoë in Köln: 😀👋 costs 5 € or £4 — Ελληνικά, русский."


def _split(items: list[str | GenerateResult]) -> tuple[list[str], GenerateResult]:
    *deltas, last = items
    assert isinstance(last, GenerateResult)
    assert all(isinstance(d, str) and d for d in deltas)
    return deltas, last  # type: ignore[return-value]


def _request(chat: bool, **params: Any) -> GenerateRequest:
    if chat:
        messages = [
            Message(role="system", content="Be kind."),
            Message(role="user", content="Tell me a story."),
        ]
        return GenerateRequest(messages=messages, params=SamplingParams(**params))
    return GenerateRequest(prompt="Once upon a time", params=SamplingParams(**params))


@pytest.mark.parametrize("family", ["llama", "tinyllama", "gemma", "gpt2", "falcon", "t5"])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("chat", [True, False])
def test_stream_deltas_join_to_the_whole_reply(
    engine_for: EngineFor, family: str, seed: int, chat: bool
) -> None:
    engine = engine_for(family)
    request = _request(chat, temperature=1.0, seed=seed, max_new_tokens=48, stop=["e t"])
    whole = engine.generate(request)
    deltas, result = _split(list(engine.stream(request)))
    assert "".join(deltas) == result.text == whole.text
    assert (result.finish_reason, result.completion_tokens) == (whole.finish_reason, whole.completion_tokens)
    assert result.prompt_tokens == whole.prompt_tokens


def test_chat_replies_are_stripped_and_raw_completions_are_not(engine_for: EngineFor) -> None:
    engine = engine_for("gpt2")
    for seed in range(6):
        chat = engine.generate(_request(True, temperature=1.0, seed=seed, max_new_tokens=24)).text
        assert chat == chat.strip()
    raw = [
        engine.generate(_request(False, temperature=1.0, seed=s, max_new_tokens=24)).text for s in range(6)
    ]
    assert any(text != text.strip() for text in raw)  # byte-level models start most words with a space


def test_abandoned_stream_releases_the_engine(engine_for: EngineFor) -> None:
    engine = engine_for("llama")
    stream = engine.stream(_request(False, temperature=0, max_new_tokens=100))
    next(stream)
    stream.close()  # a client that went away
    done = threading.Event()

    def run() -> None:
        engine.generate(_request(False, max_new_tokens=3))
        done.set()

    threading.Thread(target=run).start()
    assert done.wait(timeout=10)


@pytest.fixture(scope="module")
def tokenizers(engine_for: EngineFor) -> dict[str, Any]:
    return {f: engine_for(f)._loaded.tokenizer for f in ("llama", "gpt2", "t5", "gemma")}  # type: ignore[union-attr]


def _stream_ids(tokenizer: Any, ids: list[int], *, fallback: bool = False) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(tokenizer) if fallback else detokenizer(tokenizer)
    deltas = [detok.feed(i) for i in ids]
    return deltas, detok.finish()


def test_fast_tokenizers_stream_through_tokenizers_decode_stream(tokenizers: dict[str, Any]) -> None:
    assert all(isinstance(detokenizer(t), StreamDetokenizer) for t in tokenizers.values())


@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize("family", ["llama", "gpt2", "t5", "gemma"])
def test_multibyte_text_streams_without_replacement_characters(
    tokenizers: dict[str, Any], family: str, fallback: bool
) -> None:
    tokenizer = tokenizers[family]
    ids = tokenizer(MULTIBYTE, add_special_tokens=False).input_ids
    assert len(ids) > len(MULTIBYTE.encode()) // 3  # byte pieces: characters span several tokens
    deltas, tail = _stream_ids(tokenizer, ids, fallback=fallback)
    assert "".join(deltas) == MULTIBYTE and tail == ""
    assert not any("\ufffd" in d for d in deltas)
    assert sum(1 for d in deltas if d == "") > 0  # some tokens completed no character and were held


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(blacklist_characters="\ufffd", blacklist_categories=["Cs"]), max_size=60))
def test_any_text_round_trips_through_the_detokenizer(tokenizers: dict[str, Any], text: str) -> None:
    for tokenizer in tokenizers.values():
        ids = tokenizer(text, add_special_tokens=False).input_ids
        for fallback in (False, True):
            deltas, tail = _stream_ids(tokenizer, ids, fallback=fallback)
            assert "".join(deltas) + tail == tokenizer.decode(ids, skip_special_tokens=True)
            assert not any("\ufffd" in d for d in deltas)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(min_value=0, max_value=767), max_size=40))
def test_any_id_sequence_joins_to_the_full_decode(tokenizers: dict[str, Any], picks: list[int]) -> None:
    # Random ids make invalid UTF-8 and special tokens too; the deltas still join to the full decode.
    for tokenizer in tokenizers.values():
        for fallback in (False, True):
            deltas, tail = _stream_ids(tokenizer, picks, fallback=fallback)
            assert "".join(deltas) + tail == tokenizer.decode(picks, skip_special_tokens=True)


class _Pushed:
    """What `Engine.start` pushed for one request, from the scheduler's thread."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.done: GenerateResult | BaseException | None = None
        self.steps = 0
        self.finished = threading.Event()

    def on_text(self, text: str) -> None:
        assert not self.finished.is_set()
        self.texts.append(text)

    def on_done(self, item: GenerateResult | BaseException) -> None:
        assert not self.finished.is_set()
        self.done = item
        self.finished.set()

    def on_step(self) -> None:
        self.steps += 1


def _start(engine: Engine, request: GenerateRequest, cancel: threading.Event | None = None) -> _Pushed:
    pushed = _Pushed()
    engine.start(
        request, None, cancel, on_text=pushed.on_text, on_done=pushed.on_done, on_step=pushed.on_step
    )
    return pushed


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("chat", [True, False])
def test_pushed_replies_equal_the_pulled_stream(engine_for: EngineFor, family: str, chat: bool) -> None:
    engine = engine_for(family)
    requests = [_request(chat, temperature=1.0, seed=s, max_new_tokens=40, stop=["e t"]) for s in range(4)]
    expected = [_split(list(engine.stream(r))) for r in requests]
    pushed = [_start(engine, r) for r in requests]  # all at once: one batch
    for p, (deltas, whole) in zip(pushed, expected, strict=True):
        assert p.finished.wait(timeout=30)
        assert isinstance(p.done, GenerateResult)
        assert p.texts == deltas
        assert p.done.text == whole.text == "".join(p.texts)
        assert p.done.finish_reason == whole.finish_reason
        assert p.done.completion_tokens == whole.completion_tokens
        assert p.steps >= 1


def test_pushed_request_is_cancelled_and_frees_its_place(engine_for: EngineFor) -> None:
    engine = engine_for("llama")
    cancel = threading.Event()
    pushed = _start(engine, _request(False, temperature=0, max_new_tokens=400), cancel)
    cancel.set()
    assert pushed.finished.wait(timeout=30)
    assert isinstance(pushed.done, GenerateResult)
    assert pushed.done.finish_reason == "cancelled"
    assert engine.generate(_request(False, max_new_tokens=3)).completion_tokens >= 1


def test_pushed_request_errors_raise_before_anything_is_pushed(engine_for: EngineFor) -> None:
    from shared.errors import ContextLengthExceededError

    engine = engine_for("llama")
    pushed = _Pushed()
    with pytest.raises(ContextLengthExceededError):
        engine.start(
            GenerateRequest(prompt="word " * 5000, params=SamplingParams(max_new_tokens=4)),
            on_text=pushed.on_text,
            on_done=pushed.on_done,
            on_step=pushed.on_step,
        )
    assert pushed.done is None and not pushed.texts
