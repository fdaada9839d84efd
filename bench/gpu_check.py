"""`make gpu-check`: what only a CUDA machine shows, in one run (< 8 minutes), offline, one JSON file.

Models are built here from configs with random weights (no hub): a ~1B Llama (TinyLlama's shape)
and a Gemma 3-shaped model (Gemma 3 270M's shape: sliding-window layers, one KV head), each with a
small locally trained tokenizer. A `dukat serve` (gateway, worker host, model workers) serves them.

Checks, each `pass` / `fail` / `skipped` (with why) in bench/results/gpu_check.json:
- pinning: a model loaded on `cuda:N` (the last GPU) runs in a worker whose CUDA_VISIBLE_DEVICES is N
  and whose memory NVML sees on GPU N only;
- quantization: 4bit/8bit through bitsandbytes on CUDA, in this process with the worker's own loading
  code: the layer types (Linear4bit / Linear8bitLt) and the memory against bf16; the worker's
  reported memory for each;
- unload: the GPU's used memory (NVML) back to its baseline after the worker exits;
- one stream through the gateway against in-process `generate` (bf16, same prompt ids);
- 16 and 64 concurrent streams against one alone, and the slowest first token (Llama; 16 on Gemma),
  each on the decode step's CUDA graphs (worker/model/graph_step.py), the first batch of each size
  (cold) against the next (warm);
- 4bit and 8bit (bitsandbytes) one stream against bf16's in-process `generate` (CUDA only);
- the same Llama on a server without graphs (DUKAT_CUDA_GRAPHS=0: the step launched op by op) and on
  one decoding on the model's own forward (DUKAT_OWN_DECODE_STEP=0), and 4bit in torch's int4 kernel
  (DUKAT_CUDA_4BIT=tinygemm), one stream and 64 (CUDA only);
- the graph step's and the int4 kernel's tests (tests/worker/model), whose CUDA tests need a GPU;
- grammar on the GPU: xgrammar's bitmask applied to CUDA logits in a batch that mixes constrained and
  free rows (strict JSON schemas and a forced tool call, each parsed and checked), with logprobs
  (finite, ordered top alternatives).
Without CUDA the serving checks run on the CPU with a small Llama (so the script itself is tested
anywhere) and the GPU-only checks say `skipped`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.completions import InProcess, one_vs_generate, streams_vs_one
from bench.harness import RESULTS, SERVE_ENV, Served, write_config


def torch_cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


LLAMA, GEMMA = "gpu-check/llama-1b", "gpu-check/gemma3-shaped"
# TinyLlama-1.1B's shape; on the CPU fallback a small one (the point there is that the script runs).
LLAMA_GPU = {"hidden": 2048, "layers": 22, "intermediate": 5632, "heads": 32}
LLAMA_CPU = {"hidden": 256, "layers": 4, "intermediate": 512, "heads": 8}
TOKENS = 64
# CPU threads of each process: a few feed a GPU; on the CPU fallback one (spinning OpenMP threads of
# several processes on few cores slow everything down).
THREADS = 4 if torch_cuda_available() else 1
ENV = {**SERVE_ENV, "DUKAT_DEVICE_MAP": "auto", "DUKAT_DEVICES": "auto", "OMP_NUM_THREADS": str(THREADS),
       "DUKAT_WORKER_THREADS": str(THREADS), "DUKAT_MAX_BATCH": "64", "DUKAT_MAX_QUEUE": "64"}
Check = dict[str, Any]


def build_models(root: Path, cuda: bool) -> dict[str, Path]:
    from tests.support.tiny_models import build_tiny_model

    llama = build_tiny_model("llama", root / LLAMA, init_std=0.02, context=2048,
                             **(LLAMA_GPU if cuda else LLAMA_CPU))
    return {LLAMA: llama, GEMMA: build_gemma3(root / GEMMA, small=not cuda)}


def build_gemma3(dest: Path, *, small: bool) -> Path:
    """Gemma 3 270M's layout (5 sliding-window layers of 512 per global one) with random weights."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from tests.support.tiny_models import build_tokenizer

    tok = build_tokenizer("gemma", context=4096)
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=640, intermediate_size=2048, num_hidden_layers=6 if small else 18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
        max_position_embeddings=4096, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.device("cpu"):
        model = Gemma3ForCausalLM(config)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


# ---- NVML -------------------------------------------------------------------------------------


def nvml_used(index: int) -> int:
    import pynvml

    return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used)


def gpus_of(pid: int) -> list[int]:
    import pynvml

    found = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i))
        if any(p.pid == pid for p in procs):
            found.append(i)
    return found


def worker_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if b"=" in item)


# ---- the checks ---------------------------------------------------------------------------------


def check_pinning(served: Served, device: str) -> Check:
    index = int(device.partition(":")[2])
    state = served.load(LLAMA, quantization="none", device=device)
    pid = served.worker_process(LLAMA).pid
    visible = worker_env(pid).get("CUDA_VISIBLE_DEVICES")
    deadline = time.monotonic() + 10
    seen = gpus_of(pid)
    while not seen and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = gpus_of(pid)
    ok = state["device"] == device and visible == str(index) and seen == [index]
    return {"status": "pass" if ok else "fail", "device": device, "reported_device": state["device"],
            "CUDA_VISIBLE_DEVICES": visible, "nvml_gpus_with_the_worker": seen}


def check_unload(served: Served, device: str, baseline: int) -> Check:
    index = int(device.partition(":")[2])
    loaded = nvml_used(index)
    served.unload(LLAMA)
    deadline, after = time.monotonic() + 15, nvml_used(index)
    while after > baseline + 64 * 2**20 and time.monotonic() < deadline:
        time.sleep(0.5)
        after = nvml_used(index)
    ok = after <= baseline + 64 * 2**20
    return {"status": "pass" if ok else "fail", "baseline_mib": baseline / 2**20,
            "loaded_mib": loaded / 2**20, "after_unload_mib": after / 2**20, "tolerance_mib": 64}


def check_quantization(served: Served, path: Path) -> Check:
    import bitsandbytes as bnb
    import torch

    from shared.model_types import get_model_type
    from worker.model.loading import load_model

    out: Check = {"status": "pass"}
    for q, layer in (("none", None), ("8bit", bnb.nn.Linear8bitLt), ("4bit", bnb.nn.Linear4bit)):
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        loaded = load_model(path, model_type=get_model_type("llama"), quantization=q, device="cuda:0")  # type: ignore[arg-type]
        layers = sum(isinstance(m, layer) for m in loaded.model.modules()) if layer else 0
        allocated = torch.cuda.memory_allocated() - before
        del loaded
        torch.cuda.empty_cache()
        state = served.load(LLAMA, quantization=q, device="cuda:0")
        served.unload(LLAMA)
        out[q] = {"quantized_layers": layers, "allocated_mib": allocated / 2**20,
                  "worker_memory_mib": state["memory_bytes"] / 2**20}
        if layer is not None and layers == 0:
            out["status"] = "fail"
    if out["4bit"]["allocated_mib"] >= out["8bit"]["allocated_mib"] or out["8bit"]["allocated_mib"] >= out[
        "none"
    ]["allocated_mib"]:
        out["status"] = "fail"  # each quantization must use less memory than the one above it
    return out


def check_streams(
    served: Served, model: str, path: Path, device: str, counts: list[int], quantization: str = "none"
) -> Check:
    served.load(model, quantization=quantization, device=device)
    try:
        base = InProcess(path, device="cuda:0" if device.startswith("cuda") else "cpu", threads=THREADS)
        one = asyncio.run(one_vs_generate(served.url, model, base, tokens=TOKENS, rounds=3))
        del base
        multi = asyncio.run(streams_vs_one(served.url, model, counts, tokens=TOKENS, warm_batch=True))
    finally:
        served.unload(model)
    summary: dict[str, Any] = {
        str(n): {k: multi[str(n)][k] for k in ("aggregate_tokens_per_s", "speedup", "ttft_ratio", "same_text",
                                               "compared")}
        | {"cold_vs_warm_wall": multi.get(f"cold_batch_wall_s_{n}", 0.0) / multi[str(n)]["wall_s"]}
        for n in counts
    }
    summary["one_stream_tokens_per_s"] = one["gateway_tokens_per_s"]
    return {"status": "report", "one_stream_vs_generate": one["ratio"], "summary": summary,
            "one_stream": one, "streams": multi}


def check_quantized_streams(served: Served, path: Path, device: str) -> Check:
    """4bit and 8bit (bitsandbytes on CUDA) one stream against bf16's in-process `generate`."""
    base = InProcess(path, device="cuda:0", threads=THREADS)
    out: Check = {"status": "report"}
    try:
        for q in ("4bit", "8bit"):
            served.load(LLAMA, quantization=q, device=device)
            try:
                out[q] = asyncio.run(one_vs_generate(served.url, LLAMA, base, tokens=TOKENS, rounds=2))
            finally:
                served.unload(LLAMA)
    finally:
        del base
    out["summary"] = {q: {"tokens_per_s": out[q]["gateway_tokens_per_s"], "vs_bf16_generate": out[q]["ratio"]}
                      for q in ("4bit", "8bit")}
    return out


NOTES = {
    "type": "object",
    "properties": {"notes": {"type": "array", "items": {"type": "string"}}},
    "required": ["notes"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}


def grammar_bodies(model: str) -> list[tuple[str, dict[str, Any]]]:
    """Constrained, forced-tool and free requests that the worker batches together (sampled, seeded)."""
    base = {"model": model, "max_tokens": 48, "temperature": 1.0}
    out: list[tuple[str, dict[str, Any]]] = []
    for seed in range(4):
        msg = [{"role": "user", "content": f"Notes about the sea, take {seed}."}]
        out.append(
            (
                "schema",
                {
                    **base,
                    "seed": seed,
                    "messages": msg,
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "notes", "strict": True, "schema": NOTES},
                    },
                },
            )
        )
        out.append(
            (
                "tool",
                {
                    **base,
                    "seed": seed,
                    "messages": msg,
                    "tools": [WEATHER],
                    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                },
            )
        )
        out.append(("free", {**base, "seed": seed, "messages": msg, "logprobs": True, "top_logprobs": 3}))
    return out


def judge_grammar(kind: str, reply: dict[str, Any]) -> str | None:
    """Why a reply is wrong, or None."""
    message = reply["choices"][0]["message"]
    if kind == "schema":
        value = json.loads(message["content"])
        ok = set(value) == {"notes"} and all(isinstance(n, str) for n in value["notes"])
        return None if ok else f"schema broken: {message['content']!r}"
    if kind == "tool":
        call = message["tool_calls"][0]["function"]
        args = json.loads(call["arguments"])
        typed = isinstance(args.get("city"), str) and type(args.get("days")) is int
        ok = call["name"] == "get_weather" and typed
        return None if ok else f"tool call broken: {call!r}"
    for token in reply["choices"][0]["logprobs"]["content"]:
        tops = [t["logprob"] for t in token["top_logprobs"]]
        if not all(-1e9 < lp <= 0 for lp in [token["logprob"], *tops]) or tops != sorted(tops, reverse=True):
            return f"logprobs broken: {token!r}"
    return None


def check_grammar(served: Served, model: str, device: str) -> Check:
    import httpx

    served.load(model, quantization="none", device=device)
    try:
        bodies = grammar_bodies(model)

        async def send_all() -> list[dict[str, Any]]:
            async with httpx.AsyncClient(base_url=served.url, timeout=300) as http:
                posts = (http.post("/v1/chat/completions", json=b) for _, b in bodies)
                replies = await asyncio.gather(*posts)
            return [r.raise_for_status().json() for r in replies]

        replies = asyncio.run(send_all())
        problems = []
        for (kind, _), reply in zip(bodies, replies, strict=True):
            try:
                problem = judge_grammar(kind, reply)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                problem = f"{kind}: {type(exc).__name__}: {exc}: {json.dumps(reply)[:300]}"
            if problem:
                problems.append(problem)
    finally:
        served.unload(model)
    first = zip(bodies[:3], replies[:3], strict=True)
    examples = {kind: reply["choices"][0]["message"] for (kind, _), reply in first}
    return {
        "status": "fail" if problems else "pass",
        "requests": len(bodies),
        "problems": problems[:6],
        "examples": examples,
    }


def run_checks(root: Path, cuda: bool) -> dict[str, Check]:
    import torch

    started = time.perf_counter()
    paths = build_models(root / "build", cuda)
    checks: dict[str, Check] = {"build_models": {"status": "pass", "seconds": time.perf_counter() - started}}
    served = Served(root / "serve", env=ENV)
    for model_id, path in paths.items():
        served.add_model(path, model_id)
    served.entries[GEMMA]["model_type"] = "gemma"
    write_config(served.config_path, served.entries, LLAMA)
    device = f"cuda:{torch.cuda.device_count() - 1}" if cuda else "cpu"
    gpu_only = "skipped: no CUDA device on this machine"

    def step(name: str, fn: Callable[[], Check]) -> None:
        t0 = time.perf_counter()
        try:
            checks[name] = fn()
        except Exception as exc:
            traceback.print_exc()
            checks[name] = {"status": "fail", "error": f"{type(exc).__name__}: {exc}"}
        checks[name]["seconds"] = time.perf_counter() - t0
        print(f"  {name}: {checks[name]['status']} ({checks[name]['seconds']:.0f} s)", flush=True)

    served.start()
    try:
        if cuda:
            import pynvml

            pynvml.nvmlInit()
            baseline = nvml_used(int(device.partition(":")[2]))
            step("pinning", lambda: check_pinning(served, device))
            step("unload_frees_gpu_memory", lambda: check_unload(served, device, baseline))
            step("quantization", lambda: check_quantization(served, paths[LLAMA]))
        else:
            for name in ("pinning", "unload_frees_gpu_memory", "quantization"):
                checks[name] = {"status": gpu_only}
        counts = [16, 64] if cuda else [16]
        step("llama_streams", lambda: check_streams(served, LLAMA, paths[LLAMA], device, counts))
        if cuda:
            step("llama_quantized_one_stream", lambda: check_quantized_streams(served, paths[LLAMA], device))
        else:
            checks["llama_quantized_one_stream"] = {"status": gpu_only}
        step("gemma3_streams", lambda: check_streams(served, GEMMA, paths[GEMMA], device, [16]))
        step("grammar_and_logprobs", lambda: check_grammar(served, LLAMA, device))
    finally:
        served.stop()
    variants = {"llama_without_graphs": ({"DUKAT_CUDA_GRAPHS": "0"}, "none"),
                "llama_model_forward": ({"DUKAT_OWN_DECODE_STEP": "0"}, "none"),
                "llama_4bit_tinygemm": ({"DUKAT_CUDA_4BIT": "tinygemm"}, "4bit")}
    for name, (env, quantization) in variants.items():
        if cuda:
            step(name, partial(check_variant, root / name, paths[LLAMA], device, env, quantization))
        else:
            checks[name] = {"status": gpu_only}
    if cuda:
        step("cuda_tests", check_cuda_tests)
    else:
        checks["cuda_tests"] = {"status": gpu_only}
    return checks


def check_cuda_tests() -> Check:
    """The graph step's and the int4 kernel's tests, whose CUDA tests run only where CUDA is."""
    tests = ["tests/worker/model/test_graph_step.py", "tests/worker/model/test_int4_weights.py"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        capture_output=True, text=True, timeout=300, check=False,
    )
    tail = (run.stdout + run.stderr).strip().splitlines()[-3:]
    return {"status": "pass" if run.returncode == 0 else "fail", "summary": " | ".join(tail)}


def check_variant(root: Path, path: Path, device: str, env: dict[str, str], quantization: str) -> Check:
    """The Llama's one stream (against bf16's in-process `generate`) and 64 on a server started with
    `env` on top: the baselines of the decode step's graphs and of the step itself, and 4bit in
    torch's int4 kernel."""
    served = Served(root, env={**ENV, **env})
    served.add_model(path, LLAMA)
    write_config(served.config_path, served.entries, LLAMA)
    served.start()
    try:
        return check_streams(served, LLAMA, path, device, [64], quantization)
    finally:
        served.stop()


def main() -> int:
    import torch

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": cuda}
    if cuda:
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"gpu-check: {info}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dukat-gpu-check-") as tmp:
        checks = run_checks(Path(tmp), cuda)
    result = {"machine": info, "checks": checks, "total_seconds": time.perf_counter() - started}
    out = Path(os.environ.get("GPU_CHECK_OUT") or RESULTS / "gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    for name, check in checks.items():
        extra = check.get("summary") or check.get("error") or ""
        print(f"{name:26s} {check['status']:8s} {extra}")
    print(f"{time.perf_counter() - started:.0f} s; written to {out}")
    return 1 if any(c["status"] == "fail" for c in checks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
