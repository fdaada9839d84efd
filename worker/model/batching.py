"""Continuous batching: one scheduler thread owns the model and advances every running request
together, one token per iteration.

The scheduler decides who runs: admission (bounded: `max_batch` rows of at most the context length,
`max_queue` waiting, then OverloadedError), joins between steps (newcomers first, so a prefill
decides their first token's wait; grouped by prompt length, shortest first, so that no prefill
pads short prompts to a long one's width), long prompts and prompts with a cached prefix prefilled
alone, a chunk per step between the running rows' steps, first come first served (the prefix cache
is worker/model/prefix_cache.py's), leaves (stops, lengths, cancels, a consumer that went
away) and failures (a failed step fails its rows, the thread lives on). The cache mechanics are
worker/model/kv_cache.py's: rows of one left-padded batch where the model batches (exactly, or for
8-bit within a documented bound), else each request on its own cache ("solo" rows), still
interleaved. `_emit` is the one sampling step of every row, batched or solo: each row's own
sampler picks its token from its logits. Tokens go to each request's consumer as callbacks on
this thread (the engine turns them into text), then one `on_step` per consumer and step hands
them on.

Why not transformers' continuous batching (`generate_batch`, paged attention): measured in process
on 2 CPU cores, 16 greedy prompts x 64 tokens, it made 181 tok/s on the bench's tiny Llama and 184
on a Gemma 3-shaped one, where this scheduler made 1260 and 1011; it also sizes its cache from
free memory unless told, and has no per-request generator. Prefills are compute-bound here: the
slowest first token of many requests that arrive together is bounded by their prefills' total.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from shared.errors import InternalError, ModelNotLoadedError, OverloadedError
from worker.model.decode_step import DecodeStep
from worker.model.grammar import Grammars, RowGrammar
from worker.model.graph_step import GraphStep
from worker.model.kv_cache import (
    PaddedBatch,
    RowPrefill,
    Solo,
    batch_refusal,
    can_prefill_alone,
    checked_decode_step,
    join_keeps,
    multimodal_positions,
    prefill_with_images,
)
from worker.model.logprobs import LogprobRecord, record_logprobs
from worker.model.lora import Adapter, Adapters
from worker.model.prefix_cache import PrefixCache
from worker.model.sampling import TokenSampler

logger = logging.getLogger(__name__)

_Item = int | BaseException | None  # a token, the scheduler's failure, or the end of the row
# An idle scheduler thread exits after this long (a new request starts another), so an engine
# nobody closed does not keep its model alive through its thread.
_LINGER_S = 2.0
_PARKED_POLL_S = 0.5


@dataclass(eq=False, kw_only=True)
class Job:
    """One generation request inside the scheduler. Its consumer's `on_item` is called with each
    item on the scheduler thread, and its `on_step` once after every scheduler iteration that gave
    it something (one hand-off per step for all the rows that share an `on_step`, rather than one
    thread wake-up per token per row)."""

    prompt_ids: list[int]
    sampler: TokenSampler
    max_new_tokens: int
    stop_ids: frozenset[int]
    on_item: Callable[[_Item], None]
    on_step: Callable[[], None] | None = None
    cancel: threading.Event | None = None
    # Set while its reader is behind (back-pressure): the row leaves the batch until it is cleared.
    pause: threading.Event | None = None
    done: threading.Event = field(default_factory=threading.Event)  # the consumer stopped reading
    admitted: float = 0.0  # perf_counter when it got a row (0 while waiting)
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    produced: int = 0
    # Tokens made since `prompt_ids` was last prefilled: a paused batch row drops its cache and
    # resumes by prefilling them after the prompt (recompute, as vLLM's preemption).
    unprefilled: list[int] = field(default_factory=list)
    last: int = -1  # the latest token: what the next step feeds
    stopped: bool = False  # it made an end-of-sequence token: nothing comes after it
    counted: bool = True  # it holds a place in the scheduler (under the scheduler's lock)
    # Constrained decoding (with the engine's Grammars that made it), vLLM's min_tokens (the
    # stop ids are masked until then), logprobs with this many alternatives (one record per token).
    grammar: RowGrammar | None = None
    grammars: Grammars | None = None
    min_tokens: int = 0
    logprobs: int | None = None
    logprob_records: list[LogprobRecord] = field(default_factory=list)
    # A prompt with images: the processor's tensors (pixel values ...) for its next prefill, and
    # those it was prefilled with (a paused row's recompute needs its pixels again).
    model_inputs: dict[str, Any] | None = None
    images: dict[str, Any] | None = None
    adapter: Adapter | None = None  # the LoRA adapter its row runs (None: the base model)

    def wanted(self) -> bool:
        return not self.done.is_set() and not (self.cancel is not None and self.cancel.is_set())

    def paused(self) -> bool:
        return self.pause is not None and self.pause.is_set()

    def ended(self) -> bool:
        over = self.stopped or self.produced >= self.max_new_tokens or not self.wanted()
        return over or (self.grammar is not None and self.grammar.ended)

    def push(self, token: int) -> None:
        self.produced += 1
        self.unprefilled.append(token)
        self.last = token
        self.stopped = token in self.stop_ids
        self.on_item(token)


class Scheduler:
    """Continuous batching: owns the model's forward passes on its own thread (started on demand),
    the queue of waiting jobs, the running batch and its KV cache; `submit` from any thread.

    Must not: build prompts, clean text or parse tool calls (the Engine's jobs), or block a submitter
    (a full queue is an OverloadedError at once).
    """

    def __init__(
        self,
        model: Any,
        *,
        max_batch: int,
        max_queue: int,
        seq2seq: bool,
        pad_id: int,
        prefix_cache_tokens: int = 0,
        prefill_chunk_tokens: int = 0,
        own_decode_step: bool = False,
        cuda_graphs: bool = False,
        cuda_graph_kv_tokens: int = 0,
        adapters: Adapters | None = None,
    ) -> None:
        self.max_batch, self.max_queue = max_batch, max_queue
        self._adapters = adapters  # LoRA adapters per row (None: this worker serves none)
        self.peak_rows = 0  # the most requests one step has advanced (tests, metrics)
        self._model, self._seq2seq = model, seq2seq
        self._suppress = _suppressed_ids(model)
        # Why rows can't share a cache (None: they can).
        self.unbatched_reason = "an encoder-decoder model" if seq2seq else batch_refusal(model, pad_id)
        decode: DecodeStep | None = None
        if self.unbatched_reason:
            why: str | None = "unbatched rows decode on the model's forward"
        elif not own_decode_step:
            why = "DUKAT_OWN_DECODE_STEP is off"
        else:
            decode, why = checked_decode_step(
                model, pad_id, graph_rows=max_batch if cuda_graphs else 0, graph_tokens=cuda_graph_kv_tokens
            )
            if isinstance(decode, GraphStep):  # every batch size captured now, not at a request
                took = decode.warm()
                logger.info("decode graphs: %d batch sizes captured in %.2f s", len(took), sum(took.values()))
        if decode is not None:
            decode.adapters = adapters
        self.decode_refusal = why  # why the model's forward decodes (None: worker/model/decode_step.py)
        self._batch = None if self.unbatched_reason else PaddedBatch(model, pad_id, decode)
        self._cond = threading.Condition()  # guards the fields up to _thread
        self._waiting: deque[Job] = deque()
        self._in_flight = 0  # waiting + running, until their consumer or the scheduler is done
        self._closing = self._aborting = False
        self._thread: threading.Thread | None = None
        self._rows: list[Job] = []  # the batch's rows, in cache order
        self._solos: dict[Job, Solo] = {}  # the rows on a cache of their own
        # Prompts prefilled on their own, a chunk per step, first come first served (batched models).
        self._prefilling: dict[Job, RowPrefill | None] = {}
        # Rows whose reader is behind, out of the batch (None) or with their own cache (Solo).
        self._parked: dict[Job, Solo | None] = {}
        alone = self._batch is not None and bool(prefix_cache_tokens or prefill_chunk_tokens)
        if alone and not can_prefill_alone(model, pad_id):  # then prompts are prefilled as before
            logger.warning(
                "this model's cache cannot be prefilled in chunks: no chunked prefill or prefix cache"
            )
            alone = False
        # None: a prompt's prefill in one piece
        self._chunk = (prefill_chunk_tokens or None) if alone else None
        self.prefix_cache = PrefixCache(prefix_cache_tokens) if alone and prefix_cache_tokens else None
        # Longer prompts are prefilled alone for the prefix cache: a batched prefill's sliding layers
        # would not keep all their columns.
        self._join_keeps = join_keeps(model) if self.prefix_cache is not None else None
        # A row with images prefills alone and then joins the batch, unless its positions are not
        # its token count (Qwen2-VL's multimodal rotary positions): then it runs solo.
        self._images_join = self._batch is not None and not multimodal_positions(model)
        self._stepped: set[Callable[[], None]] = set()  # the `on_step`s owed a call (scheduler thread)
        self._filler: ThreadPoolExecutor | None = None  # fills grammar masks during forwards
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

    def wake(self) -> None:
        """A parked row may go on (its reader caught up)."""
        with self._cond:
            self._cond.notify()

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
        if self._filler is not None:
            self._filler.shutdown(wait=False)

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
            everyone = [*self._rows, *self._solos, *self._prefilling, *self._waiting, *self._parked]
            self._end(everyone, InternalError("the scheduler stopped"))
            self._flush()
            raise

    def _wait_for_work(self) -> bool:
        if self._aborting:
            self._end([*self._rows, *self._solos, *self._prefilling, *self._waiting, *self._parked], None)
            self._flush()
        with self._cond:
            idle = False
            while not (self._waiting or self._rows or self._solos or self._prefilling or self._unparkable()):
                if (self._closing or idle) and not self._parked:
                    self._thread = None  # under the lock: the next submit starts a new thread
                    return False
                # Parked rows are polled: a cancel does not notify.
                idle = not self._cond.wait(_PARKED_POLL_S if self._parked else _LINGER_S)
        return True

    def _unparkable(self) -> bool:
        return any(not job.paused() or not job.wanted() for job in self._parked)

    def _iterate(self) -> None:
        self._sweep()
        self._park()
        while jobs := self._take():  # newcomers first: their prefill decides their first token's wait
            images = [job for job in jobs if job.model_inputs is not None]
            for job in images:  # (their prefill takes their inputs: they are told apart first)
                self._admit_images(job)
                self._flush()
            jobs = [job for job in jobs if job not in images and not self._prefills_alone(job)]
            for group in prefill_groups([len(job.prompt_ids) for job in jobs]):
                self._admit([jobs[i] for i in group])
                self._flush()  # their first tokens go out now, not after the next prefill or step
        if self._prefilling:
            self._advance_prefills()
            self._flush()
        self._sweep()
        self.peak_rows = max(self.peak_rows, len(self._rows) + len(self._solos))
        if self._rows:
            assert self._batch is not None
            ahead = self._fill_ahead(self._rows)
            with self._lora(self._rows):
                logits = self._batch.step([job.last for job in self._rows])
            self._emit(self._rows, logits, ahead.result() if ahead is not None else None)
        for job, solo in self._solos.items():
            if not job.ended():
                with self._lora([job]):
                    logits = solo.step(job.last)
                self._emit([job], logits)

    def _take(self) -> list[Job]:
        with self._cond:
            room = self.max_batch - len(self._rows) - len(self._solos) - len(self._prefilling)
            taken = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        self._end([j for j in taken if not j.wanted()], None)  # cancelled while waiting: no prefill
        return [j for j in taken if j.wanted()]

    def _admit_images(self, job: Job) -> None:
        """A prompt with images: one forward of its ids and pixels on a cache of its own (never the
        prefix cache: its image tokens' ids are the same for every image), then it decodes in the
        batch like any row, or solo where it cannot join."""
        self._start([job])
        inputs, job.model_inputs = job.model_inputs or {}, None
        job.images = inputs
        batch = self._batch
        if batch is None or not self._images_join:
            solo = self._solos[job] = Solo(self._model, job.prompt_ids, seq2seq=False, inputs=inputs)
            self._prefill([job], solo.prefill)
            return

        def prefill() -> torch.Tensor:
            assert batch is not None
            cache, logits = prefill_with_images(self._model, job.prompt_ids, inputs)
            batch.add(cache, len(job.prompt_ids))
            return logits

        if self._prefill([job], prefill):
            self._rows.append(job)

    def _prefills_alone(self, job: Job) -> bool:
        """Whether `job` is prefilled on its own, in chunks (a long prompt) or after its cached
        prefix; then it waits in `_prefilling` (it holds a row) rather than joining a group."""
        if self._batch is None:
            return False
        n, keeps = len(job.prompt_ids), self._join_keeps
        long = (self._chunk is not None and n > self._chunk) or (keeps is not None and n > keeps)
        cache = self.prefix_cache if job.adapter is None else None  # the cache holds the base's keys
        if not long and (cache is None or not cache.cached_length(job.prompt_ids)):
            return False
        self._start([job])
        self._prefilling[job] = None  # its RowPrefill starts when its turn comes
        return True

    def _advance_prefills(self) -> None:
        """Up to one chunk of prefill this step, first come first served: a newcomer delays the
        running rows by at most about a chunk per step, and a long prompt cannot keep a later one
        waiting for more than its own chunks. A finished prefill's row joins the batch."""
        budget = self._chunk or sum(len(job.prompt_ids) for job in self._prefilling)
        for job in list(self._prefilling):
            if budget <= 0:
                return
            if not job.wanted():
                self._end([job], None)
                continue
            try:
                state = self._prefilling[job] or self._row_prefill(job)
                self._prefilling[job] = state
                used = min(budget, state.remaining)
                with self._lora([job]):
                    logits = state.advance(used)
                budget -= used
                if logits is not None:
                    self._join_batch(job, state, logits)
            except Exception as exc:  # e.g. out of memory: this newcomer fails, the others go on
                logger.exception("prefill of a %d-token prompt failed", len(job.prompt_ids))
                self._end([job], exc)

    def _row_prefill(self, job: Job) -> RowPrefill:
        """The lookup happens when its prefill starts: a prefix stored by an earlier prompt of the
        same queue (concurrent requests with one system prompt) is reused."""
        cache = self.prefix_cache if job.adapter is None else None
        prefix = cache.lookup(job.prompt_ids) if cache is not None else (0, [], [])
        job.cached_tokens = prefix[0]
        return RowPrefill(self._model, job.prompt_ids, prefix)

    def _join_batch(self, job: Job, state: RowPrefill, logits: torch.Tensor) -> None:
        assert self._batch is not None
        if self.prefix_cache is not None and job.adapter is None and (kv := state.layers_kv()) is not None:
            self.prefix_cache.store(job.prompt_ids, *kv)
        self._batch.add(state.finish(), len(job.prompt_ids))
        del self._prefilling[job]
        self._rows.append(job)
        self._emit([job], logits)

    def _park(self) -> None:
        """Rows whose reader is behind leave (a batch row drops its cache: recomputed on resume);
        parked rows whose reader caught up come back (batch rows first in the queue)."""
        for job in [job for job in (*self._rows, *self._solos) if job.paused() and job.wanted()]:
            if job in self._solos:
                self._parked[job] = self._solos.pop(job)
                continue
            keep = [i for i, row in enumerate(self._rows) if row is not job]
            self._rows = [self._rows[i] for i in keep]
            assert self._batch is not None
            self._batch.keep(keep)
            if job.images is not None:  # its recompute goes through the pixels again
                job.model_inputs = _longer(job.images, len(job.prompt_ids), len(job.unprefilled))
            job.prompt_ids = [*job.prompt_ids, *job.unprefilled]
            job.unprefilled = []
            self._parked[job] = None
        for job in [job for job in self._parked if not job.paused() or not job.wanted()]:
            solo = self._parked.pop(job)
            if not job.wanted():
                self._end([job], None)
            elif solo is not None:
                self._solos[job] = solo
            else:
                with self._cond:
                    self._waiting.appendleft(job)

    def _start(self, jobs: list[Job]) -> None:
        now = time.perf_counter()
        for job in jobs:
            if job.admitted:  # a parked row back: its prompt was observed already
                continue
            job.admitted = now
            if not self._seq2seq:
                job.sampler.observe(job.prompt_ids)  # transformers' repetition penalty counts the prompt

    def _admit(self, jobs: list[Job]) -> None:
        self._start(jobs)
        if self.prefix_cache is not None:
            for job in jobs:
                self.prefix_cache.count_miss(job.prompt_ids)
        if self._batch is None:
            for job in jobs:
                self._solos[job] = Solo(self._model, job.prompt_ids, seq2seq=self._seq2seq)
                self._prefill([job], self._solos[job].prefill)
            return
        batch, cache = self._batch, self.prefix_cache
        prompts = [j.prompt_ids for j in jobs]

        def on_row(i: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
            if cache is not None and jobs[i].adapter is None:  # an adapter's keys are its own
                cache.store(prompts[i], keys, values)

        if self._prefill(jobs, lambda: batch.join(prompts, on_row=on_row if cache is not None else None)):
            self._rows += jobs

    def _prefill(self, jobs: list[Job], prefill: Callable[[], torch.Tensor]) -> bool:
        """The newcomers' first tokens; False when their prefill failed (then they failed)."""
        try:
            with self._lora(jobs):
                logits = prefill()
        except Exception as exc:  # e.g. out of memory: the newcomers fail, the running rows go on
            logger.exception("prefill of %d requests failed", len(jobs))
            self._end(jobs, exc)
            return False
        self._emit(jobs, logits)
        return True

    def _fill_ahead(self, jobs: list[Job]) -> Future[torch.Tensor] | None:
        """The constrained rows' masks, filled in a thread while the step's forward runs."""
        rows = [(i, job.grammar) for i, job in enumerate(jobs) if job.grammar is not None]
        if not rows:
            return None
        grammars = next(job.grammars for job in jobs if job.grammars is not None)
        assert grammars is not None
        if self._filler is None:
            self._filler = ThreadPoolExecutor(1, thread_name_prefix="dukat-masks")
        return self._filler.submit(grammars.bitmask, len(jobs), rows)

    def _emit(self, jobs: list[Job], logits: torch.Tensor, bitmask: torch.Tensor | None = None) -> None:
        """The sampling step of every row: each row's next token, chosen by its own sampler from
        its row of `logits` [rows, vocab], and pushed to its consumer."""
        if self._suppress is not None:
            logits[:, self._suppress] = float("-inf")
        _mask_rows(jobs, logits, bitmask)
        greedy = logits.argmax(-1).tolist()  # one op for every plain greedy row
        for i, (job, best) in enumerate(zip(jobs, greedy, strict=True)):
            sampler, grammar = job.sampler, job.grammar
            remaining = job.max_new_tokens - job.produced
            token = grammar.forced(remaining) if grammar is not None else None
            if token is not None:
                grammar.take(token)  # type: ignore[union-attr]
            else:
                token = best if sampler.plain_greedy else sampler.choose(logits[i])
                if grammar is not None:
                    token = grammar.accept(token, remaining)
            if job.logprobs is not None:
                job.logprob_records.append(record_logprobs(logits[i], token, job.logprobs))
            sampler.observe(token, generated=True)
            job.push(token)
            self._owe_step(job)

    def _lora(self, jobs: list[Job]) -> contextlib.AbstractContextManager[None]:
        """The forward passes inside run each of `jobs`' rows with its own adapter."""
        if self._adapters is None:
            return contextlib.nullcontext()
        return self._adapters.rows([job.adapter for job in jobs])

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
            assert self._batch is not None
            self._batch.keep(keep)
        for job in ending:
            self._solos.pop(job, None)
            self._prefilling.pop(job, None)
            self._parked.pop(job, None)
            job.on_item(item)
            self._owe_step(job)

    def _uncount(self, jobs: Iterable[Job]) -> None:
        """Under the lock: `jobs` stop holding places (each once, whoever ends it first)."""
        for job in jobs:
            self._in_flight -= job.counted
            job.counted = False


def prefill_groups(lengths: list[int], *, waste: float = 0.25, slack: int = 64) -> list[list[int]]:
    """The newcomers' prefills: indexes into `lengths` in groups, shortest prompts first, a group
    growing while its left padding stays under `waste` of its real tokens or under `slack` tokens
    (a forward's fixed cost: short prompts are cheaper padded together than prefilled apart).

    A batched prefill costs its width times its rows, and every row's first token waits for all of
    it: one long prompt among short ones would multiply the short ones' work and wait. Shortest
    first also gives the most first tokens soonest; the last one still waits for every prefill.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    real = 0
    for i in order:
        n = lengths[i]  # the widest so far: the group's width
        padding = n * (len(groups[-1]) + 1) - (real + n) if groups else 0
        if groups and padding <= max(waste * (real + n), slack):
            groups[-1].append(i)
            real += n
        else:
            groups.append([i])
            real = n
    return groups


def _abort_at_exit(ref: weakref.ref[Scheduler]) -> None:
    if (scheduler := ref()) is not None:
        scheduler.close(abort=True)


def _mask_rows(jobs: list[Job], logits: torch.Tensor, bitmask: torch.Tensor | None) -> None:
    """Per-row masks, in place: each constrained row to its grammar, stop ids off before min_tokens."""
    constrained = [(i, job.grammar) for i, job in enumerate(jobs) if job.grammar is not None]
    if constrained:
        grammars = next(job.grammars for job in jobs if job.grammars is not None)
        assert grammars is not None
        grammars.mask(logits, constrained, bitmask)
    for i, job in enumerate(jobs):
        if job.produced < job.min_tokens and job.stop_ids and job.grammar is None:
            logits[i, sorted(job.stop_ids)] = float("-inf")


def _longer(inputs: dict[str, Any], length: int, added: int) -> dict[str, Any]:
    """A processor's tensors for a prompt `added` text tokens longer: the per-token ones (Gemma 3's
    token_type_ids, [1, length]) gain zeros (a text token's) at the end."""
    out = dict(inputs)
    for key, value in inputs.items():
        if torch.is_tensor(value) and value.dim() == 2 and value.shape == (1, length):
            out[key] = torch.cat([value, value.new_zeros(1, added)], dim=1)
    return out


def _suppressed_ids(model: Any) -> torch.Tensor | None:
    """The generation config's `suppress_tokens`: ids never to be generated (as `generate` honours)."""
    ids = getattr(getattr(model, "generation_config", None), "suppress_tokens", None)
    if not ids:
        return None
    return torch.tensor(sorted(set(ids)), dtype=torch.long, device=next(model.parameters()).device)
