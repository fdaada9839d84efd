"""Tools and structured outputs on the chat endpoint: OpenAI's `tools`/`tool_choice` (and the legacy
`functions`/`function_call`) and `response_format`, translated into what the worker does: render the
tools through the chat template, parse calls out of the reply, or constrain decoding.

- `tool_choice` "none": the tools are neither offered nor parsed (a plain reply).
- "auto" (the default with tools): the reply is parsed in the model family's own call format.
- "required": decoding is constrained to a JSON array of `{"name", "arguments"}` objects, each a
  tool with arguments that validate against its `parameters` (one call when `parallel_tool_calls`
  is false); a named function: constrained to that function's arguments.
- `response_format`: `json_object` is any JSON object, `json_schema` the given schema (decoded under
  its grammar; when the grammar engine can't take the schema: strict, a 400; else any JSON object).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

from gateway.schemas.common import reject_if
from gateway.schemas.json_schema import REF
from shared.generation import Constraint, ToolUse
from shared.settings import Settings


class FunctionDef(Struct, kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Struct, kw_only=True):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(Struct, kw_only=True):
    name: str


class NamedToolChoice(Struct, kw_only=True):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
FunctionCallChoice = Literal["none", "auto"] | NamedFunction


class JsonSchemaFormat(Struct, kw_only=True):
    name: str = "response"
    description: str | None = None
    # OpenAI names it `schema`; msgspec's Struct would shadow nothing, but keep the wire name.
    schema_: dict[str, Any] | None = msgspec.field(default=None, name="schema")
    strict: bool | None = None


class ResponseFormat(Struct, kw_only=True):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        # json_schema needs its json_schema (constraint() refuses it without).
        schema["anyOf"] = [
            {"properties": {"type": {"enum": ["text", "json_object"]}}},
            {
                "properties": {"json_schema": {"$ref": REF.format(name="JsonSchemaFormat")}},
                "required": ["json_schema"],
            },
        ]

    def constraint(self) -> Constraint | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return Constraint(kind="json")
        reject_if(
            self.json_schema is None, "response_format json_schema needs a json_schema", "response_format"
        )
        assert self.json_schema is not None
        schema = self.json_schema.schema_ if self.json_schema.schema_ is not None else {"type": "object"}
        return Constraint(kind="json", schema=_json(schema), strict=bool(self.json_schema.strict))


def tool_plan(
    tools: list[Tool] | None,
    choice: ToolChoice | None,
    parallel: bool | None,
) -> tuple[ToolUse | None, Constraint | None]:
    """What the worker does with the tools of a request: (ToolUse, the constraint of a forced call)."""
    if not tools or choice == "none":
        reject_if(
            isinstance(choice, NamedToolChoice),
            "tool_choice names a function but no tools were given",
            "tool_choice",
        )
        return None, None
    offered = [msgspec.to_builtins(t) for t in tools]
    if choice is None or choice == "auto":
        return ToolUse(tools=offered, parsing="auto"), None
    if choice == "required":
        # Each tool's parameters move under the wrapper's $defs, their own `#...` pointers re-rooted.
        defs = {
            f"tool_{i}": _rerooted(_parameters(t.function), f"#/$defs/tool_{i}") for i, t in enumerate(tools)
        }
        items: dict[str, Any] = {
            "anyOf": [_call_schema(t.function, f"tool_{i}") for i, t in enumerate(tools)]
        }
        schema: dict[str, Any] = {"type": "array", "items": items, "minItems": 1, "$defs": defs}
        if parallel is False:
            schema["maxItems"] = 1
        forced = Constraint(kind="json", schema=_json(schema), param="tools")
        return ToolUse(tools=offered, parsing="calls"), forced
    assert isinstance(choice, NamedToolChoice)
    named = [t.function for t in tools if t.function.name == choice.function.name]
    reject_if(
        not named, f"tool_choice names {choice.function.name!r}, which is not among the tools", "tool_choice"
    )
    use = ToolUse(tools=offered, parsing="arguments", name=named[0].name)
    return use, Constraint(kind="json", schema=_json(_parameters(named[0])), param="tools")


def legacy_tools(
    functions: list[FunctionDef] | None, function_call: FunctionCallChoice | None
) -> tuple[list[Tool] | None, ToolChoice | None]:
    """The legacy functions API as tools: `functions` are tools, `function_call` the tool_choice."""
    if not functions:
        return None, None
    tools = [Tool(function=f) for f in functions]
    if isinstance(function_call, NamedFunction):
        return tools, NamedToolChoice(function=function_call)
    return tools, function_call


def _parameters(function: FunctionDef) -> dict[str, Any]:
    return function.parameters if function.parameters else {"type": "object", "properties": {}}


def _call_schema(function: FunctionDef, definition: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": function.name}, "arguments": {"$ref": f"#/$defs/{definition}"}},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _rerooted(schema: Any, root: str) -> Any:
    """`schema` with every local reference (`#`, `#/$defs/X`, `#/definitions/X` ...) pointing into
    `root` instead of the document's root: the schema as it reads when it lives at `root`."""
    if isinstance(schema, list):
        return [_rerooted(item, root) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            out[key] = root + value[1:]
        elif key in ("const", "enum", "default", "examples"):
            out[key] = value  # values, not schemas: a "$ref" inside is data
        else:
            out[key] = _rerooted(value, root)
    return out


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()
