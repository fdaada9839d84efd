"""Images through the real gateway (issue 21): tiny random-weight Gemma 3, SmolVLM (Idefics3) and
LLaVA checkpoints with their processors, placed under models_dir with no config entry, answer chat
`image_url` parts (data: URLs, and http(s) ones from a host the admin listed) whole and streamed,
Responses `input_image`, and share a batch with text requests; a text-only model given an image,
an image that does not decode, and one over the byte or pixel caps are 400s."""

from __future__ import annotations

import base64
import http.server
import io
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TINY_MODEL_CACHE
from tests.gateway.conftest import TEST_ENV
from tests.support.checks import error_of
from tests.support.served import dukat_serve
from tests.support.tiny_modern_models import ensure_modern_model
from tests.support.tiny_vision_models import VISION_MODELS, ensure_vision_model

TEXT_ONLY = "Qwen/Qwen3-0.6B"
GEMMA = "google/gemma-3-4b-it"
MAX_BYTES = 50_000
MAX_PIXELS = 500_000
pytestmark = pytest.mark.slow  # three vision models and a text one load (~15 s each on 2 cores)


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


RED, BLUE = data_url(png(64, 48, (220, 20, 20))), data_url(png(40, 60, (20, 20, 220)))


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    """An http server on 127.0.0.1 serving the red image at /red.png."""
    body = base64.b64decode(RED.partition(",")[2])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/red.png"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models_dir = tmp_path_factory.mktemp("vision") / "models"
    for hub_id in VISION_MODELS:
        shutil.copytree(ensure_vision_model(hub_id, TINY_MODEL_CACHE), models_dir / hub_id)
    shutil.copytree(ensure_modern_model(TEXT_ONLY, TINY_MODEL_CACHE), models_dir / TEXT_ONLY)
    env = {**TEST_ENV, "DUKAT_LOG_LEVEL": "warning", "DUKAT_IMAGE_URL_HOSTS": "127.0.0.1",
           "DUKAT_MAX_IMAGE_BYTES": str(MAX_BYTES), "DUKAT_MAX_IMAGE_PIXELS": str(MAX_PIXELS)}  # fmt: skip
    with dukat_serve(models_dir, env) as (url, _proc):
        yield url


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def _shown(url: str, text: str = "What is in this picture?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]  # fmt: skip


def _ask(client: openai.OpenAI, model: str, messages: list[dict[str, Any]]) -> tuple[str, int]:
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)  # type: ignore[arg-type]
    assert reply.usage is not None
    return reply.choices[0].message.content or "", reply.usage.prompt_tokens


@pytest.mark.parametrize("hub_id", list(VISION_MODELS))
def test_vision_model_sees_images_whole_streamed_and_in_a_batch(served: str, hub_id: str) -> None:
    client = _client(served)
    try:
        red, red_tokens = _ask(client, hub_id, _shown(RED))
        blue, _ = _ask(client, hub_id, _shown(BLUE))
        plain, plain_tokens = _ask(client, hub_id, [{"role": "user", "content": "What is in this picture?"}])
        assert red_tokens > plain_tokens  # the image's tokens count toward the prompt
        body = {"model": hub_id, "messages": _shown(RED)}
        counted = httpx.post(f"{served}/tokenize", json=body, timeout=60)
        assert counted.json()["count"] == red_tokens  # /tokenize counts them as the model sees them
        assert red != blue  # the pixels reach the model
        stream = client.chat.completions.create(
            model=hub_id,
            messages=_shown(RED),
            max_tokens=10,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == red
        # Image rows prefill alone, then decode in the batch beside text rows: each its own text.
        asks = [_shown(RED), [{"role": "user", "content": "What is in this picture?"}], _shown(BLUE)]
        with ThreadPoolExecutor(3) as pool:
            together = [text for text, _ in pool.map(lambda m: _ask(client, hub_id, m), asks)]
        assert together == [red, plain, blue]
        ps = {m["id"]: m for m in httpx.get(f"{served}/api/ps", timeout=30).json()["data"]}
        assert ps[hub_id]["batching"] is True
    finally:
        if hub_id != GEMMA:  # the tests below use it
            httpx.post(f"{served}/api/models/unload", json={"model": hub_id}, timeout=60)


def test_responses_input_image_answers_as_chat_does(served: str) -> None:
    client = _client(served)
    chat, _ = _ask(client, GEMMA, _shown(RED))
    response = client.responses.create(
        model=GEMMA, max_output_tokens=10, temperature=0,
        input=[{"role": "user", "content": [{"type": "input_image", "image_url": RED, "detail": "auto"},
                                            {"type": "input_text", "text": "What is in this picture?"}]}],
    )  # fmt: skip
    assert response.output_text == chat


def test_an_http_image_from_a_listed_host_is_fetched_and_others_are_refused(
    served: str, image_host: str
) -> None:
    client = _client(served)
    assert _ask(client, GEMMA, _shown(f"{image_host}/red.png")) == _ask(client, GEMMA, _shown(RED))
    unlisted = image_host.replace("127.0.0.1", "localhost")
    for url, phrase in (
        (f"{unlisted}/red.png", "DUKAT_IMAGE_URL_HOSTS"),
        (f"{image_host}/gone.png", "HTTP 404"),
    ):
        response = httpx.post(f"{served}/v1/chat/completions", json={"model": GEMMA, "messages": _shown(url)},
                              timeout=120)  # fmt: skip
        error = error_of(response, 400, param="messages[0].content[0]")
        assert phrase in error["message"]


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        (data_url(b"certainly not a picture"), "cannot be decoded"),
        ("data:image/png;base64,@@@not-base64@@@", "not valid base64"),
        ("file:///etc/passwd", "data: URL"),
        (data_url(b"\0" * (MAX_BYTES + 1)), "DUKAT_MAX_IMAGE_BYTES"),
        (data_url(png(1000, 1000, (0, 0, 0))), "DUKAT_MAX_IMAGE_PIXELS"),  # a few KB, a million pixels
    ],
    ids=["not-an-image", "not-base64", "not-a-data-url", "too-many-bytes", "too-many-pixels"],
)
def test_a_bad_image_is_a_400_that_says_why(served: str, url: str, phrase: str) -> None:
    response = httpx.post(f"{served}/v1/chat/completions", json={"model": GEMMA, "messages": _shown(url)},
                          timeout=120)  # fmt: skip
    assert phrase in error_of(response, 400)["message"]


def test_a_text_only_model_given_an_image_is_a_400(served: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(_client(served), TEXT_ONLY, _shown(RED))
    assert "takes no images" in caught.value.message
