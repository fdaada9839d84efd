"""A Messages API stream that fails after its first event ends with Anthropic's `event: error` (no
`[DONE]`: the anthropic SDK raises on an `error` event); a failure before it is a plain Anthropic
error body."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from litestar import Litestar, post
from litestar.testing import TestClient

from gateway.anthropic_errors import ANTHROPIC_ENDING, anthropic_exception_handlers
from gateway.errors import exception_handlers
from gateway.schemas.common import ChoiceEvent
from gateway.schemas.message_events import message_stream
from gateway.schemas.messages import MessageObject, MessagesRequest, MessageUsage
from gateway.sse import EventStream, sse_stream
from shared.errors import ModelNotFoundError, WorkerFailedError


async def _events(model: str) -> AsyncIterator[ChoiceEvent]:
    if model == "ghost":
        raise ModelNotFoundError(f"model {model!r} is not known", param="model")
    yield 0, "Hel"
    raise WorkerFailedError("the model worker died")


@post("/v1/messages", status_code=200, exception_handlers=anthropic_exception_handlers())
async def messages(data: MessagesRequest) -> EventStream:
    model = data.model or "default"
    shell = MessageObject(
        id="msg_1", content=[], model=model, usage=MessageUsage(input_tokens=0, output_tokens=0)
    )
    return await sse_stream(message_stream(_events(model), shell), ending=ANTHROPIC_ENDING)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = Litestar(route_handlers=[messages], exception_handlers=exception_handlers())
    with TestClient(app) as c:
        yield c


BODY = {"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_a_failure_inside_the_stream_is_an_error_event_and_no_done(client: TestClient) -> None:
    resp = client.post("/v1/messages", json={**BODY, "model": "dies-midway"})
    assert resp.status_code == 200
    text = resp.text
    assert text.startswith("event: message_start\n") and "[DONE]" not in text
    last = text.strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: ")
    assert '"type":"error"' in last and '"type":"api_error"' in last and "worker died" in last


def test_a_failure_before_the_first_event_is_an_anthropic_error_body(client: TestClient) -> None:
    resp = client.post("/v1/messages", json={**BODY, "model": "ghost"})
    assert resp.status_code == 404
    assert resp.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'ghost' is not known"},
    }
