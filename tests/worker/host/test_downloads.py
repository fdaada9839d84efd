"""Real downloads (huggingface_hub) from the local hub of `tests/support/hub_server.py`."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.errors import (
    GatedModelError,
    HubUnreachableError,
    InsufficientStorageError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelTooLargeError,
    UnsupportedModelTypeError,
)
from tests.support.hub_fixtures import (
    BIG_REPO,
    BIG_WEIGHTS_SIZE,
    GATED_REPO,
    HUB_TOKEN,
    MESSY_EXTRAS,
    MESSY_REPO,
    NO_WEIGHTS_REPO,
    TINY_REPO,
)
from tests.support.hub_server import HubServer, RepoSource
from worker.host.catalog import MARKER_NAME, list_local_models, read_marker
from worker.host.download_progress import DownloadProgress
from worker.host.downloads import check_room, download_model, resolve_model_path, select_files

REPO_ROOT = Path(__file__).resolve().parents[3]
CHUNK = 10 * 1024 * 1024  # huggingface_hub's read chunk: resumes restart from a multiple of it


def _repo_folder(hub_repos: dict[str, RepoSource], repo_id: str, revision: str = "main") -> Path:
    source = hub_repos[repo_id]
    return source if isinstance(source, Path) else Path(source[revision])


def _files(folder: Path) -> dict[str, bytes]:
    """The model files of a folder, without huggingface_hub's `.cache/` and Dukat's marker."""
    files = {p.relative_to(folder): p for p in folder.rglob("*") if p.is_file() and p.name != MARKER_NAME}
    return {rel.as_posix(): p.read_bytes() for rel, p in files.items() if ".cache" not in rel.parts}


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_download_fetches_the_model_and_reports_progress(
    hub_server: HubServer, hub_repos: dict[str, RepoSource], tmp_path: Path
) -> None:
    seen: list[DownloadProgress] = []
    path = download_model(TINY_REPO, tmp_path, endpoint=hub_server.url, progress=seen.append)

    assert path == tmp_path / TINY_REPO
    files = _files(path)
    assert files == _files(_repo_folder(hub_repos, TINY_REPO))
    total = sum(len(b) for b in files.values())
    counts = [p.downloaded_bytes for p in seen]
    assert counts == sorted(counts) and counts[-1] == total
    assert all(p.total_bytes == total and p.files_total == len(files) for p in seen)
    assert seen[-1].done and seen[-1].files_done == len(files) and not any(p.done for p in seen[:-1])
    assert {p.current_file for p in seen} >= {"config.json", "model.safetensors"}
    marker = read_marker(path)
    assert marker is not None and marker.complete and marker.commit == hub_server.commit(TINY_REPO)
    assert resolve_model_path(TINY_REPO, tmp_path) == path


def test_progress_bar_is_drawn(
    hub_server: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    download_model(TINY_REPO, tmp_path, endpoint=hub_server.url, show_progress_bar=True)
    err = capsys.readouterr().err
    assert TINY_REPO in err and "100%" in err


def test_second_download_of_a_complete_model_fetches_no_file(hub_server: HubServer, tmp_path: Path) -> None:
    download_model(TINY_REPO, tmp_path, endpoint=hub_server.url)
    hub_server.reset_stats()
    seen: list[DownloadProgress] = []
    download_model(TINY_REPO, tmp_path, endpoint=hub_server.url, progress=seen.append)
    assert hub_server.requests(contains="/resolve/") == []
    assert hub_server.bytes_served == 0
    assert seen[-1].done and seen[-1].downloaded_bytes == seen[-1].total_bytes > 0


def test_only_files_needed_for_inference_are_downloaded(hub_server: HubServer, tmp_path: Path) -> None:
    path = download_model(MESSY_REPO, tmp_path, endpoint=hub_server.url)
    assert sorted(_files(path)) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json",
    ]
    fetched = {p for _, p, _ in hub_server.requests("GET", "/resolve/")}
    assert not any(extra in p for extra in MESSY_EXTRAS for p in fetched)


def test_select_files_prefers_safetensors_and_keeps_tokenizer_and_templates() -> None:
    names = [
        "README.md", ".gitattributes", "config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "consolidated.safetensors",
        "pytorch_model.bin", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja",
        "additional_chat_templates/tool_use.jinja", "original/consolidated.00.pth", "onnx/model.onnx",
        "flax_model.msgpack", "tf_model.h5", "1_Pooling/config.json", "modules.json",
    ]
    assert select_files(names) == [
        "config.json", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja",
        "additional_chat_templates/tool_use.jinja", "1_Pooling/config.json", "modules.json",
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    only_bin = ["config.json", "pytorch_model.bin", "tf_model.h5"]
    assert select_files(only_bin) == ["config.json", "pytorch_model.bin"]
    assert select_files(["config.json", "weights.safetensors"]) == ["config.json", "weights.safetensors"]


def test_named_revision_replaces_the_files_of_the_previous_one(
    hub_server: HubServer, hub_repos: dict[str, RepoSource], tmp_path: Path
) -> None:
    path = download_model(TINY_REPO, tmp_path, revision="v2", endpoint=hub_server.url)
    assert _files(path) == _files(_repo_folder(hub_repos, TINY_REPO, "v2"))
    marker = read_marker(path)
    assert marker is not None and marker.revision == "v2"
    assert marker.commit == hub_server.commit(TINY_REPO, "v2")
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"
    assert (path / "chat_template.jinja").is_file()

    download_model(TINY_REPO, tmp_path, endpoint=hub_server.url)  # back to main: a gpt2 without a template
    assert _files(path) == _files(_repo_folder(hub_repos, TINY_REPO, "main"))


def test_dropped_connection_resumes_with_a_range_request(
    hub_server: HubServer, hub_repos: dict[str, RepoSource], tmp_path: Path
) -> None:
    cut = CHUNK + 5 * 1024 * 1024
    hub_server.drop_after(BIG_REPO, "model.safetensors", cut)
    path = download_model(BIG_REPO, tmp_path, endpoint=hub_server.url)

    assert _files(path) == _files(_repo_folder(hub_repos, BIG_REPO))
    ranges = [h.get("range") for _, _, h in hub_server.requests("GET", "model.safetensors")]
    assert ranges == [None, f"bytes={CHUNK}-"]
    # The first answer was cut at `cut`; the resume asked only for what was not yet on disk.
    assert hub_server.bytes_served_for(BIG_REPO, "model.safetensors") == cut + BIG_WEIGHTS_SIZE - CHUNK


@pytest.mark.slow  # huggingface_hub sleeps 1 s between its 5 retries before giving up
def test_interrupted_download_is_completed_by_a_second_call(
    hub_server: HubServer, hub_repos: dict[str, RepoSource], tmp_path: Path
) -> None:
    hub_server.drop_after(BIG_REPO, "model.safetensors", CHUNK + 1024, times=None)
    with pytest.raises(HubUnreachableError, match=re.escape(hub_server.url)):
        download_model(BIG_REPO, tmp_path, endpoint=hub_server.url)
    assert resolve_model_path(BIG_REPO, tmp_path) is None
    assert list_local_models(tmp_path) == []  # a cut download is not a model

    hub_server.clear_drops()
    hub_server.reset_stats()
    path = download_model(BIG_REPO, tmp_path, endpoint=hub_server.url)
    assert _files(path) == _files(_repo_folder(hub_repos, BIG_REPO))
    # config.json was complete: not asked again. The cut file starts over (huggingface_hub 2.4
    # deletes partial files when a call fails).
    assert [p for _, p, _ in hub_server.requests(contains="/resolve/")] == [
        f"/{BIG_REPO}/resolve/{hub_server.commit(BIG_REPO)}/model.safetensors"
    ] * 2  # HEAD + GET
    assert hub_server.bytes_served == BIG_WEIGHTS_SIZE
    assert resolve_model_path(BIG_REPO, tmp_path) == path


def test_unknown_model_is_model_not_found(hub_server: HubServer, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="dukat-test/nope") as info:
        download_model("dukat-test/nope", tmp_path, endpoint=hub_server.url)
    assert info.value.status == 404
    assert not (tmp_path / "dukat-test" / "nope").exists()


def test_unknown_revision_is_model_not_found(hub_server: HubServer, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no-such-branch") as info:
        download_model(TINY_REPO, tmp_path, revision="no-such-branch", endpoint=hub_server.url)
    assert info.value.param == "revision"


def test_gated_model_without_token_asks_for_hf_token(
    hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(GatedModelError, match="HF_TOKEN") as info:
        download_model(GATED_REPO, tmp_path, endpoint=hub_server.url)
    assert info.value.status == 403
    with pytest.raises(GatedModelError):
        download_model(GATED_REPO, tmp_path, endpoint=hub_server.url, token="hf_wrong")
    assert resolve_model_path(GATED_REPO, tmp_path) is None


def test_gated_model_downloads_with_a_token(
    hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert download_model(GATED_REPO, tmp_path / "a", endpoint=hub_server.url, token=HUB_TOKEN).is_dir()
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    assert download_model(GATED_REPO, tmp_path / "b", endpoint=hub_server.url).is_dir()


def test_unreachable_hub_fails_fast_naming_the_endpoint(tmp_path: Path) -> None:
    url = _closed_port_url()
    started = time.monotonic()
    with pytest.raises(HubUnreachableError, match=re.escape(url)) as info:
        download_model(TINY_REPO, tmp_path, endpoint=url)
    assert time.monotonic() - started < 5
    assert info.value.status == 502


def test_repo_without_transformers_weights_is_unsupported(hub_server: HubServer, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelTypeError, match=r"model\.gguf"):
        download_model(NO_WEIGHTS_REPO, tmp_path, endpoint=hub_server.url)


def test_invalid_model_id_is_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="neither a local model folder"):
        download_model("../outside", tmp_path, endpoint=_closed_port_url())


def test_local_model_folder_is_used_as_is(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    folder = tiny_model_dir("gpt2")
    # A closed endpoint proves the hub is not asked.
    assert download_model(str(folder), tmp_path, endpoint=_closed_port_url()) == folder.resolve()
    assert resolve_model_path(str(folder), tmp_path) == folder.resolve()


def test_resolve_model_path_finds_hand_placed_folders_only_inside_models_dir(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir("tinyllama"), models / "TinyLlama" / "TinyLlama-1.1B-Chat-v1.0")
    shutil.copytree(tiny_model_dir("gpt2"), models / "gpt2")
    tiny_llama = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert resolve_model_path(tiny_llama, models) == models / tiny_llama
    assert resolve_model_path("gpt2", models) == models / "gpt2"
    assert resolve_model_path("TinyLlama", models) is None  # a folder, but not a model
    assert resolve_model_path("org/absent", models) is None
    shutil.copytree(tiny_model_dir("gpt2"), tmp_path / "outside")
    assert resolve_model_path("../outside", models) is None


def test_download_in_a_subprocess_uses_hf_endpoint(hub_env: dict[str, str], tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from worker.host.downloads import download_model; "
        f"print(download_model({TINY_REPO!r}, Path(sys.argv[1])))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=os.environ | hub_env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / TINY_REPO)


@pytest.mark.slow  # imports torch and transformers in a fresh process
def test_transformers_from_pretrained_works_against_the_hub(
    hub_server: HubServer, hub_env: dict[str, str]
) -> None:
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"model = AutoModelForCausalLM.from_pretrained({TINY_REPO!r})\n"
        f"tokenizer = AutoTokenizer.from_pretrained({TINY_REPO!r})\n"
        "ids = tokenizer('Hello there', return_tensors='pt').input_ids\n"
        "out = model.generate(ids, max_new_tokens=3, do_sample=False)\n"
        "print(type(model).__name__, out.shape[1] - ids.shape[1])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=os.environ | hub_env | {"OMP_NUM_THREADS": "1"}, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["GPT2LMHeadModel", "3"]
    # It probed optional files (answered 404 EntryNotFound) and listed the template folder.
    assert hub_server.requests("HEAD", "/chat_template.jinja")
    assert hub_server.requests("GET", "/tree/main/additional_chat_templates")


def test_a_model_over_the_size_cap_is_refused_before_the_first_byte(
    hub_server: HubServer, tmp_path: Path
) -> None:
    with pytest.raises(ModelTooLargeError, match=r"more than the limit of 1048576 bytes") as info:
        download_model(BIG_REPO, tmp_path, endpoint=hub_server.url, max_bytes=2**20)
    assert info.value.status == 400 and str(BIG_WEIGHTS_SIZE)[:4] in info.value.message
    assert hub_server.requests(contains="/resolve/") == []  # no file asked for
    assert not (tmp_path / BIG_REPO).exists() and list_local_models(tmp_path) == []
    assert download_model(TINY_REPO, tmp_path, endpoint=hub_server.url, max_bytes=2**20).is_dir()


def test_a_pull_that_does_not_fit_the_free_space_names_both_numbers() -> None:
    with pytest.raises(InsufficientStorageError, match="needs 900 more bytes, but only 500 bytes") as info:
        check_room("org/m", total=1000, present=100, free=500, max_bytes=None)
    assert info.value.status == 507
    check_room("org/m", total=1000, present=600, free=500, max_bytes=1000)  # the rest fits
