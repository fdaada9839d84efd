"""2. Streaming efficiency: one stream's tokens/s end to end against in-process `model.generate`.

Baseline: `model.generate` in this process (greedy, one torch thread) on the same folder and the
same prompt ids, producing as many tokens as the gateway's stream did (min = max new tokens, so an
end-of-sequence token cannot make it shorter); timed around the call, prefill included.
Through the gateway: the openai SDK's AsyncOpenAI streaming the chat completion (SSE), timed from
the call to the end of the stream; tokens from the usage chunk.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.clients import DirectClient, wire_request
from bench.harness import MAIN_MODEL, Context, Report, median

PROMPT = "Write a short poem about the sea, the wind and the ships that sail at night."
TOKENS = 64
RUNS = 3
TARGET = 0.9


def prompt_ids(tokenizer: Any) -> list[int]:
    """The ids the worker feeds the model for PROMPT (the llama fallback chat format, no template)."""
    from shared.generation import Message
    from shared.model_types import get_model_type
    from shared.prompts import render_fallback

    text = render_fallback([Message(role="user", content=PROMPT)], get_model_type("llama").prompt_format)
    bos = tokenizer.bos_token
    ids: list[int] = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos))).input_ids
    return ids


def in_process(path: Path, tokens: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = prompt_ids(tokenizer)
    inputs = torch.tensor([ids])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False, "pad_token_id": pad}
    times = []
    out = None
    for i in range(RUNS + 1):
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(inputs, attention_mask=torch.ones_like(inputs), **kwargs)
        if i:  # the first is warm-up
            times.append(time.perf_counter() - started)
    assert out is not None
    new = out.shape[1] - inputs.shape[1]
    return {
        "prompt_tokens": len(ids),
        "tokens": new,
        "seconds": times,
        "tokens_per_s": new / median(times),
        "torch_threads": torch.get_num_threads(),
        "text": tokenizer.decode(out[0, inputs.shape[1] :], skip_special_tokens=True),
    }


async def through_gateway(url: str) -> dict[str, Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=300)
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(RUNS + 1):
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
            elapsed = time.perf_counter() - started
            assert usage is not None
            runs.append(
                {
                    "seconds": elapsed,
                    "first_s": first,
                    "tokens": usage.completion_tokens,
                    "prompt_tokens": usage.prompt_tokens,
                    "text": "".join(parts),
                }
            )
    finally:
        await client.close()
    measured = runs[1:]
    return {
        "runs": measured,
        "tokens": measured[0]["tokens"],
        "prompt_tokens": measured[0]["prompt_tokens"],
        "tokens_per_s": median([r["tokens"] / r["seconds"] for r in measured]),
        "ttft_s": median([r["first_s"] for r in measured]),
    }


async def direct(address: str) -> dict[str, Any]:
    """The same stream straight from the model worker's wire: splits a shortfall between the worker
    (engine against `generate`) and the gateway."""
    request = wire_request(PROMPT, TOKENS)
    async with DirectClient(address) as client:
        runs = [await client.stream(request) for _ in range(RUNS + 1)][1:]
    return {
        "runs": [r.__dict__ for r in runs],
        "tokens": runs[0].completion_tokens,
        "tokens_per_s": median([r.completion_tokens / r.total_s for r in runs]),
        "ttft_s": median([r.first_s for r in runs]),
    }


def run(ctx: Context, report: Report) -> None:
    gw = asyncio.run(through_gateway(ctx.served.url))
    wire = asyncio.run(direct(ctx.served.worker_address(MAIN_MODEL)))
    base = in_process(ctx.main_path, gw["tokens"])
    ratio = gw["tokens_per_s"] / base["tokens_per_s"]
    report.raw["streaming"] = {
        "gateway": gw,
        "direct_wire": wire,
        "in_process_generate": base,
        "ratio": ratio,
    }
    same_prompt = gw["prompt_tokens"] == base["prompt_tokens"]
    report.add(
        "streaming",
        f"one stream tok/s through gateway (SSE) / in-process generate, {gw['tokens']} tokens",
        f">= {TARGET}",
        f"x{ratio:.2f} ({gw['tokens_per_s']:.0f} vs {base['tokens_per_s']:.0f} tok/s"
        f"{'' if same_prompt else '; PROMPT LENGTHS DIFFER'})",
        ratio >= TARGET and same_prompt,
    )
    report.add(
        "streaming",
        "  split: gateway / direct wire, direct wire / in-process generate",
        "report",
        f"x{gw['tokens_per_s'] / wire['tokens_per_s']:.2f}, "
        f"x{wire['tokens_per_s'] / base['tokens_per_s']:.2f} (direct wire {wire['tokens_per_s']:.0f} tok/s)",
        None,
    )
