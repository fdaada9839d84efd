"""Tool calls in a model's output: which format a model writes them in, and parsing them out.

The format is found from the chat template, no flag needed:

- HERMES: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call
  (Hermes 2/3, Qwen 2/2.5/3, many fine-tunes). Templates that mention `<tool_call>`.
- MISTRAL: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]` (v3 tokenizers) or
  `[TOOL_CALLS]name[ARGS]{...}` (v11+). Templates that mention `[TOOL_CALLS]`.
- TAGGED: `<|tool_call|>[{"name": ..., "arguments": {...}}, ...]` (Granite 3.x; Phi-4-mini closes
  it with `<|/tool_call|>`). Templates that mention `<|tool_call|>`.
- DEEPSEEK: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>name\n```json\n{...}\n```
  <｜tool▁call▁end｜>…` (V3, R1), or `<｜tool▁call▁begin｜>name<｜tool▁sep｜>{...}` (V3.1). Templates
  that mention `<｜tool▁calls▁begin｜>`.
- LLAMA3: the reply is a JSON object `{"name": ..., "parameters": {...}}` (optionally after
  `<|python_tag|>`; several separated by `;`). Templates with `<|start_header_id|>` (Llama 3.x) or
  `<|header_start|>` (Llama 4) and tools.
- PYTHONIC: the reply is a Python list of calls `[get_weather(city="Paris"), get_time()]`
  (optionally between `<|python_start|>` and `<|python_end|>`): Llama 3.2 and Llama 4's pythonic
  templates, which ask for the `[func_name1(...` format. Read with `ast` (literals only: strings,
  numbers, booleans, None and JSON's true/false/null, lists, dicts), never evaluated.
- HARMONY: gpt-oss's templates (`<|start|>`, `<|channel|>`) render the tools themselves; its calls
  are messages to `functions.…` on the commentary channel, parsed by worker/model/harmony.py.
- GENERIC: a template without tool support (or none): Dukat describes the tools in a system
  message itself (`generic_tools_prompt`) and asks for the HERMES block, which it then parses.

`ToolCallScanner` is fed the reply's text deltas: it passes content through until a call starts
(holding back text that may be the start of a marker), then reads the calls as they come
(worker/model/call_stream.py: their arguments stream as generated). Formats whose calls are no JSON
objects with a name (Mistral v11's `name[ARGS]`, DeepSeek's) are parsed at the end, each call then
sent whole; text after a marker that holds no call is content after all.
"""

from __future__ import annotations

import ast
import enum
import json
import re
from collections.abc import Sequence
from typing import Any

from shared.generation import CallDelta, FunctionCall, ToolCall, ToolParsing
from worker.model.call_stream import CallReader, new_call_id


class ToolFormat(enum.Enum):
    HERMES = "hermes"
    MISTRAL = "mistral"
    TAGGED = "tagged"
    DEEPSEEK = "deepseek"
    LLAMA3 = "llama3"
    PYTHONIC = "pythonic"
    HARMONY = "harmony"
    GENERIC = "generic"


_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_MISTRAL_OPEN, _MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"
_PYTHON_TAG = "<|python_tag|>"
_PYTHON_START, _PYTHON_END = "<|python_start|>", "<|python_end|>"
# How a pythonic template asks for calls (Llama 3.2's and Llama 4's: "[func_name1(params_name1=...").
_PYTHONIC_ASK = "[func_name1("
_TAGGED_OPEN, _TAGGED_CLOSE = "<|tool_call|>", "<|/tool_call|>"
_DS_OPEN, _DS_CALL, _DS_SEP = "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>"
_DS_FENCE = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$")
# Where a call starts, per format (LLAMA3 also when the reply starts with `{`).
_OPENERS: dict[ToolFormat, tuple[str, ...]] = {
    ToolFormat.HERMES: (_HERMES_OPEN,),
    ToolFormat.GENERIC: (_HERMES_OPEN,),
    ToolFormat.MISTRAL: (_MISTRAL_OPEN,),
    ToolFormat.TAGGED: (_TAGGED_OPEN,),
    ToolFormat.DEEPSEEK: (_DS_OPEN, _DS_CALL),
    ToolFormat.LLAMA3: (_PYTHON_TAG,),
    ToolFormat.PYTHONIC: (_PYTHON_START,),
    ToolFormat.HARMONY: (),  # its channels are split before this scanner sees the answer
}
# Formats whose whole reply is the calls when it starts with this (after white space).
_REPLY_OPENERS = {ToolFormat.LLAMA3: "{", ToolFormat.PYTHONIC: "["}


def tool_format_of(chat_template: str | None) -> ToolFormat:
    """The format a model writes calls in, read from its chat template."""
    template = chat_template or ""
    if "tools" not in template:
        return ToolFormat.GENERIC
    if _HERMES_OPEN in template:
        return ToolFormat.HERMES
    if _MISTRAL_OPEN in template:
        return ToolFormat.MISTRAL
    if _TAGGED_OPEN in template:
        return ToolFormat.TAGGED
    if _DS_OPEN in template:
        return ToolFormat.DEEPSEEK
    if _PYTHONIC_ASK in template:
        return ToolFormat.PYTHONIC
    if "<|channel|>" in template and "<|start|>" in template:
        return ToolFormat.HARMONY
    if any(marker in template for marker in ("<|start_header_id|>", "<|header_start|>", _PYTHON_TAG)):
        return ToolFormat.LLAMA3
    return ToolFormat.GENERIC


def template_supports_tools(chat_template: str | None) -> bool:
    """Whether the template renders `tools=` itself (else the generic prompt format is used)."""
    return tool_format_of(chat_template) is not ToolFormat.GENERIC


def generic_tools_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The system text that offers `tools` to a model whose template can't (Hermes' format, short:
    it costs context on every request)."""
    listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    return (
        f"You can call these functions:\n<tools>\n{listing}\n</tools>\n"
        'To call one, reply <tool_call>{"name": <name>, "arguments": <arguments object>}</tool_call>'
    )


def generic_call_text(calls: Sequence[ToolCall]) -> str:
    """An assistant turn's calls as the generic format writes them (for history rendering)."""
    blocks = [
        f"{_HERMES_OPEN}\n{json.dumps({'name': c.function.name, 'arguments': arguments_value(c.function)})}"
        f"\n{_HERMES_CLOSE}"
        for c in calls
    ]
    return "\n".join(blocks)


def make_call(name: str, arguments: Any) -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(id=new_call_id(), function=FunctionCall(name=name, arguments=text))


def parse_tool_calls(text: str, fmt: ToolFormat) -> tuple[str, list[ToolCall]]:
    """(content before the calls, the calls) of a whole reply; no calls found: (text, [])."""
    match fmt:
        case ToolFormat.HERMES | ToolFormat.GENERIC:
            return _parse_hermes(text)
        case ToolFormat.MISTRAL:
            return _parse_mistral(text)
        case ToolFormat.LLAMA3:
            return _parse_llama3(text)
        case ToolFormat.PYTHONIC:
            return parse_pythonic(text)
        case ToolFormat.HARMONY:
            return text, []
        case ToolFormat.TAGGED:
            return _parse_tagged(text)
        case ToolFormat.DEEPSEEK:
            return _parse_deepseek(text)
    raise AssertionError(f"unhandled tool format {fmt!r}")


def parse_forced(text: str, parsing: ToolParsing, name: str | None) -> list[ToolCall]:
    """The calls of a constrained reply: a JSON array of {name, arguments}, or `name`'s arguments."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return []
    if parsing == "arguments":
        return [make_call(name or "", value)] if isinstance(value, dict) else []
    items = value if isinstance(value, list) else [value]
    return [c for item in items if (c := _call_of(item)) is not None]


class ToolCallScanner:
    """Splits a streamed reply into content deltas and tool calls (see the module doc)."""

    def __init__(self, fmt: ToolFormat, parsing: ToolParsing, name: str | None = None) -> None:
        self.fmt, self.parsing, self.name = fmt, parsing, name
        self._openers = _OPENERS[fmt]
        self._held = ""
        self.content = ""  # what was passed through
        self._captured = ""
        self._reader: CallReader | None = None
        self._deltas: list[CallDelta] = []
        self._at_start = True
        if parsing in ("calls", "arguments"):
            self._reader = CallReader(name if parsing == "arguments" else None)

    @property
    def active(self) -> bool:
        return self.parsing != "none"

    def feed(self, delta: str) -> str:
        """The content to send now from `delta` (text that may open a call is held back)."""
        if not self.active:
            self.content += delta
            return delta
        if self._reader is not None:
            self._capture(delta)
            return ""
        text = self._held + delta
        if self._at_start and self.fmt in _REPLY_OPENERS:
            stripped = text.lstrip()
            if not stripped:
                self._held = text
                return ""
            self._at_start = False
            if stripped.startswith(_REPLY_OPENERS[self.fmt]):
                self._held, self._reader = "", _reader_for(self.fmt)
                self._capture(stripped)
                return ""
        start = _first_index(text, self._openers)
        if start is not None:
            out, self._held, self._reader = text[:start], "", _reader_for(self.fmt)
            self._capture(text[start:])
        else:
            keep = _partial_suffix(text, self._openers)
            out, self._held = text[: len(text) - keep], text[len(text) - keep :]
        self.content += out
        return out

    def deltas(self) -> list[CallDelta]:
        """The tool-call pieces made since the last call."""
        out, self._deltas = self._deltas, []
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content still held back, the calls found); their last pieces wait in `deltas()`."""
        if not self.active:
            return "", []
        reader = self._reader
        tail, self._held = self._held, ""
        if reader is None:
            self.content += tail
            return tail, []
        calls = reader.finish()
        self._deltas += reader.deltas()
        if calls or reader.announced:
            return tail, calls
        if self.parsing in ("calls", "arguments"):
            content, calls = "", parse_forced(self._captured, self.parsing, self.name)
        else:
            content, calls = parse_tool_calls(self._captured, self.fmt)
        self._deltas += _whole(calls)
        if not calls:  # a marker with nothing parseable after it: it was content after all
            self.content += content
        return tail + content, calls

    def _capture(self, text: str) -> None:
        assert self._reader is not None
        self._captured += text
        self._reader.feed(text)
        self._deltas += self._reader.deltas()


def _reader_for(fmt: ToolFormat) -> CallReader:
    # Mistral v11 and DeepSeek write a call's arguments object alone after its name: only arrays
    # (Mistral v3's) hold calls to read as they come.
    return CallReader(arrays_only=fmt in (ToolFormat.MISTRAL, ToolFormat.DEEPSEEK))


def _whole(calls: list[ToolCall]) -> list[CallDelta]:
    """The pieces of calls found at the end: each one's name, then its arguments at once."""
    out = []
    for i, call in enumerate(calls):
        arguments = call.function.arguments
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        out += [CallDelta(index=i, id=call.id, name=call.function.name), CallDelta(index=i, arguments=text)]
    return out


def _first_index(text: str, openers: tuple[str, ...]) -> int | None:
    found = [i for o in openers if (i := text.find(o)) >= 0]
    return min(found) if found else None


def _partial_suffix(text: str, openers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is a proper prefix of an opener."""
    best = 0
    for opener in openers:
        for n in range(min(len(opener) - 1, len(text)), best, -1):
            if text.endswith(opener[:n]):
                best = n
                break
    return best


def arguments_value(function: FunctionCall) -> Any:
    """A call's arguments as an object (templates write them with `tojson`); non-JSON text as is."""
    if isinstance(function.arguments, dict):
        return function.arguments
    try:
        return json.loads(function.arguments)
    except json.JSONDecodeError:
        return function.arguments


def _call_of(item: Any) -> ToolCall | None:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return make_call(item["name"], arguments)


def _json_values(text: str) -> list[Any]:
    """The JSON values written one after another in `text` (separators `;`, `,` or space)."""
    decoder, i = json.JSONDecoder(), 0
    values: list[Any] = []
    while i < len(text):
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i >= len(text):
            break
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return values
        values.append(value)
    return values


_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _parse_hermes(text: str) -> tuple[str, list[ToolCall]]:
    start = text.find(_HERMES_OPEN)
    if start < 0:
        return text, []
    calls = []
    for block in _HERMES_BLOCK.findall(text[start:]):
        calls += [c for v in _json_values(block) if (c := _call_of(v)) is not None]
    return (text[:start], calls) if calls else (text, [])


def _parse_mistral(text: str) -> tuple[str, list[ToolCall]]:
    start = text.find(_MISTRAL_OPEN)
    if start < 0:
        return text, []
    rest = text[start + len(_MISTRAL_OPEN) :]
    calls: list[ToolCall] = []
    if _MISTRAL_ARGS in rest:  # v11: [TOOL_CALLS]name[ARGS]{...}[TOOL_CALLS]name2[ARGS]{...}
        for part in rest.split(_MISTRAL_OPEN):
            name, _, args = part.partition(_MISTRAL_ARGS)
            values = _json_values(args)
            if name.strip() and values and (c := _call_of({"name": name.strip(), "arguments": values[0]})):
                calls.append(c)
    else:
        for value in _json_values(rest):
            items = value if isinstance(value, list) else [value]
            calls += [c for item in items if (c := _call_of(item)) is not None]
    return (text[:start], calls) if calls else (text, [])


def _parse_tagged(text: str) -> tuple[str, list[ToolCall]]:
    start = text.find(_TAGGED_OPEN)
    if start < 0:
        return text, []
    calls: list[ToolCall] = []
    for block in text[start:].split(_TAGGED_OPEN):
        for value in _json_values(block.replace(_TAGGED_CLOSE, " ")):
            items = value if isinstance(value, list) else [value]
            calls += [c for item in items if (c := _call_of(item)) is not None]
    return (text[:start], calls) if calls else (text, [])


def _parse_deepseek(text: str) -> tuple[str, list[ToolCall]]:
    start = _first_index(text, (_DS_OPEN, _DS_CALL))
    if start is None:
        return text, []
    calls: list[ToolCall] = []
    for block in text[start:].split(_DS_CALL)[1:]:
        head, _, body = block.partition(_DS_SEP)
        body = body.split("<｜tool▁call▁end｜>")[0]
        if head.strip() == "function" and "\n" in body:  # V3/R1: the name, then fenced JSON arguments
            name, _, body = body.partition("\n")
        else:  # V3.1: the name before the separator
            name = head
        values = _json_values(_DS_FENCE.sub("", body.strip()))
        if name.strip() and values and (c := _call_of({"name": name.strip(), "arguments": values[0]})):
            calls.append(c)
    return (text[:start], calls) if calls else (text, [])


def _parse_llama3(text: str) -> tuple[str, list[ToolCall]]:
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG) :]
    if not body.lstrip().startswith("{"):
        return text, []
    calls = [c for v in _json_values(body) if (c := _call_of(v)) is not None]
    return ("", calls) if calls else (text, [])


def parse_pythonic(text: str) -> tuple[str, list[ToolCall]]:
    """A reply that is a Python list of calls (`[f(a=1, b="x"), g()]`): ("", the calls); anything
    else (text, a call with positional arguments, an expression that is not a literal) stays content."""
    body = text.strip()
    if body.startswith(_PYTHON_START):
        body = body[len(_PYTHON_START) :].replace(_PYTHON_END, "").strip()
    if not body.startswith("["):
        return text, []
    try:
        tree = ast.parse(body, mode="eval").body
        if not isinstance(tree, ast.List) or not tree.elts:
            return text, []
        calls = [_pythonic_call(node) for node in tree.elts]
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # not a call list of literals
        return text, []
    return "", calls


def _pythonic_call(node: ast.expr) -> ToolCall:
    if not isinstance(node, ast.Call) or node.args or any(k.arg is None for k in node.keywords):
        raise ValueError("not a call with keyword arguments")
    return make_call(_dotted_name(node.func), {k.arg: _literal(k.value) for k in node.keywords if k.arg})


def _dotted_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):  # e.g. `weather.get(...)`: the name as written
        return f"{_dotted_name(node.value)}.{node.attr}"
    raise ValueError("a call of something that is not a name")


# JSON's literals, which models write in Python calls too.
_JSON_NAMES: dict[str, Any] = {"true": True, "false": False, "null": None}


def _literal(node: ast.expr) -> Any:
    """The value of a literal argument (JSON's names included); anything else is a ValueError."""
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("a ** in a dict")
        return {_key(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None}
    value = ast.literal_eval(node)  # constants, and signed numbers; raises on anything else
    if isinstance(value, bytes | complex):
        raise ValueError("not a JSON value")
    return value


def _key(node: ast.expr) -> str:
    value = _literal(node)
    if not isinstance(value, str | int | float | bool) and value is not None:
        raise ValueError("a dict key that is not a scalar")
    return value if isinstance(value, str) else json.dumps(value)
