"""The catalog of models on disk: downloads and hand-placed `save_pretrained` folders."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import msgspec

from tests.support.hub_fixtures import TINY_REPO
from tests.support.hub_server import HubServer
from worker.host.catalog import MARKER_NAME, DownloadMarker, LocalModel, list_local_models
from worker.host.downloads import download_model

TINY_LLAMA = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"


def _tree_size(folder: Path) -> int:
    return sum(os.stat(p).st_size for p in folder.rglob("*") if p.is_file())


def _by_id(models: list[LocalModel]) -> dict[str, LocalModel]:
    return {m.id: m for m in models}


def test_lists_downloaded_and_hand_placed_models_with_type_and_size(
    hub_server: HubServer, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    download_model(TINY_REPO, tmp_path, endpoint=hub_server.url)
    shutil.copytree(tiny_model_dir("tinyllama"), tmp_path / TINY_LLAMA)
    shutil.copytree(tiny_model_dir("bert"), tmp_path / "my-bert")

    models = list_local_models(tmp_path)
    assert [m.id for m in models] == [TINY_LLAMA, "dukat-test/tiny-gpt2", "my-bert"]
    by_id = _by_id(models)
    downloaded, llama, bert = by_id[TINY_REPO], by_id[TINY_LLAMA], by_id["my-bert"]
    assert (downloaded.model_type, llama.model_type, bert.model_type) == ("gpt", "tinyllama", "bert")
    assert downloaded.downloaded and downloaded.revision == "main" and downloaded.complete
    assert not llama.downloaded and llama.revision is None and llama.complete
    assert llama.path == str(tmp_path / TINY_LLAMA)
    for model in models:
        assert model.size_bytes == _tree_size(Path(model.path)) > 0
        assert model.has_tokenizer and model.error is None
    assert llama.has_chat_template and not downloaded.has_chat_template and not bert.has_chat_template


def test_any_architecture_is_listed_with_its_type_architecture_and_task_a_broken_one_with_its_error(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    weird = tmp_path / "lab" / "weird-thing"
    weird.mkdir(parents=True)
    (weird / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    vision = tmp_path / "google" / "gemma-3-4b-it"
    vision.mkdir(parents=True)
    (vision / "config.json").write_text(json.dumps({"model_type": "gemma3", "vision_config": {}}))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    shutil.copytree(tiny_model_dir("gpt2"), tmp_path / "gpt2")

    by_id = _by_id(list_local_models(tmp_path))
    # Outside the seed's families: a generic type; whether transformers loads it is the worker's answer.
    weird_model = by_id["lab/weird-thing"]
    assert (weird_model.model_type, weird_model.architecture, weird_model.task) == ("causal", "mamba", "chat")
    gemma3 = by_id["google/gemma-3-4b-it"]
    assert (gemma3.model_type, gemma3.architecture, gemma3.task) == ("vision", "gemma3", "vision")
    assert by_id["broken"].model_type is None and "config.json" in (by_id["broken"].error or "")
    assert not by_id["broken"].has_tokenizer
    assert by_id["gpt2"].model_type == "gpt" and by_id["gpt2"].error is None
    assert (by_id["gpt2"].architecture, by_id["gpt2"].task) == ("gpt2", "chat")


def test_subfolders_of_a_model_and_hidden_folders_are_not_models(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model = tmp_path / "sentence-transformers" / "all-MiniLM-L6-v2"
    shutil.copytree(tiny_model_dir("bert"), model)
    (model / "1_Pooling").mkdir()
    (model / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    shutil.copytree(tiny_model_dir("gpt2"), tmp_path / ".partial-gpt2")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")

    assert [m.id for m in list_local_models(tmp_path)] == ["sentence-transformers/all-MiniLM-L6-v2"]


def test_incomplete_download_is_not_listed(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = tmp_path / "org" / "half"
    shutil.copytree(tiny_model_dir("gpt2"), folder)
    marker = DownloadMarker(repo_id="org/half", revision="main", commit="0" * 40, files=[], complete=False)
    (folder / MARKER_NAME).write_bytes(msgspec.json.encode(marker))

    assert list_local_models(tmp_path) == []
    marker = msgspec.structs.replace(marker, complete=True)
    (folder / MARKER_NAME).write_bytes(msgspec.json.encode(marker))
    [model] = list_local_models(tmp_path)
    assert model.id == "org/half" and model.downloaded and model.complete


def test_missing_models_dir_lists_nothing(tmp_path: Path) -> None:
    assert list_local_models(tmp_path / "absent") == []
