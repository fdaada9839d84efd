"""Tool calls: the format found from a chat template, each format's parser on pinned strings, the
streaming scanner, and tool turns rendered for templates with and without tool support."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from shared.generation import CallDelta, Message, ToolCall
from shared.model_types import PromptFormat
from worker.model.prompts import render_fallback, template_messages
from worker.model.tool_calls import (
    ToolCallScanner,
    ToolFormat,
    parse_forced,
    parse_tool_calls,
    tool_format_of,
)

WEATHER = {"city": "Paris", "unit": "c"}


def calls_of(text: str, fmt: ToolFormat) -> tuple[str, list[tuple[str, dict]]]:
    content, calls = parse_tool_calls(text, fmt)
    assert all(c.id.startswith("call_") and len(c.id) > 10 for c in calls)
    return content, [(c.function.name, json.loads(c.function.arguments)) for c in calls]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("template", "fmt"),
    [
        ("{% if tools %}<tool_call>{% endif %}", ToolFormat.HERMES),
        ("{% for t in tools %}[AVAILABLE_TOOLS]{% endfor %}[TOOL_CALLS]", ToolFormat.MISTRAL),
        ("<|start_header_id|>ipython{% if tools %}{% endif %}", ToolFormat.LLAMA3),
        ("<|header_start|>ipython<|header_end|>{% if tools %}{% endif %}", ToolFormat.LLAMA3),
        # Llama 3.2's and Llama 4's pythonic templates ask for a python list of calls.
        ("<|start_header_id|>{% if tools %}Respond in the format [func_name1(params_name1=params_value1, "
         "params_name2=params_value2...), func_name2(params)]{% endif %}", ToolFormat.PYTHONIC),
        ("<|header_start|>{% if tools %}Use exact format: [func_name1(param1=value1, param2=value2), "
         "func_name2(...)]{% endif %}", ToolFormat.PYTHONIC),
        ("{% if tools %}<|tool|>{{ tools | tojson }}<|/tool|>{% endif %}<|tool_call|>", ToolFormat.TAGGED),
        ("{% for m in messages %}{{ m['content'] }}{% endfor %}", ToolFormat.GENERIC),
        (None, ToolFormat.GENERIC),
    ],
)
def test_tool_format_is_found_from_the_template(template: str | None, fmt: ToolFormat) -> None:
    assert tool_format_of(template) is fmt


def test_hermes_blocks_parse_with_the_content_before_them() -> None:
    text = (
        'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    expected = [("get_weather", WEATHER), ("get_time", {})]
    assert calls_of(text, ToolFormat.HERMES) == ("Let me check.", expected)


def test_an_unclosed_hermes_block_at_the_end_still_parses() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}'
    assert calls_of(text, ToolFormat.GENERIC) == ("", [("get_weather", WEATHER)])


def test_mistral_v3_array_and_v11_args_forms_parse() -> None:
    v3 = '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}]'
    v11 = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "c"}'
    assert calls_of(v3, ToolFormat.MISTRAL) == ("", [("get_weather", WEATHER)])
    assert calls_of(v11, ToolFormat.MISTRAL) == ("", [("get_weather", WEATHER)])


def test_granite_and_phi4_mini_tagged_arrays_parse() -> None:
    weather = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}'
    granite = f"Let me look.<|tool_call|>[{weather}]"
    phi4 = '<|tool_call|>[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {}}]'
    phi4 += "<|/tool_call|>"
    assert calls_of(granite, ToolFormat.TAGGED) == ("Let me look.", [("get_weather", WEATHER)])
    assert calls_of(phi4, ToolFormat.TAGGED) == ("", [("get_time", {}), ("get_weather", {})])
    scanner = ToolCallScanner(ToolFormat.TAGGED, "auto")
    pieces = ("Hi <|tool", '_call|>[{"name": "get_time", "arguments": {}}]')
    streamed = [scanner.feed(piece) for piece in pieces]
    assert streamed == ["Hi ", ""]
    assert [c.function.name for c in scanner.finish()[1]] == ["get_time"]


def test_deepseek_calls_parse_in_the_r1_and_v31_forms() -> None:
    r1 = ("Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
          '```json\n{"city": "Paris", "unit": "c"}\n```<｜tool▁call▁end｜>'
          "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
    v31 = '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris", "unit": "c"}'
    assert calls_of(r1, ToolFormat.DEEPSEEK) == ("Checking.", [("get_weather", WEATHER), ("get_time", {})])
    v31 += "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
    assert calls_of(v31, ToolFormat.DEEPSEEK) == ("", [("get_weather", WEATHER)])
    assert tool_format_of("{% if tools %}{% endif %}<｜tool▁calls▁begin｜>") is ToolFormat.DEEPSEEK


def test_llama3_json_calls_parse_with_parameters_and_python_tag() -> None:
    one = '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}'
    two = '<|python_tag|>{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {}}'
    assert calls_of(one, ToolFormat.LLAMA3) == ("", [("get_weather", WEATHER)])
    assert calls_of(two, ToolFormat.LLAMA3) == ("", [("get_time", {}), ("get_weather", {})])


def test_pythonic_calls_parse_with_literals_of_python_and_json() -> None:
    text = '[get_weather(city="Paris", unit=\'c\'), get_time()]'
    assert calls_of(text, ToolFormat.PYTHONIC) == ("", [("get_weather", WEATHER), ("get_time", {})])
    tagged = '<|python_start|>[f(a=-1, b=[1, 2.5], c={"x": true, "y": None, 3: (False,)})]<|python_end|>'
    values = {"a": -1, "b": [1, 2.5], "c": {"x": True, "y": None, "3": [False]}}
    assert calls_of(tagged, ToolFormat.PYTHONIC) == ("", [("f", values)])


@pytest.mark.parametrize(
    "text",
    [
        '[__import__("os").system("touch /tmp/pwned")]',  # a call's result as the callee: never run
        '[f(a=open("/etc/passwd").read())]',  # an argument that is a call, not a literal
        "[f(a=b)]",  # a variable
        "[f(1)]",  # a positional argument
        '[f(**{"a": 1})]',
        "[f(a=1 + 2)]",
        "[]",
        'Let me check: [get_weather(city="Paris")]',  # text before the list
        "[" * 10_000,  # deep nesting: a SyntaxError or RecursionError, caught
    ],
)
def test_pythonic_text_that_is_not_a_list_of_literal_calls_stays_content(text: str) -> None:
    assert calls_of(text, ToolFormat.PYTHONIC) == (text, [])


def test_scanner_in_pythonic_captures_a_reply_that_starts_with_a_list() -> None:
    scanner = ToolCallScanner(ToolFormat.PYTHONIC, "auto")
    assert [scanner.feed(p) for p in ("\n", "[get_time(", "zone='UTC')]")] == ["", "", ""]
    tail, calls = scanner.finish()
    assert tail == "" and [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_time", '{"zone": "UTC"}')
    ]
    plain = ToolCallScanner(ToolFormat.PYTHONIC, "auto")
    assert plain.feed("Paris is ") == "Paris is " and plain.feed("[sunny]") == "[sunny]"
    assert plain.finish() == ("", [])


@pytest.mark.parametrize("fmt", list(ToolFormat))
def test_text_without_calls_is_all_content(fmt: ToolFormat) -> None:
    assert calls_of("The weather is fine {really}.", fmt) == ("The weather is fine {really}.", [])


def test_broken_call_json_stays_content() -> None:
    text = "<tool_call>\n{not json\n</tool_call>"
    assert calls_of(text, ToolFormat.HERMES) == (text, [])


def test_forced_outputs_parse_as_calls_or_one_functions_arguments() -> None:
    array = json.dumps([{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}])
    calls = parse_forced(array, "calls", None)
    assert [(c.function.name, c.function.arguments) for c in calls] == [("a", '{"x": 1}'), ("b", "{}")]
    (named,) = parse_forced('{"city": "Paris"}', "arguments", "get_weather")
    assert (named.function.name, json.loads(named.function.arguments)) == ("get_weather", {"city": "Paris"})


def test_scanner_streams_content_until_the_call_and_holds_back_a_partial_marker() -> None:
    scanner = ToolCallScanner(ToolFormat.HERMES, "auto")
    pieces = ["Sure", ", let me look. <tool", '_call>\n{"name": "get_time", ', '"arguments": {}}</tool_call>']
    sent = [scanner.feed(p) for p in pieces]
    assert sent == ["Sure", ", let me look. ", "", ""]
    tail, calls = scanner.finish()
    assert tail == "" and [c.function.name for c in calls] == ["get_time"]


def test_scanner_releases_held_text_that_was_no_marker() -> None:
    scanner = ToolCallScanner(ToolFormat.HERMES, "auto")
    assert scanner.feed("a <tool") == "a "
    assert scanner.feed("box>") == "<toolbox>"
    assert scanner.finish() == ("", [])


def test_scanner_in_llama3_captures_a_reply_that_starts_with_json() -> None:
    scanner = ToolCallScanner(ToolFormat.LLAMA3, "auto")
    assert scanner.feed(" ") == "" and scanner.feed('{"name": "f", ') == ""
    assert scanner.feed('"parameters": {"a": 1}}') == ""
    tail, calls = scanner.finish()
    assert tail == "" and [(c.function.name, c.function.arguments) for c in calls] == [("f", '{"a": 1}')]


def streamed(
    scanner: ToolCallScanner, text: str, size: int = 1
) -> tuple[str, list[CallDelta], list[ToolCall]]:
    """`text` fed `size` characters at a time: (content, the call pieces, the calls)."""
    content, pieces = "", []
    for i in range(0, len(text), size):
        content += scanner.feed(text[i : i + size])
        pieces += scanner.deltas()
    tail, calls = scanner.finish()
    return content + tail, pieces + scanner.deltas(), calls


def joined(pieces: list[CallDelta]) -> list[tuple[str | None, str | None, str]]:
    """Each call's (id, name, arguments) from its pieces, as OpenAI's clients merge them."""
    calls: dict[int, list[Any]] = {}
    for piece in pieces:
        call = calls.setdefault(piece.index, [None, None, ""])
        if piece.id is not None:
            assert call[0] is None and call[2] == "", "a call's first piece names it, before its arguments"
            call[0], call[1] = piece.id, piece.name
        call[2] += piece.arguments
    return [tuple(c) for _, c in sorted(calls.items())]  # type: ignore[misc]


STREAMED_CALLS = {
    "hermes": (
        ToolFormat.HERMES,
        "auto",
        'Let me see. <tool_call>\n{"name": "get_weather", "arguments": {"city": "P}s", "d": [1, {"a": 2}]}}'
        '\n</tool_call>\n<tool_call>\n{"arguments": {}, "name": "get_time"}\n</tool_call>',
    ),
    "required_array": (
        ToolFormat.GENERIC,
        "calls",
        '[{"name": "a", "arguments": {"x": "y\\"}"}}, {"name": "b", "arguments": "{\\"q\\": 1}"}]',
    ),
    "llama3": (ToolFormat.LLAMA3, "auto", '{"name": "f", "parameters": {"q": 1}}; {"name": "g"}'),
    "mistral_v3": (ToolFormat.MISTRAL, "auto", '[TOOL_CALLS] [{"name": "f", "arguments": {"long": "abcd"}}]'),
    "mistral_v11": (ToolFormat.MISTRAL, "auto", '[TOOL_CALLS]get_user[ARGS]{"name": "Bob"}'),
    "deepseek_v31": (
        ToolFormat.DEEPSEEK,
        "auto",
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_user<｜tool▁sep｜>{"name": "Bob"}<｜tool▁call▁end｜>',
    ),
}


@pytest.mark.parametrize("case", STREAMED_CALLS.values(), ids=STREAMED_CALLS.keys())
@pytest.mark.parametrize("size", [1, 7])
def test_streamed_call_pieces_join_to_the_calls_found(case: tuple[ToolFormat, Any, str], size: int) -> None:
    fmt, parsing, text = case
    content, pieces, calls = streamed(ToolCallScanner(fmt, parsing), text, size)
    assert calls
    assert content == ("Let me see. " if fmt is ToolFormat.HERMES else "")
    assert joined(pieces) == [(c.id, c.function.name, c.function.arguments) for c in calls]
    assert all(isinstance(json.loads(c.function.arguments), dict) for c in calls)
    assert all(c.function.name != "Bob" for c in calls)  # arguments with a "name" are no call


def test_a_calls_arguments_stream_as_they_come() -> None:
    scanner = ToolCallScanner(ToolFormat.HERMES, "auto")
    assert scanner.feed('<tool_call>{"name": "note", "arguments": {"te') == ""
    (first, start) = scanner.deltas()
    assert (first.index, first.name, first.arguments) == (0, "note", "") and first.id
    assert start.arguments == '{"te'
    scanner.feed('xt": "hello')
    assert [p.arguments for p in scanner.deltas()] == ['xt": "hello']
    scanner.feed('"}}</tool_call>')
    assert [p.arguments for p in scanner.deltas()] == ['"}']
    assert [c.function.arguments for c in scanner.finish()[1]] == ['{"text": "hello"}']


def test_named_call_streams_the_whole_output_as_its_arguments() -> None:
    scanner = ToolCallScanner(ToolFormat.GENERIC, "arguments", "get_weather")
    content, pieces, calls = streamed(scanner, '{"city": "Paris", "unit": "c"}', 3)
    assert content == "" and len(pieces) > 3
    assert joined(pieces) == [(calls[0].id, "get_weather", '{"city": "Paris", "unit": "c"}')]


def test_a_call_cut_short_is_no_call_and_text_without_a_name_stays_content() -> None:
    _, pieces, calls = streamed(ToolCallScanner(ToolFormat.GENERIC, "arguments", "f"), '{"city": "Pa')
    assert calls == [] and joined(pieces)[0][2] == '{"city": "Pa'  # as OpenAI streams a cut call
    text = '<tool_call>\n{"nom": 1, "arguments": {"a": 1}}'
    content, pieces, calls = streamed(ToolCallScanner(ToolFormat.HERMES, "auto"), text)
    assert (content, pieces, calls) == (text, [], [])


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def test_a_native_tool_template_gets_tool_calls_and_tool_messages_as_fields() -> None:
    messages = msgspec.convert(HISTORY, list[Message])
    rendered = template_messages(messages, PromptFormat.ZEPHYR, tools=TOOLS, native_tools=True)
    assert rendered[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert rendered[2] == {"role": "tool", "content": "18 C", "tool_call_id": "call_1"}


@pytest.mark.parametrize("fmt", list(PromptFormat))
def test_other_models_get_the_generic_tool_format(fmt: PromptFormat) -> None:
    messages = msgspec.convert(HISTORY, list[Message])
    prompt = render_fallback(messages, fmt, tools=TOOLS)
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\n18 C\n</tool_response>" in prompt
