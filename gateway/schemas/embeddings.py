"""`/v1/embeddings`: request (text or token ids, as LangChain sends them), response, base64 encoding."""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from gateway.schemas.common import KeepAlive, TokenId, reject_if
from gateway.schemas.json_schema import names_a_model, text_input, token_ids_input
from shared.errors import InvalidRequestError
from shared.generation import EmbedResult
from shared.settings import Settings


class EmbeddingRequest(Struct, kw_only=True):
    # Optional, unlike OpenAI: a request naming no model goes to the configured default model.
    model: str | None = None
    # A string, strings, one token-id array or token-id arrays (msgspec allows one array type in a union).
    input: str | list[str | TokenId | list[TokenId]]
    # The openai SDK asks for base64 unless told otherwise.
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None
    # Ollama's extension: how long the model stays loaded after this request.
    keep_alive: KeepAlive = None

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        names_a_model(schema, settings)
        # Strings or token-id arrays, never mixed; no empty list, no empty array (inputs()).
        text, ids = text_input(settings), token_ids_input(settings)
        many = {"minItems": 1, "maxItems": settings.max_embedding_inputs, "type": "array"}
        schema["properties"]["input"] = {
            "anyOf": [text, {**many, "items": text}, ids, {**many, "items": ids}]
        }

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as the worker takes them: all strings or all token-id arrays, never mixed."""
        data = self.input
        if isinstance(data, str):
            return [data]
        reject_if(not data, "input must not be an empty list", "input")
        if all(isinstance(x, str) for x in data):
            return [x for x in data if isinstance(x, str)]
        if all(isinstance(x, int) for x in data):
            return [[x for x in data if isinstance(x, int)]]
        arrays = [x for x in data if isinstance(x, list)]
        reject_if(
            len(arrays) != len(data),
            "input must be a string, a list of strings, a token-id array or a list of token-id arrays",
            "input",
        )
        reject_if(any(not a for a in arrays), "token-id arrays must not be empty", "input")
        return arrays


class EmbeddingData(Struct, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


def encode_base64(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64: what the openai SDK decodes with numpy (`<f4`)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embedding_response(
    result: EmbedResult,
    model: str,
    *,
    encoding_format: Literal["float", "base64"] | None = None,
    dimensions: int | None = None,
) -> EmbeddingResponse:
    """The response for one EmbedResult; a 400 when `dimensions` asks for another size than the
    model's (Dukat does not truncate vectors)."""
    size = len(result.vectors[0]) if result.vectors else 0
    if dimensions is not None and dimensions != size:
        raise InvalidRequestError(
            f"model {model!r} returns {size}-dimensional embeddings; "
            f"dimensions={dimensions} is not supported",
            param="dimensions",
        )
    as_base64 = encoding_format == "base64"
    data = [
        EmbeddingData(index=i, embedding=encode_base64(v) if as_base64 else v)
        for i, v in enumerate(result.vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return EmbeddingResponse(data=data, model=model, usage=usage)
