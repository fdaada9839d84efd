"""One request's reply: the scheduler's token ids turned into text (detokenization, stop strings,
finish reason, timings) and handed to its consumer's callbacks, on the scheduler's thread; and
`TextStream`, the consumer that reads them on another thread."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from shared.generation import (
    GenerateResult,
    Reasoning,
    SamplingParams,
    StreamItem,
    StreamPiece,
    TextWithLogprobs,
    Timings,
    TokenLogprob,
    ToolParsing,
)
from shared.model_types import ModelType
from worker.model.batching import Job
from worker.model.cleaning import scanner_for
from worker.model.detokenize import detokenizer
from worker.model.harmony import HarmonySplitter
from worker.model.logprobs import token_logprobs
from worker.model.reasoning import ThinkSplitter
from worker.model.tool_calls import ToolCallScanner, ToolFormat


@dataclass(frozen=True, kw_only=True)
class Plan:
    """One generation request, checked and tokenized, ready to run."""

    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    chat: bool  # chat cleaning (implied stops, role echo, strip) or raw completion
    stop_ids: frozenset[int]  # end-of-sequence ids and special tokens that are stop strings
    tool_format: ToolFormat = ToolFormat.GENERIC
    tool_parsing: ToolParsing = "none"
    tool_name: str | None = None  # the function of a named tool_choice
    skip_special: bool = True
    vocab: list[bytes] | None = None  # each id's bytes, when logprobs are wanted
    # Completions' echo: the prompt's text and its tokens' logprobs.
    prompt_text: str | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    # A reasoning template's chat reply: whether it starts inside the thinking block (None: the
    # reply is not split).
    thinking_open: bool | None = None
    harmony: bool = False  # a gpt-oss reply: its channels split it (worker/model/harmony.py)
    # A prompt with images: the processor's tensors (pixel values ...) for its prefill.
    model_inputs: dict[str, Any] | None = None


def deliver(
    reply: Reply,
    on_text: Callable[[StreamPiece], None],
    on_done: Callable[[GenerateResult | BaseException], None],
    item: int | BaseException | None,
) -> None:
    """The scheduler's item for one request, turned into its consumer's callbacks."""
    if reply.over:
        return  # the end marker after this consumer finished (or a late failure)
    try:
        if isinstance(item, BaseException):
            reply.over = True
            reply.end()
            on_done(item)
            return
        if reply.job.cancel is not None and reply.job.cancel.is_set():
            reply.finish, reply.over = "cancelled", True
        else:
            reply.emit(reply.feed(item), on_text)
        if reply.over:
            reply.end()  # its place is free now, its row leaves at the next step
            reply.conclude(on_text, on_done)
    except Exception as exc:  # e.g. a decoder error: this request fails, not the step
        if not reply.over:
            reply.over = True
            reply.end()
        on_done(exc)


class Reply:
    """One request's tokens turned into text: detokenization, stop strings, finish reason and
    timings. Fed on the scheduler's thread."""

    job: Job
    end: Callable[[], None]  # the scheduler's `finish` of this job

    def __init__(self, model_type: ModelType, tokenizer: Any, plan: Plan, started: float) -> None:
        self.scanner = scanner_for(model_type, plan.params.stop, chat=plan.chat)
        self.tools = ToolCallScanner(plan.tool_format, plan.tool_parsing, plan.tool_name)
        self.think: ThinkSplitter | HarmonySplitter | None = None
        if plan.harmony:
            self.think = HarmonySplitter(calls=plan.tool_parsing == "auto")
        elif plan.thinking_open is not None:
            self.think = ThinkSplitter(inside=plan.thinking_open)
        self.reasoning_tokens = 0
        self.detok = detokenizer(tokenizer, skip_special_tokens=plan.skip_special)
        self.plan, self.started = plan, started
        self.count, self.first, self.finish = 0, 0.0, "length"
        self.over = plan.max_new_tokens <= 0  # no more tokens wanted
        self._logged = 0  # logprob records already sent with their text

    def feed(self, token: int | None) -> tuple[str, str]:
        """The thinking and answer text `token` adds (None: the scheduler ended the row, i.e. a
        cancel); sets `over`."""
        if token is None:  # the scheduler saw the cancel first
            self.finish, self.over = "cancelled", True
            return "", ""
        self.count += 1
        self.first = self.first or time.perf_counter()
        if token in self.plan.stop_ids:
            self.finish, self.over = "stop", True
            return "", ""
        if self.think is not None and self.think.thinking:
            self.reasoning_tokens += 1
        thought, text = self._split(self.scanner.feed(self.detok.feed(token)))
        if self.scanner.stopped:
            self.finish, self.over = "stop", True
        elif self.count >= self.plan.max_new_tokens:
            self.over = True
        return thought, text

    def _split(self, text: str, *, last: bool = False) -> tuple[str, str]:
        """Thinking, then the answer with its tool calls parsed."""
        thought = ""
        if self.think is not None:
            thought, text = self.think.feed(text)
            if last:
                more_thought, more_text = self.think.finish()
                thought, text = thought + more_thought, text + more_text
        return thought, self.tools.feed(text)

    def emit(self, pieces: tuple[str, str], on_text: Callable[[StreamPiece], None]) -> None:
        """Thinking, then answer text (with the logprobs of its tokens not sent yet, when asked),
        then the tool-call pieces that are ready."""
        thought, text = pieces
        if thought:
            on_text(Reasoning(text=thought))
        if text:
            on_text(self._with_logprobs(text))
        for delta in self.tools.deltas():
            on_text(delta)

    def _with_logprobs(self, text: str) -> str | TextWithLogprobs:
        vocab = self.plan.vocab
        if vocab is None:
            return text
        records = self.job.logprob_records
        new = [r for r in records[self._logged :] if r.token not in self.plan.stop_ids]
        self._logged = len(records)
        return TextWithLogprobs(text=text, logprobs=token_logprobs(vocab, new, [r.token for r in new]))

    def conclude(
        self,
        on_text: Callable[[StreamPiece], None],
        on_done: Callable[[GenerateResult | BaseException], None],
    ) -> None:
        """What is still held back, then the result."""
        scanner = self.scanner
        thought, tail = self._split(scanner.feed(self.detok.finish()) + scanner.finish(), last=True)
        held, calls = self.tools.finish()
        self.emit((thought, tail + held), on_text)
        finish = "stop" if scanner.stopped and self.finish == "length" else self.finish
        acquired = self.job.admitted or time.perf_counter()  # never admitted: cancelled while waiting
        prompt_tokens = len(self.plan.prompt_ids)
        answer = self.think.content if self.think is not None else scanner.text
        text = self.tools.content if self.tools.active else answer
        result = _result(text, finish, prompt_tokens, self.count, self.started, acquired, self.first)
        result.cached_tokens = self.job.cached_tokens
        if self.think is not None and self.think.reasoning is not None:
            result.reasoning, result.reasoning_tokens = self.think.reasoning, self.reasoning_tokens
        if isinstance(self.think, HarmonySplitter):
            calls = [*self.think.calls, *calls]  # its commentary channel's calls
        if calls:
            result.tool_calls, result.finish_reason = calls, "tool_calls"
        plan = self.plan
        if plan.vocab is not None:
            records = [r for r in self.job.logprob_records if r.token not in plan.stop_ids]
            result.logprobs = token_logprobs(plan.vocab, records, [r.token for r in records])
        result.prompt_text, result.prompt_logprobs = plan.prompt_text, plan.prompt_logprobs
        on_done(result)


class TextStream(Iterator[StreamItem]):
    """What `stream` returns: text deltas (and tool-call pieces), then the GenerateResult. Closing
    it, or losing it, ends its request, even before the first item."""

    def __init__(
        self, items: queue.SimpleQueue[StreamItem | BaseException], end: Callable[[], None]
    ) -> None:
        self._items = items
        self._end = end
        self._over = False

    def __next__(self) -> StreamItem:
        if self._over:
            raise StopIteration
        item = self._items.get()
        if isinstance(item, BaseException):
            self._over = True
            raise item
        self._over = isinstance(item, GenerateResult)
        return item

    def close(self) -> None:
        self._over = True
        self._end()

    def __del__(self) -> None:
        self._end()


def _result(
    text: str,
    finish: Any,
    prompt_tokens: int,
    count: int,
    started: float,
    acquired: float,
    first: float,
) -> GenerateResult:
    end = time.perf_counter()
    return GenerateResult(
        text=text,
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
