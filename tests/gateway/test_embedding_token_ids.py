"""Token-id embedding input: the model's own ids embed as their text does; ids that cannot be its
own (outside its vocabulary, or sent through an OpenAI SDK, which means tiktoken's ids: what
LangChain's OpenAIEmbeddings sends by default) are a 400 that says what to set."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.gateway.conftest import Dukat

EMBED = "tiny/bert"
ADVICE = "OpenAIEmbeddings(..., check_embedding_ctx_length=False)"


@pytest.fixture(scope="module")
def client(dukat: Dukat) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=dukat.base_url, api_key="unused", max_retries=0) as c:
        yield c


def embed(dukat: Dukat, value: Any) -> httpx.Response:
    body = {"model": EMBED, "input": value, "encoding_format": "float"}
    return httpx.post(f"{dukat.base_url}/embeddings", json=body, timeout=120)


def test_the_models_own_ids_embed_like_their_text(dukat: Dukat) -> None:
    text = "a small cat"
    ids = AutoTokenizer.from_pretrained(dukat.models_dir / EMBED)(text, add_special_tokens=False).input_ids
    by_ids, by_text = embed(dukat, [ids]), embed(dukat, [text])
    assert by_ids.status_code == 200 and by_text.status_code == 200, (by_ids.text, by_text.text)
    vector = by_text.json()["data"][0]["embedding"]
    assert by_ids.json()["data"][0]["embedding"] == pytest.approx(vector, abs=1e-5)


def test_ids_outside_the_vocabulary_say_what_to_set(dukat: Dukat) -> None:
    resp = embed(dukat, [[15, 100276]])  # 100276: a cl100k id, past any BERT vocabulary
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == "input" and error["code"] == "invalid_request"
    assert "100276" in error["message"] and ADVICE in error["message"]


@pytest.mark.parametrize("value", [[15, 27, 40], [[15, 27, 40]]], ids=["one-array", "arrays"])
def test_ids_through_an_openai_sdk_are_refused_even_inside_the_vocabulary(
    client: openai.OpenAI, value: Any
) -> None:
    # LangChain's default OpenAIEmbeddings makes exactly this request: tiktoken ids through the SDK.
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=EMBED, input=value)
    assert caught.value.status_code == 400
    assert ADVICE in caught.value.message and "OpenAI SDK" in caught.value.message


def test_text_through_an_openai_sdk_still_embeds(client: openai.OpenAI) -> None:
    assert len(client.embeddings.create(model=EMBED, input=["Hello there"]).data[0].embedding) > 0
