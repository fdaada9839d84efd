"""Token-id embedding input that cannot be the model's own ids: what to tell the client.

OpenAI's API defines token-id `input` in OpenAI's tokenizer (tiktoken), and that is what its SDKs'
users send: LangChain's `OpenAIEmbeddings` tokenizes with tiktoken's cl100k by default. Read as the
served model's ids they give wrong vectors without an error, so Dukat refuses them with this advice.
"""

from __future__ import annotations

from shared.errors import InvalidRequestError

ADVICE = (
    "send the text instead: with LangChain, OpenAIEmbeddings(..., check_embedding_ctx_length=False) "
    "(by default it sends OpenAI's tiktoken ids, which mean other tokens to this model)"
)


def foreign_token_ids(why: str) -> InvalidRequestError:
    return InvalidRequestError(f"{why}; {ADVICE}", param="input")


def check_client_ids(inputs: list[str] | list[list[int]], user_agent: str | None) -> None:
    """Token ids from an official OpenAI SDK ("OpenAI/Python 1.x", "OpenAI/JS 4.x") are tiktoken's."""
    if inputs and not isinstance(inputs[0], str) and (user_agent or "").startswith("OpenAI/"):
        raise foreign_token_ids(
            "token ids sent through an OpenAI SDK are OpenAI's tokenizer's, not this model's"
        )
