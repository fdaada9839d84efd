"""Measurements on real-sized models (`bench.real_model`, `bench.gpu_check`): text completions
streamed through the gateway against `generate` in a plain process, and N concurrent streams
against one.

Raw completions, not chat: a base model's chat reply stops at the first "\\nUser:", so replies
would have different lengths; a completion runs to max_tokens (end of text aside). Greedy.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from bench.clients import Timed, http_client, sse_timed
from bench.harness import median

# Beginnings of text a base model continues at length; 64 different ones for the widest row.
_SEEDS = (
    "Water is made of hydrogen and", "The history of the printing press begins",
    "A good bread recipe needs", "The first thing to know about volcanoes is",
    "In the middle of the ocean there", "My grandmother's garden had", "The train left the station at",
    "Photosynthesis is the process by which", "The old lighthouse keeper said", "To build a wooden boat, you",
    "The city council met on Tuesday to", "Bees communicate with each other by",
    "The museum's oldest map shows", "When the lake freezes in winter,", "The recipe for a simple soup is",
    "Mountains are formed when",
)
PROMPTS = [f"{seed}" if i < len(_SEEDS) else f"Story {i}: {seed}" for i, seed in enumerate(_SEEDS * 4)]


def completion_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }


async def completion_stream(client: httpx.AsyncClient, body: dict[str, Any]) -> Timed:
    """An SSE text completion read as it arrives; `first_s` is the first chunk with text."""
    return await sse_timed(client, "/v1/completions", body, lambda choice: choice.get("text"))


class InProcess:
    """The baseline: the same folder loaded in this process, `generate` greedy, the same prompt ids
    the worker uses for a raw completion (the tokenizer's own special tokens)."""

    def __init__(self, path: Path, *, device: str = "cpu", threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device).eval()

    def run(self, prompt: str, tokens: int) -> Timed:
        torch, tok = self.torch, self.tokenizer
        inputs = torch.tensor([tok(prompt).input_ids], device=self.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self._sync()
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=tokens, min_new_tokens=tokens,
                do_sample=False, pad_token_id=pad,
            )
        self._sync()
        elapsed = time.perf_counter() - started
        new = out.shape[1] - inputs.shape[1]
        text = str(tok.decode(out[0, inputs.shape[1]:], skip_special_tokens=True))
        return Timed(0.0, elapsed, text, new, inputs.shape[1])

    def _sync(self) -> None:
        if self.device != "cpu":
            self.torch.cuda.synchronize()


def tokens_per_s(runs: list[Timed]) -> float:
    return median([t.completion_tokens / t.total_s for t in runs])


async def one_vs_generate(
    url: str, model: str, base: InProcess, *, tokens: int, rounds: int
) -> dict[str, Any]:
    """One stream through the gateway against in-process generate, alternating, after a warm-up."""
    prompt = PROMPTS[0]
    served: list[Timed] = []
    local: list[Timed] = []
    async with http_client(url) as client:
        for i in range(rounds + 1):
            s = await completion_stream(client, completion_body(model, prompt, tokens))
            b = base.run(prompt, s.completion_tokens)
            if i:
                served.append(s)
                local.append(b)
    gw, lo = tokens_per_s(served), tokens_per_s(local)
    return {
        "tokens": served[0].completion_tokens,
        "gateway_tokens_per_s": gw,
        "in_process_tokens_per_s": lo,
        "ratio": gw / lo,
        "same_text": served[-1].text == local[-1].text,
        "gateway": [t.__dict__ for t in served],
        "in_process": [t.__dict__ for t in local],
    }


async def streams_vs_one(
    url: str, model: str, counts: list[int], *, tokens: int, warm_batch: bool = False
) -> dict[str, Any]:
    """Every prompt streamed alone (one after another), then `n` of them at once for each n in counts.
    `warm_batch`: one untimed round of each batch size first (a GPU picks its kernels per batch shape
    on first use; their wall times are reported as `cold_batch_wall_s_<n>`).

    Aggregate tok/s over the wall time from the first request to the last [DONE], against the
    median lone stream; slowest first token against the median lone first token; each concurrent
    stream's text against its text alone.
    """
    widest = max(counts)
    bodies = [completion_body(model, p, tokens) for p in PROMPTS[:widest]]
    alone_n = min(widest, 16)  # lone baselines: 16 prompts are plenty for a median
    async with http_client(url, connections=widest) as client:
        await completion_stream(client, bodies[0])  # warm-up
        alone = [await completion_stream(client, b) for b in bodies[:alone_n]]
        lone_tps, lone_ttft = tokens_per_s(alone), median([t.first_s for t in alone])
        result: dict[str, Any] = {
            "tokens": tokens, "lone_tokens_per_s": lone_tps, "lone_ttft_s": lone_ttft,
            "alone": [t.__dict__ for t in alone],
        }
        for n in counts if warm_batch else []:
            started = time.perf_counter()
            await asyncio.gather(*(completion_stream(client, b) for b in bodies[:n]))
            result[f"cold_batch_wall_s_{n}"] = time.perf_counter() - started
        for n in counts:
            started = time.perf_counter()
            together: list[Timed] = await asyncio.gather(*(completion_stream(client, b) for b in bodies[:n]))
            wall = time.perf_counter() - started
            aggregate = sum(t.completion_tokens for t in together) / wall
            slowest = max(t.first_s for t in together)
            result[str(n)] = {
                "wall_s": wall,
                "aggregate_tokens_per_s": aggregate,
                "speedup": aggregate / lone_tps,
                "slowest_ttft_s": slowest,
                "ttft_ratio": slowest / lone_ttft,
                "same_text": sum(a.text == b.text for a, b in zip(alone, together[:alone_n], strict=False)),
                "compared": min(n, alone_n),
            }
    return result
