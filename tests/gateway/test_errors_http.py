"""Every failure reaches the client as OpenAI's error body, over litestar's TestClient and a real
uvicorn server that the openai SDK talks to (streams included)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest
import uvicorn
from litestar import Litestar, Request, get, post
from litestar.response import Stream
from litestar.testing import TestClient

from gateway.errors import exception_handlers, request_validation_error
from gateway.schemas import (
    ChatChunks,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceEvent,
    chat_response,
)
from gateway.schemas.models import LoadRequest
from gateway.sse import sse_stream
from shared.errors import ModelNotFoundError, ModelNotLoadedError, OverloadedError, WorkerFailedError
from shared.generation import GenerateResult
from tests.support.checks import error_of
from tests.support.openapi_check import validate

MAX_BODY = 64 * 1024
SECRET = "secret internal detail"
# Set when the endless stream's source is closed: the client's disconnect reached the generation.
ENDLESS_CLOSED = threading.Event()


def _result(text: str) -> GenerateResult:
    return GenerateResult(text=text, finish_reason="stop", prompt_tokens=3, completion_tokens=2)


async def _events(model: str) -> AsyncIterator[ChoiceEvent]:
    if model == "ghost":
        raise ModelNotFoundError(f"model {model!r} is not known", param="model")
    yield 0, "Hel"
    if model == "dies-midway":
        raise WorkerFailedError("the model worker died")
    if model == "bug-midway":
        raise RuntimeError(SECRET)
    if model == "endless":
        try:
            while True:
                await asyncio.sleep(0.01)
                yield 0, "."
        finally:
            ENDLESS_CLOSED.set()
    yield 0, "lo"
    yield 0, _result("Hello")


@post("/v1/chat/completions", status_code=200)
async def chat(data: ChatCompletionRequest) -> ChatCompletionResponse | Stream:
    data.sampling_params()
    model = data.model or "default"
    if data.stream:
        chunks = ChatChunks(model=model, request_id="req", include_usage=data.include_usage)
        return await sse_stream(chunks.stream(_events(model)))
    if model == "ghost":
        raise ModelNotFoundError(f"model {model!r} is not known", param="model")
    return chat_response([_result("Hello")] * data.choices, model, "req")


@get("/busy")
async def busy() -> None:
    raise OverloadedError("the queue is full")


@get("/boom")
async def boom() -> None:
    raise RuntimeError(SECRET)


@get("/starting")
async def starting() -> None:
    raise ModelNotLoadedError("starting: model 'tiny/x' is loading (3 s so far)", param="model")


@get("/ghost")
async def ghost() -> None:
    raise ModelNotFoundError("model 'ghost' is not known", param="model")


@post("/load")
async def load(data: LoadRequest) -> dict[str, str]:
    return {"model": data.model_id}


@post("/manual")
async def manual(request: Request[Any, Any, Any]) -> dict[str, str]:
    try:
        body = msgspec.json.decode(await request.body(), type=LoadRequest)
    except msgspec.ValidationError as exc:
        raise request_validation_error(exc) from exc
    return {"model": body.model_id}


def make_app() -> Litestar:
    return Litestar(
        [chat, busy, boom, starting, ghost, load, manual],
        exception_handlers=exception_handlers(),
        request_max_body_size=MAX_BODY,
    )


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient[Litestar]]:
    with TestClient(make_app()) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The test app served by uvicorn in a thread on a free port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(make_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def tracebacks(caplog: pytest.LogCaptureFixture, exc_type: type[BaseException]) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], exc_type)]


# --- litestar's own errors ------------------------------------------------------------------------


def test_unknown_route_is_a_404_openai_body(client: TestClient[Litestar]) -> None:
    error = error_of(client.get("/v1/nope"), 404)
    assert error == {
        "message": "no route for GET /v1/nope",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }


def test_wrong_method_is_a_405_with_allow(client: TestClient[Litestar]) -> None:
    response = client.get("/v1/chat/completions")
    assert error_of(response, 405)["code"] == "method_not_allowed"
    assert "POST" in response.headers["allow"]


def test_malformed_json_is_a_400(client: TestClient[Litestar]) -> None:
    response = client.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    error = error_of(response, 400)
    assert "not valid JSON" in error["message"] and error["type"] == "invalid_request_error"


def test_wrong_content_type_is_a_400_saying_so(client: TestClient[Litestar]) -> None:
    response = client.post("/v1/chat/completions", content=b"model=m", headers={"content-type": "text/plain"})
    assert "Content-Type was 'text/plain'" in error_of(response, 400)["message"]


def test_missing_body_is_a_400(client: TestClient[Litestar]) -> None:
    assert "body is missing" in error_of(client.post("/v1/chat/completions"), 400)["message"]


def test_body_too_large_is_a_413(client: TestClient[Litestar]) -> None:
    response = client.post("/v1/chat/completions", json=chat_body(user="x" * MAX_BODY))
    assert error_of(response, 413)["code"] == "request_too_large"


def test_out_of_range_field_is_a_400_naming_it(client: TestClient[Litestar]) -> None:
    error = error_of(client.post("/v1/chat/completions", json=chat_body(temperature=5)), 400)
    assert error["message"] == "temperature: Expected `float` <= 2.0"
    assert error["param"] == "temperature" and error["code"] == "invalid_request"


def test_nested_field_error_names_the_path(client: TestClient[Litestar]) -> None:
    error = error_of(client.post("/v1/chat/completions", json=chat_body(messages=[{"content": "x"}])), 400)
    assert error["param"] == "messages[0].role"


@pytest.mark.parametrize(("path"), ["/load", "/manual"])
@pytest.mark.parametrize(
    ("body", "param"),
    [({}, "model"), ({"model": "m", "quantisation": "8bit"}, "quantisation"), ({"model": 1}, "model")],
)
def test_management_body_errors_name_the_field(
    client: TestClient[Litestar], path: str, body: dict[str, Any], param: str
) -> None:
    assert error_of(client.post(path, json=body), 400)["param"] == param


# --- Dukat's errors and bugs ----------------------------------------------------------------------


def test_dukat_error_keeps_its_status_type_code_and_param(client: TestClient[Litestar]) -> None:
    error = error_of(client.post("/v1/chat/completions", json=chat_body(model="ghost")), 404)
    assert error == {
        "message": "model 'ghost' is not known",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_dukat_error_with_retry_after_sets_the_header(client: TestClient[Litestar]) -> None:
    response = client.get("/busy")
    assert error_of(response, 429)["type"] == "rate_limit_error"
    assert response.headers["retry-after"] == "1"


def test_unexpected_exception_is_a_generic_500_logged_once(
    client: TestClient[Litestar], caplog: pytest.LogCaptureFixture
) -> None:
    error = error_of(client.get("/boom"), 500)
    assert error["type"] == "server_error" and SECRET not in error["message"]
    assert len(tracebacks(caplog, RuntimeError)) == 1


def test_expected_failures_log_no_traceback_and_repeats_once(
    client: TestClient[Litestar], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        error_of(client.get("/ghost"), 404)
        for _ in range(5):
            error_of(client.get("/starting"), 503, "model_not_loaded")
    records = [r for r in caplog.records if r.name == "gateway.errors"]
    assert not [r for r in records if r.exc_info], "no traceback for a client's error nor an expected 503"
    assert [r.levelname for r in records if "ghost" in r.getMessage()] == ["DEBUG"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # the same reason five times: one line
    assert "model 'tiny/x' is loading (3 s so far)" in warnings[0] and "503 model_not_loaded" in warnings[0]


def test_unsupported_option_is_a_400(client: TestClient[Litestar]) -> None:
    assert (
        error_of(client.post("/v1/chat/completions", json=chat_body(top_logprobs=3)), 400)["param"]
        == "top_logprobs"
    )


# --- the openai SDK against a real server ---------------------------------------------------------


def test_sdk_raises_not_found_with_the_message(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="model 'ghost' is not known") as info:
        sdk.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found" and info.value.param == "model"


def test_sdk_raises_bad_request_naming_the_field(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="temperature") as info:
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert info.value.param == "temperature"


def test_sdk_reads_a_completion_with_n_choices(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], n=2)
    assert [c.message.content for c in completion.choices] == ["Hello", "Hello"]


def test_sdk_stream_with_usage(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5


def test_stream_failing_before_first_chunk_is_a_plain_http_error(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="not known"):
        sdk.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "hi"}], stream=True)


def test_stream_error_after_first_chunk_ends_with_done(base_url: str) -> None:
    response = httpx.post(f"{base_url}/v1/chat/completions", json=chat_body(model="dies-midway", stream=True))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    error = msgspec.json.decode(events[-2])
    validate(error, "ErrorResponse")
    assert error["error"]["code"] == "worker_failed"
    assert [msgspec.json.decode(e)["object"] for e in events[:-2]] == ["chat.completion.chunk"] * 2


def test_sdk_raises_api_error_for_a_stream_failing_midway(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="dies-midway", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received: list[openai.types.chat.ChatCompletionChunk] = []
    with pytest.raises(openai.APIError, match="the model worker died") as info:
        received.extend(stream)
    assert info.value.code == "worker_failed"
    assert [c.choices[0].delta.content for c in received] == ["", "Hel"]


def test_bug_inside_a_stream_sends_a_generic_error_logged_once(
    sdk: openai.OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    stream = sdk.chat.completions.create(
        model="bug-midway", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as info:
        list(stream)
    assert SECRET not in info.value.message and info.value.type == "server_error"
    assert len(tracebacks(caplog, RuntimeError)) == 1


def test_client_disconnect_closes_the_stream_source(base_url: str) -> None:
    body = chat_body(model="endless", stream=True)
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response:
        assert next(response.iter_bytes()).startswith(b"data: ")
    assert ENDLESS_CLOSED.wait(5)
