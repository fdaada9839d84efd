"""Dukat's management API against a real `dukat serve`: listing, pull as a background job from the local
hub, the default model in the config file, and strict bodies."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.model_config import ConfigStore, ModelEntry
from tests.gateway.conftest import DEFAULT_MODEL, SERVED, Dukat
from tests.support.checks import error_of
from tests.support.hub_fixtures import TINY_REPO

HELLO = [{"role": "user", "content": "Hello there"}]


def models(http: httpx.Client) -> dict[str, dict[str, Any]]:
    resp = http.get("/api/models")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "list"
    return {row["id"]: row for row in body["data"]}


def follow(http: httpx.Client, job_id: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Every state of a download job seen while polling it, until it is done or failed."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        resp = http.get(f"/api/downloads/{job_id}")
        assert resp.status_code == 200, resp.text
        seen.append(resp.json())
        if seen[-1]["status"] in ("done", "failed"):
            return seen
        assert time.monotonic() < deadline, f"download still {seen[-1]['status']} after {timeout} s"
        time.sleep(0.05)


def pull(http: httpx.Client, model: str, **extra: Any) -> dict[str, Any]:
    resp = http.post("/api/models/pull", json={"model": model, **extra})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["model"] == model and job["status"] in ("queued", "running", "done"), job
    assert job["id"]
    return job


@pytest.fixture
def restore_default(dukat: Dukat, http: httpx.Client) -> Iterator[None]:
    try:
        yield
    finally:
        resp = http.post("/api/models/default", json={"model": DEFAULT_MODEL})
        assert resp.status_code == 200, resp.text
        assert dukat.config()["default_model"] == DEFAULT_MODEL


# ---- listing ----------------------------------------------------------------------------------


def test_models_lists_config_entries_and_local_folders_with_state(dukat: Dukat, http: httpx.Client) -> None:
    # A folder nobody wrote into the config file, and an entry whose files are not here.
    on_disk = dukat.models_dir / "local" / "only-on-disk"
    if not on_disk.exists():
        shutil.copytree(dukat.models_dir / "tiny" / "gpt2", on_disk)
    store = ConfigStore(dukat.config_path)
    store.set_entry("ghost/only-in-config", ModelEntry(description="not downloaded yet", quantization="8bit"))
    # The default model is loaded by a request, so at least one row is `loaded`.
    chat = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
    assert chat.status_code == 200, chat.text
    try:
        rows = models(http)
    finally:
        store.remove_entry("ghost/only-in-config")

    assert set(SERVED) <= set(rows)
    default = rows[DEFAULT_MODEL]
    assert default["default"] is True and default["state"] == "loaded" and default["device"] == "cpu"
    assert default["description"] == "tiny tinyllama" and default["quantization"] == "none"
    assert default["downloaded"] is True and default["size_bytes"] > 0
    assert default["model_type"] == "tinyllama" and default["task"] == "chat"
    assert default["default_parameters"] == {"temperature": 0.7, "max_new_tokens": 32}
    assert sum(row["default"] for row in rows.values()) == 1
    assert rows["tiny/bert"]["model_type"] == "bert"

    local = rows["local/only-on-disk"]
    assert local["downloaded"] is True and local["state"] == "available" and local["model_type"] == "gpt"
    assert local["description"] == "" and local["default"] is False

    ghost = rows["ghost/only-in-config"]
    assert ghost["downloaded"] is False and ghost["size_bytes"] == 0 and ghost["state"] == "available"
    assert ghost["quantization"] == "8bit" and ghost["description"] == "not downloaded yet"
    for row in rows.values():
        assert row["state"] in ("available", "loading", "loaded", "failed", "stopping"), row


# ---- pull -------------------------------------------------------------------------------------


def test_pull_is_a_job_whose_bytes_grow_to_the_total_then_the_model_answers(
    dukat: Dukat, http: httpx.Client
) -> None:
    job = pull(http, TINY_REPO)
    states = follow(http, job["id"])
    done = states[-1]
    assert done["status"] == "done", done
    assert done["error"] is None and done["error_code"] is None
    assert done["total_bytes"] > 0 and done["downloaded_bytes"] == done["total_bytes"]
    assert done["files_total"] > 0 and done["files_done"] == done["files_total"]
    downloaded = [s["downloaded_bytes"] for s in states]
    assert downloaded == sorted(downloaded), "progress never goes backwards"
    assert all(s["downloaded_bytes"] <= s["total_bytes"] or s["total_bytes"] == 0 for s in states)
    assert (dukat.models_dir / TINY_REPO / "config.json").is_file()

    row = models(http)[TINY_REPO]
    assert row["downloaded"] is True and row["state"] == "available"
    assert row["size_bytes"] >= done["total_bytes"]
    assert TINY_REPO in dukat.config()["models"], "a pulled model gets its config entry"

    try:
        body = {"model": TINY_REPO, "messages": HELLO, "max_tokens": 4}
        resp = http.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"] == TINY_REPO and resp.json()["usage"]["completion_tokens"] > 0
        assert models(http)[TINY_REPO]["state"] == "loaded"
    finally:
        http.post("/api/models/unload", json={"model": TINY_REPO})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "dukat-test/no-such-model"}, "model"),
        ({"model": TINY_REPO, "revision": "no-such-revision"}, "revision"),
    ],
    ids=["repo", "revision"],
)
def test_pull_of_something_the_hub_does_not_have_fails_the_job(
    http: httpx.Client, body: dict[str, str], param: str
) -> None:
    job = pull(http, **body)  # the hub is asked in the background: the job starts, then fails
    failed = follow(http, job["id"])[-1]
    assert failed["status"] == "failed", failed
    assert failed["error_code"] == "model_not_found"
    assert body[param] in failed["error"] and "not found" in failed["error"]
    assert failed["downloaded_bytes"] == 0


def test_unknown_download_job_is_a_404(http: httpx.Client) -> None:
    error_of(http.get("/api/downloads/dl-000000000000"), 404, "not_found")
    error_of(http.get("/api/downloads/dl-nope"), 400, "invalid_request")  # not a job id


# ---- the default model ------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_default")
def test_default_model_is_saved_in_the_config_file_keeping_unknown_keys(
    dukat: Dukat, http: httpx.Client
) -> None:
    before = dukat.config()
    assert before["default_model"] == DEFAULT_MODEL

    resp = http.post("/api/models/default", json={"model": "tiny/gpt2"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"default_model": "tiny/gpt2"}

    after = dukat.config()
    assert after["default_model"] == "tiny/gpt2"
    for model_id in SERVED:
        assert after["models"][model_id] == before["models"][model_id], "entries are kept as they were"
        assert after["models"][model_id]["owner_note"] == "a key Dukat does not know, kept on rewrite"

    listed = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert listed["tiny/gpt2"]["default"] is True and listed[DEFAULT_MODEL]["default"] is False
    # A request without a model now goes to the new default.
    chat = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
    assert chat.status_code == 200 and chat.json()["model"] == "tiny/gpt2", chat.text


def test_default_model_that_does_not_exist_is_a_404_and_changes_nothing(
    dukat: Dukat, http: httpx.Client
) -> None:
    before = dukat.config_path.read_bytes()
    resp = http.post("/api/models/default", json={"model": "nope/nothing"})
    error = error_of(resp, 404, "model_not_found")
    assert "nope/nothing" in error["message"] and error["param"] == "model"
    assert dukat.config_path.read_bytes() == before


# ---- strict bodies ----------------------------------------------------------------------------

ROUTES = ["/api/models/load", "/api/models/unload", "/api/models/default", "/api/models/pull"]


@pytest.mark.parametrize("route", ROUTES)
def test_management_body_with_an_unknown_field_is_a_400_naming_it(
    dukat: Dukat, http: httpx.Client, route: str
) -> None:
    before = dukat.config_path.read_bytes()
    resp = http.post(route, json={"model": "tiny/gpt2", "quantisation": "4bit"})
    error = error_of(resp, 400, "invalid_request")
    assert error["param"] == "quantisation" and "quantisation" in error["message"]
    assert dukat.config_path.read_bytes() == before


@pytest.mark.parametrize("route", ROUTES)
def test_management_body_without_a_model_is_a_400(http: httpx.Client, route: str) -> None:
    error = error_of(http.post(route, json={}), 400, "invalid_request")
    assert error["param"] == "model"


@pytest.mark.parametrize(("field", "value"), [("quantization", "3bit"), ("device", 0)])
def test_load_with_a_bad_value_is_a_400_naming_the_field(http: httpx.Client, field: str, value: Any) -> None:
    resp = http.post("/api/models/load", json={"model": "tiny/gpt2", field: value})
    error = error_of(resp, 400, "invalid_request")
    assert error["param"] == field


# ---- the OpenAPI document ---------------------------------------------------------------------

MANAGEMENT_ROUTES = [
    ("get", "/api/models"),
    ("get", "/api/ps"),
    ("get", "/api/hosts"),
    ("post", "/api/models/load"),
    ("post", "/api/models/unload"),
    ("post", "/api/models/default"),
    ("post", "/api/models/pull"),
    ("get", "/api/downloads/{job_id}"),
    ("get", "/health"),
]


def bare_objects(schema: dict[str, Any], components: dict[str, Any], where: str, seen: set[str]) -> list[str]:
    """Where `schema` (following $refs) has an object with neither properties nor a value type."""
    if ref := schema.get("$ref"):
        name = ref.rpartition("/")[2]
        if name in seen:
            return []
        seen.add(name)
        return bare_objects(components[name], components, name, seen)
    found = []
    if schema.get("type") == "object" and "properties" not in schema and "additionalProperties" not in schema:
        found.append(where)
    for key, sub in schema.get("properties", {}).items():
        found += bare_objects(sub, components, f"{where}.{key}", seen)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += bare_objects(schema[key], components, f"{where}[]", seen)
    for sub in schema.get("oneOf", []) + schema.get("anyOf", []):
        found += bare_objects(sub, components, where, seen)
    return found


def test_openapi_documents_every_management_response_with_a_real_schema(http: httpx.Client) -> None:
    doc = http.get("/docs/openapi.json").json()
    components = doc["components"]["schemas"]
    for method, path in MANAGEMENT_ROUTES:
        responses = doc["paths"][path][method]["responses"]
        [ok] = [r for status, r in responses.items() if status.startswith("2")]
        schema = ok["content"]["application/json"]["schema"]
        assert bare_objects(schema, components, f"{method} {path}", set()) == [], schema
        target = components[schema["$ref"].rpartition("/")[2]] if "$ref" in schema else schema
        assert target.get("properties") or target.get("items"), (path, target)
