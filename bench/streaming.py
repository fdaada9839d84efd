"""2. Streaming efficiency: one stream's tokens/s end to end against in-process `model.generate`.

Baseline: `model.generate` in this process (greedy, one torch thread) on the same folder and the
same prompt ids, producing as many tokens as the gateway's stream did (min = max new tokens, so an
end-of-sequence token cannot make it shorter); timed around the call, prefill included.
Through the gateway: the openai SDK's AsyncOpenAI streaming the chat completion (SSE), timed from
the call to the end of the stream; tokens from the usage chunk. The same stream straight from the
worker's wire splits a gap between the gateway and the worker's engine.

The three paths alternate, one run each per round after a warm-up round, so load from elsewhere
hits them alike; each figure is the median of its rounds. The gateway's and this process's CPU per
streamed token are recorded (the client, the gateway and the worker share two cores).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.clients import DirectClient, Timed, wire_request
from bench.harness import MAIN_MODEL, Context, Report, cpu_seconds, median

PROMPT = "Write a short poem about the sea, the wind and the ships that sail at night."
TOKENS = 64
ROUNDS = 5
TARGET = 0.9


def prompt_ids(tokenizer: Any) -> list[int]:
    """The ids the worker feeds the model for PROMPT (the llama fallback chat format, no template)."""
    from shared.generation import Message
    from shared.model_types import get_model_type
    from worker.model.prompts import render_fallback

    text = render_fallback([Message(role="user", content=PROMPT)], get_model_type("llama").prompt_format)
    bos = tokenizer.bos_token
    ids: list[int] = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos))).input_ids
    return ids


class InProcess:
    """The baseline: the same weights in this process, `generate` greedy on one torch thread."""

    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.ids = prompt_ids(self.tokenizer)

    def run(self, tokens: int) -> Timed:
        torch = self.torch
        inputs = torch.tensor([self.ids])
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        elapsed = time.perf_counter() - started
        new = out.shape[1] - inputs.shape[1]
        text = str(tok.decode(out[0, inputs.shape[1] :], skip_special_tokens=True))
        return Timed(0.0, elapsed, text, new, len(self.ids))


async def sdk_stream(client: Any) -> Timed:
    """One chat stream through the gateway with the openai SDK."""
    started = time.perf_counter()
    first = 0.0
    parts: list[str] = []
    usage = None
    stream = await client.chat.completions.create(
        model=MAIN_MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - started
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None, "no usage chunk"
    return Timed(
        first, time.perf_counter() - started, "".join(parts), usage.completion_tokens, usage.prompt_tokens
    )


async def rounds(ctx: Context, base: InProcess) -> dict[str, list[Timed] | float]:
    from openai import AsyncOpenAI

    served = ctx.served
    request = wire_request(PROMPT, TOKENS)
    gw_proc = served.gateway_process
    gateway: list[Timed] = []
    direct: list[Timed] = []
    local: list[Timed] = []
    gw_cpu = client_cpu = 0.0
    client = AsyncOpenAI(base_url=f"{served.url}/v1", api_key="bench", max_retries=0, timeout=300)
    try:
        async with DirectClient(served.worker_address(MAIN_MODEL)) as wire:
            for i in range(ROUNDS + 1):
                before = cpu_seconds(gw_proc), time.process_time()
                g = await sdk_stream(client)
                gw_cpu_run, client_cpu_run = cpu_seconds(gw_proc) - before[0], time.process_time() - before[1]
                d = await wire.stream(request)
                b = base.run(g.completion_tokens)
                if i:  # round 0 is the warm-up
                    gateway.append(g)
                    direct.append(d)
                    local.append(b)
                    gw_cpu += gw_cpu_run
                    client_cpu += client_cpu_run
    finally:
        await client.close()
    tokens = sum(t.completion_tokens for t in gateway) or 1
    return {
        "gateway": gateway,
        "direct": direct,
        "local": local,
        "gateway_cpu_ms_per_token": gw_cpu / tokens * 1000,
        "client_cpu_ms_per_token": client_cpu / tokens * 1000,
    }


def _tps(runs: list[Timed]) -> float:
    return median([t.completion_tokens / t.total_s for t in runs])


def run(ctx: Context, report: Report) -> None:
    base = InProcess(ctx.main_path)
    r = asyncio.run(rounds(ctx, base))
    gateway, direct, local = r["gateway"], r["direct"], r["local"]
    assert isinstance(gateway, list) and isinstance(direct, list) and isinstance(local, list)
    gw_tps, wire_tps, local_tps = _tps(gateway), _tps(direct), _tps(local)
    ratio = gw_tps / local_tps
    same_prompt = gateway[0].prompt_tokens == local[0].prompt_tokens
    report.raw["streaming"] = {
        "gateway": [t.__dict__ for t in gateway],
        "direct_wire": [t.__dict__ for t in direct],
        "in_process_generate": [t.__dict__ for t in local],
        "tokens_per_s": {"gateway": gw_tps, "direct_wire": wire_tps, "in_process_generate": local_tps},
        "gateway_cpu_ms_per_token": r["gateway_cpu_ms_per_token"],
        "client_cpu_ms_per_token": r["client_cpu_ms_per_token"],
        "ratio": ratio,
    }
    report.add(
        "streaming",
        f"one stream tok/s, gateway (SSE) / in-process generate, {gateway[0].completion_tokens} tokens",
        f">= {TARGET}",
        f"x{ratio:.2f} ({gw_tps:.0f} vs {local_tps:.0f} tok/s{'' if same_prompt else '; PROMPTS DIFFER'})",
        ratio >= TARGET and same_prompt,
    )
    report.add(
        "streaming",
        "  split: gateway / direct wire, direct wire / in-process generate",
        "report",
        f"x{gw_tps / wire_tps:.2f}, x{wire_tps / local_tps:.2f} (direct wire {wire_tps:.0f} tok/s); "
        f"CPU ms/token: gateway {r['gateway_cpu_ms_per_token']:.2f}, "
        f"openai SDK client {r['client_cpu_ms_per_token']:.2f}",
        None,
    )
