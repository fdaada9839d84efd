"""GGUF models through a real `dukat serve`: `dukat pull --file` from the local hub, a load that
converts the file in the model worker, chat through the OpenAI SDK, and `gguf_file` choosing one
of several files (without it: a clear 400)."""

from __future__ import annotations

import shutil

import httpx
import openai

from shared.model_config import ConfigStore, ModelEntry
from tests.gateway.conftest import Dukat
from tests.gateway.test_cli import dukat_cli, ok
from tests.support.hub_fixtures import GGUF_FILE, GGUF_REPO


def test_pull_one_gguf_file_then_load_and_chat(dukat: Dukat, http: httpx.Client) -> None:
    out = ok(dukat_cli(dukat, "pull", GGUF_REPO, "--file", GGUF_FILE))
    assert f"pulled {GGUF_REPO}: 1 files" in out
    folder = dukat.models_dir / GGUF_REPO
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".gguf") == [GGUF_FILE]
    listed = {m["id"]: m for m in http.get("/api/models").json()["data"]}
    assert listed[GGUF_REPO]["model_type"] == "llama"
    try:
        resp = http.post("/api/models/load", json={"model": GGUF_REPO, "quantization": "none"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["model_type"] == "llama"
        assert (folder / f".{GGUF_FILE}.converted" / "config.json").is_file()  # the cache, beside it
        client = openai.OpenAI(base_url=dukat.base_url, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model=GGUF_REPO, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
        )
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        shown = http.get(f"/api/models/{GGUF_REPO}").json()  # `dukat show`: the converted folder's figures
        assert shown["model_type"] == "llama" and shown["parameters"] > 0, shown
    finally:
        http.post("/api/models/unload", json={"model": GGUF_REPO})


def test_gguf_file_in_the_config_picks_one_of_several(dukat: Dukat, http: httpx.Client) -> None:
    source = dukat.models_dir / GGUF_REPO / GGUF_FILE
    if not source.exists():
        ok(dukat_cli(dukat, "pull", GGUF_REPO, "--file", GGUF_FILE))
    model_id = "tiny/two-ggufs"
    folder = dukat.models_dir / model_id
    folder.mkdir(parents=True)
    shutil.copy(source, folder / "a.gguf")
    shutil.copy(source, folder / "b.gguf")
    store = ConfigStore(dukat.config_path)
    try:
        resp = http.post("/api/models/load", json={"model": model_id, "quantization": "none"})
        assert resp.status_code == 400, resp.text
        assert "several GGUF files (a.gguf, b.gguf)" in resp.json()["error"]["message"]
        entry = ModelEntry(description="two files", quantization="none", gguf_file="b.gguf")
        store.set_entry(model_id, entry)
        assert '"gguf_file": "b.gguf"' in dukat.config_path.read_text()
        resp = http.post("/api/models/load", json={"model": model_id})
        assert resp.status_code == 200, resp.text
        assert (folder / ".b.gguf.converted").is_dir() and not (folder / ".a.gguf.converted").exists()
    finally:
        http.post("/api/models/unload", json={"model": model_id})
        store.remove_entry(model_id)
