"""`dukat show` and `dukat rm` on a host's models_dir: details read from a model's files (never
loading it), deletion that stays inside models_dir."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from shared.errors import InvalidRequestError, ModelNotFoundError
from worker.host import model_files


@pytest.fixture
def models_dir(tmp_path: Path, tiny_model_dir: Callable[[str], Path]) -> Path:
    shutil.copytree(tiny_model_dir("tinyllama"), tmp_path / "org" / "tiny-llama")  # it has a chat template
    return tmp_path


def test_details_come_from_the_files(models_dir: Path) -> None:
    folder = models_dir / "org" / "tiny-llama"
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# A tiny llama\n")
    details = model_files.describe(models_dir, "org/tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    assert details.parameters == model.num_parameters()
    assert details.architecture == "LlamaForCausalLM" and details.model_type == "llama"
    assert details.context_length == config.max_position_embeddings
    assert details.license == "apache-2.0"
    assert details.chat_template == (folder / "chat_template.jinja").read_text()
    assert details.size_bytes == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_license_file_is_named_when_the_card_says_none(models_dir: Path) -> None:
    (models_dir / "org" / "tiny-llama" / "GEMMA_TERMS.html").write_text("<html>terms</html>")
    details = model_files.describe(models_dir, "org/tiny-llama")
    assert details.license == "see GEMMA_TERMS.html in the model's folder"


def test_delete_frees_the_folder_and_its_empty_org(models_dir: Path) -> None:
    size = model_files.describe(models_dir, "org/tiny-llama").size_bytes
    assert model_files.delete(models_dir, "org/tiny-llama") == size > 0
    assert not (models_dir / "org").exists() and models_dir.is_dir()
    with pytest.raises(ModelNotFoundError):
        model_files.describe(models_dir, "org/tiny-llama")


def test_delete_of_a_linked_model_removes_only_the_link(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("shipped") / "model"
    shutil.move(models_dir / "org" / "tiny-llama", elsewhere)
    (models_dir / "org" / "tiny-llama").symlink_to(elsewhere, target_is_directory=True)
    assert model_files.delete(models_dir, "org/tiny-llama") == 0
    assert (elsewhere / "config.json").is_file()


@pytest.mark.parametrize("model_id", ["../outside", "/etc", "org/../org/tiny-llama", ""])
def test_ids_that_leave_models_dir_are_refused(models_dir: Path, model_id: str) -> None:
    with pytest.raises(InvalidRequestError):
        model_files.delete(models_dir, model_id)
    assert (models_dir / "org" / "tiny-llama" / "config.json").is_file()


def test_a_gguf_folder_is_read_from_its_header_then_from_its_converted_folder(
    tmp_path: Path, tiny_model_dir: Callable[[str], Path]
) -> None:
    from shared import gguf
    from tests.support.tiny_gguf import write_tiny_llama_gguf

    llama = tiny_model_dir("llama")
    path = write_tiny_llama_gguf(llama, tmp_path / "org" / "tiny-gguf" / "tiny.gguf")
    (path.parent / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    before = model_files.describe(tmp_path, "org/tiny-gguf")
    assert before.gguf_file == "tiny.gguf" and before.architecture == "GGUF tiny.gguf"
    assert before.parameters is None and before.chat_template == "{{ messages[0]['content'] }}"
    gguf.prepare(path)
    after = model_files.describe(tmp_path, "org/tiny-gguf")
    assert after.architecture == "LlamaForCausalLM"
    assert after.parameters == AutoModelForCausalLM.from_pretrained(llama).num_parameters()


def test_a_template_kept_the_transformers_4_way_is_seen_by_the_listing_and_shown(models_dir: Path) -> None:
    import json

    from worker.host.catalog import list_local_models

    folder = models_dir / "org" / "tiny-llama"
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    assert model_files.describe(models_dir, "org/tiny-llama").chat_template == template
    (listed,) = [m for m in list_local_models(models_dir) if m.id == "org/tiny-llama"]
    assert listed.has_chat_template


def test_an_unreadable_safetensors_header_counts_no_parameters(models_dir: Path) -> None:
    from worker.host.safetensors_header import read_header

    (weights,) = (models_dir / "org" / "tiny-llama").glob("*.safetensors")
    header = read_header(weights)
    assert header and "__metadata__" not in header
    assert all("shape" in tensor for tensor in header.values())
    weights.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")  # claims a terabyte of header
    assert read_header(weights) is None
    assert model_files.count_parameters(weights.parent) is None
