"""The engine: one loaded model answering generate, stream and embed requests, in process.

Generation is our own token loop (prefill, then one decode step per token over the KV cache,
sampling with a per-request generator), driven for all concurrent requests at once by the
continuous batching scheduler (worker/model/batching.py). The scheduler makes token ids; `start` turns
each request's ids into text on the scheduler's thread (detokenization, stop strings, cancel,
timings) and pushes it to callbacks: that is what the model worker serves. `stream` (an iterator
on the caller's thread) and `generate` (the whole reply) are `start` with a queue as the consumer,
so every caller runs the one path the server runs.

Prompts become token ids in worker/model/prompt_ids.py.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

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
    ScoreRequest,
    ScoreResult,
    StreamItem,
    StreamPiece,
)
from shared.model_types import MODEL_TYPES, ModelType, PromptFormat, Task
from shared.settings import DEFAULTS, Cuda4bit, Quantization
from shared.wire import EngineInfo
from worker.model.batching import Job, Scheduler
from worker.model.cleaning import stop_strings
from worker.model.embedding import Embedder
from worker.model.grammar import Grammars
from worker.model.grammar_limits import GrammarLimits
from worker.model.harmony import speaks_harmony
from worker.model.images import Vision
from worker.model.loading import Loaded, load_model
from worker.model.logprobs import prompt_records, token_logprobs
from worker.model.lora import Adapter, Adapters
from worker.model.pooling import Pooling, read_pooling
from worker.model.prompt_ids import prompt_of, prompt_tokens
from worker.model.reasoning import opens_thinking, thinks
from worker.model.reply import Plan, Reply, TextStream, deliver
from worker.model.sampling import TokenSampler, resolve_params
from worker.model.scoring import Scorer
from worker.model.tool_calls import ToolFormat, tool_format_of

logger = logging.getLogger(__name__)

_A_TASK = {
    Task.CHAT: "a chat",
    Task.SEQ2SEQ: "a seq2seq",
    Task.EMBEDDING: "an embedding",
    Task.RERANK: "a rerank",
}
# Tool formats whose call markers are special tokens (decoding would drop them).
_SPECIAL_MARKERS = frozenset(
    {ToolFormat.MISTRAL, ToolFormat.LLAMA3, ToolFormat.PYTHONIC, ToolFormat.TAGGED, ToolFormat.DEEPSEEK}
)


class Engine:
    """One loaded model in the model worker: owns the model and tokenizer (Loaded), its Scheduler,
    its grammars and tool-call format; turns a GenerateRequest into a prompt, a run and a cleaned
    result (or a stream), and embeds.

    Thread-safe. Generation requests from any number of threads are batched by one scheduler:
    `max_batch` run together, `max_queue` more wait, more are refused (OverloadedError).
    Embeddings are served one at a time under a lock. Must not: know about the wire or the host
    (the wire server calls it), or run the model outside the Scheduler's thread.
    """

    def __init__(
        self,
        loaded: Loaded,
        model_type: ModelType,
        *,
        max_batch: int = DEFAULTS.max_batch,
        max_queue: int = DEFAULTS.max_queue,
        prefix_cache_tokens: int = DEFAULTS.prefix_cache_tokens,
        prefill_chunk_tokens: int = DEFAULTS.prefill_chunk_tokens,
        own_decode_step: bool = DEFAULTS.own_decode_step,
        cuda_graphs: bool = DEFAULTS.cuda_graphs,
        cuda_graph_kv_tokens: int = DEFAULTS.cuda_graph_kv_tokens,
        grammar_limits: GrammarLimits | None = None,
        pooling: Pooling | None = None,
        max_image_bytes: int = DEFAULTS.max_image_bytes,
        max_image_pixels: int = DEFAULTS.max_image_pixels,
        max_loras: int = DEFAULTS.max_loras,
        models_dir: Path = DEFAULTS.models_dir,
    ) -> None:
        self._loaded: Loaded | None = loaded
        model_type = _without_template(model_type, loaded.tokenizer)
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
            Embedder(loaded.model, loaded.tokenizer, context_length=loaded.context_length, pooling=pooling)
            if model_type.task is Task.EMBEDDING
            else None
        )
        self._scorer = (
            Scorer(loaded.model, loaded.tokenizer, context_length=loaded.context_length)
            if model_type.task is Task.RERANK
            else None
        )
        self._eos_ids = _eos_ids(loaded.model, loaded.tokenizer)
        self._tool_format = tool_format_of(getattr(loaded.tokenizer, "chat_template", None))
        self._thinks = thinks(getattr(loaded.tokenizer, "chat_template", None))
        self._harmony = speaks_harmony(getattr(loaded.tokenizer, "chat_template", None))
        self._vision = (
            Vision(processor=loaded.processor, max_bytes=max_image_bytes, max_pixels=max_image_pixels)
            if loaded.processor is not None
            else None
        )
        self._grammars: Grammars | None = None  # built at the first request that needs it
        self._grammar_limits = grammar_limits or GrammarLimits()
        generates = model_type.task not in (Task.EMBEDDING, Task.RERANK)
        self.adapters = Adapters(loaded.model, models_dir, max_loras) if generates and max_loras else None
        self._scheduler = (
            None
            if model_type.task in (Task.EMBEDDING, Task.RERANK)
            else _scheduler(
                loaded,
                model_type,
                max_batch=max_batch,
                max_queue=max_queue,
                prefix_cache_tokens=prefix_cache_tokens,
                prefill_chunk_tokens=prefill_chunk_tokens,
                own_decode_step=own_decode_step,
                cuda_graphs=cuda_graphs,
                cuda_graph_kv_tokens=cuda_graph_kv_tokens,
                adapters=self.adapters,
            )
        )
        reason = (
            self._scheduler.unbatched_reason
            if self._scheduler is not None
            else "embedding requests run one at a time (each request's inputs in one forward pass)"
        )
        self._info = msgspec.structs.replace(self._info, batching=reason is None, batching_reason=reason)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        model_type: ModelType,
        quantization: Quantization = DEFAULTS.default_quantization,
        device: str = DEFAULTS.device_map,
        max_batch: int = DEFAULTS.max_batch,
        max_queue: int = DEFAULTS.max_queue,
        prefix_cache_tokens: int = DEFAULTS.prefix_cache_tokens,
        prefill_chunk_tokens: int = DEFAULTS.prefill_chunk_tokens,
        own_decode_step: bool = DEFAULTS.own_decode_step,
        cuda_graphs: bool = DEFAULTS.cuda_graphs,
        cuda_graph_kv_tokens: int = DEFAULTS.cuda_graph_kv_tokens,
        grammar_limits: GrammarLimits | None = None,
        trust_remote_code: bool = False,
        cuda_4bit: Cuda4bit = DEFAULTS.cuda_4bit,
        max_image_bytes: int = DEFAULTS.max_image_bytes,
        max_image_pixels: int = DEFAULTS.max_image_pixels,
        max_loras: int = DEFAULTS.max_loras,
        models_dir: Path = DEFAULTS.models_dir,
    ) -> Engine:
        loaded = load_model(
            path, model_type=model_type, quantization=quantization, device=device,
            trust_remote_code=trust_remote_code, cuda_4bit=cuda_4bit,
        )  # fmt: skip
        pooling = read_pooling(path) if model_type.task is Task.EMBEDDING else None
        return cls(
            loaded,
            model_type,
            max_batch=max_batch,
            max_queue=max_queue,
            prefix_cache_tokens=prefix_cache_tokens,
            prefill_chunk_tokens=prefill_chunk_tokens,
            own_decode_step=own_decode_step,
            cuda_graphs=cuda_graphs,
            cuda_graph_kv_tokens=cuda_graph_kv_tokens,
            grammar_limits=grammar_limits,
            pooling=pooling,
            max_image_bytes=max_image_bytes,
            max_image_pixels=max_image_pixels,
            max_loras=max_loras,
            models_dir=models_dir,
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
    ) -> TextStream:
        """Text deltas, then one GenerateResult whose text is the deltas joined: `start`'s items,
        read on the caller's thread.

        Request errors (task, prompt, context length, a full queue) raise here, before the first
        item. Closing the stream (or dropping it) ends the request.
        """
        items: queue.SimpleQueue[StreamItem | BaseException] = queue.SimpleQueue()
        end = self.start(req, defaults, cancel, on_text=items.put, on_done=items.put)
        return TextStream(items, end)

    def start(
        self,
        req: GenerateRequest,
        defaults: SamplingParams | None = None,
        cancel: threading.Event | None = None,
        *,
        on_text: Callable[[StreamPiece], None],
        on_done: Callable[[GenerateResult | BaseException], None],
        on_step: Callable[[], None] | None = None,
        pause: threading.Event | None = None,
    ) -> Callable[[], None]:
        """Generate, pushing the items from the scheduler's thread; returns what ends the request
        (its place is free at once, its row leaves at the next step: a consumer that went away).

        `on_text` gets each text delta, then `on_done` the GenerateResult (or the request's failure);
        `on_step` is called after every scheduler iteration that called the others, once per
        distinct `on_step` (pass one object's bound method for many requests to get one call for
        all of them). The callbacks run on the scheduler thread: they must be quick and not raise.
        Request errors raise here, before anything is called; `cancel` cancels the request; while
        `pause` is set its row makes no tokens (call `wake` after clearing it).
        """
        started = time.perf_counter()
        loaded = self._require_loaded()
        scheduler = self._scheduler
        if scheduler is None:
            route = "/v1/embeddings" if self._model_type.task is Task.EMBEDDING else "/v1/rerank or /v1/score"
            raise UnsupportedTaskError(
                f"{self._model_type.name} is {_A_TASK[self._model_type.task]} model; it cannot generate text "
                f"(use {route})",
                param="model",
            )
        adapter = self._adapter(req)
        plan = self._plan(loaded, req, defaults, adapter)
        reply = Reply(self._model_type, loaded.tokenizer, plan, started)
        grammars = grammar = None
        if req.constraint is not None:
            self._grammar_limits.check(req.constraint)  # a bomb is refused before any grammar work
            grammars = self._grammars_for(loaded)
            # A forced tool call that can't fit max_tokens is cut there (finish_reason "length", no
            # complete call) as OpenAI answers it; other constraints that can't fit are a 400.
            forced_call = plan.tool_parsing in ("calls", "arguments")
            grammar = grammars.row(req.constraint, _UNBOUNDED if forced_call else plan.max_new_tokens)
        job = Job(
            prompt_ids=plan.prompt_ids,
            sampler=TokenSampler(plan.params, device=loaded.device),
            max_new_tokens=plan.max_new_tokens,
            stop_ids=plan.stop_ids,
            on_item=partial(deliver, reply, on_text, on_done),
            on_step=on_step,
            cancel=cancel,
            pause=pause,
            grammar=grammar,
            grammars=grammars,
            min_tokens=plan.params.min_tokens or 0,
            logprobs=req.logprobs,
            model_inputs=plan.model_inputs,
            adapter=adapter,
        )
        reply.job, reply.end = job, partial(scheduler.finish, job)
        if reply.over:  # nothing to generate (max_new_tokens 0)
            job.counted = False  # it never holds a place: ending it frees none
            reply.conclude(on_text, on_done)
            if on_step is not None:
                on_step()
        else:
            scheduler.submit(job)
        return reply.end

    def wake(self) -> None:
        """A paused request's `pause` was cleared: its row may go on."""
        if self._scheduler is not None:
            self._scheduler.wake()

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

    def score(self, req: ScoreRequest) -> ScoreResult:
        self._require_loaded()
        if self._scorer is None:
            raise UnsupportedTaskError(
                f"{self._model_type.name} is {_A_TASK[self._model_type.task]} model; it does not rank "
                "documents (use a cross-encoder reranker such as a bge-reranker or ms-marco MiniLM)",
                param="model",
            )
        with self._lock:
            self._require_loaded()
            return self._scorer.score(req)

    def tokenize(
        self, req: GenerateRequest, *, generation_prompt: bool, special_tokens: bool | None
    ) -> list[int]:
        """`req`'s prompt as token ids (worker/model/prompt_ids.py's `prompt_tokens`)."""
        loaded = self._require_loaded()
        fmt = self._model_type.prompt_format
        return prompt_tokens(
            loaded.tokenizer, req, fmt, self._tool_format,
            generation_prompt=generation_prompt, special_tokens=special_tokens, vision=self._vision,
        )  # fmt: skip

    def detokenize(self, ids: list[int]) -> str:
        tokenizer = self._require_loaded().tokenizer
        bad = [i for i in ids if not 0 <= i < len(tokenizer)]
        if bad:
            raise InvalidRequestError(
                f"token id {bad[0]} is outside this model's vocabulary (0..{len(tokenizer) - 1})",
                param="tokens",
            )
        text: str = tokenizer.decode(ids)
        return text

    def adapter(self, adapter_id: str, *, load: bool) -> tuple[list[str], bool]:
        """Load (or unload) a LoRA adapter now; the adapters then loaded, and whether it was before."""
        if self.adapters is None:
            raise InvalidRequestError(
                f"this {self._info.model_type} model serves no LoRA adapters", param="model"
            )
        was = adapter_id in self.adapters.loaded()
        if load:
            self.adapters.get(adapter_id)
        else:
            self.adapters.drop(adapter_id)
        return self.adapters.loaded(), was

    def close(self) -> None:
        """Drop the model; later calls raise ModelNotLoadedError. Waits for the running requests."""
        if self._scheduler is not None:
            self._scheduler.close()
        with self._lock:
            self._loaded = None
            self._embedder = None
            self._scorer = None
            if self._grammars is not None:
                self._grammars.close()

    def _require_loaded(self) -> Loaded:
        if self._loaded is None:
            raise ModelNotLoadedError("the model of this engine was closed")
        return self._loaded

    def _adapter(self, req: GenerateRequest) -> Adapter | None:
        """The request's LoRA adapter, loaded on first use (None: the base model)."""
        if req.adapter is None:
            return None
        if self.adapters is None:
            raise InvalidRequestError(
                f"this {self._info.model_type} model serves no LoRA adapters ({req.adapter!r} asked)",
                param="model",
            )
        return self.adapters.get(req.adapter)

    def _plan(
        self, loaded: Loaded, req: GenerateRequest, defaults: SamplingParams | None, adapter: Adapter | None
    ) -> Plan:
        tokenizer = loaded.tokenizer
        text, chat, ids, inputs = prompt_of(
            tokenizer, req, self._model_type.prompt_format, self._tool_format, self._vision
        )
        params = resolve_params(req.params, defaults)
        requested = params.max_new_tokens if params.max_new_tokens is not None else 1
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
        # vLLM's ignore_eos (not for a constrained output: its grammar's end is an end of sequence).
        eos = frozenset() if params.ignore_eos and req.constraint is None else self._eos_ids
        size = _vocab_size(loaded)
        extra_stops = frozenset(_in_vocabulary(params.stop_token_ids, size, "stop_token_ids"))
        _in_vocabulary(list(params.logit_bias or ()), size, "logit_bias")
        parsing = req.tools.parsing if req.tools is not None else "none"
        split = chat and req.constraint is None
        wants_vocab = req.logprobs is not None
        vocab = self._grammars_for(loaded).vocab if wants_vocab else None
        echo_logprobs = None
        if req.echo and vocab is not None and req.logprobs is not None:
            with self.adapters.rows([adapter]) if self.adapters is not None else contextlib.nullcontext():
                records = prompt_records(loaded.model, ids, req.logprobs)
            echo_logprobs = token_logprobs(vocab, records, ids)
        return Plan(
            prompt_ids=ids,
            params=params,
            max_new_tokens=min(requested, room),
            chat=chat,
            stop_ids=eos | _special_stop_ids(tokenizer, stops) | extra_stops,
            tool_format=self._tool_format,
            tool_parsing=parsing,
            tool_name=req.tools.name if req.tools is not None else None,
            # Formats whose call markers are special tokens keep them in the text while parsing.
            # (and harmony's channel markers are special tokens its reply is split by).
            skip_special=params.skip_special_tokens is not False
            and not (parsing == "auto" and self._tool_format in _SPECIAL_MARKERS)
            and not (self._harmony and split),
            vocab=vocab,
            prompt_text=(text if text is not None else tokenizer.decode(ids)) if req.echo else None,
            prompt_logprobs=echo_logprobs,
            # A reasoning template's chat reply (not a constrained one: its grammar decides the text).
            thinking_open=opens_thinking(text or "") if self._thinks and split else None,
            harmony=self._harmony and split,
            model_inputs=inputs,
        )

    def _grammars_for(self, loaded: Loaded) -> Grammars:
        """The model's grammar machinery (token bytes too), built once at first need."""
        with self._lock:
            if self._grammars is None:
                self._grammars = Grammars(
                    loaded.tokenizer,
                    vocab_size=_vocab_size(loaded),
                    stop_ids=self._eos_ids,
                    limits=self._grammar_limits,
                )
            return self._grammars


def _scheduler(
    loaded: Loaded,
    model_type: ModelType,
    *,
    max_batch: int,
    max_queue: int,
    own_decode_step: bool,
    cuda_graphs: bool,
    cuda_graph_kv_tokens: int,
    adapters: Adapters | None,
    **caching: int,
) -> Scheduler:
    scheduler = Scheduler(
        loaded.model,
        max_batch=max_batch,
        max_queue=max_queue,
        **caching,
        own_decode_step=own_decode_step,
        cuda_graphs=cuda_graphs,
        cuda_graph_kv_tokens=cuda_graph_kv_tokens,
        adapters=adapters,
        seq2seq=model_type.task is Task.SEQ2SEQ,
        pad_id=_pad_id(loaded.tokenizer),
    )
    if scheduler.batched:
        why = scheduler.decode_refusal
        logger.info("decode steps: %s", f"the model's forward ({why})" if why else "Dukat's own")
    # The KV cache grows with use, bounded by these settings (not sized from free memory).
    logger.info(
        "%s generation: up to %d requests of at most %d tokens at once, %d more queued",
        "batched"
        if scheduler.batched
        else f"unbatched (one sequence at a time: {scheduler.unbatched_reason})",
        max_batch,
        loaded.context_length,
        max_queue,
    )
    return scheduler


# A budget no grammar's shortest output exceeds: the row is then only cut by the real one.
_UNBOUNDED = 1 << 30


def _vocab_size(loaded: Loaded) -> int:
    """The ids the model can produce: its logits' width (padded vocabularies) or its tokenizer's."""
    configured = int(getattr(loaded.model.config, "vocab_size", 0) or 0)
    return max(configured, len(loaded.tokenizer))


def _in_vocabulary(ids: list[int] | None, size: int, param: str) -> list[int]:
    """`ids`, each checked to be a token id of the model (a 400 naming `param` otherwise)."""
    for i in ids or ():
        if not 0 <= i < size:
            raise InvalidRequestError(
                f"{param} holds token id {i}, outside the model's vocabulary (0 to {size - 1})", param=param
            )
    return list(ids or ())


def _without_template(model_type: ModelType, tokenizer: Any) -> ModelType:
    """A generic type's model without a chat template is prompted and cleaned as a base model."""
    if model_type.prompt_format is not PromptFormat.TEMPLATE or getattr(tokenizer, "chat_template", None):
        return model_type
    base = MODEL_TYPES["base"]
    return msgspec.structs.replace(
        model_type,
        prompt_format=base.prompt_format,
        trailing_markers=base.trailing_markers,
        chat_stops=base.chat_stops,
    )



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
