"""The engine: one loaded model answering generate, stream and embed requests, in process.

Generation is our own token loop (prefill, then one decode step per token over the KV cache,
sampling with a per-request generator), driven for all concurrent requests at once by the
continuous batching scheduler (worker/batching.py). The scheduler makes token ids; each request's
stream turns them into text here (detokenization, stop strings, cancel, timings). Streaming and
whole replies are the same path: `generate` consumes `stream`, so the two agree by construction.

Prompts: chat `messages` go through the tokenizer's chat template when it has one, else the
format's fallback rendering; a raw `prompt` with a `system_prompt` is the seed's
`generate(prompt, system_prompt)` prompt (`seed_prompt`) and is cleaned as a chat reply; a raw
`prompt` without one (`/v1/completions`) is sent as is and its output is kept as generated
(request stops and the model's end markers only).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

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
from shared.wire import EngineInfo
from worker.batching import Job, Scheduler
from worker.detokenize import IncrementalDetokenizer
from worker.embedding import Embedder
from worker.loading import Loaded, Quantization, load_model
from worker.sampling import TokenSampler, resolve_params

logger = logging.getLogger(__name__)

# The settings' defaults (DUKAT_MAX_BATCH, DUKAT_MAX_QUEUE).
DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_QUEUE = 64


@dataclass(frozen=True, kw_only=True)
class _Plan:
    """One generation request, checked and tokenized, ready to run."""

    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    chat: bool  # chat cleaning (implied stops, role echo, strip) or raw completion
    stop_ids: frozenset[int]  # end-of-sequence ids and special tokens that are stop strings


class Engine:
    """Thread-safe. Generation requests from any number of threads are batched by one scheduler:
    `max_batch` run together, `max_queue` more wait, more are refused (OverloadedError).
    Embeddings are served one at a time under a lock.
    """

    def __init__(
        self,
        loaded: Loaded,
        model_type: ModelType,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
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
        self._scheduler = (
            None
            if model_type.task is Task.EMBEDDING
            else _scheduler(loaded, model_type, max_batch=max_batch, max_queue=max_queue)
        )

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        model_type: ModelType,
        quantization: Quantization = "4bit",
        device: str = "auto",
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> Engine:
        loaded = load_model(path, model_type=model_type, quantization=quantization, device=device)
        return cls(loaded, model_type, max_batch=max_batch, max_queue=max_queue)

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

        Request errors (task, prompt, context length, a full queue) raise here, before the first
        item. Closing the stream (or dropping it) cancels the request.
        """
        started = time.perf_counter()
        loaded, plan, job = self._job(req, defaults, cancel)
        assert self._scheduler is not None
        self._scheduler.submit(job)
        end = partial(self._scheduler.finish, job)
        return _Stream(self._run(loaded, plan, job, end, started), end)

    def _job(
        self,
        req: GenerateRequest,
        defaults: SamplingParams | None,
        cancel: threading.Event | None,
        on_step: Callable[[], None] | None = None,
    ) -> tuple[Loaded, _Plan, Job]:
        """The request checked and planned as a scheduler job; request errors raise here."""
        loaded = self._require_loaded()
        if self._scheduler is None:
            raise UnsupportedTaskError(
                f"{self._model_type.name} is an embedding model; it cannot generate text "
                "(use /v1/embeddings)",
                param="model",
            )
        plan = self._plan(loaded, req, defaults)
        job = Job(
            prompt_ids=plan.prompt_ids,
            sampler=TokenSampler(plan.params, device=loaded.device),
            max_new_tokens=plan.max_new_tokens,
            stop_ids=plan.stop_ids,
            cancel=cancel,
            on_step=on_step,
        )
        return loaded, plan, job

    def start(
        self,
        req: GenerateRequest,
        defaults: SamplingParams | None = None,
        cancel: threading.Event | None = None,
        *,
        on_text: Callable[[str], None],
        on_done: Callable[[GenerateResult | BaseException], None],
        on_step: Callable[[], None],
    ) -> None:
        """`stream` without a consumer thread: the same items, pushed from the scheduler's thread.

        `on_text` gets each text delta, then `on_done` the GenerateResult (or the request's failure);
        `on_step` is called after every scheduler iteration that called the others, once per
        distinct `on_step` (pass one object's bound method for many requests to get one call for
        all of them). The callbacks run on the scheduler thread: they must be quick and not raise.
        Request errors raise here, before anything is called; `cancel` cancels the request.
        """
        started = time.perf_counter()
        loaded, plan, job = self._job(req, defaults, cancel, on_step=on_step)
        scheduler = self._scheduler
        assert scheduler is not None
        reply = _Reply(self._model_type, loaded.tokenizer, plan, job, started)

        def on_item(item: int | BaseException | None) -> None:
            if reply.over:
                return  # the end marker after this consumer finished (or a late failure)
            try:
                if isinstance(item, BaseException):
                    reply.over = True
                    scheduler.finish(job)
                    on_done(item)
                    return
                if job.cancel is not None and job.cancel.is_set():
                    reply.finish, reply.over = "cancelled", True
                elif text := reply.feed(item):
                    on_text(text)
                if reply.over:
                    scheduler.finish(job)  # its place is free now, its row leaves at the next step
                    tail, result = reply.close()
                    if tail:
                        on_text(tail)
                    on_done(result)
            except Exception as exc:  # e.g. a decoder error: this request fails, not the step
                if not reply.over:
                    reply.over = True
                    scheduler.finish(job)
                on_done(exc)

        job.on_item = on_item
        if reply.over:  # nothing to generate (max_new_tokens 0)
            tail, result = reply.close()
            if tail:
                on_text(tail)
            on_done(result)
            on_step()
            return
        scheduler.submit(job)

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
        """Drop the model; later calls raise ModelNotLoadedError. Waits for the running requests."""
        if self._scheduler is not None:
            self._scheduler.close()
        with self._lock:
            self._loaded = None
            self._embedder = None

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
        self, loaded: Loaded, plan: _Plan, job: Job, end: Callable[[], None], started: float
    ) -> Generator[str | GenerateResult, None, None]:
        """The scheduler's tokens for `job` as text, read from its queue on the caller's thread."""
        reply = _Reply(self._model_type, loaded.tokenizer, plan, job, started)
        try:
            while not reply.over:
                if job.cancel is not None and job.cancel.is_set():
                    reply.finish = "cancelled"
                    break
                if text := reply.feed(job.next_token()):
                    yield text
        finally:
            end()  # its place is free now, its row leaves the batch at the next step
        tail, result = reply.close()
        if tail:
            yield tail
        yield result


class _Reply:
    """One request's tokens turned into text: detokenization, stop strings, finish reason and
    timings. Fed by `Engine.stream`'s loop (its own thread) or by `Engine.start` (the scheduler's)."""

    def __init__(self, model_type: ModelType, tokenizer: Any, plan: _Plan, job: Job, started: float) -> None:
        self.scanner = scanner_for(model_type, plan.params.stop, chat=plan.chat)
        self.detok = IncrementalDetokenizer(tokenizer)
        self.plan, self.job, self.started = plan, job, started
        self.count, self.first, self.finish = 0, 0.0, "length"
        self.over = plan.max_new_tokens <= 0  # no more tokens wanted

    def feed(self, token: int | None) -> str:
        """The text `token` adds (None: the scheduler ended the row, i.e. a cancel); sets `over`."""
        if token is None:  # the scheduler saw the cancel first
            self.finish, self.over = "cancelled", True
            return ""
        self.count += 1
        self.first = self.first or time.perf_counter()
        if token in self.plan.stop_ids:
            self.finish, self.over = "stop", True
            return ""
        text = self.scanner.feed(self.detok.feed(token))
        if self.scanner.stopped:
            self.finish, self.over = "stop", True
        elif self.count >= self.plan.max_new_tokens:
            self.over = True
        return text

    def close(self) -> tuple[str, GenerateResult]:
        """What is still held back, and the result."""
        scanner = self.scanner
        tail = scanner.feed(self.detok.finish()) + scanner.finish()
        finish = "stop" if scanner.stopped and self.finish == "length" else self.finish
        acquired = self.job.admitted or time.perf_counter()  # never admitted: cancelled while waiting
        prompt_tokens = len(self.plan.prompt_ids)
        return tail, _result(scanner, finish, prompt_tokens, self.count, self.started, acquired, self.first)


class _Stream(Generator[str | GenerateResult, None, None]):
    """What `stream` returns: a generator whose close, or loss, cancels its request even before
    the first item (a plain generator closed before it started runs none of its code)."""

    def __init__(self, items: Generator[str | GenerateResult, None, None], end: Callable[[], None]) -> None:
        self._items = items
        self._end = end

    def send(self, value: None) -> str | GenerateResult:
        return self._items.send(value)

    def throw(self, *args: Any) -> str | GenerateResult:
        return self._items.throw(*args)

    def close(self) -> None:
        self._end()
        self._items.close()

    def __del__(self) -> None:
        self._end()


def _scheduler(loaded: Loaded, model_type: ModelType, *, max_batch: int, max_queue: int) -> Scheduler:
    scheduler = Scheduler(
        loaded.model,
        max_batch=max_batch,
        max_queue=max_queue,
        seq2seq=model_type.task is Task.SEQ2SEQ,
        pad_id=_pad_id(loaded.tokenizer),
    )
    # The KV cache grows with use, bounded by these settings (not sized from free memory).
    logger.info(
        "%s generation: up to %d requests of at most %d tokens at once, %d more queued",
        "batched" if scheduler.batched else "unbatched (one cache per request)",
        max_batch,
        loaded.context_length,
        max_queue,
    )
    return scheduler


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


def _pad_id(tokenizer: Any) -> int:
    """The id put in padding positions (masked out, so any valid id would do)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
