"""Generation on real tiny models: every family, greedy parity with transformers, seeds, stops,
lengths, context limits, cancel and task errors."""

from __future__ import annotations

import threading

import pytest
import torch

from shared.errors import ContextLengthExceededError, InvalidRequestError, UnsupportedTaskError
from shared.generation import EmbedRequest, GenerateRequest, GenerateResult, Message, SamplingParams
from tests.support.generation import stop_candidate
from tests.worker.conftest import EngineFor

CHAT_FAMILIES = ["llama", "tinyllama", "mistral", "gemma", "gpt2", "gpt_neox", "gptj", "gpt_neo", "falcon",
                 "bloom", "opt"]  # fmt: skip
PROMPT = "The quick brown fox"


def _chat(text: str = "What is the capital of France?", **params: object) -> GenerateRequest:
    return GenerateRequest(
        messages=[Message(role="system", content="Answer briefly."), Message(role="user", content=text)],
        params=SamplingParams(**params),  # type: ignore[arg-type]
    )


def _raw(prompt: str = PROMPT, **params: object) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, params=SamplingParams(**params))  # type: ignore[arg-type]


@pytest.mark.parametrize("family", [*CHAT_FAMILIES, "t5"])
def test_every_generating_family_answers_chat_messages(engine_for: EngineFor, family: str) -> None:
    result = engine_for(family).generate(_chat(temperature=0, max_new_tokens=12))
    assert result.finish_reason in ("stop", "length")
    assert 1 <= result.completion_tokens <= 12
    assert result.prompt_tokens > 5
    assert result.timings.total_s >= result.timings.first_token_s > 0


GREEDY_PARITY = ["llama", "gpt2", "gemma", "opt", "bloom", "t5", "gemma3", "mistral_sliding"]


@pytest.mark.parametrize("family", GREEDY_PARITY)
@pytest.mark.parametrize("repetition_penalty", [1.0, 1.3])
def test_temperature_zero_equals_transformers_greedy(
    engine_for: EngineFor, family: str, repetition_penalty: float
) -> None:
    engine = engine_for(family)
    model, tokenizer = engine._loaded.model, engine._loaded.tokenizer  # type: ignore[union-attr]
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    reference = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
        repetition_penalty=repetition_penalty,
    )[0]  # fmt: skip
    new_ids = reference[1:] if model.config.is_encoder_decoder else reference[ids.shape[1] :]
    new_ids = new_ids.tolist()
    ended = new_ids[-1] in engine._eos_ids
    expected = tokenizer.decode(new_ids, skip_special_tokens=True)

    result = engine.generate(_raw(temperature=0, max_new_tokens=24, repetition_penalty=repetition_penalty))
    assert result.text == expected
    assert result.completion_tokens == len(new_ids)
    assert result.finish_reason == ("stop" if ended else "length")


def test_top_k_one_and_tiny_top_p_are_greedy(engine_for: EngineFor) -> None:
    engine = engine_for("llama")
    greedy = engine.generate(_raw(temperature=0, max_new_tokens=16)).text
    assert engine.generate(_raw(temperature=1.5, top_k=1, seed=1, max_new_tokens=16)).text == greedy
    assert engine.generate(_raw(temperature=1.5, top_p=1e-6, seed=2, max_new_tokens=16)).text == greedy


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_same_seed_same_text_even_with_requests_in_between(engine_for: EngineFor, family: str) -> None:
    engine = engine_for(family)
    first = engine.generate(_raw(temperature=1.0, seed=1234, max_new_tokens=24))
    engine.generate(_raw(temperature=1.0, seed=99, max_new_tokens=24))
    engine.generate(_raw(temperature=1.0, max_new_tokens=24))  # unseeded
    torch.manual_seed(0)  # the global generator plays no part
    assert engine.generate(_raw(temperature=1.0, seed=1234, max_new_tokens=24)).text == first.text


def test_different_seeds_give_different_text(engine_for: EngineFor) -> None:
    engine = engine_for("llama")
    texts = {engine.generate(_raw(temperature=1.0, seed=seed, max_new_tokens=24)).text for seed in range(4)}
    assert len(texts) >= 3


def test_defaults_fill_unset_params_and_the_request_wins(engine_for: EngineFor) -> None:
    engine = engine_for("llama")
    defaults = SamplingParams(temperature=0, max_new_tokens=5)
    assert engine.generate(_raw(), defaults).completion_tokens == 5
    assert engine.generate(_raw(max_new_tokens=3), defaults).completion_tokens == 3


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "opt"])
def test_stop_string_cuts_the_reply_before_it(engine_for: EngineFor, family: str) -> None:
    engine = engine_for(family)
    full = engine.generate(_raw(temperature=0, max_new_tokens=40)).text
    stop = stop_candidate(full)
    result = engine.generate(_raw(temperature=0, max_new_tokens=40, stop=["never-there", stop]))
    assert result.text == full[: full.index(stop)]
    assert result.finish_reason == "stop"
    assert stop not in result.text


def test_max_new_tokens_ends_with_length(engine_for: EngineFor) -> None:
    engine = engine_for("llama")
    assert engine.generate(_raw(temperature=0, max_new_tokens=40)).finish_reason == "length"  # no EOS early
    result = engine.generate(_raw(temperature=0, max_new_tokens=7))
    assert (result.finish_reason, result.completion_tokens) == ("length", 7)


def test_prompt_longer_than_the_context_is_refused(engine_for: EngineFor) -> None:
    engine = engine_for("llama")
    with pytest.raises(ContextLengthExceededError, match="maximum context length is 512 tokens") as caught:
        engine.generate(_raw("hello " * 600, max_new_tokens=10))
    assert "in the prompt, 10 in the completion" in caught.value.message
    with pytest.raises(ContextLengthExceededError, match="in the messages"):
        engine.generate(_chat("hello " * 600))


def test_completion_is_clamped_to_the_room_left_in_the_context(engine_for: EngineFor) -> None:
    engine = engine_for("llama")
    tokenizer = engine._loaded.tokenizer  # type: ignore[union-attr]
    words = 1
    while len(tokenizer("the " * (words + 10)).input_ids) < 470:
        words += 10
    prompt = "the " * words
    prompt_tokens = len(tokenizer(prompt).input_ids)
    room = 512 - prompt_tokens
    assert 0 < room < 300
    result = engine.generate(_raw(prompt, temperature=0, max_new_tokens=300))
    assert result.prompt_tokens == prompt_tokens
    assert result.completion_tokens <= room
    if result.finish_reason == "length":
        assert result.completion_tokens == room


def test_cancel_from_another_thread_stops_generation(engine_for: EngineFor) -> None:
    engine = engine_for("llama")
    cancel = threading.Event()
    results = []
    worker = threading.Thread(
        target=lambda: results.append(engine.generate(_raw(temperature=0, max_new_tokens=480), cancel=cancel))
    )
    worker.start()
    threading.Timer(0.02, cancel.set).start()
    worker.join(timeout=30)
    assert results[0].finish_reason == "cancelled"
    assert results[0].completion_tokens < 480


def test_cancel_stops_within_one_token(engine_for: EngineFor) -> None:
    engine = engine_for("llama")
    cancel = threading.Event()
    texts: list[str] = []
    done: list[GenerateResult | BaseException] = []
    finished = threading.Event()

    def on_text(text: str) -> None:
        texts.append(text)
        cancel.set()  # on the scheduler thread, at the first delta: no scheduling race with a reader

    def on_done(item: GenerateResult | BaseException) -> None:
        done.append(item)
        finished.set()

    engine.start(_raw(temperature=0, max_new_tokens=200), cancel=cancel, on_text=on_text, on_done=on_done)
    assert finished.wait(60)
    result = done[0]
    assert isinstance(result, GenerateResult)
    assert result.finish_reason == "cancelled"
    # No token after the one that produced the first delta: the same text as a run that length-stops there.
    uncancelled = engine.generate(_raw(temperature=0, max_new_tokens=result.completion_tokens))
    assert uncancelled.text == result.text == "".join(texts)
    assert result.completion_tokens <= 3


def test_cancel_before_the_start_generates_nothing(engine_for: EngineFor) -> None:
    cancel = threading.Event()
    cancel.set()
    result = engine_for("llama").generate(_raw(max_new_tokens=10), cancel=cancel)
    assert (result.finish_reason, result.completion_tokens, result.text) == ("cancelled", 0, "")


def test_system_prompt_uses_the_seed_format_with_a_single_bos(engine_for: EngineFor) -> None:
    engine = engine_for("llama")  # INST format, no chat template: "<s>[INST] {system}\n\n{prompt} [/INST]"
    tokenizer = engine._loaded.tokenizer  # type: ignore[union-attr]
    text = "<s>[INST] Be brief.\n\nHi there [/INST]"
    request = GenerateRequest(
        prompt="Hi there", system_prompt="Be brief.", params=SamplingParams(max_new_tokens=1)
    )
    result = engine.generate(request)
    assert result.prompt_tokens == len(tokenizer(text, add_special_tokens=False).input_ids)
    same_as_chat = GenerateRequest(
        messages=[Message(role="system", content="Be brief."), Message(role="user", content="Hi there")],
        params=SamplingParams(max_new_tokens=1),
    )
    assert engine.generate(same_as_chat).prompt_tokens == result.prompt_tokens


def test_chat_template_is_used_when_the_tokenizer_has_one(engine_for: EngineFor) -> None:
    engine = engine_for("mistral")  # its template refuses a system role; the engine folds it
    tokenizer = engine._loaded.tokenizer  # type: ignore[union-attr]
    result = engine.generate(_chat(max_new_tokens=1))
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Answer briefly.\n\nWhat is the capital of France?"}],
        tokenize=False, add_generation_prompt=True,
    )  # fmt: skip
    assert result.prompt_tokens == len(tokenizer(expected, add_special_tokens=False).input_ids)


def test_messages_and_prompt_together_are_refused(engine_for: EngineFor) -> None:
    request = GenerateRequest(prompt="x", messages=[Message(role="user", content="y")])
    with pytest.raises(InvalidRequestError, match="not both"):
        engine_for("llama").generate(request)
    with pytest.raises(InvalidRequestError, match="required"):
        engine_for("llama").generate(GenerateRequest())


def test_generate_on_an_embedding_model_is_unsupported(engine_for: EngineFor) -> None:
    with pytest.raises(UnsupportedTaskError, match="embedding model"):
        engine_for("bert").generate(_raw())
    with pytest.raises(UnsupportedTaskError):
        engine_for("roberta").stream(_raw())


def test_embed_on_a_chat_model_is_unsupported(engine_for: EngineFor) -> None:
    with pytest.raises(UnsupportedTaskError, match="does not make embeddings"):
        engine_for("llama").embed(EmbedRequest(inputs=["hello"]))


def test_concurrent_requests_from_threads_all_complete(engine_for: EngineFor) -> None:
    engine = engine_for("gpt2")
    expected = engine.generate(_raw(temperature=0.9, seed=5, max_new_tokens=20)).text
    texts: list[str] = []

    def run() -> None:
        texts.append(engine.generate(_raw(temperature=0.9, seed=5, max_new_tokens=20)).text)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert texts == [expected] * 4


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.8},
        {"temperature": 1.2, "top_k": 20},
        {"temperature": 0.9, "top_p": 0.8},
        {"temperature": 1.0, "top_k": 30, "top_p": 0.9, "repetition_penalty": 1.3},
    ],
)
def test_seeded_sampling_equals_transformers_sampling_from_the_same_seed(
    engine_for: EngineFor, params: dict[str, float]
) -> None:
    """Our per-request generator draws what `generate` draws from the global one seeded alike."""
    engine = engine_for("gpt2")
    model, tokenizer = engine._loaded.model, engine._loaded.tokenizer  # type: ignore[union-attr]
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    torch.manual_seed(77)
    reference = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=24,
        top_k=int(params.get("top_k", 0)), top_p=params.get("top_p", 1.0),
        temperature=params["temperature"], repetition_penalty=params.get("repetition_penalty", 1.0),
    )[0, ids.shape[1] :].tolist()  # fmt: skip
    result = engine.generate(_raw(seed=77, max_new_tokens=24, **params))
    assert result.text == tokenizer.decode(reference, skip_special_tokens=True)
