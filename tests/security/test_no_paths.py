"""No server path reaches an inference key: a model folder that can't load is named by its id in
the error and in /api/ps (an admin still sees where it is)."""

from __future__ import annotations

import shutil

from tests.security.conftest import ADMIN_KEY, INFERENCE_KEY, Locked

BROKEN = "broken/noweights"


def test_a_load_failure_names_the_model_not_its_path_to_an_inference_key(locked: Locked) -> None:
    folder = locked.models_dir / BROKEN
    folder.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        source = locked.models_dir / "tiny" / "tinyllama" / name
        if source.exists():
            shutil.copy(source, folder / name)
    server_path = str(locked.models_dir.resolve())
    body = {"model": BROKEN, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    try:
        with locked.client(INFERENCE_KEY) as inference, locked.client(ADMIN_KEY) as admin:
            failed = inference.post("/v1/chat/completions", json=body)
            assert failed.status_code >= 400, failed.text
            assert server_path not in failed.text and BROKEN in failed.json()["error"]["message"], failed.text
            assert server_path not in inference.get("/api/ps").text
            again = admin.post("/v1/chat/completions", json=body)
            assert server_path in again.json()["error"]["message"]  # an admin may see paths
    finally:
        with locked.client(ADMIN_KEY) as admin:
            admin.post("/api/models/unload", json={"model": BROKEN})
        shutil.rmtree(folder.parent)
