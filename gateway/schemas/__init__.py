"""The OpenAI endpoint families' wire shapes, one module per family; the management API's are
gateway/schemas/models.py's."""

from gateway.schemas.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatChunks,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    chat_response,
)
from gateway.schemas.common import ChoiceEvent, StreamOptions, Usage, openai_finish_reason, usage_of
from gateway.schemas.completions import (
    CompletionChoice,
    CompletionChunks,
    CompletionRequest,
    CompletionResponse,
    completion_response,
)
from gateway.schemas.embeddings import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    embedding_response,
    encode_base64,
)

__all__ = [
    "AssistantMessage",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatChunks",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatDelta",
    "ChoiceEvent",
    "CompletionChoice",
    "CompletionChunks",
    "CompletionRequest",
    "CompletionResponse",
    "EmbeddingData",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EmbeddingUsage",
    "StreamOptions",
    "Usage",
    "chat_response",
    "completion_response",
    "embedding_response",
    "encode_base64",
    "openai_finish_reason",
    "usage_of",
]
