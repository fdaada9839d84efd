"""Rerank and score on a cross-encoder: Cohere's and Jina's `/v1/rerank` and `/v2/rerank` (the same
shapes vLLM and TEI answer), and vLLM's `/v1/score` (`text_1` against `text_2`).

Both become (query, document) pairs the worker scores in batches (worker/model/scoring.py). A
rerank's `documents` are strings or objects with a `text` field; its results come best first, cut to
`top_n`, each with its `index` in `documents`, its `relevance_score` and (unless `return_documents`
is false) the document's text.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from gateway.schemas.common import KeepAlive, now, reject_if
from gateway.schemas.json_schema import names_a_model
from shared.generation import ScoreResult
from shared.settings import Settings


class RerankRequest(Struct, kw_only=True):
    model: str | None = None
    query: str
    documents: Annotated[list[str | dict[str, Any]], Meta(min_length=1)]
    top_n: Annotated[int, Meta(ge=1)] | None = None
    return_documents: bool | None = None
    keep_alive: KeepAlive = None

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        names_a_model(schema, settings)
        # A document is a string or an object with its `text` (texts()).
        document = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}
        schema["properties"]["documents"]["items"] = {"anyOf": [{"type": "string"}, document]}

    def texts(self) -> list[str]:
        """The documents' texts (an object's `text` field)."""
        out = []
        for i, document in enumerate(self.documents):
            text = document if isinstance(document, str) else document.get("text")
            reject_if(
                not isinstance(text, str),
                "a document is a string or an object with a string `text` field",
                f"documents[{i}]",
            )
            out.append(str(text))
        return out


class RerankDocument(Struct, kw_only=True):
    text: str


class RerankResult(Struct, kw_only=True, omit_defaults=True):
    index: int
    relevance_score: float
    document: RerankDocument | UnsetType = UNSET


class RerankUsage(Struct, kw_only=True):
    total_tokens: int


class ApiVersion(Struct, kw_only=True):
    version: str = "2"


class BilledUnits(Struct, kw_only=True):
    search_units: int = 1


class RerankMeta(Struct, kw_only=True):
    """Cohere's `meta`: what its SDKs read besides the results."""

    api_version: ApiVersion
    billed_units: BilledUnits


class RerankResponse(Struct, kw_only=True):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage
    meta: RerankMeta


def rerank_response(
    data: RerankRequest, texts: list[str], result: ScoreResult, model: str, request_id: str, version: str
) -> RerankResponse:
    order = sorted(range(len(texts)), key=lambda i: -result.scores[i])[: data.top_n]
    keep = data.return_documents is not False
    results = [
        RerankResult(
            index=i,
            relevance_score=result.scores[i],
            document=RerankDocument(text=texts[i]) if keep else UNSET,
        )
        for i in order
    ]
    return RerankResponse(
        id=f"rerank-{request_id}",
        model=model,
        results=results,
        usage=RerankUsage(total_tokens=result.prompt_tokens),
        meta=RerankMeta(api_version=ApiVersion(version=version), billed_units=BilledUnits()),
    )


class ScoreTextsRequest(Struct, kw_only=True):
    """vLLM's `/v1/score`: `text_1` (one text, or one per `text_2`) scored against each `text_2`."""

    model: str | None = None
    text_1: str | Annotated[list[str], Meta(min_length=1)]
    text_2: str | Annotated[list[str], Meta(min_length=1)]
    keep_alive: KeepAlive = None

    @classmethod
    def refine_json_schema(cls, schema: dict[str, Any], settings: Settings) -> None:
        names_a_model(schema, settings)

    def pairs(self) -> list[tuple[str, str]]:
        firsts = [self.text_1] if isinstance(self.text_1, str) else self.text_1
        seconds = [self.text_2] if isinstance(self.text_2, str) else self.text_2
        if len(firsts) == 1:
            return [(firsts[0], t) for t in seconds]
        reject_if(
            len(firsts) != len(seconds),
            f"text_1 has {len(firsts)} texts and text_2 {len(seconds)}: send one text_1, or one per text_2",
            "text_1",
        )
        return list(zip(firsts, seconds, strict=True))


class ScoreData(Struct, kw_only=True):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreUsage(Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0


class ScoreResponse(Struct, kw_only=True):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


def score_response(result: ScoreResult, model: str, request_id: str) -> ScoreResponse:
    tokens = result.prompt_tokens
    return ScoreResponse(
        id=f"score-{request_id}",
        created=now(),
        model=model,
        data=[ScoreData(index=i, score=s) for i, s in enumerate(result.scores)],
        usage=ScoreUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
