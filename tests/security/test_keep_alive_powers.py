"""Shared state is the operator's: an inference key's `keep_alive` is clamped to the range an admin
set (DUKAT_KEEP_ALIVE_FLOOR 1m, DUKAT_KEEP_ALIVE_CEILING 1h by default): it can neither pin a shared
model forever (-1) nor unload it under other users (0); an admin key can."""

from __future__ import annotations

import httpx
import pytest

from gateway.limits import keep_alive_for
from shared.model_config import ModelEntry
from shared.settings import Settings
from tests.security.conftest import ADMIN_KEY, CHAT_MODEL, INFERENCE_KEY, LONG_MODEL, Locked
from tests.support.checks import wait_for


@pytest.mark.parametrize(
    ("sent", "kept"), [(-1, 3600.0), ("-1", 3600.0), (0, 60.0), ("5s", 60.0), ("10m", 600.0), ("3h", 3600.0)]
)
def test_an_inference_keys_keep_alive_is_clamped_to_the_admins_range(sent: str | int, kept: float) -> None:
    assert keep_alive_for(Settings(), sent, admin=False) == kept
    assert keep_alive_for(Settings(), sent, admin=True) == sent  # an admin's is as sent
    assert keep_alive_for(Settings(), None, admin=False) is None


def test_a_models_config_entry_sets_its_own_range_for_inference_keys() -> None:
    may_pin = ModelEntry(keep_alive_ceiling=-1)
    assert keep_alive_for(Settings(), -1, admin=False, entry=may_pin) == -1
    assert keep_alive_for(Settings(), "3h", admin=False, entry=may_pin) == 3 * 3600.0
    assert keep_alive_for(Settings(), 0, admin=False, entry=may_pin) == 60.0  # the setting's floor
    may_unload = ModelEntry(keep_alive_floor=0, keep_alive_ceiling="10m")
    assert keep_alive_for(Settings(), 0, admin=False, entry=may_unload) == 0
    assert keep_alive_for(Settings(), "1h", admin=False, entry=may_unload) == 600.0
    assert keep_alive_for(Settings(keep_alive_ceiling="-1"), "3h", admin=False) == 3 * 3600.0  # no ceiling


def keep_alive_of_worker(admin: httpx.Client, model: str = CHAT_MODEL) -> float | None:
    hosts = admin.get("/api/hosts").json()
    return next(w for h in hosts for w in h["models"] if w["model_id"] == model)["keep_alive_s"]


def chat(client: httpx.Client, keep_alive: str | int, model: str = CHAT_MODEL) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
        "keep_alive": keep_alive,
    }
    assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_an_inference_key_can_neither_pin_nor_unload_a_shared_model(locked: Locked) -> None:
    with locked.client(INFERENCE_KEY) as inference, locked.client(ADMIN_KEY) as admin:
        chat(inference, 0)  # would unload the model under everyone else
        wait_for(lambda: keep_alive_of_worker(admin) == 60.0, 30, "keep_alive 0 held at the floor")
        assert keep_alive_of_worker(admin) == 60.0  # still loaded
        chat(inference, -1)  # would pin it forever
        wait_for(lambda: keep_alive_of_worker(admin) == 3600.0, 30, "keep_alive -1 held at the ceiling")
        chat(admin, "2h")  # an admin's is as sent
        wait_for(lambda: keep_alive_of_worker(admin) == 7200.0, 30, "an admin's keep_alive as sent")
        chat(admin, "30m")  # back to the default for the other tests of the session


def test_an_inference_key_may_pin_a_model_whose_entry_allows_it(locked: Locked) -> None:
    with locked.client(INFERENCE_KEY) as inference, locked.client(ADMIN_KEY) as admin:
        chat(inference, -1, LONG_MODEL)  # its entry's keep_alive_ceiling is -1
        wait_for(lambda: keep_alive_of_worker(admin, LONG_MODEL) == -1, 30, "pinned by an inference key")
        chat(admin, "30m", LONG_MODEL)
