"""Continuous batching: one scheduler thread owns the model and advances every running request
together, one token per iteration.

Causal models share one decode step: the rows' KV cache is left-padded to a common width, with an
attention mask (zeros on pads) and per-row position ids, so each row computes what it would alone.
Rows join (a batched prefill of the newcomers, padded and concatenated onto the cache) and leave
(index_select, then the pad columns all rows share are trimmed) between steps. Encoder-decoder
models, and models whose batched logits differ from their lone ones (checked at start), run each
request on its own cache, still interleaved ("solo" rows). The scheduler only makes token ids; each
request's consumer turns them into text: the engine's stream on its caller's thread, or (the model
worker) callbacks on this thread, handed on once per step for all rows. Capacity is explicit: `max_batch`
rows of at most the context length (the KV cache's bound) and `max_queue` waiting; then OverloadedError.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from shared.errors import InternalError, ModelNotLoadedError, OverloadedError
from worker.sampling import TokenSampler

logger = logging.getLogger(__name__)

_Item = int | BaseException | None  # a token, the scheduler's failure, or the end of the row
# An idle scheduler thread exits after this long (a new request starts another), so an engine
# nobody closed does not keep its model alive through its thread.
_LINGER_S = 2.0


@dataclass(eq=False, kw_only=True)
class Job:
    """One generation request inside the scheduler. The consumer either reads `next_token()` from
    its own thread, or (`on_item` set) is called with each item on the scheduler thread, and its
    `on_step` once after every scheduler iteration that gave it something (one hand-off per step
    for all the rows that share an `on_step`, rather than one thread wake-up per token per row)."""

    prompt_ids: list[int]
    sampler: TokenSampler
    max_new_tokens: int
    stop_ids: frozenset[int]
    cancel: threading.Event | None = None
    done: threading.Event = field(default_factory=threading.Event)  # the consumer stopped reading
    admitted: float = 0.0  # perf_counter when it got a row (0 while waiting)
    produced: int = 0
    stopped: bool = False  # it made an end-of-sequence token: nothing comes after it
    counted: bool = True  # it holds a place in the scheduler (under the scheduler's lock)
    on_item: Callable[[_Item], None] | None = None
    on_step: Callable[[], None] | None = None
    _out: queue.SimpleQueue[_Item] = field(default_factory=queue.SimpleQueue)

    def next_token(self) -> int | None:
        """The next token id; None once the row has ended (cancelled or the engine closing)."""
        item = self._out.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def wanted(self) -> bool:
        return not self.done.is_set() and not (self.cancel is not None and self.cancel.is_set())

    def ended(self) -> bool:
        return self.stopped or self.produced >= self.max_new_tokens or not self.wanted()

    def push(self, token: int) -> None:
        self.produced += 1
        self.stopped = token in self.stop_ids
        if self.on_item is not None:
            self.on_item(token)
        else:
            self._out.put(token)

    def end(self, item: BaseException | None) -> None:
        if self.on_item is not None:
            self.on_item(item)
        else:
            self._out.put(item)


class Scheduler:
    """Owns the model on its own thread (started on demand); `submit` from any thread."""

    def __init__(self, model: Any, *, max_batch: int, max_queue: int, seq2seq: bool, pad_id: int) -> None:
        self.max_batch, self.max_queue = max_batch, max_queue
        self.peak_rows = 0  # the most requests one step has advanced (tests, metrics)
        self._suppress = _suppressed_ids(model)
        self._solo = _Solo(model, seq2seq=seq2seq, suppress=self._suppress)
        self._batch = None if seq2seq or not batches_exactly(model, pad_id) else _Batch(model, pad_id)
        self._cond = threading.Condition()  # guards the fields up to _thread
        self._waiting: deque[Job] = deque()
        self._in_flight = 0  # waiting + running, until their consumer or the scheduler is done
        self._closing = self._aborting = False
        self._thread: threading.Thread | None = None
        self._rows: list[Job] = []  # the batch's rows, in cache order
        self._next: list[int] = []  # each row's token to feed at the next step
        self._solos: dict[Job, Generator[int, None, None]] = {}
        self._stepped: set[Callable[[], None]] = set()  # the `on_step`s owed a call (scheduler thread)
        # A daemon thread killed inside a torch op at interpreter exit aborts the process.
        atexit.register(_abort_at_exit, weakref.ref(self))

    @property
    def batched(self) -> bool:
        return self._batch is not None

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closing:
                raise ModelNotLoadedError("the model of this engine was closed")
            if self._in_flight >= self.max_batch + self.max_queue:
                raise OverloadedError(
                    f"the model is busy: {self.max_batch} requests running and {self.max_queue} waiting; "
                    "retry later"
                )
            self._in_flight += 1
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="dukat-scheduler", daemon=True)
                self._thread.start()
            self._cond.notify()

    def finish(self, job: Job) -> None:
        """The consumer is done with `job`: its place is free now, its row leaves at the next step."""
        job.done.set()
        with self._cond:
            self._uncount([job])

    def close(self, *, abort: bool = False) -> None:
        """Refuse new requests and stop the thread once the admitted and waiting ones finished
        (or, with `abort`, at once: they end as cancelled)."""
        with self._cond:
            self._closing = True
            self._aborting = self._aborting or abort
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self) -> None:
        try:
            with torch.inference_mode():  # the samplers' tensors are inference tensors too
                while self._wait_for_work():
                    try:
                        self._iterate()
                    except Exception as exc:  # a failed step: its rows fail, the scheduler lives on
                        logger.exception("generation step failed")
                        self._end([*self._rows, *self._solos], exc)
                    self._flush()
        except BaseException:  # the thread dies: nobody may wait on it forever
            with self._cond:
                self._thread = None
            self._end([*self._rows, *self._solos, *self._waiting], InternalError("the scheduler stopped"))
            self._flush()
            raise

    def _wait_for_work(self) -> bool:
        if self._aborting:
            self._end([*self._rows, *self._solos, *self._waiting], None)
            self._flush()
        with self._cond:
            idle = False
            while not (self._waiting or self._rows or self._solos):
                if self._closing or idle:
                    self._thread = None  # under the lock: the next submit starts a new thread
                    return False
                idle = not self._cond.wait(_LINGER_S)
        return True

    def _iterate(self) -> None:
        self._sweep()
        while jobs := self._take():  # newcomers first: their prefill decides their first token's wait
            self._admit(jobs)
            self._flush()  # their first tokens go out now, not after the next prefill or step
        self._sweep()
        self.peak_rows = max(self.peak_rows, len(self._rows) + len(self._solos))
        if self._rows:
            assert self._batch is not None
            self._next = self._emit(self._rows, self._batch.step(self._next))
        for job, tokens in self._solos.items():
            if not job.ended():
                job.push(next(tokens))
                self._owe_step(job)

    def _take(self) -> list[Job]:
        with self._cond:
            room = self.max_batch - len(self._rows) - len(self._solos)
            taken = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        self._end([j for j in taken if not j.wanted()], None)  # cancelled while waiting: no prefill
        return [j for j in taken if j.wanted()]

    def _admit(self, jobs: list[Job]) -> None:
        now = time.perf_counter()
        for job in jobs:
            job.admitted = now
            if self._batch is None:
                self._solos[job] = self._solo.tokens(job.prompt_ids, job.sampler)
                job.push(next(self._solos[job]))
                self._owe_step(job)
        if self._batch is None:
            return
        for job in jobs:
            job.sampler.observe(job.prompt_ids)  # transformers' repetition penalty counts the prompt
        try:
            logits = self._batch.join([j.prompt_ids for j in jobs])
        except Exception as exc:  # e.g. out of memory: the newcomers fail, the running rows go on
            logger.exception("prefill of %d requests failed", len(jobs))
            self._end(jobs, exc)
            return
        self._rows += jobs
        self._next += self._emit(jobs, logits)

    def _emit(self, jobs: list[Job], logits: torch.Tensor) -> list[int]:
        """Each row's next token, chosen by its own sampler and pushed to its consumer."""
        if self._suppress is not None:
            logits[:, self._suppress] = float("-inf")
        greedy = logits.argmax(-1).tolist()  # one op for every plain greedy row
        tokens = []
        for i, (job, best) in enumerate(zip(jobs, greedy, strict=True)):
            sampler = job.sampler
            token = best if sampler.plain_greedy else sampler.choose(logits[i])
            sampler.observe(token)
            job.push(token)
            if job.on_step is not None:
                self._stepped.add(job.on_step)
            tokens.append(token)
        return tokens

    def _owe_step(self, job: Job) -> None:
        if job.on_step is not None:
            self._stepped.add(job.on_step)

    def _flush(self) -> None:
        """Each consumer's `on_step`, once (bound methods of one object are equal: one call)."""
        stepped, self._stepped = self._stepped, set()
        for on_step in stepped:
            try:
                on_step()
            except Exception:  # one consumer's hand-off must not fail the others' step
                logger.exception("a consumer's step hand-off failed")

    def _sweep(self) -> None:
        """Requests that ended leave (and their consumers get the end marker)."""
        self._end([job for job in (*self._rows, *self._solos) if job.ended()], None)

    def _end(self, jobs: list[Job], item: BaseException | None) -> None:
        """`jobs` leave the scheduler; their consumers get `item` (None: the end of the row)."""
        if not jobs:
            return
        ending = set(jobs)
        with self._cond:
            self._waiting = deque(j for j in self._waiting if j not in ending)
            self._uncount(ending)
        if any(job in ending for job in self._rows):
            keep = [i for i, job in enumerate(self._rows) if job not in ending]
            self._rows = [self._rows[i] for i in keep]
            self._next = [self._next[i] for i in keep]
            assert self._batch is not None
            self._batch.keep(keep)
        for job in ending:
            if job in self._solos:
                self._solos.pop(job).close()
            job.end(item)
            self._owe_step(job)

    def _uncount(self, jobs: Iterable[Job]) -> None:
        """Under the lock: `jobs` stop holding places (each once, whoever ends it first)."""
        for job in jobs:
            self._in_flight -= job.counted
            job.counted = False


class _Batch:
    """The batched rows' KV cache, left-padded to one width, with their mask and next positions."""

    def __init__(self, model: Any, pad_id: int) -> None:
        self._model = model
        self._pad_id = pad_id
        self._device, self._cache_kw, self._keep = _calling(model)
        # Bloom has none: its ALiBi positions come from the attention mask.
        self._takes_positions = "position_ids" in inspect.signature(model.forward).parameters
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self._device)
        self.positions = torch.zeros(0, dtype=torch.long, device=self._device)
        self._padded = False

    def join(self, prompts: list[list[int]]) -> torch.Tensor:
        """Prefill `prompts` together; their rows join the batch. Returns their last logits [k, vocab]."""
        width = max(len(p) for p in prompts)
        ids = [[self._pad_id] * (width - len(p)) + p for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        mask_t = torch.tensor(mask, dtype=torch.long, device=self._device)
        positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(torch.tensor(ids, device=self._device), mask_t, positions, cache=None)
        self._merge(_cache_of(out), mask_t, positions[:, -1] + 1)
        return out.logits[:, -1]

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed each row its next token; returns the logits after it [rows, vocab]."""
        ones = torch.ones(len(tokens), 1, dtype=torch.long, device=self._device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        ids = torch.tensor(tokens, device=self._device)[:, None]
        out = self._forward(ids, self.mask, self.positions[:, None], cache=self.cache)
        self.cache = _cache_of(out)
        self.positions = self.positions + 1
        return out.logits[:, -1]

    def keep(self, rows: list[int]) -> None:
        """Only `rows` stay; then drop the leading columns that are padding in every row."""
        if not rows:
            self.cache, self.mask, self.positions = None, self.mask[:0, :0], self.positions[:0]
            return
        index = torch.tensor(rows, device=self._device)
        self.mask, self.positions = self.mask[index], self.positions[index]
        lead = int(self.mask.any(dim=0).int().argmax())  # first column where some row is real
        self.mask = self.mask[:, lead:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, lead:]
            layer.values = layer.values[index, :, lead:]
        self._padded = bool((self.mask == 0).any())

    def _merge(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor) -> None:
        if self.cache is None:
            self.cache, self.mask, self.positions = cache, mask, positions
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])
            self.positions = torch.cat([self.positions, positions])
            for mine, new in zip(self.cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(new.keys, width, 2)])
                mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(new.values, width, 2)])
        self._padded = bool((self.mask == 0).any())

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> Any:
        kwargs: dict[str, Any] = {**self._keep, "use_cache": True}
        if self._padded or cache is None:
            kwargs["attention_mask"] = mask  # without pads, no mask: the plain causal path is faster
        if self._takes_positions:
            kwargs["position_ids"] = positions
        if cache is not None:
            kwargs[self._cache_kw] = cache
        return self._model(input_ids=ids, **kwargs)


def _abort_at_exit(ref: weakref.ref[Scheduler]) -> None:
    if (scheduler := ref()) is not None:
        scheduler.close(abort=True)


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - dim - 1) + [missing, 0]  # F.pad lists dims from the last one
    return F.pad(t, pad)


def _calling(model: Any) -> tuple[torch.device, str, dict[str, int]]:
    """How to call `model`: its device, its cache argument's name, and "only the last logits"."""
    params = inspect.signature(model.forward).parameters
    # transformers 5 renamed past_key_values to cache; keep both working.
    cache_kw = "cache" if "cache" in params else "past_key_values"
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return next(model.parameters()).device, cache_kw, last_only


def _cache_of(out: Any) -> Any:
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def batches_exactly(model: Any, pad_id: int) -> bool:
    """Whether left-padded batched rows give a model the logits they give alone, up to rounding.

    Needs a cache whose layers are plain DynamicLayers (sliding-window or static layers keep other
    state) and a model that honours the mask and position ids. LLM.int8 (8-bit) fails it: its
    outlier columns depend on the whole batch.
    """
    from transformers.cache_utils import DynamicLayer

    if getattr(model.config, "is_encoder_decoder", False):
        return False
    prompts, nexts = [[5, 6, 7, 8, 9], [10, 11]], [12, 13]
    with torch.inference_mode():
        batch = _Batch(model, pad_id)
        together = [batch.join(prompts), batch.step(nexts)]
        if any(type(layer) is not DynamicLayer for layer in batch.cache.layers):
            return False
        for row, (prompt, token) in enumerate(zip(prompts, nexts, strict=True)):
            alone = _Batch(model, pad_id)
            expected = [alone.join([prompt]), alone.step([token])]
            for got, want in zip(together, expected, strict=True):
                # Rounding differs with the batch shape (~eps); a mask or position error is O(1).
                tolerance = max(1e-3, 8 * torch.finfo(want.dtype).eps) * (float(want.abs().max()) + 1e-6)
                if float((got[row] - want[0]).abs().max()) > tolerance:
                    return False
    return True


class _Solo:
    """One sequence on its own cache: prefill, then one decode step per token."""

    def __init__(self, model: Any, *, seq2seq: bool, suppress: torch.Tensor | None = None) -> None:
        self._model = model
        self._seq2seq = seq2seq
        self._suppress = suppress
        self._device, self._cache_kw, self._keep = _calling(model)

    def tokens(self, prompt_ids: list[int], sampler: TokenSampler) -> Generator[int, None, None]:
        """Endless next tokens; the caller decides when to stop (and closes the iterator).
        Runs under the caller's inference mode."""
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self._device)
        inputs: dict[str, Any] = {}
        if self._seq2seq:
            inputs = {"encoder_outputs": self._model.get_encoder()(input_ids=ids)}
            start = self._column(_decoder_start(self._model))
            out = self._model(**inputs, decoder_input_ids=start, use_cache=True)
        else:
            sampler.observe(prompt_ids)  # transformers' repetition penalty counts the prompt
            out = self._model(input_ids=ids, use_cache=True, **self._keep)
        while True:
            logits = out.logits[0, -1]
            if self._suppress is not None:
                logits[self._suppress] = float("-inf")
            token = sampler.choose(logits)
            sampler.observe(token)
            yield token
            step = {"decoder_input_ids" if self._seq2seq else "input_ids": self._column(token)}
            out = self._model(
                **inputs, **step, **{self._cache_kw: _cache_of(out)}, use_cache=True, **self._keep
            )

    def _column(self, token: int) -> torch.Tensor:
        return torch.tensor([[token]], dtype=torch.long, device=self._device)


def _decoder_start(model: Any) -> int:
    for config in (getattr(model, "generation_config", None), model.config):
        start = getattr(config, "decoder_start_token_id", None)
        if start is not None:
            return int(start)
    return int(model.config.pad_token_id or 0)


def _suppressed_ids(model: Any) -> torch.Tensor | None:
    """The generation config's `suppress_tokens`: ids never to be generated (as `generate` honours)."""
    ids = getattr(getattr(model, "generation_config", None), "suppress_tokens", None)
    if not ids:
        return None
    return torch.tensor(sorted(set(ids)), dtype=torch.long, device=next(model.parameters()).device)
