"""The request fields chat and completions share (sampling, choices, streaming, vLLM's extensions),
in one base the two endpoint requests extend with their real differences."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from gateway.schemas.common import (
    ChoiceCount,
    KeepAlive,
    LogitBias,
    Penalty,
    RepetitionPenalty,
    Seed,
    Stop,
    StreamOptions,
    Temperature,
    TokenId,
    TopK,
    TopP,
    logit_bias_ids,
    per_choice_params,
    reject_if,
    stop_list,
    top_k_value,
)
from gateway.schemas.json_schema import bound, names_a_model
from shared.generation import Constraint, SamplingParams
from shared.settings import Settings

_PARAM = "structured_outputs"


class StructuredOutputs(Struct, kw_only=True):
    """vLLM's `structured_outputs` extension: exactly one of a JSON schema, a regex or choices."""

    json: dict[str, Any] | None = None
    regex: str | None = None
    choice: Annotated[list[str], Meta(min_length=1)] | None = None

    def constraint(self) -> Constraint:
        given = [k for k in ("json", "regex", "choice") if getattr(self, k) is not None]
        reject_if(
            len(given) != 1,
            "structured_outputs takes exactly one of json, regex, choice",
            "structured_outputs",
        )
        if self.json is not None:
            return Constraint(kind="json", schema=msgspec.json.encode(self.json).decode(), param=_PARAM)
        if self.regex is not None:
            return Constraint(kind="regex", regex=self.regex, param=_PARAM)
        return Constraint(kind="choice", choices=self.choice, param=_PARAM)

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        # Exactly one of json, regex, choice.
        schema["oneOf"] = [
            {"properties": {key: {"not": {"type": "null"}}}, "required": [key]}
            for key in ("json", "regex", "choice")
        ]


class SamplingRequest(Struct, kw_only=True):
    """What every generation request may send besides its input and its length limit."""

    # Optional, unlike OpenAI: a request naming no model goes to the configured default model.
    model: str | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: ChoiceCount | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: Seed | None = None
    user: str | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    # Token id (as a string, OpenAI's JSON keys) -> bias; the worker checks the ids against its vocabulary.
    logit_bias: dict[str, LogitBias] | None = None
    # vLLM extensions.
    top_k: TopK | None = None
    repetition_penalty: RepetitionPenalty | None = None
    min_tokens: Annotated[int, Meta(ge=0)] | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[TokenId] | None = None
    skip_special_tokens: bool | None = None
    structured_outputs: StructuredOutputs | None = None
    # Ollama's extension: how long the model stays loaded after this request.
    keep_alive: KeepAlive = None

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        names_a_model(schema, settings)
        bound(schema, "n", "integer", maximum=min(128, settings.max_generations))
        # stream_options only with stream: true (check_streaming()).
        streamed = {
            "anyOf": [
                {"properties": {"stream": {"const": True}}, "required": ["stream"]},
                {"properties": {"stream_options": {"type": "null"}}},
            ]
        }
        schema.setdefault("allOf", []).append(streamed)
        # logit_bias keys are token ids.
        for alternative in schema["properties"].get("logit_bias", {}).get("anyOf", []):
            if alternative.get("type") == "object":
                alternative["propertyNames"] = {"pattern": "^-?[0-9]+$"}

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def base_params(self, max_new_tokens: int | None) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=top_k_value(self.top_k),
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=max_new_tokens,
            stop=stop_list(self.stop),
            seed=self.seed,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            stop_token_ids=self.stop_token_ids,
            skip_special_tokens=self.skip_special_tokens,
            logit_bias=logit_bias_ids(self.logit_bias),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )

    def check_streaming(self) -> None:
        """OpenAI's 400s: stream_options only with a stream."""
        reject_if(
            self.stream_options is not None and not self.stream,
            "stream_options is only allowed when stream is true",
            "stream_options",
        )

    def sampling_params(self) -> SamplingParams:
        raise NotImplementedError

    def choice_params(self) -> list[SamplingParams]:
        """One SamplingParams per choice; a seed is offset per choice so `n` seeded choices differ."""
        return per_choice_params(self.sampling_params(), self.choices)

    def extension_constraint(self) -> Constraint | None:
        return None if self.structured_outputs is None else self.structured_outputs.constraint()
