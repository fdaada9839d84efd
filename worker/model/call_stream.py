"""Tool calls read out of JSON text while it is generated, so their arguments stream as they come.

A call is a JSON object `{"name": ..., "arguments": {...}}` (`"parameters"` in Llama 3's format),
alone, in a top-level array, or one after another between other text (the formats' markers and
separators are skipped); or, for a named tool_choice, the whole text is the arguments object. The
reader follows the JSON structure character by character and knows where each call's arguments
value starts and ends in the text, so it can hand out the arguments' raw text as it arrives: a
call's first delta (its id and name) once its name is complete and its arguments object has begun,
then the arguments' new characters at each feed. A call's final arguments are exactly that raw text,
so the streamed pieces always join to them.

Why not a partial-JSON library (`partial-json-parser`, as vLLM uses): it parses a prefix into a
completed value, and a stream built from it diffs serializations of successive guesses, which
disagree with each other (and with the model's own spacing) whenever a guess completes a string
or a number differently; positions in the raw text have no such problem. The scan needs only
strings, escapes and brackets, and `json.loads` still checks each finished call.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from shared.generation import CallDelta, FunctionCall, ToolCall

_ARGUMENT_KEYS = ("arguments", "parameters")


@dataclass
class _Call:
    """A call object being read: where it starts, the key being read, its arguments' span."""

    start: int
    depth: int  # the reader's depth inside this object
    key: Any = None  # the key read last at this object's level
    in_value: bool = False  # after that key's colon, before the next comma
    value_start: int | None = None  # where that value's text starts
    name: str | None = None
    args_start: int | None = None  # where its arguments object starts
    args_end: int | None = None  # just after it, once it closed
    index: int | None = None  # its place among the calls, once announced
    id: str = ""
    sent: int = 0  # characters of its arguments handed out


class CallReader:
    """Feed generated text; `deltas()` takes the call deltas made so far, `calls` holds the finished
    calls. `name`: the text is the arguments of this function (a named tool_choice); None: the text
    holds call objects (`arrays_only`: only inside a top-level array, for formats that write a
    call's arguments as a top-level object after its name, which may well have a "name" key)."""

    def __init__(self, name: str | None = None, *, arrays_only: bool = False) -> None:
        self.name, self.arrays_only = name, arrays_only
        self.text = ""
        self.calls: list[ToolCall] = []
        self.announced = 0  # calls whose first delta went out
        self._pending: list[CallDelta] = []
        self._pos = 0
        self._stack: list[str] = []
        self._in_string = self._escaped = False
        self._string_start = 0
        self._call: _Call | None = None
        self._named: _Call | None = None  # a named call: its arguments, once they began
        self._dead = False  # a named call's text that is no object

    def feed(self, text: str) -> None:
        self.text += text
        for i in range(self._pos, len(self.text)):
            self._pos = i
            self._step(i, self.text[i])
        self._pos = len(self.text)
        self._send_arguments()

    def deltas(self) -> list[CallDelta]:
        out, self._pending = self._pending, []
        return out

    def finish(self) -> list[ToolCall]:
        """The finished calls (a named call's: when its arguments object closed and parses)."""
        call = self._named
        if call is not None and call.args_end is not None and not self.calls:
            arguments = self.text[call.start : call.args_end]
            if isinstance(_decoded(arguments), dict):
                function = FunctionCall(name=self.name or "", arguments=arguments)
                self.calls.append(ToolCall(id=call.id, function=function))
        return self.calls

    def _step(self, i: int, char: str) -> None:
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
                self._string_closed(i)
        elif char == '"':
            self._in_string, self._string_start = True, i
            self._value_begins(i, char)
        elif char in "{[":
            self._value_begins(i, char)
            self._stack.append(char)
            self._opened(i, char)
        elif char in "}]":
            if self._stack:
                self._closed(i)
        elif char in ":,":
            call = self._call
            if call is not None and len(self._stack) == call.depth:
                call.in_value, call.value_start = char == ":", None
        elif not char.isspace():
            self._value_begins(i, char)

    def _value_begins(self, i: int, char: str) -> None:
        if self.name is not None:
            if self._named is None and not self._dead and not self._stack:
                if char == "{":
                    self._named = _Call(start=i, depth=1, name=self.name, args_start=i)
                else:
                    self._dead = True
            return
        call = self._call
        if call is None or len(self._stack) != call.depth or not call.in_value:
            return
        if call.value_start is not None:
            return
        call.value_start = i
        if call.key in _ARGUMENT_KEYS and char == "{" and call.args_start is None:
            call.args_start = i

    def _opened(self, i: int, char: str) -> None:
        # A call object: a top-level object, or an object right inside a top-level array.
        top = (len(self._stack) == 1 and not self.arrays_only) or self._stack == ["[", "{"]
        if self.name is None and self._call is None and char == "{" and top:
            self._call = _Call(start=i, depth=len(self._stack))

    def _closed(self, i: int) -> None:
        depth = len(self._stack)
        self._stack.pop()
        named = self._named
        if named is not None and depth == 1 and named.args_end is None:
            named.args_end = i + 1
        call = self._call
        if call is None:
            return
        if call.args_start is not None and call.args_end is None and depth == call.depth + 1:
            call.args_end = i + 1
        if depth == call.depth:
            self._call_closed(call, i + 1)

    def _string_closed(self, i: int) -> None:
        call = self._call
        if call is None or len(self._stack) != call.depth:
            return
        if not call.in_value:
            call.key = _decoded(self.text[self._string_start : i + 1])
        elif call.key == "name" and call.value_start == self._string_start:
            value = _decoded(self.text[self._string_start : i + 1])
            call.name = value if isinstance(value, str) else None

    def _call_closed(self, call: _Call, end: int) -> None:
        self._call = None
        finished = _finished(self.text, call, end)
        if finished is None:
            return  # no call after all (a call already announced stays unfinished)
        name, arguments = finished
        if call.index is None:  # its name came after its arguments, or it has no arguments object
            call.name = name
            self._announce(call)
        if arguments[call.sent :]:
            self._pending.append(CallDelta(index=call.index or 0, arguments=arguments[call.sent :]))
        self.calls.append(ToolCall(id=call.id, function=FunctionCall(name=name, arguments=arguments)))

    def _announce(self, call: _Call) -> None:
        call.index, self.announced, call.id = self.announced, self.announced + 1, new_call_id()
        self._pending.append(CallDelta(index=call.index, id=call.id, name=call.name))

    def _send_arguments(self) -> None:
        """The open call's new arguments text, announcing the call first when it is time."""
        call = self._named if self.name is not None else self._call
        if call is None or call.args_start is None or call.name is None:
            return
        if call.index is None:
            self._announce(call)
        end = call.args_end if call.args_end is not None else self._pos
        if end - call.args_start > call.sent:
            piece = self.text[call.args_start + call.sent : end]
            self._pending.append(CallDelta(index=call.index or 0, arguments=piece))
            call.sent = end - call.args_start


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def _decoded(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None


def _finished(text: str, call: _Call, end: int) -> tuple[str, str] | None:
    """(name, arguments text) of a closed call object; None when it is no valid call."""
    value = _decoded(text[call.start : end])
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments: Any = next((value[k] for k in _ARGUMENT_KEYS if k in value), {})
    if isinstance(arguments, str):  # the arguments object written as a JSON string
        return (value["name"], arguments) if isinstance(_decoded(arguments), dict) else None
    if not isinstance(arguments, dict):
        return None
    if call.args_start is not None and call.args_end is not None:
        return value["name"], text[call.args_start : call.args_end]  # as the model wrote it
    return value["name"], json.dumps(arguments, ensure_ascii=False)
