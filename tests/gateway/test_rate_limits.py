"""Per-key windows and key naming: pure functions and one key's counters, time given explicitly."""

from __future__ import annotations

import pytest

from gateway.keys import KeyRing, read_keys_file
from gateway.rate_limits import KeyLimits, KeyUsage, duration
from shared.errors import RateLimitExceededError, SettingsError
from shared.settings import load_settings


def test_requests_window_slides_and_retry_after_is_the_oldest_expiry() -> None:
    usage = KeyUsage("k", "inference", KeyLimits(requests_per_minute=2))
    usage.admit(now=100.0)
    usage.release()
    usage.admit(now=110.0)
    usage.release()
    with pytest.raises(RateLimitExceededError) as caught:
        usage.admit(now=130.0)
    assert caught.value.retry_after == 30  # the request at 100 leaves the window at 160
    usage.admit(now=160.5)  # it has
    assert usage.requests == 3 and usage.rate_limited["requests"] == 1


def test_tokens_window_waits_until_enough_tokens_expire() -> None:
    usage = KeyUsage("k", "inference", KeyLimits(tokens_per_minute=100))
    usage.charge(60, 0, now=0.0)
    usage.charge(30, 20, now=10.0)
    with pytest.raises(RateLimitExceededError) as caught:
        usage.admit(now=20.0)
    assert caught.value.retry_after == 40  # at 60 s the first 60 tokens expire: 50 left, under 100
    headers = dict(usage.headers(now=20.0))
    assert headers[b"x-ratelimit-remaining-tokens"] == b"0"
    usage.admit(now=60.0)
    assert usage.prompt_tokens == 90 and usage.completion_tokens == 20


def test_concurrency_counts_places_until_released() -> None:
    usage = KeyUsage("k", "inference", KeyLimits(max_concurrent=2))
    usage.admit(now=0.0)
    usage.admit(now=0.0)
    with pytest.raises(RateLimitExceededError):
        usage.admit(now=0.0)
    usage.release()
    usage.admit(now=0.0)
    assert usage.in_flight == 2 and usage.rate_limited["concurrent"] == 1


def test_reset_durations_read_like_openais() -> None:
    assert [duration(s) for s in (0.02, 1.0, 58.2, 60.0, 75.0)] == ["20ms", "1s", "59s", "1m0s", "1m15s"]


def test_keys_are_named_from_env_and_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('{"keys": [{"name": "bulk", "key": "sk-b", "role": "admin", "max_concurrent": 3}]}')
    env = {"DUKAT_API_KEYS": "team-a:sk-a,plain-secret", "DUKAT_KEYS_FILE": str(keys_file)}
    ring = KeyRing.from_settings(load_settings(env))
    names = [(k.name, k.role) for k in ring.keys]
    assert names[0] == ("team-a", "inference") and names[2] == ("bulk", "admin")
    assert names[1][0].startswith("key-") and "plain" not in names[1][0]
    found = ring.match("sk-a")
    assert found is not None and found.name == "team-a"
    assert ring.match("sk-") is None and ring.match(None) is None
    assert ring.keys[2].usage.limits.max_concurrent == 3


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"keys": [{"name": "a b", "key": "x"}]}', "name"),
        ('{"keys": [{"name": "a", "key": "x", "rpm": 3}]}', "rpm"),
        ('{"keys": [{"name": "a", "key": "x", "max_concurrent": 0}]}', "max_concurrent"),
        ("not json", "DUKAT_KEYS_FILE"),
    ],
)
def test_a_bad_keys_file_names_the_setting_and_field(tmp_path, content: str, words: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(SettingsError) as caught:
        read_keys_file(path)
    assert words in caught.value.message and caught.value.param == "DUKAT_KEYS_FILE"


def test_duplicate_names_or_secrets_stop_start_up() -> None:
    with pytest.raises(SettingsError, match="given twice"):
        KeyRing.from_settings(load_settings({"DUKAT_API_KEYS": "a:sk-1,a:sk-2"}))
    with pytest.raises(SettingsError, match="secret of another"):
        KeyRing.from_settings(load_settings({"DUKAT_API_KEYS": "a:sk-1", "DUKAT_ADMIN_KEYS": "b:sk-1"}))
