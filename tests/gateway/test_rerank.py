"""Rerank and score on a tiny cross-encoder through real clients: Cohere's SDK (v1 and v2 rerank), and
vLLM's `/v1/score` over HTTP; the scores agree across the routes, results come best first."""

from __future__ import annotations

from collections.abc import Iterator

import cohere
import httpx
import pytest

from tests.gateway.conftest import Dukat

RERANKER = "tiny/reranker"
QUERY = "What is the capital of France?"
DOCS = [
    "Paris is the capital of France.",
    "The baker opens the shop at six.",
    "A small model can still say many different things.",
    "Every morning the dog waits by the door.",
]


@pytest.fixture(scope="module")
def http(dukat: Dukat) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dukat.url, timeout=120) as client:
        yield client


def _scores(http: httpx.Client) -> list[float]:
    resp = http.post("/v1/score", json={"model": RERANKER, "text_1": QUERY, "text_2": DOCS})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == list(range(len(DOCS)))
    assert body["usage"]["prompt_tokens"] > 0 and body["model"] == RERANKER
    return [d["score"] for d in body["data"]]


def test_cohere_v2_reranks_best_first_with_the_scores_of_score(dukat: Dukat, http: httpx.Client) -> None:
    scores = _scores(http)
    client = cohere.ClientV2(base_url=dukat.url, api_key="x", timeout=120)
    out = client.rerank(model=RERANKER, query=QUERY, documents=DOCS, top_n=3)
    ranked = sorted(range(len(DOCS)), key=lambda i: -scores[i])[:3]
    assert [r.index for r in out.results] == ranked
    assert [r.relevance_score for r in out.results] == pytest.approx([scores[i] for i in ranked])


def test_cohere_v1_returns_the_documents(dukat: Dukat) -> None:
    client = cohere.Client(base_url=dukat.url, api_key="x", timeout=120)
    out = client.rerank(model=RERANKER, query=QUERY, documents=DOCS, return_documents=True)
    assert len(out.results) == len(DOCS)
    assert all(r.document is not None and r.document.text == DOCS[r.index] for r in out.results)
    scores = [r.relevance_score for r in out.results]
    assert scores == sorted(scores, reverse=True)


def test_jina_style_objects_and_no_documents_back(http: httpx.Client) -> None:
    body = {
        "model": RERANKER,
        "query": QUERY,
        "documents": [{"text": d} for d in DOCS],
        "return_documents": False,
    }
    resp = http.post("/v1/rerank", json=body)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == len(DOCS) and all("document" not in r for r in results)
    assert resp.json()["usage"]["total_tokens"] > 0


def test_score_pairs_one_text_1_per_text_2(http: httpx.Client) -> None:
    scores = _scores(http)
    resp = http.post("/v1/score", json={"model": RERANKER, "text_1": [QUERY] * 2, "text_2": DOCS[:2]})
    assert [d["score"] for d in resp.json()["data"]] == pytest.approx(scores[:2])
    uneven = http.post("/v1/score", json={"model": RERANKER, "text_1": [QUERY] * 2, "text_2": DOCS})
    assert uneven.status_code == 400 and uneven.json()["error"]["param"] == "text_1"


def test_wrong_tasks_and_bad_documents_are_400s(http: httpx.Client) -> None:
    chat_model = http.post("/v1/rerank", json={"model": "tiny/tinyllama", "query": QUERY, "documents": DOCS})
    assert chat_model.status_code == 400 and chat_model.json()["error"]["code"] == "unsupported_task"
    chat = http.post(
        "/v1/chat/completions", json={"model": RERANKER, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "unsupported_task"
    bad = http.post("/v1/rerank", json={"model": RERANKER, "query": QUERY, "documents": [{"title": "x"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "documents[0]"
    empty = http.post("/v2/rerank", json={"model": RERANKER, "query": QUERY, "documents": []})
    assert empty.status_code == 400
