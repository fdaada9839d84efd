"""The Responses API's stream: OpenAI's documented event sequence for one generation.

`response.created`, `response.in_progress`; for the text: `response.output_item.added` (a message),
`response.content_part.added`, `response.output_text.delta`..., `response.output_text.done`,
`response.content_part.done`, `response.output_item.done`; for each function call:
`response.output_item.added`, `response.function_call_arguments.delta`..., `.done`,
`response.output_item.done`; then `response.completed` (or `response.incomplete`) with the whole
response. Every event carries its `type` and a `sequence_number`. Text deltas carry their tokens'
logprobs when asked for; a call's arguments stream as the model writes them, and the items'
`.done` events come at the end.
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
    ResponseObject,
    finished,
    new_item_id,
    output_items,
)
from shared.generation import CallDelta, GenerateResult, TextWithLogprobs


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
    part: OutputText
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
    """The event sequence for one generation's streamed pieces and result."""
    number = _Numbered()
    message_id = new_item_id("msg")
    opened = False
    calls = _StreamedCalls()
    head: tuple[ResponseEvent, ...] = (
        number(ResponseCreated(response=shell)),
        number(ResponseInProgress(response=shell)),
    )
    async for _, event in events:
        out: tuple[ResponseEvent, ...] = ()
        match event:
            case GenerateResult():
                yield (*head, *_ending(number, shell, event, message_id, opened=opened, calls=calls))
                return
            case CallDelta():
                out = calls.events(number, event, first=1 if opened else 0)
            case TextWithLogprobs() | str() if _text(event):
                opening = () if opened else _open_message(number, message_id)
                opened = True
                delta = OutputTextDelta(item_id=message_id, output_index=0, delta=_text(event))
                if isinstance(event, TextWithLogprobs):
                    delta.logprobs = response_logprobs(event.logprobs)
                out = (*opening, number(delta))
        if out:  # Responses reasoning items: not streamed yet
            yield (*head, *out)
            head = ()


def _text(event: str | TextWithLogprobs) -> str:
    return event if isinstance(event, str) else event.text


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


def _open_message(number: _Numbered, message_id: str) -> tuple[ResponseEvent, ...]:
    item = MessageItem(id=message_id, status="in_progress", content=[])
    return (
        number(OutputItemAdded(output_index=0, item=item)),
        number(ContentPartAdded(item_id=message_id, output_index=0, part=OutputText(text=""))),
    )


def _ending(
    number: _Numbered,
    shell: ResponseObject,
    result: GenerateResult,
    message_id: str,
    *,
    opened: bool,
    calls: _StreamedCalls,
) -> list[ResponseEvent]:
    output = [
        msgspec.structs.replace(item, id=calls.ids[item.call_id])
        if isinstance(item, FunctionCallItem) and item.call_id in calls.ids
        else item
        for item in output_items(result, message_id)
    ]
    out: list[ResponseEvent] = []
    for index, item in enumerate(output):
        if isinstance(item, MessageItem):
            if not opened:
                out += _open_message(number, message_id)
            part = item.content[0]
            out += [
                number(
                    OutputTextDone(
                        item_id=message_id, output_index=index, text=part.text, logprobs=part.logprobs
                    )
                ),
                number(ContentPartDone(item_id=message_id, output_index=index, part=part)),
            ]
        elif isinstance(item, FunctionCallItem) and item.call_id in calls.ids:  # its arguments streamed
            out.append(number(_arguments_done(index, item)))
        elif isinstance(item, FunctionCallItem):
            out += _call_events(number, index, item)
        else:  # the thinking, whole (its deltas are not streamed)
            out.append(number(OutputItemAdded(output_index=index, item=item)))
        out.append(number(OutputItemDone(output_index=index, item=item)))
    response = finished(shell, result, output)
    last = ResponseCompleted if response.status == "completed" else ResponseIncomplete
    out.append(number(last(response=response)))
    return out


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
