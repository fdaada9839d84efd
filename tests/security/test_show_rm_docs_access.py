"""Who may use `dukat show`, `dukat rm` and the docs page's assets on a locked-down server."""

from __future__ import annotations

import httpx

from tests.security.conftest import CHAT_MODEL, Locked


def test_show_hides_the_host_path_from_an_inference_key(inference: httpx.Client, admin: httpx.Client) -> None:
    seen, full = inference.get(f"/api/models/{CHAT_MODEL}"), admin.get(f"/api/models/{CHAT_MODEL}")
    assert seen.status_code == 200 and full.status_code == 200, (seen.text, full.text)
    assert seen.json()["path"] is None and full.json()["path"].endswith(CHAT_MODEL)
    assert {k: v for k, v in seen.json().items() if k != "path"} == {
        k: v for k, v in full.json().items() if k != "path"
    }


def test_rm_needs_an_admin_key(locked: Locked, inference: httpx.Client, anonymous: httpx.Client) -> None:
    body = {"model": CHAT_MODEL}
    assert anonymous.post("/api/models/delete", json=body).status_code == 401
    assert inference.post("/api/models/delete", json=body).status_code == 403
    assert (locked.models_dir / CHAT_MODEL / "config.json").is_file()


def test_the_docs_page_and_its_assets_need_no_key(anonymous: httpx.Client) -> None:
    assert anonymous.get("/docs").status_code == 200
    assert anonymous.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
