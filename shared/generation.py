"""What a generation asks for and what it returns: the structs the engine, the worker wire and the
ModelManager share. No torch here."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

Role = Literal["system", "developer", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "cancelled"]


class TextPart(Struct, kw_only=True, forbid_unknown_fields=False):
    type: str = "text"
    text: str = ""


class Message(Struct, kw_only=True, forbid_unknown_fields=False):
    role: Role
    # OpenAI allows a string or a list of content parts; None for assistant tool-call turns.
    content: str | list[TextPart] | None = None
    name: str | None = None


def message_text(message: Message) -> str:
    """The text of a message, joining text parts (non-text parts are dropped by the caller's checks)."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content if part.type == "text")


class SamplingParams(Struct, kw_only=True, omit_defaults=True):
    """Every field None means "not set": the model's `default_parameters`, then engine defaults, fill it."""

    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(gt=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    repetition_penalty: Annotated[float, Meta(gt=0)] | None = None
    max_new_tokens: Annotated[int, Meta(ge=1)] | None = None
    stop: list[str] | None = None
    seed: int | None = None

    def merged_over(self, defaults: SamplingParams) -> SamplingParams:
        """These params with unset fields taken from `defaults`."""
        values = {
            f: (getattr(self, f) if getattr(self, f) is not None else getattr(defaults, f))
            for f in self.__struct_fields__
        }
        return SamplingParams(**values)


# What the engine uses when neither the request nor the config says.
ENGINE_DEFAULTS = SamplingParams(
    temperature=0.7, top_p=1.0, top_k=0, repetition_penalty=1.0, max_new_tokens=256, stop=[]
)


def params_from_mapping(values: dict[str, object]) -> SamplingParams:
    """A config file's `default_parameters` as SamplingParams; keys we don't know are ignored.

    Raises msgspec.ValidationError naming the field when a known key has a bad value.
    """
    known = {k: v for k, v in values.items() if k in SamplingParams.__struct_fields__}
    if isinstance(known.get("stop"), str):
        known["stop"] = [known["stop"]]
    return msgspec.convert(known, SamplingParams)


class GenerateRequest(Struct, kw_only=True):
    """Either chat `messages` or a raw `prompt` (sent to the model as is, after `system_prompt`
    formatting when one is given)."""

    messages: list[Message] | None = None
    prompt: str | None = None
    system_prompt: str | None = None
    params: SamplingParams = msgspec.field(default_factory=SamplingParams)
    request_id: str = ""
    # Seconds the model stays loaded after this request (negative: forever); None: its default.
    keep_alive: float | None = None


class Timings(Struct, kw_only=True):
    queue_s: float = 0.0
    first_token_s: float = 0.0
    total_s: float = 0.0
    tokens_per_s: float = 0.0


class GenerateResult(Struct, kw_only=True):
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timings: Timings = msgspec.field(default_factory=Timings)


class EmbedRequest(Struct, kw_only=True):
    # Strings, or token-id arrays (OpenAI lets clients send pre-tokenized input).
    inputs: list[str | list[int]]
    request_id: str = ""
    keep_alive: float | None = None


class EmbedResult(Struct, kw_only=True):
    vectors: list[list[float]]
    prompt_tokens: int
