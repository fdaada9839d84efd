"""LangChain's OpenAI classes against a real `dukat serve`: they send what the openai SDK alone does not
(`max_completion_tokens`, `n`/`seed`/`logprobs` as null, `stream_options`, token-id embedding input)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI, OpenAI, OpenAIEmbeddings

from tests.gateway.conftest import Dukat

CHAT = "tiny/tinyllama"
EMBED = "tiny/bert"
# Greedy tinyllama runs past 16 tokens on this prompt without meeting an end-of-sequence token.
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def client(dukat: Dukat) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=dukat.base_url, api_key="x", max_retries=0, timeout=120) as c:
        yield c


def common(dukat: Dukat) -> dict[str, Any]:
    return {"base_url": dukat.base_url, "api_key": "x", "max_retries": 0, "timeout": 120}


@pytest.fixture(scope="module")
def chat_model(dukat: Dukat) -> ChatOpenAI:
    return ChatOpenAI(model=CHAT, temperature=0, max_tokens=12, **common(dukat))


def sdk_text(client: openai.OpenAI, content: str, max_tokens: int) -> str:
    messages = [{"role": "user", "content": content}]
    result = client.chat.completions.create(
        model=CHAT, messages=messages, max_tokens=max_tokens, temperature=0
    )
    return result.choices[0].message.content


# ---- ChatOpenAI --------------------------------------------------------------------------------


def test_chat_invoke_matches_the_sdk(chat_model: ChatOpenAI, client: openai.OpenAI) -> None:
    reply = chat_model.invoke(QUESTION)
    assert reply.content == sdk_text(client, QUESTION, 12)
    assert reply.response_metadata["model_name"] == CHAT
    assert reply.response_metadata["finish_reason"] == "length"
    # max_tokens travelled as max_completion_tokens and was honoured.
    assert reply.usage_metadata["output_tokens"] == 12
    assert reply.usage_metadata["total_tokens"] == reply.usage_metadata["input_tokens"] + 12


def test_chat_invoke_with_system_message(dukat: Dukat) -> None:
    for model in (CHAT, "tiny/mistral"):
        llm = ChatOpenAI(model=model, temperature=0, max_tokens=4, **common(dukat))
        reply = llm.invoke([SystemMessage("Answer briefly."), HumanMessage(QUESTION)])
        assert isinstance(reply.content, str)
        assert reply.response_metadata["model_name"] == model


def test_chat_stream_concatenates_to_invoke(chat_model: ChatOpenAI) -> None:
    chunks = list(chat_model.stream(QUESTION))
    assert len(chunks) > 2
    assert "".join(str(c.content) for c in chunks) == chat_model.invoke(QUESTION).content
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.response_metadata.get("finish_reason") == "length"


def test_chat_stream_reports_usage(dukat: Dukat) -> None:
    llm = ChatOpenAI(model=CHAT, temperature=0, max_tokens=5, stream_usage=True, **common(dukat))
    usages = [c.usage_metadata for c in llm.stream(QUESTION) if c.usage_metadata]
    assert usages
    assert usages[-1]["output_tokens"] == 5


def test_chat_batch_matches_single_invokes(chat_model: ChatOpenAI, client: openai.OpenAI) -> None:
    prompts = [QUESTION, "Tell me about the weather today."]
    replies = chat_model.batch(prompts)
    assert [r.content for r in replies] == [sdk_text(client, p, 12) for p in prompts]


async def test_chat_ainvoke_and_astream(chat_model: ChatOpenAI) -> None:
    reply = await chat_model.ainvoke(QUESTION)
    streamed = "".join([str(c.content) async for c in chat_model.astream(QUESTION)])
    assert streamed == reply.content


# ---- OpenAI (completions) ----------------------------------------------------------------------


def test_completion_llm_invoke(dukat: Dukat, client: openai.OpenAI) -> None:
    # Sends n, seed, logprobs (null), best_of and friends to /v1/completions.
    llm = OpenAI(model=CHAT, temperature=0, max_tokens=8, **common(dukat))
    text = llm.invoke("Once upon a time")
    expected = client.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert text == expected.choices[0].text
    assert text


def test_completion_llm_stream_and_batch(dukat: Dukat) -> None:
    llm = OpenAI(model=CHAT, temperature=0, max_tokens=6, **common(dukat))
    streamed = "".join(llm.stream("Once upon a time"))
    batch = llm.batch(["Once upon a time", "The weather today"])
    assert streamed == batch[0]
    assert len(batch) == 2


# ---- OpenAIEmbeddings --------------------------------------------------------------------------


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def embed_size(dukat: Dukat) -> int:
    return json.loads((dukat.models_dir / EMBED / "config.json").read_text())["hidden_size"]


def test_embeddings_of_text(dukat: Dukat, client: openai.OpenAI) -> None:
    embeddings = OpenAIEmbeddings(model=EMBED, check_embedding_ctx_length=False, **common(dukat))
    query = embeddings.embed_query("a cat")
    documents = embeddings.embed_documents(["a cat", "a dog"])
    assert len(query) == embed_size(dukat)
    assert norm(query) == pytest.approx(1.0, abs=1e-4)
    assert documents[0] == pytest.approx(query, abs=1e-6)
    direct = client.embeddings.create(model=EMBED, input=["a dog"], encoding_format="float").data[0].embedding
    assert documents[1] == pytest.approx(direct, abs=1e-6)


async def test_embeddings_of_text_async(dukat: Dukat) -> None:
    embeddings = OpenAIEmbeddings(model=EMBED, check_embedding_ctx_length=False, **common(dukat))
    query = await embeddings.aembed_query("a cat")
    documents = await embeddings.aembed_documents(["a cat"])
    assert documents[0] == pytest.approx(query, abs=1e-6)


def test_embeddings_length_safe_path_with_the_models_own_tokenizer(dukat: Dukat) -> None:
    # tiktoken_enabled=False: LangChain splits long texts with a Hugging Face tokenizer, embeds the
    # pieces (sent as text) and averages them; offline, with the served model's own tokenizer.
    embeddings = OpenAIEmbeddings(
        model=EMBED, tiktoken_enabled=False, tiktoken_model_name=str(dukat.models_dir / EMBED),
        embedding_ctx_length=16, **common(dukat),
    )
    long_text = "the quick brown fox jumps over the lazy dog " * 8
    vectors = embeddings.embed_documents(["a cat", long_text])
    assert all(len(v) == embed_size(dukat) for v in vectors)
    assert norm(vectors[1]) == pytest.approx(1.0, abs=1e-4)


@pytest.fixture(scope="module")
def tiktoken_ready() -> None:
    """LangChain's default embeddings path tokenizes with tiktoken, whose encodings download from
    openaipublic.blob.core.windows.net on first use (cached after); there is no offline fallback."""
    import tiktoken

    try:
        tiktoken.get_encoding("cl100k_base")
    except Exception as exc:
        reason = f"tiktoken cannot load cl100k_base offline ({type(exc).__name__}); LangChain has no fallback"
        pytest.skip(reason)


def test_embeddings_default_path_sends_token_ids(dukat: Dukat, tiktoken_ready: None) -> None:
    # By default LangChain sends tiktoken (cl100k) token ids, which mean nothing to a BERT vocabulary:
    # Dukat refuses them, saying what to set, rather than embedding the wrong tokens.
    embeddings = OpenAIEmbeddings(model=EMBED, **common(dukat))
    with pytest.raises(openai.BadRequestError, match=r"check_embedding_ctx_length=False"):
        embeddings.embed_query("hello world")
