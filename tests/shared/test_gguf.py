"""GGUF files: the header, the one-time conversion and its cache, loading with each quantization,
one-file pulls from the local hub, and the clear errors (shared/gguf.py, worker/host/catalog.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from shared import gguf
from shared.errors import InvalidRequestError, ModelNotFoundError, UnsupportedModelTypeError
from shared.model_types import get_model_type
from tests.support.hub_fixtures import GGUF_FILE, GGUF_REPO
from tests.support.hub_server import HubServer
from tests.support.tiny_gguf import write_tiny_llama_gguf
from worker.host.catalog import list_local_models, local_gguf, read_marker
from worker.host.downloads import download_model
from worker.model.loading import load_model

REPO_ROOT = Path(__file__).resolve().parents[2]
SENTENCE = "the teacher reads a long letter. Hello, world!"


@pytest.fixture(scope="module")
def llama(tiny_model_dir: Callable[[str], Path]) -> Path:
    return tiny_model_dir("llama")


@pytest.fixture
def gguf_path(llama: Path, tmp_path: Path) -> Path:
    return write_tiny_llama_gguf(llama, tmp_path / "tiny" / "tiny-llama.gguf")


def test_header_names_the_architecture_and_its_transformers_type(gguf_path: Path, llama: Path) -> None:
    assert gguf.architecture(gguf_path) == "llama"
    assert gguf.hf_model_type(gguf_path) == "llama"
    gemma3 = write_tiny_llama_gguf(llama, gguf_path.parent / "g3.gguf", arch="gemma3")
    assert gguf.hf_model_type(gemma3) == "gemma3_text"  # llama.cpp's name differs from transformers'


def test_a_file_that_is_not_gguf_is_a_400(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf at all, but long enough to hold a header")
    with pytest.raises(InvalidRequestError, match="not a GGUF"):
        gguf.architecture(fake)


def test_conversion_keeps_the_weights_and_the_tokenizer_exactly(gguf_path: Path, llama: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lines: list[str] = []
    folder = gguf.prepare(gguf_path, progress=lines.append)
    assert folder == gguf.converted_folder(gguf_path.resolve())
    assert folder.name.startswith(".")  # hidden: the catalog lists the GGUF's folder, not the cache
    assert any("converting" in line for line in lines)
    assert any("tensors" in line for line in lines)  # per-tensor progress, as lines
    original, converted = AutoTokenizer.from_pretrained(llama), AutoTokenizer.from_pretrained(folder)
    ids = original(SENTENCE).input_ids
    assert converted(SENTENCE).input_ids == ids
    assert converted.decode(ids, skip_special_tokens=True) == SENTENCE
    a = AutoModelForCausalLM.from_pretrained(llama)
    b = AutoModelForCausalLM.from_pretrained(folder)
    with torch.inference_mode():
        assert torch.equal(a(torch.tensor([ids])).logits, b(torch.tensor([ids])).logits)


def test_second_prepare_reuses_the_cache_and_a_changed_file_is_converted_again(gguf_path: Path) -> None:
    folder = gguf.prepare(gguf_path)
    weights = folder / "model.safetensors"
    first = weights.stat().st_ino
    lines: list[str] = []
    assert gguf.prepare(gguf_path, progress=lines.append) == folder
    assert lines == [] and weights.stat().st_ino == first
    stat = gguf_path.stat()
    os.utime(gguf_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new file in its place
    assert not gguf.is_converted(gguf_path)
    gguf.prepare(gguf_path, progress=lines.append)
    assert any("converting" in line for line in lines)
    assert gguf.is_converted(gguf_path)


def test_two_processes_loading_at_once_convert_once(gguf_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "shared.gguf", str(gguf_path)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum("converting" in out for out in outputs) == 1, outputs
    assert all(out.strip().endswith(gguf.converted_folder(gguf_path).name) for out in outputs)


@pytest.mark.parametrize("quantization", ["none", "8bit", "4bit"])
def test_a_gguf_loads_like_any_model_with_each_quantization(gguf_path: Path, quantization: str) -> None:
    from worker.model.cpu_kernels import BlockLinear

    loaded = load_model(
        gguf_path.parent, model_type=get_model_type("llama"), quantization=quantization, device="cpu"  # type: ignore[arg-type]
    )
    assert loaded.quantization == quantization
    bits = {"8bit": 8, "4bit": 4}.get(quantization)
    found = {m.bits for m in loaded.model.modules() if isinstance(m, BlockLinear)}
    assert (bits in found) == (bits is not None)


def test_an_architecture_transformers_cannot_read_from_gguf_is_a_clear_400(
    llama: Path, tmp_path: Path
) -> None:
    # GPT-NeoX: a family Dukat serves, but transformers reads no GGUF of it.
    path = write_tiny_llama_gguf(llama, tmp_path / "neox" / "neox.gguf", arch="gptneox")
    assert gguf.hf_model_type(path) == "gpt_neox"
    with pytest.raises(UnsupportedModelTypeError, match=r"transformers cannot read neox\.gguf.*gptneox"):
        gguf.prepare(path)
    assert not gguf.converted_folder(path).exists()


def test_the_catalog_lists_a_gguf_folder_and_finds_its_file(gguf_path: Path, llama: Path) -> None:
    models_dir = gguf_path.parent.parent
    [entry] = list_local_models(models_dir)
    assert (entry.id, entry.model_type, entry.error) == ("tiny", "llama", None)
    assert local_gguf("tiny", models_dir) == gguf_path
    assert local_gguf("elsewhere", models_dir) is None
    shutil.copy(gguf_path, gguf_path.parent / "second.gguf")
    with pytest.raises(InvalidRequestError, match=r"several GGUF files.*gguf_file"):
        local_gguf("tiny", models_dir)
    assert local_gguf("tiny", models_dir, "second.gguf") == gguf_path.parent / "second.gguf"
    with pytest.raises(ModelNotFoundError, match=r"gguf_file 'third\.gguf' not found"):
        local_gguf("tiny", models_dir, "third.gguf")


def test_pull_one_file_of_a_gguf_repo(hub_server: HubServer, tmp_path: Path) -> None:
    folder = download_model(GGUF_REPO, tmp_path, endpoint=hub_server.url, file=GGUF_FILE)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [GGUF_FILE]
    marker = read_marker(folder)
    assert marker is not None and marker.complete and marker.files == [GGUF_FILE]
    assert local_gguf(GGUF_REPO, tmp_path) == folder / GGUF_FILE
    with pytest.raises(ModelNotFoundError, match=r"no file 'nope.gguf'.*tiny-llama-copy.gguf"):
        download_model(GGUF_REPO, tmp_path, endpoint=hub_server.url, file="nope.gguf")


def test_pulling_a_gguf_repo_without_file_says_how(hub_server: HubServer, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelTypeError, match=r"holds GGUF files.*--file tiny-llama-"):
        download_model(GGUF_REPO, tmp_path, endpoint=hub_server.url)


def test_a_chat_template_beside_the_file_becomes_the_models_template(gguf_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = gguf.prepare(gguf_path)
    assert AutoTokenizer.from_pretrained(folder).chat_template is None  # the file itself has none
    template = "{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:"
    (gguf_path.parent / "chat_template.jinja").write_text(template)
    gguf.prepare(gguf_path)  # no second conversion: the template is copied in
    rendered = AutoTokenizer.from_pretrained(folder).apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False
    )
    assert rendered == "Q: Hi\nA:"
