"""Pure functions of room: keep-alive durations, the memory estimate from files, eviction plans."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.capacity import evictable, eviction_plan, expired
from shared.host_api import DeviceState, HostState, WorkerState
from shared.keep_alive import parse_keep_alive
from worker.host.memory_estimate import estimate_memory

MIB = 1 << 20


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("90s", 90.0), ("500ms", 0.5), ("90", 90.0), (0, 0.0), (2.5, 2.5),
     ("0", 0.0), (-1, -1.0), ("-1", -1.0), ("-5m", -1.0), ("  10S ", 10.0)],
)  # fmt: skip
def test_keep_alive_takes_ollamas_forms(given: str | float, seconds: float) -> None:
    assert parse_keep_alive(given) == seconds


@pytest.mark.parametrize("given", ["", "5 minutes", "m", "1d", "nan", True, float("inf")])
def test_keep_alive_refuses_what_it_cannot_read(given: str | float) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        parse_keep_alive(given)


def test_estimate_counts_parameters_from_the_safetensors_header(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    none, four, eight = (estimate_memory(path, q, "cpu", kv_tokens=1024) for q in ("none", "4bit", "8bit"))  # type: ignore[arg-type]
    assert none.parameters == four.parameters == params
    assert none.weights_bytes == 4 * params  # fp32 on CPU
    assert four.weights_bytes < eight.weights_bytes < none.weights_bytes
    gpu = estimate_memory(path, "none", "cuda:0", kv_tokens=1024)
    assert gpu.weights_bytes == 2 * params  # bf16/fp16 on GPUs
    config = json.loads((path / "config.json").read_text())
    kv_width = config["num_key_value_heads"] * config["head_dim"]
    assert none.kv_cache_bytes == config["num_hidden_layers"] * 2 * kv_width * 4 * 1024
    assert none.total_bytes == none.weights_bytes + none.kv_cache_bytes + none.overhead_bytes


def test_estimate_grows_with_the_kv_budget_and_falls_back_to_file_sizes(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    path = tiny_model_dir("llama")
    small, large = (estimate_memory(path, "none", "cpu", kv_tokens=t) for t in (512, 8192))
    assert large.total_bytes - small.total_bytes == large.kv_cache_bytes - small.kv_cache_bytes > 0
    binary = tmp_path / "bin-model"
    shutil.copytree(path, binary)
    (binary / "model.safetensors").rename(binary / "pytorch_model.bin")  # no header: the size stands in
    fallback = estimate_memory(binary, "none", "cpu", kv_tokens=512)
    assert fallback.parameters == (binary / "pytorch_model.bin").stat().st_size // 4  # stored as fp32
    assert fallback.weights_bytes >= small.weights_bytes  # errs high, never low


def worker(
    model_id: str, *, used: float, device: str = "cpu", size: int = 100 * MIB, **kw: object
) -> WorkerState:
    return WorkerState(model_id=model_id, status="loaded", device=device, quantization="none",
                       estimated_bytes=size, last_used_at=used, **kw)  # type: ignore[arg-type]  # fmt: skip


def host(free: int, workers: list[WorkerState], *, max_models: int = 0) -> HostState:
    devices = [DeviceState(name="cpu", total_memory=1000 * MIB, free_memory=free)]
    return HostState(
        host_id="h", url="http://h", devices=devices, models=workers, max_loaded_models=max_models
    )


def test_eviction_takes_the_least_recently_used_idle_unpinned_models_first() -> None:
    models = [
        worker("old-pinned", used=1, keep_alive_s=-1),
        worker("old-busy", used=2, in_flight=1),
        worker("older", used=3),
        worker("newer", used=4),
        WorkerState(model_id="loading", status="loading", device="cpu", quantization="none"),
    ]
    h = host(50 * MIB, models)
    assert [w.model_id for w in evictable(h.models)] == ["older", "newer"]
    assert [w.model_id for w in eviction_plan(h, h.devices[0], 120 * MIB) or []] == ["older"]
    assert [w.model_id for w in eviction_plan(h, h.devices[0], 220 * MIB) or []] == ["older", "newer"]
    assert eviction_plan(h, h.devices[0], 300 * MIB) is None  # the pinned and the busy one stay
    assert eviction_plan(h, h.devices[0], 50 * MIB) == []


def test_the_loaded_model_cap_evicts_one_even_when_memory_is_enough() -> None:
    h = host(900 * MIB, [worker("a", used=2), worker("b", used=1)], max_models=2)
    assert [w.model_id for w in eviction_plan(h, h.devices[0], 10 * MIB) or []] == ["b"]
    busy = host(900 * MIB, [worker("a", used=2, in_flight=1), worker("b", used=1, in_flight=2)], max_models=2)
    assert eviction_plan(busy, busy.devices[0], 10 * MIB) is None


def test_keep_alive_expires_only_idle_models_past_their_time() -> None:
    models = [
        worker("past", used=0, keep_alive_s=5.0, idle_s=6.0),
        worker("within", used=0, keep_alive_s=5.0, idle_s=4.0),
        worker("zero", used=0, keep_alive_s=0.0, idle_s=0.1),
        worker("forever", used=0, keep_alive_s=-1.0, idle_s=1e9),
        worker("busy", used=0, keep_alive_s=0.0, idle_s=0.0, in_flight=1),
    ]
    assert [w.model_id for w in expired(models)] == ["past", "zero"]


def test_a_gguf_file_is_estimated_from_its_tensor_list(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    from tests.support.tiny_gguf import write_tiny_llama_gguf

    source = tiny_model_dir("llama")
    gguf = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(source, gguf)
    from_gguf = estimate_memory(gguf, "none", "cpu", kv_tokens=0)
    from_safetensors = estimate_memory(source, "none", "cpu", kv_tokens=0)
    assert from_gguf.parameters == from_safetensors.parameters  # dequantized on load: every weight counts
    assert from_gguf.weights_bytes == from_safetensors.weights_bytes


@pytest.mark.parametrize(
    ("device", "kind"), [("cuda", "cuda"), ("cuda:3", "cuda"), ("cpu", "cpu"), ("auto", "cpu")]
)
def test_a_device_name_has_one_kind(device: str, kind: str) -> None:
    from shared.host_api import device_kind
    from shared.processes import pinned_env

    assert device_kind(device) == kind
    assert (pinned_env(device, 0)["CUDA_VISIBLE_DEVICES"] != "") == (kind == "cuda")
