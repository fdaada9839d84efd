"""Continuous batching on real tiny models: concurrent requests give exactly what they give alone
(sliding-window and hybrid caches too; 8-bit within its documented bound), with their own
sampling, stops, lengths, seeds and cancels; the queue is bounded."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from shared.errors import ModelNotLoadedError, OverloadedError
from shared.generation import GenerateRequest, GenerateResult, Message, SamplingParams
from shared.model_types import get_model_type
from tests.support.generation import stop_candidate
from tests.worker.conftest import NewEngine
from worker.model.batching import prefill_groups
from worker.model.engine import Engine

BATCHED_FAMILIES = [
    "llama",
    "mistral",
    "gemma",
    "gpt2",
    "gpt_neox",
    "gptj",
    "gpt_neo",
    "falcon",
    "bloom",
    "opt",
    "gemma3",
    "mistral_sliding",
]
OWN_STEP = {"llama", "mistral", "gemma", "gemma3", "mistral_sliding"}
PROMPTS = [
    "The quick brown fox",
    "Once upon a time there was a king who had three daughters, and",
    "Hi",
    "What is the capital of France? The capital",
    "Numbers like 1, 2, 3",
    "The river runs through the valley, past the old mill and under the stone bridge to the sea where",
    "A",
    "Good morning! How are you today?",
]
def _raw(prompt: str, **params: Any) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, params=SamplingParams(**params))


def _chat(text: str, **params: Any) -> GenerateRequest:
    messages = [Message(role="system", content="Answer briefly."), Message(role="user", content=text)]
    return GenerateRequest(messages=messages, params=SamplingParams(**params))


def _concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call on its own thread, all released at once; their results in order."""
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _summary(result: GenerateResult) -> tuple[str, str, int]:
    return result.text, result.finish_reason, result.completion_tokens


def _mixed_greedy_requests() -> list[GenerateRequest]:
    """12 requests: raw and chat prompts of different lengths, each with its own max_new_tokens."""
    raw = [_raw(p, temperature=0, max_new_tokens=12 + 5 * i) for i, p in enumerate(PROMPTS)]
    chat = [_chat(p, temperature=0, max_new_tokens=30 - 4 * i) for i, p in enumerate(PROMPTS[:4])]
    return raw + chat


@pytest.mark.parametrize("family", [*BATCHED_FAMILIES, "t5"])
def test_concurrent_greedy_requests_give_their_lone_text(new_engine: NewEngine, family: str) -> None:
    engine = new_engine(family)
    requests = _mixed_greedy_requests()
    alone = [_summary(engine.generate(r)) for r in requests]
    together = [_summary(r) for r in _concurrently([partial(engine.generate, r) for r in requests])]
    assert together == alone
    scheduler = engine._scheduler
    assert scheduler is not None
    assert scheduler.batched is (family != "t5")  # encoder-decoder: each request on its own cache
    assert scheduler.peak_rows > 1  # they really ran together
    # The Llama-style families decode on Dukat's own step (worker/model/decode_step.py).
    assert (scheduler.decode_refusal is None) is (family in OWN_STEP), scheduler.decode_refusal


def test_stops_and_lengths_differ_per_request_in_one_batch(new_engine: NewEngine) -> None:
    engine = new_engine("llama")
    full = [engine.generate(_raw(p, temperature=0, max_new_tokens=40)).text for p in PROMPTS]
    stops = [stop_candidate(text) for text in full]
    # Odd requests stop at a string, even ones at their own length.
    requests = [
        _raw(p, temperature=0, max_new_tokens=40, stop=[stop])
        if i % 2
        else _raw(p, temperature=0, max_new_tokens=3 + i)
        for i, (p, stop) in enumerate(zip(PROMPTS, stops, strict=True))
    ]
    alone = [_summary(engine.generate(r)) for r in requests]
    together = [_summary(r) for r in _concurrently([partial(engine.generate, r) for r in requests])]
    assert together == alone
    for i, (text, finish, count) in enumerate(together):
        if i % 2:
            assert finish == "stop" and text == full[i][: full[i].index(stops[i])]
        else:
            assert (finish, count) == ("length", 3 + i)


def test_each_request_keeps_its_own_sampling_and_seed_in_a_batch(new_engine: NewEngine) -> None:
    engine = new_engine("gpt2")
    variants: list[dict[str, Any]] = [
        {"temperature": 1.0, "seed": 1},
        {"temperature": 0.7, "top_p": 0.9, "seed": 2},
        {"temperature": 1.2, "top_k": 20, "seed": 3},
        {"temperature": 0.9, "repetition_penalty": 1.3, "seed": 4},
        {"temperature": 0},
        {"temperature": 0, "repetition_penalty": 1.3},
        {"temperature": 1.0, "seed": 1},  # the same seed twice in one batch: the same text twice
        {"temperature": 1.0, "seed": 5},
    ]
    requests = [_raw(PROMPTS[i % 3], max_new_tokens=24, **v) for i, v in enumerate(variants)]
    alone = [engine.generate(r).text for r in requests]
    together = [r.text for r in _concurrently([partial(engine.generate, r) for r in requests])]
    assert together == alone
    assert together[0] != together[7]


def test_streams_join_to_the_generate_text_under_concurrency(new_engine: NewEngine) -> None:
    engine = new_engine("llama")
    requests = [
        _raw(p, temperature=1.0, seed=i, max_new_tokens=30, stop=["e t"]) for i, p in enumerate(PROMPTS)
    ]

    def streamed(r: GenerateRequest) -> tuple[str, str]:
        *deltas, result = list(engine.stream(r))
        assert isinstance(result, GenerateResult)
        assert "".join(str(d) for d in deltas) == result.text
        return result.text, result.finish_reason

    calls: list[Callable[[], Any]] = [partial(streamed, r) for r in requests]
    calls += [partial(engine.generate, r) for r in requests]
    results = _concurrently(calls)
    assert results[: len(requests)] == [(g.text, g.finish_reason) for g in results[len(requests) :]]


def test_cancelling_one_request_leaves_the_others_intact(new_engine: NewEngine) -> None:
    engine = new_engine("llama")
    requests = [_raw(p, temperature=0, max_new_tokens=60) for p in PROMPTS]
    alone = [engine.generate(r).text for r in requests]
    cancel = threading.Event()

    def cancelled_after_two_deltas() -> GenerateResult:
        items = engine.stream(requests[0], cancel=cancel)
        next(items), next(items)
        cancel.set()
        *_, result = list(items)
        assert isinstance(result, GenerateResult)
        return result

    def closed_after_one_delta() -> str:
        stream = engine.stream(requests[1])
        first = next(stream)
        stream.close()  # a client that went away
        return str(first)

    calls: list[Callable[[], Any]] = [cancelled_after_two_deltas, closed_after_one_delta]
    calls += [partial(engine.generate, r) for r in requests[2:]]
    cancelled, first, *others = _concurrently(calls)
    assert [r.text for r in others] == alone[2:]
    assert cancelled.finish_reason == "cancelled" and cancelled.completion_tokens < 60
    assert alone[0].startswith(cancelled.text)
    assert alone[1].startswith(first)


@pytest.mark.parametrize("family", ["mistral", "mistral_sliding", "gemma3"])
def test_a_request_joining_mid_generation_is_correct(new_engine: NewEngine, family: str) -> None:
    engine = new_engine(family)
    early = [_raw(p, temperature=0, max_new_tokens=300) for p in PROMPTS[:3]]
    late = [_raw(p, temperature=0, max_new_tokens=20 + i) for i, p in enumerate(PROMPTS[3:])]
    alone = [engine.generate(r).text for r in early + late]
    streams = [engine.stream(r) for r in early]
    heads = [next(s) for s in streams]  # the early ones are generating now
    joined = [r.text for r in _concurrently([partial(engine.generate, r) for r in late])]
    tails = ["".join(str(i) for i in s if isinstance(i, str)) for s in streams]
    assert [str(h) + t for h, t in zip(heads, tails, strict=True)] + joined == alone
    assert engine._scheduler is not None and engine._scheduler.peak_rows > len(early)


def test_requests_beyond_the_batch_and_the_queue_are_refused(new_engine: NewEngine) -> None:
    engine = new_engine("llama", max_batch=2, max_queue=1)
    streams = [engine.stream(_raw(p, temperature=0, max_new_tokens=400)) for p in PROMPTS[:3]]
    with pytest.raises(OverloadedError, match="busy") as refused:
        engine.stream(_raw("one too many", max_new_tokens=5))
    assert (refused.value.status, refused.value.code) == (429, "overloaded")
    del streams  # dropped unread: their requests end and free their places
    deadline = time.monotonic() + 10
    while True:
        try:
            assert engine.generate(_raw("now there is room", max_new_tokens=3)).completion_tokens == 3
            break
        except OverloadedError:
            assert time.monotonic() < deadline, "dropped streams never freed their places"
            time.sleep(0.01)


def test_closing_a_stream_before_its_first_item_frees_its_place(new_engine: NewEngine) -> None:
    engine = new_engine("llama", max_batch=1, max_queue=1)
    long = _raw("Once upon a time", temperature=0, max_new_tokens=480)
    whole_run = engine.generate(long).timings.total_s
    running = engine.stream(long)
    waiting = engine.stream(_raw("Hi", temperature=0, max_new_tokens=3))
    running.close()  # never started: a plain generator would run none of its code
    *_, result = list(waiting)
    assert isinstance(result, GenerateResult) and result.completion_tokens == 3
    assert result.timings.queue_s < whole_run / 2  # it did not wait for the closed one's 480 tokens


def test_close_lets_running_requests_finish_then_refuses(new_engine: NewEngine) -> None:
    engine = new_engine("gpt2")
    expected = engine.generate(_raw("Hi", temperature=0, max_new_tokens=50)).text
    stream = engine.stream(_raw("Hi", temperature=0, max_new_tokens=50))
    first = next(stream)
    engine.close()
    assert str(first) + "".join(str(i) for i in stream if isinstance(i, str)) == expected
    with pytest.raises(ModelNotLoadedError):
        engine.generate(_raw("Hi", max_new_tokens=3))


def test_suppressed_tokens_of_the_generation_config_are_never_generated(tiny_model_dir: Any) -> None:
    """`suppress_tokens` (the demo model blocks lone bytes with it) holds greedy and sampled, batched."""
    probe = Engine.load(tiny_model_dir("llama"), model_type=get_model_type("llama"), quantization="none")
    loaded = probe._loaded
    assert loaded is not None
    allowed = {loaded.tokenizer.convert_tokens_to_ids(t) for t in ("Ġthe", "Ġand")}
    assert None not in allowed and loaded.tokenizer.unk_token_id not in allowed
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    loaded.model.generation_config.suppress_tokens = [i for i in range(vocab) if i not in allowed]
    engine = Engine(loaded, get_model_type("llama"))  # reads the generation config at start
    for temperature in (0.0, 1.0):
        params = SamplingParams(max_new_tokens=8, temperature=temperature, seed=3)
        result = engine.generate(GenerateRequest(prompt="The", params=params))
        assert result.completion_tokens == 8
        assert re.fullmatch(r"( (the|and))+", result.text), result.text
    engine.close()


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_rows_on_cpu_batch_exactly(new_engine: NewEngine, quantization: str) -> None:
    """The CPU block kernels compute each row on its own: batched greedy text is the text alone."""
    engine = new_engine("llama", quantization=quantization)
    assert engine._scheduler is not None and engine._scheduler.batched
    requests = _mixed_greedy_requests()
    alone = [engine.generate(r) for r in requests]
    together = _concurrently([partial(engine.generate, r) for r in requests])
    assert engine._scheduler.peak_rows > 1
    assert [r.text for r in together] == [r.text for r in alone]
    assert all(r.completion_tokens > 0 for r in alone)


@pytest.mark.parametrize(
    ("lengths", "groups"),
    [
        ([30, 28, 33, 31], [[1, 0, 3, 2]]),  # similar lengths: one prefill
        ([400, 12, 10, 11], [[2, 3, 1], [0]]),  # the long prompt pads nobody: it goes last, alone
        ([5], [[0]]),
        ([], []),
        ([10, 20, 20, 40], [[0, 1, 2], [3]]),  # short ones padded together: under the slack
        ([100, 200, 200, 400], [[0], [1, 2], [3]]),
    ],
)
def test_prefills_are_grouped_by_length_shortest_first(lengths: list[int], groups: list[list[int]]) -> None:
    assert prefill_groups(lengths) == groups
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
