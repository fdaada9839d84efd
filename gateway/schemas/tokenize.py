"""vLLM's `/tokenize` and `/detokenize`: a prompt, or chat `messages` rendered through the model's chat
template (tools too) exactly as a generation renders them, as the model's token ids; and ids back
to text."""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta, Struct

from gateway.schemas.common import TokenId, reject_if
from gateway.schemas.json_schema import names_a_model
from gateway.schemas.tools import Tool, tool_plan
from shared.generation import GenerateRequest, Message
from shared.settings import Settings


class TokenizeRequest(Struct, kw_only=True):
    """Either `prompt` or `messages`. `add_special_tokens` left out: as a generation adds them (a
    prompt gets the tokenizer's BOS; a chat template's own BOS is not doubled)."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[Message], Meta(min_length=1)] | None = None
    tools: list[Tool] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = None

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        names_a_model(schema, settings)
        # A prompt or messages, not both (generate_request()).
        schema["anyOf"] = [
            {"properties": {"prompt": {"type": "string"}, "messages": {"type": "null"}},
             "required": ["prompt"]},
            {"properties": {"messages": {"type": "array"}, "prompt": {"type": "null"}},
             "required": ["messages"]},
        ]

    def generate_request(self, request_id: str) -> GenerateRequest:
        reject_if(
            (self.prompt is None) == (self.messages is None), "send either prompt or messages", "prompt"
        )
        use, _ = tool_plan(self.tools, None, None)
        return GenerateRequest(prompt=self.prompt, messages=self.messages, tools=use, request_id=request_id)


class TokenizeResponse(Struct, kw_only=True):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(Struct, kw_only=True):
    model: str | None = None
    tokens: list[TokenId]

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        names_a_model(schema, settings)


class DetokenizeResponse(Struct, kw_only=True):
    prompt: str
