"""Keys decided on the route: raw paths the router folds (`//`, `%2F`), HEAD/OPTIONS, the two roles,
the scheme's case, and what an inference key sees of loaded models. Real `dukat serve`, real HTTP."""

from __future__ import annotations

import httpx
import openai
import pytest

from gateway.auth import KeyGuard
from shared.bearer_tokens import bearer_token
from shared.settings import load_settings
from tests.security.conftest import ADMIN_KEY, CHAT_MODEL, INFERENCE_KEY, Locked
from tests.support.openapi_check import validate

# (method, raw request target, body): routes an attacker reaches with a folded path.
RAW_TARGETS = [
    ("GET", "//v1/models", None),
    ("GET", "///v1/models", None),
    ("GET", "/v1//models", None),
    ("GET", "/./v1/models", None),
    ("GET", "/v1/./models", None),
    ("GET", "/v1%2Fmodels", None),
    ("GET", "/%2Fv1/models", None),
    ("GET", "/%76%31/models", None),
    ("GET", "/V1/models", None),
    ("GET", "/v1/models/", None),
    ("GET", "/v1/models?x=1", None),
    ("GET", "/v1/models#frag", None),
    ("GET", "//v1/models/tiny/tinyllama", None),
    ("POST", "//v1/chat/completions", {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1//chat/completions", {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "//v1/completions", {"model": CHAT_MODEL, "prompt": "hi"}),
    ("POST", "//v1/embeddings", {"model": "tiny/bert", "input": "hi"}),
    ("POST", "//api/models/load", {"model": CHAT_MODEL}),
    ("POST", "//api/models/pull", {"model": "dukat-test/tiny-gpt2"}),
    ("POST", "/api//models/unload", {"model": CHAT_MODEL}),
    ("POST", "/./api/models/default", {"model": CHAT_MODEL}),
    ("GET", "//api/hosts", None),
    ("GET", "//api/ps", None),
    ("GET", "//api/models", None),
    ("GET", "/api/downloads/dl-000000000000", None),
]
ADMIN_ROUTES = [
    ("POST", "/api/models/load", {"model": CHAT_MODEL}),
    ("POST", "/api/models/unload", {"model": CHAT_MODEL}),
    ("POST", "/api/models/default", {"model": CHAT_MODEL}),
    ("POST", "/api/models/pull", {"model": "dukat-test/tiny-gpt2"}),
    ("GET", "/api/hosts", None),
    ("GET", "/api/downloads/dl-000000000000", None),
]


def raw(client: httpx.Client, method: str, target: str, body: object = None) -> httpx.Response:
    """A request whose target goes out byte for byte, as `curl --path-as-is` sends it."""
    return client.request(method, "/", json=body, extensions={"target": target.encode()})


def assert_error(resp: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict:
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    body = resp.json()
    validate(body, "ErrorResponse")
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


@pytest.mark.parametrize(("method", "target", "body"), RAW_TARGETS, ids=[t for _, t, _ in RAW_TARGETS])
def test_a_folded_path_never_skips_the_key(
    locked: Locked, anonymous: httpx.Client, method: str, target: str, body: object
) -> None:
    # Whatever the router makes of the path, it is refused: 401 where a route answers, else 404.
    assert_error(raw(anonymous, method, target, body), (401, 404))


def test_double_slash_reaches_the_route_and_the_route_wants_a_key(
    anonymous: httpx.Client, admin: httpx.Client
) -> None:
    # The attack of the issue: the router folds `//` into the route, so auth must be the route's.
    assert raw(admin, "GET", "//v1/models").status_code == 200
    for method, target, body in RAW_TARGETS[:1] + RAW_TARGETS[13:14] + RAW_TARGETS[17:19]:
        assert_error(raw(anonymous, method, target, body), 401, "invalid_api_key")


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES, ids=[p for _, p, _ in ADMIN_ROUTES])
def test_an_inference_key_on_an_admin_route_is_a_403(
    inference: httpx.Client, method: str, path: str, body: object
) -> None:
    body_ = assert_error(inference.request(method, path, json=body), 403, "permission_denied")
    assert body_["error"]["type"] == "permission_error"
    # And through a folded path, too.
    assert_error(raw(inference, method, "/" + path, body), 403, "permission_denied")


def test_without_a_valid_key_every_api_route_is_a_401(locked: Locked) -> None:
    values = ["Bearer wrong", INFERENCE_KEY, f"Basic {INFERENCE_KEY}", "Bearer",
              f"Bearer {INFERENCE_KEY}x", f"Bearer {INFERENCE_KEY[:-1]}", ""]
    for value in values:
        headers = {"Authorization": value} if value else {}
        resp = httpx.get(f"{locked.url}/v1/models", headers=headers, timeout=30)
        assert_error(resp, 401, "invalid_api_key")
        assert resp.headers["x-request-id"]
    for method, path, body in ADMIN_ROUTES:
        assert_error(httpx.request(method, f"{locked.url}{path}", json=body, timeout=30), 401)


def test_the_scheme_is_case_insensitive(locked: Locked) -> None:
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        headers = {"Authorization": f"{scheme} {INFERENCE_KEY}"}
        assert httpx.get(f"{locked.url}/v1/models", headers=headers, timeout=30).status_code == 200


def test_head_and_options_do_not_get_around_the_key(anonymous: httpx.Client, inference: httpx.Client) -> None:
    head = anonymous.head("/v1/models")
    assert head.status_code in (401, 405) and not head.content
    assert_error(anonymous.options("/v1/models"), 401)
    assert_error(raw(anonymous, "OPTIONS", "//api/models/load"), 401)
    allowed = inference.options("/v1/models")
    assert allowed.status_code == 204 and "GET" in allowed.headers["allow"]
    assert anonymous.options("/health").status_code == 204


def test_the_allowlist_is_open_and_only_it(anonymous: httpx.Client) -> None:
    assert anonymous.get("/health").json() == {"status": "ok"}
    assert raw(anonymous, "GET", "//health").status_code == 200
    document = anonymous.get("/docs/openapi.json").json()
    assert "/v1/chat/completions" in document["paths"]


def test_admin_key_may_call_everything(admin: httpx.Client) -> None:
    assert admin.get("/v1/models").status_code == 200
    hosts = admin.get("/api/hosts")
    assert hosts.status_code == 200 and hosts.json()[0]["url"].startswith("http://")


def test_the_openai_sdk_with_an_inference_key_gets_through_and_without_raises(locked: Locked) -> None:
    good = openai.OpenAI(base_url=f"{locked.url}/v1", api_key=INFERENCE_KEY, max_retries=0)
    assert CHAT_MODEL in {m.id for m in good.models.list().data}
    bad = openai.OpenAI(base_url=f"{locked.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])


def test_an_inference_key_sees_no_pids_urls_or_paths(
    admin: httpx.Client, inference: httpx.Client
) -> None:
    # Chat with the inference key loads the model (auto-load of a configured model).
    chat = inference.post(
        "/v1/chat/completions",
        json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert chat.status_code == 200, chat.text
    seen = {row["id"]: row for row in inference.get("/api/ps").json()["data"]}
    assert seen[CHAT_MODEL]["state"] == "loaded"
    row = seen[CHAT_MODEL]
    assert row["pid"] is row["host"] is row["address"] is None and row["log_tail"] == []
    full = {row["id"]: row for row in admin.get("/api/ps").json()["data"]}
    assert full[CHAT_MODEL]["pid"] and full[CHAT_MODEL]["host"].startswith("http://")
    assert full[CHAT_MODEL]["address"]


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer k") == bearer_token("bearer  k ") == "k"
    for value in ("Basic k", "Bearer", None, "k"):
        assert bearer_token(value) is None


def test_no_keys_configured_means_open_and_admin() -> None:
    guard = KeyGuard(load_settings({}))
    assert not guard.enabled
    only_admins = KeyGuard(load_settings({"DUKAT_ADMIN_KEYS": "a"}))
    assert only_admins.enabled and only_admins.role("Bearer a") == "admin"
    assert only_admins.role("Bearer b") is None


def test_the_cli_sends_its_api_key(
    locked: Locked, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli.main import main

    monkeypatch.delenv("DUKAT_API_KEY", raising=False)
    assert main(["list", "--url", locked.url]) == 1
    assert "error (401)" in capsys.readouterr().err
    assert main(["list", "--url", locked.url, "--api-key", INFERENCE_KEY]) == 0
    assert CHAT_MODEL in capsys.readouterr().out
    assert main(["default", CHAT_MODEL, "--url", locked.url, "--api-key", INFERENCE_KEY]) == 1
    assert "error (403)" in capsys.readouterr().err
    monkeypatch.setenv("DUKAT_API_KEY", ADMIN_KEY)
    assert main(["default", CHAT_MODEL, "--url", locked.url]) == 0


def test_the_access_log_escapes_control_characters(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging

    from gateway.middleware import GatewayMiddleware

    async def app(scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    async def send(message: dict) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/v1/x\n127.0.0.1 GET /admin 200\r", "headers": []}
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        asyncio.run(GatewayMiddleware(app)(scope, None, send))
    [line] = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert "\n" not in line and "\r" not in line and "/v1/x\\n127.0.0.1 GET /admin 200\\r" in line


def test_the_anthropic_sdk_authenticates_with_x_api_key(locked: Locked) -> None:
    import anthropic

    hello: list = [{"role": "user", "content": "hi"}]
    with anthropic.Anthropic(base_url=locked.url, api_key=INFERENCE_KEY, max_retries=0, timeout=120) as ok:
        assert ok.messages.count_tokens(model=CHAT_MODEL, messages=hello).input_tokens > 0
    wrong = anthropic.Anthropic(base_url=locked.url, api_key="sk-wrong", max_retries=0, timeout=120)
    with wrong, pytest.raises(anthropic.AuthenticationError) as refused:
        wrong.messages.create(model=CHAT_MODEL, max_tokens=2, messages=hello)
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "authentication_error" and "x-api-key" in body["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tokenize", {"model": CHAT_MODEL, "prompt": "hi"}),
        ("/detokenize", {"model": CHAT_MODEL, "tokens": [1, 2]}),
        ("/v1/score", {"model": CHAT_MODEL, "text_1": "q", "text_2": "d"}),
    ],
)
def test_the_new_client_routes_take_inference_keys(locked: Locked, path: str, body: dict) -> None:
    with locked.client() as anonymous:
        assert anonymous.post(path, json=body).status_code == 401
    with locked.client(INFERENCE_KEY) as inference:
        resp = inference.post(path, json=body)
    # Scoring on a chat model is the task's 400: the key was let through.
    assert resp.status_code == (400 if path == "/v1/score" else 200), resp.text
