"""The Responses API's stream: OpenAI's documented event sequence for one generation.

`response.created`, `response.in_progress`; for a reasoning model's thinking (streamed as it comes,
before the answer): `response.output_item.added` (a reasoning item), `response.content_part.added`
(a `reasoning_text` part), `response.reasoning_text.delta`..., `response.reasoning_text.done`,
`response.content_part.done`, `response.output_item.done`; for the text: `response.output_item.added`
(a message), `response.content_part.added`, `response.output_text.delta`...,
`response.output_text.done`, `response.content_part.done`, `response.output_item.done`; for each
function call: `response.output_item.added`, `response.function_call_arguments.delta`..., `.done`,
`response.output_item.done`; then `response.completed` (or `response.incomplete`) with the whole
response. Every event carries its `type` and a `sequence_number`. Text deltas carry their tokens'
logprobs when asked for; a call's arguments stream as the model writes them (its item opens at
its first piece), and the items' `.done` events come at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import msgspec
from msgspec import Struct

from gateway.schemas.common import ChoiceEvent
from gateway.schemas.logprobs import ResponseLogprob, response_logprobs
from gateway.schemas.responses import (
    FunctionCallItem,
    MessageItem,
    OutputItem,
    OutputText,
    ReasoningItem,
    ReasoningText,
    ResponseObject,
    finished,
    new_item_id,
    output_items,
)
from shared.generation import CallDelta, GenerateResult, Reasoning, TextWithLogprobs


class _Event(Struct, kw_only=True, tag_field="type"):
    sequence_number: int = 0


class _WholeResponse(_Event):
    """An event carrying the response object as it stands."""

    response: ResponseObject


class ResponseCreated(_WholeResponse, tag="response.created"): ...


class ResponseInProgress(_WholeResponse, tag="response.in_progress"): ...


class ResponseCompleted(_WholeResponse, tag="response.completed"): ...


class ResponseIncomplete(_WholeResponse, tag="response.incomplete"): ...


class _Item(_Event):
    """An output item opened or finished."""

    output_index: int
    item: OutputItem


class OutputItemAdded(_Item, tag="response.output_item.added"): ...


class OutputItemDone(_Item, tag="response.output_item.done"): ...


class _InItem(_Event):
    """An event inside output item `item_id` (at `output_index`)."""

    item_id: str
    output_index: int


class _ContentPart(_InItem):
    part: OutputText | ReasoningText
    content_index: int = 0


class ContentPartAdded(_ContentPart, tag="response.content_part.added"): ...


class ContentPartDone(_ContentPart, tag="response.content_part.done"): ...


class OutputTextDelta(_InItem, tag="response.output_text.delta"):
    delta: str
    content_index: int = 0
    logprobs: list[ResponseLogprob] = msgspec.field(default_factory=list)


class OutputTextDone(_InItem, tag="response.output_text.done"):
    text: str
    content_index: int = 0
    logprobs: list[ResponseLogprob] = msgspec.field(default_factory=list)


class ReasoningTextDelta(_InItem, tag="response.reasoning_text.delta"):
    delta: str
    content_index: int = 0


class ReasoningTextDone(_InItem, tag="response.reasoning_text.done"):
    text: str
    content_index: int = 0


class ArgumentsDelta(_InItem, tag="response.function_call_arguments.delta"):
    delta: str


class ArgumentsDone(_InItem, tag="response.function_call_arguments.done"):
    name: str
    arguments: str


ResponseEvent = (
    ResponseCreated
    | ResponseInProgress
    | ResponseCompleted
    | ResponseIncomplete
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | OutputTextDelta
    | OutputTextDone
    | ReasoningTextDelta
    | ReasoningTextDone
    | ArgumentsDelta
    | ArgumentsDone
)


class _Numbered:
    """Stamps each event with the next sequence number."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self, event: ResponseEvent) -> ResponseEvent:
        event.sequence_number, self.next = self.next, self.next + 1
        return event


async def response_stream(
    events: AsyncIterable[ChoiceEvent], shell: ResponseObject
) -> AsyncIterator[ResponseEvent | tuple[ResponseEvent, ...]]:
    """The event sequence for one generation's thinking, text and call pieces and its result."""
    stream = _Stream(shell)
    async for _, event in events:
        match event:
            case GenerateResult():
                yield stream.ending(event)
                return
            case Reasoning():
                out = stream.thought(event.text)
            case CallDelta():
                out = stream.call(event)
            case TextWithLogprobs() | str() if _text(event):
                out = stream.text(event)
            case _:
                out = ()
        if out:
            yield out


def _text(event: str | TextWithLogprobs) -> str:
    return event if isinstance(event, str) else event.text


class _Stream:
    """Where one response's stream stands: its open items and their indexes. The thinking comes
    first, so its item is output 0 and the message's 1 (as OpenAI's); thinking that comes after the
    message opened is not streamed: it is in the completed response, after the message."""

    def __init__(self, shell: ResponseObject) -> None:
        self.number = _Numbered()
        self.shell = shell
        self.head: tuple[ResponseEvent, ...] = (
            self.number(ResponseCreated(response=shell)),
            self.number(ResponseInProgress(response=shell)),
        )
        self.message_id, self.reasoning_id = new_item_id("msg"), new_item_id("rs")
        self.message_index: int | None = None  # set once the message is open
        self.thinking: list[str] | None = None  # the streamed thinking, once its item is open
        self.thinking_open = False
        self.calls = _StreamedCalls()

    def _out(self, *events: ResponseEvent) -> tuple[ResponseEvent, ...]:
        out, self.head = (*self.head, *events), ()
        return out

    def thought(self, delta: str) -> tuple[ResponseEvent, ...]:
        if self.message_index is not None or not delta:
            return self._out()
        opening: tuple[ResponseEvent, ...] = ()
        if self.thinking is None:
            self.thinking, self.thinking_open = [], True
            opening = self._open_reasoning()
        self.thinking.append(delta)
        return self._out(*opening, self.number(ReasoningTextDelta(item_id=self.reasoning_id, output_index=0,
                                                                  delta=delta)))  # fmt: skip

    def text(self, piece: str | TextWithLogprobs) -> tuple[ResponseEvent, ...]:
        opening: list[ResponseEvent] = []
        if self.message_index is None:
            opening += self._close_thinking()
            self.message_index = 0 if self.thinking is None else 1
            opening += self._open_message(self.message_index)
        delta = OutputTextDelta(item_id=self.message_id, output_index=self.message_index, delta=_text(piece))
        if isinstance(piece, TextWithLogprobs):
            delta.logprobs = response_logprobs(piece.logprobs)
        return self._out(*opening, self.number(delta))

    def call(self, piece: CallDelta) -> tuple[ResponseEvent, ...]:
        """A call's opening or its new arguments; calls come after the thinking and the message."""
        opening = self._close_thinking()
        first = (self.thinking is not None) + (self.message_index is not None)
        return self._out(*opening, *self.calls.events(self.number, piece, first=first))

    def _close_thinking(self) -> list[ResponseEvent]:
        if not self.thinking_open:
            return []
        self.thinking_open = False
        return self._done_reasoning("".join(self.thinking or ()), 0)

    def ending(self, result: GenerateResult) -> tuple[ResponseEvent, ...]:
        first = self.thinking is not None or self.message_index is None
        output = [  # a call whose arguments streamed keeps the item id it opened with
            msgspec.structs.replace(item, id=self.calls.ids[item.call_id])
            if isinstance(item, FunctionCallItem) and item.call_id in self.calls.ids
            else item
            for item in output_items(result, self.message_id, self.reasoning_id, reasoning_first=first)
        ]
        out: list[ResponseEvent] = []
        for index, item in enumerate(output):
            if isinstance(item, ReasoningItem):
                out += self._reasoning_events(item, index)
                continue
            if isinstance(item, MessageItem):
                if self.message_index is None:
                    out += self._open_message(index)
                part = item.content[0]
                out += [
                    self.number(OutputTextDone(item_id=self.message_id, output_index=index, text=part.text,
                                               logprobs=part.logprobs)),
                    self.number(ContentPartDone(item_id=self.message_id, output_index=index, part=part)),
                ]  # fmt: skip
            elif isinstance(item, FunctionCallItem) and item.call_id in self.calls.ids:  # streamed
                out.append(self.number(_arguments_done(index, item)))
            elif isinstance(item, FunctionCallItem):
                out += _call_events(self.number, index, item)
            out.append(self.number(OutputItemDone(output_index=index, item=item)))
        response = finished(self.shell, result, output)
        last = ResponseCompleted if response.status == "completed" else ResponseIncomplete
        out.append(self.number(last(response=response)))
        return self._out(*out)

    def _reasoning_events(self, item: ReasoningItem, index: int) -> list[ResponseEvent]:
        text = item.content[0].text if item.content else ""
        if self.thinking is None:  # never streamed: its whole text at once
            delta = ReasoningTextDelta(item_id=self.reasoning_id, output_index=index, delta=text)
            return [*self._open_reasoning(index), self.number(delta), *self._done_reasoning(text, index)]
        if not self.thinking_open:
            return []  # closed when the message opened
        self.thinking_open = False
        return self._done_reasoning(text, index)

    def _open_reasoning(self, index: int = 0) -> tuple[ResponseEvent, ...]:
        item = ReasoningItem(id=self.reasoning_id, content=[], status="in_progress")
        part = ReasoningText(text="")
        return (
            self.number(OutputItemAdded(output_index=index, item=item)),
            self.number(ContentPartAdded(item_id=self.reasoning_id, output_index=index, part=part)),
        )

    def _done_reasoning(self, text: str, index: int) -> list[ResponseEvent]:
        part = ReasoningText(text=text)
        item = ReasoningItem(id=self.reasoning_id, content=[part])
        return [
            self.number(ReasoningTextDone(item_id=self.reasoning_id, output_index=index, text=text)),
            self.number(ContentPartDone(item_id=self.reasoning_id, output_index=index, part=part)),
            self.number(OutputItemDone(output_index=index, item=item)),
        ]

    def _open_message(self, index: int) -> tuple[ResponseEvent, ...]:
        item = MessageItem(id=self.message_id, status="in_progress", content=[])
        part = OutputText(text="")
        return (
            self.number(OutputItemAdded(output_index=index, item=item)),
            self.number(ContentPartAdded(item_id=self.message_id, output_index=index, part=part)),
        )


class _StreamedCalls:
    """The function-call items opened while their arguments streamed, by the call's index."""

    def __init__(self) -> None:
        self.items: dict[int, tuple[str, int]] = {}  # index -> (item id, output index)
        self.ids: dict[str, str] = {}  # call id -> item id

    def events(self, number: _Numbered, piece: CallDelta, *, first: int) -> tuple[ResponseEvent, ...]:
        """A call's opening (`first`: the output index of call 0) or its new arguments."""
        if piece.id is not None:
            item_id = new_item_id("fc")
            self.items[piece.index] = item_id, first + piece.index
            self.ids[piece.id] = item_id
            item = FunctionCallItem(
                id=item_id, call_id=piece.id, name=piece.name or "", arguments="", status="in_progress"
            )
            return (number(OutputItemAdded(output_index=first + piece.index, item=item)),)
        if piece.index not in self.items or not piece.arguments:
            return ()
        item_id, index = self.items[piece.index]
        return (number(ArgumentsDelta(item_id=item_id, output_index=index, delta=piece.arguments)),)


def _call_events(number: _Numbered, index: int, item: FunctionCallItem) -> list[ResponseEvent]:
    """A call found at the end: opened, its arguments at once, done."""
    started = msgspec.structs.replace(item, arguments="", status="in_progress")
    return [
        number(OutputItemAdded(output_index=index, item=started)),
        number(ArgumentsDelta(item_id=item.id, output_index=index, delta=item.arguments)),
        number(_arguments_done(index, item)),
    ]


def _arguments_done(index: int, item: FunctionCallItem) -> ArgumentsDone:
    return ArgumentsDone(item_id=item.id, output_index=index, name=item.name, arguments=item.arguments)
