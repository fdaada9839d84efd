"""The Messages API's stream: Anthropic's event sequence for one generation.

`message_start` (the message, empty), then per content block `content_block_start`,
`content_block_delta`... (`text_delta` for text, `input_json_delta` for a tool_use block's input),
`content_block_stop`; a `ping` after the first block opens; a tool_use block opens when its call's
name is known and its input streams as the model writes it; `message_delta` with the stop reason and
the usage; `message_stop`. Every event is named (`event: <type>`) as Anthropic's SDKs read them. The
prompt's token count is known only at the end: `message_start` says 0 input tokens and
`message_delta`'s usage carries the real count (Anthropic's SDKs take it from there).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import msgspec
from msgspec import Struct

from gateway.schemas.common import ChoiceEvent
from gateway.schemas.messages import (
    ContentBlock,
    MessageObject,
    StopReason,
    TextBlock,
    ToolUseBlock,
    content_of,
    stop_reason_of,
)
from shared.generation import CallDelta, GenerateResult, TextWithLogprobs


class _Event(Struct, kw_only=True, tag_field="type"): ...


class MessageStart(_Event, tag="message_start"):
    message: MessageObject


class ContentBlockStart(_Event, tag="content_block_start"):
    index: int
    content_block: ContentBlock


class TextDelta(Struct, kw_only=True, tag="text_delta", tag_field="type"):
    text: str


class InputJsonDelta(Struct, kw_only=True, tag="input_json_delta", tag_field="type"):
    partial_json: str


class ContentBlockDelta(_Event, tag="content_block_delta"):
    index: int
    delta: TextDelta | InputJsonDelta


class ContentBlockStop(_Event, tag="content_block_stop"):
    index: int


class StopDelta(Struct, kw_only=True):
    stop_reason: StopReason | None
    stop_sequence: str | None = None


class DeltaUsage(Struct, kw_only=True):
    input_tokens: int
    output_tokens: int


class MessageDelta(_Event, tag="message_delta"):
    delta: StopDelta
    usage: DeltaUsage


class MessageStop(_Event, tag="message_stop"): ...


class Ping(_Event, tag="ping"): ...


MessageEvent = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
)


async def message_stream(
    events: AsyncIterable[ChoiceEvent], shell: MessageObject
) -> AsyncIterator[tuple[MessageEvent, ...]]:
    """The event sequence for one generation's streamed pieces and result; `shell` is the message
    before its content (empty, no stop reason)."""
    head: tuple[MessageEvent, ...] = (MessageStart(message=shell),)
    blocks = _Blocks()
    async for _, event in events:
        out: tuple[MessageEvent, ...] = ()
        match event:
            case GenerateResult():
                yield (*head, *_ending(event, blocks))
                return
            case CallDelta():
                out = blocks.call(event)
            case TextWithLogprobs() | str():
                out = blocks.text(event if isinstance(event, str) else event.text)
        if out:  # thinking blocks are not sent on this route yet
            yield (*head, *out)
            head = ()


class _Blocks:
    """The content blocks opened while streaming: the text (block 0, when any came), then a
    tool_use block per call as its input streams."""

    def __init__(self) -> None:
        self.opened_text = False
        self.calls: dict[int, int] = {}  # call index -> block index
        self.streamed: set[str] = set()  # ids of the tool_use blocks opened
        self.stopped: set[int] = set()

    def text(self, text: str) -> tuple[MessageEvent, ...]:
        if not text or self.calls:  # no text after a call
            return ()
        opening = () if self.opened_text else _open_text()
        self.opened_text = True
        return (*opening, ContentBlockDelta(index=0, delta=TextDelta(text=text)))

    def call(self, piece: CallDelta) -> tuple[MessageEvent, ...]:
        out: list[MessageEvent] = []
        if piece.id is not None:
            if self.opened_text and 0 not in self.stopped:
                out.append(self.stop(0))
            index = self.calls[piece.index] = int(self.opened_text) + piece.index
            self.streamed.add(piece.id)
            block = ToolUseBlock(id=piece.id, name=piece.name or "", input={})
            out.append(ContentBlockStart(index=index, content_block=block))
        elif piece.index in self.calls and piece.arguments:
            index = self.calls[piece.index]
            out.append(ContentBlockDelta(index=index, delta=InputJsonDelta(partial_json=piece.arguments)))
        return tuple(out)

    def stop(self, index: int) -> ContentBlockStop:
        self.stopped.add(index)
        return ContentBlockStop(index=index)


def _open_text() -> tuple[MessageEvent, ...]:
    return ContentBlockStart(index=0, content_block=TextBlock(text="")), Ping()


def _ending(result: GenerateResult, streamed: _Blocks) -> list[MessageEvent]:
    out: list[MessageEvent] = []
    blocks = content_of(result)
    opened = streamed.opened_text
    if opened and not isinstance(blocks[0], TextBlock):  # streamed text the reply then dropped
        blocks.insert(0, TextBlock(text=""))
    for index, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            if not opened:  # nothing was streamed (a reply held back while its tool calls were read)
                out += _open_text()
                if block.text:
                    out.append(ContentBlockDelta(index=index, delta=TextDelta(text=block.text)))
        elif block.id not in streamed.streamed:
            out += _tool_use_events(index, block)
        if index not in streamed.stopped:
            out.append(streamed.stop(index))
    usage = DeltaUsage(input_tokens=result.prompt_tokens, output_tokens=result.completion_tokens)
    out += [MessageDelta(delta=StopDelta(stop_reason=stop_reason_of(result)), usage=usage), MessageStop()]
    return out


def _tool_use_events(index: int, block: ToolUseBlock) -> list[MessageEvent]:
    started = msgspec.structs.replace(block, input={})
    partial = msgspec.json.encode(block.input).decode()
    return [
        ContentBlockStart(index=index, content_block=started),
        ContentBlockDelta(index=index, delta=InputJsonDelta(partial_json=partial)),
    ]
