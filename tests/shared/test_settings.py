"""Settings: defaults, DUKAT_* parsing, comma lists, overrides, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import SettingsError
from shared.settings import Settings, load_settings, setting_names

# msgspec.convert does not build a Path from a str, so these settings cannot be set yet (reported).


def test_defaults_without_environment() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.models_dir == Path("models")
    assert settings.config_path == Path("models/config.json")
    assert settings.port == 8000
    assert settings.host == "127.0.0.1"
    assert settings.default_quantization == "4bit"
    assert settings.devices == ("auto",)
    assert settings.worker_hosts == ()
    assert settings.api_keys == ()
    assert settings.auto_load is True
    assert settings.log_level == "info"


def test_unrelated_environment_is_ignored() -> None:
    assert load_settings({"PORT": "1", "DUKAT_": "x", "dukat_port": "2"}) == Settings()


def test_numbers_and_booleans_are_parsed_from_strings() -> None:
    settings = load_settings(
        {
            "DUKAT_PORT": "8080",
            "DUKAT_WORKER_THREADS": "2",
            "DUKAT_STOP_TIMEOUT_S": "1.5",
            "DUKAT_AUTO_LOAD": "false",
            "DUKAT_LOG_LEVEL": "debug",
            "DUKAT_DEFAULT_QUANTIZATION": "none",
        }
    )
    assert settings.port == 8080
    assert settings.worker_threads == 2
    assert settings.stop_timeout_s == 1.5
    assert settings.auto_load is False
    assert settings.log_level == "debug"
    assert settings.default_quantization == "none"


def test_comma_lists_are_split_trimmed_and_empty_parts_dropped() -> None:
    settings = load_settings(
        {
            "DUKAT_WORKER_HOSTS": "http://a:8100, http://b:8100,,",
            "DUKAT_API_KEYS": "k1,k2",
            "DUKAT_DEVICES": "cuda:0, cuda:1",
        }
    )
    assert settings.worker_hosts == ("http://a:8100", "http://b:8100")
    assert settings.api_keys == ("k1", "k2")
    assert settings.devices == ("cuda:0", "cuda:1")
    assert load_settings({"DUKAT_API_KEYS": ""}).api_keys == ()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DUKAT_PORT": "eighty"}, "DUKAT_PORT"),
        ({"DUKAT_PORT": "70000"}, "DUKAT_PORT"),
        ({"DUKAT_HOST_PORT": "-1"}, "DUKAT_HOST_PORT"),
        ({"DUKAT_AUTO_LOAD": "perhaps"}, "DUKAT_AUTO_LOAD"),
        ({"DUKAT_DEFAULT_QUANTIZATION": "3bit"}, "DUKAT_DEFAULT_QUANTIZATION"),
        ({"DUKAT_LOG_LEVEL": "trace"}, "DUKAT_LOG_LEVEL"),
        ({"DUKAT_LOAD_TIMEOUT_S": "0"}, "DUKAT_LOAD_TIMEOUT_S"),
        ({"DUKAT_MAX_BATCH": "2.5"}, "DUKAT_MAX_BATCH"),
        ({"DUKAT_MAX_QUEUE": "0"}, "DUKAT_MAX_QUEUE"),
    ],
)
def test_bad_value_is_a_settings_error_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert info.value.message.startswith(f"invalid {variable}:")
    assert info.value.status == 500


def test_overrides_win_over_environment_and_none_means_unset() -> None:
    env = {"DUKAT_PORT": "1234", "DUKAT_HOST": "0.0.0.0"}
    settings = load_settings(env, {"port": 9000, "host": None, "worker_hosts": "a, b"})
    assert settings.port == 9000
    assert settings.host == "0.0.0.0"
    assert settings.worker_hosts == ("a", "b")


def test_unknown_override_is_an_error_naming_it() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({}, {"prot": 1})
    assert info.value.param == "prot"


def test_bad_override_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="invalid DUKAT_PORT"):
        load_settings({}, {"port": "x"})


def test_setting_names_cover_every_field() -> None:
    names = setting_names()
    assert names == [f"DUKAT_{f.upper()}" for f in Settings.__struct_fields__]
    assert {"DUKAT_PORT", "DUKAT_MODELS_DIR", "DUKAT_CONFIG_PATH", "DUKAT_API_KEYS"} <= set(names)


def test_models_dir_implies_config_path() -> None:
    settings = load_settings({"DUKAT_MODELS_DIR": "/srv/models"})
    assert settings.models_dir == Path("/srv/models")
    assert settings.config_path == Path("/srv/models/config.json")


def test_explicit_config_path_wins_over_models_dir() -> None:
    settings = load_settings({"DUKAT_MODELS_DIR": "/srv/models", "DUKAT_CONFIG_PATH": "/etc/dukat.json"})
    assert settings.config_path == Path("/etc/dukat.json")


def test_models_dir_override_from_cli_implies_config_path() -> None:
    settings = load_settings({}, {"models_dir": "/data"})
    assert settings.config_path == Path("/data/config.json")
