"""What a generation asks for and what it returns: the structs the engine, the worker wire and the
ModelManager share. No torch here."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

if TYPE_CHECKING:
    from shared.settings import Settings

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]


class ImageURL(Struct, kw_only=True, forbid_unknown_fields=False):
    url: str
    detail: str | None = None


class TextPart(Struct, kw_only=True, forbid_unknown_fields=False):
    """A content part: text, or (`type` "image_url") an image for a vision model; other types are
    refused with a 400 by the prompt builder."""

    type: str = "text"
    text: str = ""
    image_url: ImageURL | None = None

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        """For the gateway's OpenAPI document: the two part types served."""
        schema["properties"]["type"] = {"enum": ["text", "image_url"], "default": "text"}


class FunctionCall(Struct, kw_only=True, forbid_unknown_fields=False):
    name: str
    # JSON text, as OpenAI sends it (clients may send an object: kept as is).
    arguments: str | dict[str, Any] = "{}"

    def __post_init__(self) -> None:
        # An object holding an integer beyond 64 bits can't cross the worker's wire (msgpack): as JSON
        # text it can, and the worker reads it back as the same object.
        if isinstance(self.arguments, dict) and _has_huge_int(self.arguments):
            self.arguments = msgspec.json.encode(self.arguments).decode()


def _has_huge_int(value: Any) -> bool:
    if isinstance(value, int):
        return not -(2**63) <= value < 2**64
    if isinstance(value, dict):
        return any(_has_huge_int(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_huge_int(v) for v in value)
    return False


class ToolCall(Struct, kw_only=True, forbid_unknown_fields=False):
    """A call the model made: in an assistant message of the history, or in a result."""

    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Struct, kw_only=True, forbid_unknown_fields=False):
    role: Role
    # OpenAI allows a string or a list of content parts; None for assistant tool-call turns.
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # Legacy (functions API): an assistant turn's one call.
    function_call: FunctionCall | None = None

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        """For the gateway's OpenAPI document: content is required except on an assistant turn (tool
        calls) or a tool result (the prompt builder refuses the rest with a 400)."""
        silent = ["assistant", "tool", "function"]
        speaking = [r for r in schema["properties"]["role"]["enum"] if r not in silent]
        schema["anyOf"] = [
            {"properties": {"role": {"enum": silent}}},
            {"properties": {"role": {"enum": speaking}, "content": {"not": {"type": "null"}}},
             "required": ["content"]},
        ]


def message_images(message: Message) -> list[ImageURL]:
    """The images of a message's `image_url` parts, in order."""
    content = message.content
    if not isinstance(content, list):
        return []
    return [part.image_url for part in content if part.type == "image_url" and part.image_url is not None]


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
    # 0: nothing generated (completions' echo with max_tokens 0 scores the prompt only).
    max_new_tokens: Annotated[int, Meta(ge=0)] | None = None
    stop: list[str] | None = None
    seed: int | None = None
    # vLLM's extensions: at least `min_tokens` before an end (EOS or stop ids); `ignore_eos` keeps
    # going past EOS; `stop_token_ids` end the generation too; special tokens kept in the text.
    min_tokens: Annotated[int, Meta(ge=0)] | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = None
    # OpenAI's: added to the logits of these token ids (-100 bans, 100 forces); penalties on the
    # tokens generated so far, once per token present (presence) and per occurrence (frequency).
    logit_bias: dict[int, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

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


class Constraint(Struct, kw_only=True):
    """What constrained decoding must produce: `json` (a schema's JSON text; None is any JSON
    object), `regex`, or one of `choices`. `strict`: the output always parses and validates."""

    kind: Literal["json", "regex", "choice"] = "json"
    schema: str | None = None
    regex: str | None = None
    choices: list[str] | None = None
    strict: bool = True
    # The request field it came from, named by a 400 about it (tools, text, structured_outputs ...).
    param: str = "response_format"


# How the engine reads tool calls out of the output: not at all, in the model family's own format
# (tool_choice auto), or the whole output is a JSON array of {name, arguments} (required) or one
# function's arguments (a named tool_choice).
ToolParsing = Literal["none", "auto", "calls", "arguments"]


class ToolUse(Struct, kw_only=True):
    """The tools a chat request offers (OpenAI tool definitions, handed to the chat template) and
    how its output is parsed."""

    tools: list[dict[str, Any]]
    parsing: ToolParsing = "auto"
    name: str | None = None  # the function of parsing "arguments"


class GenerateRequest(Struct, kw_only=True):
    """Either chat `messages`, a raw `prompt` (sent to the model as is, after `system_prompt`
    formatting when one is given) or `prompt_ids` (token ids, as is)."""

    messages: list[Message] | None = None
    prompt: str | None = None
    system_prompt: str | None = None
    prompt_ids: list[int] | None = None
    params: SamplingParams = msgspec.field(default_factory=SamplingParams)
    request_id: str = ""
    tools: ToolUse | None = None
    constraint: Constraint | None = None
    # Logprobs of each chosen token with this many alternatives (None: no logprobs).
    logprobs: int | None = None
    # The prompt's tokens and logprobs too (completions' echo), the first one null.
    echo: bool = False
    # Seconds the model stays loaded after this request (negative: forever); None: its default.
    keep_alive: float | None = None
    # Extra variables for the chat template (`chat_template_kwargs`, `reasoning_effort`).
    template_kwargs: dict[str, Any] | None = None
    # The LoRA adapter (its model id, a folder under models_dir) this request's row runs; None: the base.
    adapter: str | None = None
    # The gateway's span as W3C trace context (`traceparent`), when tracing is on (shared/tracing.py).
    trace_context: dict[str, str] | None = None


class Timings(Struct, kw_only=True):
    queue_s: float = 0.0
    first_token_s: float = 0.0
    total_s: float = 0.0
    tokens_per_s: float = 0.0


# Raw `bytes`, not lists of ints, and no GC tracking (they can't be part of a cycle): a long answer's
# logprobs are millions of these, and each object the GC tracks lengthened the gateway's full
# collections (pauses of up to 257 ms while a 53 MB answer arrived).
class TopLogprob(Struct, kw_only=True, array_like=True, gc=False):
    token: str
    logprob: float
    bytes: builtins.bytes  # (the field's own name shadows the type in the class body)


class TokenLogprob(Struct, kw_only=True, array_like=True, gc=False):
    """One token of the output (or of an echoed prompt: logprob None for the first)."""

    token: str
    logprob: float | None
    bytes: builtins.bytes
    top: list[TopLogprob] = msgspec.field(default_factory=list)


class GenerateResult(Struct, kw_only=True):
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV the prefix cache gave (not computed again)
    timings: Timings = msgspec.field(default_factory=Timings)
    tool_calls: list[ToolCall] | None = None
    logprobs: list[TokenLogprob] | None = None
    # With `echo`: the prompt as text, and its tokens' logprobs when logprobs were asked for.
    prompt_text: str | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    # The thinking block of a reasoning template's model (None: it wrote none), not in `text`.
    reasoning: str | None = None
    reasoning_tokens: int = 0


class Reasoning(Struct, kw_only=True):
    """A streamed piece of the thinking block (plain `str` pieces are the answer's text)."""

    text: str


class TextWithLogprobs(Struct, kw_only=True):
    """A streamed piece of the answer with the logprobs of the tokens since the previous piece
    (requests that asked for logprobs; the result's `logprobs` still lists them all)."""

    text: str
    logprobs: list[TokenLogprob]


class CallDelta(Struct, kw_only=True):
    """A streamed piece of tool call `index`: its first names it (`id`, `name`), the next ones add
    to its arguments' JSON text; a call's pieces join to the result's call."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


# What a generation stream yields: answer text (with its logprobs when asked), thinking text, tool
# call pieces, then the result.
StreamItem = str | Reasoning | TextWithLogprobs | CallDelta | GenerateResult
# What a reply hands its consumer before the result.
StreamPiece = str | Reasoning | TextWithLogprobs | CallDelta


class EmbedRequest(Struct, kw_only=True):
    # Strings, or token-id arrays (OpenAI lets clients send pre-tokenized input).
    inputs: list[str | list[int]]
    request_id: str = ""
    keep_alive: float | None = None


class EmbedResult(Struct, kw_only=True):
    vectors: list[list[float]]
    prompt_tokens: int


class ScoreRequest(Struct, kw_only=True):
    """(query, document) pairs for a cross-encoder (rerank, score)."""

    pairs: list[tuple[str, str]]
    request_id: str = ""
    keep_alive: float | None = None


class ScoreResult(Struct, kw_only=True):
    scores: list[float]  # one per pair, in order: the relevance logit through the model's activation
    prompt_tokens: int
