"""`dukat show` and `dukat rm` against a real `dukat serve`: what show prints is what the model's
files say; rm deletes the files (and the config entry) and refuses a loaded or default model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import DEFAULT_MODEL, Dukat
from tests.gateway.test_cli import dukat_cli, ok
from worker.host.model_files import count_parameters

SHOWN = "tiny/tinyllama"  # has a chat template


def test_show_prints_the_models_facts(dukat: Dukat) -> None:
    folder = dukat.models_dir / SHOWN
    out = ok(dukat_cli(dukat, "show", SHOWN))
    facts = dict(
        line.strip().split(None, 1) for line in out.split("  Parameters")[0].splitlines()[1:] if line.strip()
    )
    assert facts["id"] == SHOWN and facts["type"] == "tinyllama" and facts["quantization"] == "none"
    assert facts["architecture"] == json.loads((folder / "config.json").read_text())["architectures"][0]
    assert out.count("  Template") == 1
    first_template_line = (folder / "chat_template.jinja").read_text().strip().splitlines()[0]
    assert f"    {first_template_line}" in out
    assert "temperature" in out.split("  Parameters")[1]  # the config file's default parameters


def test_show_json_is_the_api_object(dukat: Dukat, http: httpx.Client) -> None:
    printed = json.loads(ok(dukat_cli(dukat, "show", SHOWN, "--json")))
    assert printed == http.get(f"/api/models/{SHOWN}").json()
    folder = dukat.models_dir / SHOWN
    assert printed["parameters"] == count_parameters(folder) > 0
    assert printed["chat_template"] == (folder / "chat_template.jinja").read_text()
    assert printed["default_parameters"] == dukat.config()["models"][SHOWN]["default_parameters"]


def test_show_of_a_model_that_is_not_here_says_pull_it(dukat: Dukat) -> None:
    result = dukat_cli(dukat, "show", "nobody/nothing-here")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error (404): The model 'nobody/nothing-here' is not here; pull it first: "
        "dukat pull nobody/nothing-here (or POST /api/models/pull)"
    ]


@pytest.fixture
def placed(dukat: Dukat, tiny_model_dir: Callable[[str], Path]) -> str:
    """A model put in models_dir by hand, for rm to delete."""
    model_id = "rm-test/tiny-gpt2"
    shutil.copytree(tiny_model_dir("gpt2"), dukat.models_dir / model_id, dirs_exist_ok=True)
    return model_id


def test_rm_deletes_the_files_and_the_listing(dukat: Dukat, http: httpx.Client, placed: str) -> None:
    assert placed in {m["id"] for m in http.get("/api/models").json()["data"]}
    out = ok(dukat_cli(dukat, "rm", placed))
    assert out.startswith(f"deleted {placed} (") and "freed" in out
    assert not (dukat.models_dir / "rm-test").exists()
    assert placed not in {m["id"] for m in http.get("/api/models").json()["data"]}
    assert placed not in dukat.config()["models"]
    again = dukat_cli(dukat, "rm", placed)
    assert again.returncode == 1 and again.stderr.startswith("error (404): "), again.stderr


def test_rm_refuses_a_loaded_model(dukat: Dukat, http: httpx.Client, placed: str) -> None:
    assert http.post("/api/models/load", json={"model": placed, "quantization": "none"}).status_code == 200
    try:
        result = dukat_cli(dukat, "rm", placed)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"error (409): model {placed!r} is loaded; unload it first: dukat stop {placed}"
        )
        assert (dukat.models_dir / placed / "config.json").is_file()
    finally:
        http.post("/api/models/unload", json={"model": placed})
    ok(dukat_cli(dukat, "rm", placed))


def test_rm_refuses_the_default_model(dukat: Dukat) -> None:
    result = dukat_cli(dukat, "rm", DEFAULT_MODEL)  # loaded or not: being the default is reason enough
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error (409): model {DEFAULT_MODEL!r} is the default model; set another first: dukat default OTHER"
    )
    assert (dukat.models_dir / DEFAULT_MODEL / "config.json").is_file()
