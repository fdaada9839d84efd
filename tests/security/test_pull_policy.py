"""Pulls through the locked server: admins only, the allowlist, the size cap before the first byte, and
no partial folder listed as a model afterwards."""

from __future__ import annotations

import time

import httpx

from tests.security.conftest import MAX_MODEL_BYTES, Locked
from tests.support.hub_fixtures import BIG_REPO, BIG_WEIGHTS_SIZE, TINY_REPO


def _finished(admin: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = admin.get(f"/api/downloads/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def test_a_pull_over_the_size_cap_fails_before_the_first_byte_naming_both_numbers(
    locked: Locked, admin: httpx.Client
) -> None:
    served = locked.hub.bytes_served_for(BIG_REPO, "model.safetensors")
    started = admin.post("/api/models/pull", json={"model": BIG_REPO})
    assert started.status_code == 202, started.text
    job = _finished(admin, started.json()["id"])
    assert job["status"] == "failed" and job["error_code"] == "model_too_large"
    assert str(MAX_MODEL_BYTES) in job["error"] and str(BIG_WEIGHTS_SIZE)[:4] in job["error"]
    assert locked.hub.bytes_served_for(BIG_REPO, "model.safetensors") == served  # not one byte of weights
    assert BIG_REPO not in {m["id"] for m in admin.get("/api/models").json()["data"]}
    assert not (locked.models_dir / BIG_REPO).exists()


def test_an_allowed_small_pull_is_listed_once_done(admin: httpx.Client) -> None:
    started = admin.post("/api/models/pull", json={"model": TINY_REPO})
    assert started.status_code == 202, started.text
    job = _finished(admin, started.json()["id"])
    assert job["status"] == "done", job
    assert TINY_REPO in {m["id"] for m in admin.get("/api/models").json()["data"]}
