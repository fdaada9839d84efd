"""The engine: one loaded model answering generate, stream and embed requests, in process.

Generation is our own token loop (prefill, then one decode step per token over the KV cache,
sampling with a per-request generator). One loop gives streaming, stop strings, cancel and seeds,
and it is the unit a continuous batching scheduler will later drive. Streaming and whole replies
are the same path: `generate` consumes `stream`, so the two agree by construction.

Prompts: chat `messages` go through the tokenizer's chat template when it has one, else the
format's fallback rendering; a raw `prompt` with a `system_prompt` is the seed's
`generate(prompt, system_prompt)` prompt (`seed_prompt`) and is cleaned as a chat reply; a raw
`prompt` without one (`/v1/completions`) is sent as is and its output is kept as generated
(request stops and the model's end markers only).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from msgspec import Struct

from shared.cleaning import StopScanner, scanner_for, stop_strings
from shared.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotLoadedError,
    UnsupportedTaskError,
)
from shared.generation import (
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    SamplingParams,
    Timings,
)
from shared.model_types import ModelType, Task
from shared.prompts import render_fallback, seed_prompt, template_messages
from worker.detokenize import IncrementalDetokenizer
from worker.embedding import Embedder
from worker.loading import Loaded, Quantization, load_model
from worker.sampling import TokenSampler, resolve_params


class EngineInfo(Struct, kw_only=True, frozen=True):
    model_type: str
    task: str
    device: str
    quantization: str
    dtype: str
    memory_bytes: int
    context_length: int
    load_seconds: float


@dataclass(frozen=True, kw_only=True)
class _Plan:
    """One generation request, checked and tokenized, ready to run."""

    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    chat: bool  # chat cleaning (implied stops, role echo, strip) or raw completion
    stop_ids: frozenset[int]  # end-of-sequence ids and special tokens that are stop strings


class Engine:
    """Thread-safe: requests are served one at a time under a lock (batching comes later).

    A stream holds the lock until it is exhausted or closed.
    """

    def __init__(self, loaded: Loaded, model_type: ModelType) -> None:
        self._loaded: Loaded | None = loaded
        self._model_type = model_type
        self._lock = threading.Lock()
        self._info = EngineInfo(
            model_type=model_type.name,
            task=model_type.task.value,
            device=str(loaded.device),
            quantization=loaded.quantization,
            dtype=str(loaded.dtype).removeprefix("torch."),
            memory_bytes=loaded.memory_bytes,
            context_length=loaded.context_length,
            load_seconds=loaded.load_seconds,
        )
        self._embedder = (
            Embedder(loaded.model, loaded.tokenizer, context_length=loaded.context_length)
            if model_type.task is Task.EMBEDDING
            else None
        )
        self._eos_ids = _eos_ids(loaded.model, loaded.tokenizer)
        self._steps = _Stepper(loaded.model) if model_type.task is not Task.EMBEDDING else None

    @classmethod
    def load(
        cls, path: Path, *, model_type: ModelType, quantization: Quantization = "4bit", device: str = "auto"
    ) -> Engine:
        return cls(
            load_model(path, model_type=model_type, quantization=quantization, device=device), model_type
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    def generate(
        self,
        req: GenerateRequest,
        defaults: SamplingParams | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerateResult:
        """The whole reply: `stream` consumed to its end."""
        for item in self.stream(req, defaults, cancel):
            if isinstance(item, GenerateResult):
                return item
        raise AssertionError("stream ended without a result")

    def stream(
        self,
        req: GenerateRequest,
        defaults: SamplingParams | None = None,
        cancel: threading.Event | None = None,
    ) -> Generator[str | GenerateResult, None, None]:
        """Text deltas, then one GenerateResult whose text is the deltas joined.

        Request errors (task, prompt, context length) raise here, before the first item.
        """
        started = time.perf_counter()
        loaded = self._require_loaded()
        if self._model_type.task is Task.EMBEDDING:
            raise UnsupportedTaskError(
                f"{self._model_type.name} is an embedding model; it cannot generate text "
                "(use /v1/embeddings)",
                param="model",
            )
        plan = self._plan(loaded, req, defaults)
        return self._run(plan, cancel, started)

    def embed(self, req: EmbedRequest) -> EmbedResult:
        self._require_loaded()
        if self._embedder is None:
            raise UnsupportedTaskError(
                f"{self._model_type.name} is a {self._model_type.task.value} model; it does not make "
                "embeddings (use an embedding model such as bert or roberta)",
                param="model",
            )
        with self._lock:
            self._require_loaded()
            return self._embedder.embed(req)

    def close(self) -> None:
        """Drop the model; later calls raise ModelNotLoadedError. Waits for the running request."""
        with self._lock:
            self._loaded = None
            self._embedder = None
            self._steps = None

    def _require_loaded(self) -> Loaded:
        if self._loaded is None:
            raise ModelNotLoadedError("the model of this engine was closed")
        return self._loaded

    def _plan(self, loaded: Loaded, req: GenerateRequest, defaults: SamplingParams | None) -> _Plan:
        text, chat = self._prompt_text(loaded.tokenizer, req)
        ids = _tokenize(loaded.tokenizer, text)
        params = resolve_params(req.params, defaults)
        requested = params.max_new_tokens or 1
        context = loaded.context_length
        if len(ids) + 1 > context:
            where = "messages" if req.messages is not None else "prompt"
            raise ContextLengthExceededError(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{len(ids) + requested} tokens ({len(ids)} in the {where}, {requested} in the completion). "
                f"Please reduce the length of the {where} or completion.",
                param=where,
            )
        # Encoder-decoder models spend the context on the input only; the output has its own.
        room = context if self._model_type.task is Task.SEQ2SEQ else context - len(ids)
        stops = stop_strings(self._model_type, params.stop, chat=chat)
        return _Plan(
            prompt_ids=ids,
            params=params,
            max_new_tokens=min(requested, room),
            chat=chat,
            stop_ids=self._eos_ids | _special_stop_ids(loaded.tokenizer, stops),
        )

    def _prompt_text(self, tokenizer: Any, req: GenerateRequest) -> tuple[str, bool]:
        fmt = self._model_type.prompt_format
        if req.messages is not None:
            if req.prompt is not None:
                raise InvalidRequestError("give either messages or prompt, not both", param="messages")
            if getattr(tokenizer, "chat_template", None):
                return _apply_template(tokenizer, template_messages(req.messages, fmt)), True
            return render_fallback(req.messages, fmt), True
        if req.prompt is None:
            raise InvalidRequestError("either messages or prompt is required", param="messages")
        if req.system_prompt:
            return seed_prompt(req.prompt, req.system_prompt, fmt), True
        return req.prompt, False

    def _run(
        self, plan: _Plan, cancel: threading.Event | None, started: float
    ) -> Generator[str | GenerateResult, None, None]:
        with self._lock:
            loaded = self._require_loaded()
            assert self._steps is not None
            acquired = time.perf_counter()
            scanner = scanner_for(self._model_type, plan.params.stop, chat=plan.chat)
            detok = IncrementalDetokenizer(loaded.tokenizer)
            sampler = TokenSampler(plan.params, device=loaded.device)
            tokens = self._steps.tokens(
                plan.prompt_ids, sampler, seq2seq=self._model_type.task is Task.SEQ2SEQ
            )
            count, first, finish = 0, 0.0, "length"
            try:
                while count < plan.max_new_tokens:
                    if cancel is not None and cancel.is_set():
                        finish = "cancelled"
                        break
                    token = next(tokens)
                    count += 1
                    first = first or time.perf_counter()
                    if token in plan.stop_ids:
                        finish = "stop"
                        break
                    if text := scanner.feed(detok.feed(token)):
                        yield text
                    if scanner.stopped:
                        finish = "stop"
                        break
            finally:
                tokens.close()
            if tail := scanner.feed(detok.finish()) + scanner.finish():
                yield tail
            if scanner.stopped and finish == "length":
                finish = "stop"
            yield _result(scanner, finish, len(plan.prompt_ids), count, started, acquired, first)


class _Stepper:
    """The generation core for one sequence: prefill, then one decode step per token."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        # transformers 5 renamed past_key_values to cache; keep both working.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def tokens(
        self, prompt_ids: list[int], sampler: TokenSampler, *, seq2seq: bool
    ) -> Generator[int, None, None]:
        """Endless next tokens; the caller decides when to stop (and closes the iterator)."""
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self._device)
        inputs: dict[str, Any]
        with torch.inference_mode():
            if seq2seq:
                inputs = {"encoder_outputs": self._model.get_encoder()(input_ids=ids)}
                out = self._model(
                    **inputs, decoder_input_ids=self._column(_decoder_start(self._model)), use_cache=True
                )
            else:
                inputs = {}
                sampler.observe(prompt_ids)  # transformers' repetition penalty counts the prompt
                out = self._model(input_ids=ids, use_cache=True, **self._keep)
        while True:
            with torch.inference_mode():  # the sampler's tensors are inference tensors too
                token = sampler.choose(out.logits[0, -1])
                sampler.observe(token)
            yield token
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            step = {"decoder_input_ids" if seq2seq else "input_ids": self._column(token)}
            with torch.inference_mode():
                out = self._model(**inputs, **step, **{self._cache_kw: cache}, use_cache=True, **self._keep)

    def _column(self, token: int) -> torch.Tensor:
        return torch.tensor([[token]], dtype=torch.long, device=self._device)


def _result(
    scanner: StopScanner,
    finish: Any,
    prompt_tokens: int,
    count: int,
    started: float,
    acquired: float,
    first: float,
) -> GenerateResult:
    end = time.perf_counter()
    return GenerateResult(
        text=scanner.text,
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        completion_tokens=count,
        timings=Timings(
            queue_s=acquired - started,
            first_token_s=(first - started) if first else 0.0,
            total_s=end - started,
            tokens_per_s=count / (end - acquired) if end > acquired else 0.0,
        ),
    )


def _apply_template(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    import jinja2

    try:
        text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except jinja2.TemplateError as exc:  # the template's raise_exception(...): a bad conversation
        raise InvalidRequestError(
            f"the model's chat template refused the messages: {exc}", param="messages"
        ) from exc
    return text


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    """Token ids of the prompt; no second BOS when the text (e.g. a chat template's) has one."""
    bos = tokenizer.bos_token
    ids: list[int] = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos))).input_ids
    if not ids:  # an empty raw prompt: start from BOS (or EOS, GPT-2's document separator)
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        ids = [start]
    return ids


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def _special_stop_ids(tokenizer: Any, stops: list[str]) -> frozenset[int]:
    """Ids of added tokens (e.g. `<|user|>`) that are stop strings: decoding skips special tokens,
    so the text scanner would never see them."""
    added: dict[str, int] = tokenizer.get_added_vocab()
    return frozenset(added[s] for s in stops if s in added)


def _decoder_start(model: Any) -> int:
    for config in (getattr(model, "generation_config", None), model.config):
        start = getattr(config, "decoder_start_token_id", None)
        if start is not None:
            return int(start)
    return int(model.config.pad_token_id or 0)
