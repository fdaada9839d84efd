"""1. Gateway overhead: the same requests straight to the model worker (its msgpack wire) and through
the gateway (HTTP), at one client and at 64.

- One client: direct and gateway requests alternate (so drift hits both alike); added latency is
  the gateway's percentile minus the direct one's, non-streaming (whole reply) and streaming (time
  to the first content token). Measured with the thin probe; wrk -c1 and httpx are cross-checks.
- Throughput: 64 keep-alive connections (wrk) of max_tokens=1 requests on the smallest tiny Llama,
  against 64 concurrent direct requests on the same worker. On 2 cores the worker is the limit, so
  the gateway's capacity is stated from its own CPU time per request (psutil): 1 / (CPU s/request)
  is what one gateway process can proxy when it has a core to itself.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.clients import (
    DirectClient,
    Probe,
    Timed,
    chat_body,
    http_client,
    http_generate,
    http_stream,
    run_wrk,
)
from bench.clients import wire_request as wire
from bench.harness import MAIN_MODEL, Context, Report, cpu_seconds, median, pct, summary_ms

PROMPT = "Tell me a story about the sea."
ONE_CLIENT_TOKENS = 4
ONE_CLIENT_PAIRS = 300
WARMUP = 30
CLIENTS = 64
THROUGHPUT_SECONDS = 5.0
THROUGHPUT_MODEL = "bench/small-00"


async def paired(
    direct: Callable[[], Awaitable[Timed]], gateway: Callable[[], Awaitable[Timed]], n: int
) -> tuple[list[Timed], list[Timed]]:
    """`n` requests on each path, alternating which goes first."""
    for _ in range(WARMUP):
        await direct()
        await gateway()
    d: list[Timed] = []
    g: list[Timed] = []
    for i in range(n):
        if i % 2:
            d.append(await direct())
            g.append(await gateway())
        else:
            g.append(await gateway())
            d.append(await direct())
    return d, g


def added(direct: list[float], gateway: list[float]) -> dict[str, Any]:
    """What the gateway adds, in ms. The median is the median of the paired differences (each
    gateway request minus the direct one next to it), which a burst of load from elsewhere on the
    machine moves far less than a difference of medians; p90 and p99 are the gateway's percentile
    minus the direct one's (a pairing says nothing about tails)."""
    dm, gm = summary_ms(direct), summary_ms(gateway)
    diffs = [(g - d) * 1000 for d, g in zip(direct, gateway, strict=True)]
    return {
        "added_median_ms": median(diffs),
        "added_p90_ms": gm["p90_ms"] - dm["p90_ms"],
        "added_p99_ms": gm["p99_ms"] - dm["p99_ms"],
        "difference_of_medians_ms": gm["median_ms"] - dm["median_ms"],
        "paired_difference_p99_ms": pct(diffs, 99),
        "direct": dm,
        "gateway": gm,
    }


async def one_client(
    url: str, address: str, model: str, n: int, *, stream: bool, tokens: int = ONE_CLIENT_TOKENS
) -> dict[str, Any]:
    """The one-client comparison through the probe (see `paired`)."""
    body = chat_body(model, PROMPT, tokens, stream=stream)
    request = wire(PROMPT, tokens)
    async with DirectClient(address) as d, Probe(url) as p:
        if stream:
            ds, gs = await paired(lambda: d.stream(request), lambda: p.stream(body), n)
        else:
            ds, gs = await paired(lambda: d.generate(request), lambda: p.generate(body), n)
    texts_equal = all(a.text == b.text for a, b in zip(ds, gs, strict=True))
    key = "first_s" if stream else "total_s"
    out = added([getattr(t, key) for t in ds], [getattr(t, key) for t in gs])
    out["texts_equal"] = texts_equal
    return out


async def httpx_one_client(url: str, address: str, n: int) -> dict[str, Any]:
    body, sbody = chat_body(MAIN_MODEL, PROMPT, ONE_CLIENT_TOKENS), chat_body(MAIN_MODEL, PROMPT, ONE_CLIENT_TOKENS, stream=True)
    request = wire(PROMPT, ONE_CLIENT_TOKENS)
    async with DirectClient(address) as d, http_client(url) as h:
        started = time.process_time()
        ds, gs = await paired(lambda: d.generate(request), lambda: http_generate(h, body), n)
        cpu = (time.process_time() - started) / (2 * (n + WARMUP))
        dss, gss = await paired(lambda: d.stream(request), lambda: http_stream(h, sbody), n)
    return {
        "non_stream": added([t.total_s for t in ds], [t.total_s for t in gs]),
        "stream_ttft": added([t.first_s for t in dss], [t.first_s for t in gss]),
        "bench_process_cpu_ms_per_request_pair_avg": cpu * 1000,
    }


async def direct_load(address: str, model_prompt: str, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` concurrent loops of requests straight to the worker for `seconds`."""
    request = wire(model_prompt, 1)
    latencies: list[float] = []
    async with DirectClient(address) as d:
        for _ in range(clients):  # warm-up
            await d.generate(request)
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < deadline:
                latencies.append((await d.generate(request)).total_s)

        started = time.perf_counter()
        cpu = time.process_time()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return {
        "requests": len(latencies), "seconds": elapsed, "rps": len(latencies) / elapsed,
        "latency": summary_ms(latencies), "client_cpu_ms_per_request": cpu / len(latencies) * 1000,
    }


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def throughput(ctx: Context) -> dict[str, Any]:
    served = ctx.served
    served.add_model(ctx.small_path, THROUGHPUT_MODEL)
    served.load(THROUGHPUT_MODEL)
    try:
        address = served.worker_address(THROUGHPUT_MODEL)
        worker = served.worker_process(THROUGHPUT_MODEL)
        body = chat_body(THROUGHPUT_MODEL, "Hi", 1)
        run_wrk(served.url, body, connections=CLIENTS, seconds=1.0)  # warm-up
        direct = asyncio.run(direct_load(address, "Hi", CLIENTS, THROUGHPUT_SECONDS))
        gw, host = served.gateway_process, served.host_process()
        before = {"gateway": cpu_seconds(gw), "host": cpu_seconds(host), "worker": cpu_seconds(worker),
                  "wrk": _children_cpu()}
        wrk = run_wrk(served.url, body, connections=CLIENTS, seconds=THROUGHPUT_SECONDS)
        after = {"gateway": cpu_seconds(gw), "host": cpu_seconds(host), "worker": cpu_seconds(worker),
                 "wrk": _children_cpu()}
    finally:
        served.unload(THROUGHPUT_MODEL)
    cpu_ms = {k: (after[k] - before[k]) / max(wrk.requests, 1) * 1000 for k in before}
    return {
        "model": THROUGHPUT_MODEL, "clients": CLIENTS, "max_tokens": 1,
        "direct": direct,
        "gateway": {"requests": wrk.requests, "seconds": wrk.seconds, "rps": wrk.rps, "errors": wrk.errors,
                    "latency_us": wrk.latency_us, "cpu_ms_per_request": cpu_ms},
        "gateway_capacity_rps": 1000 / cpu_ms["gateway"] if cpu_ms["gateway"] > 0 else float("inf"),
        "rps_ratio": wrk.rps / direct["rps"],
        "added_p99_ms": wrk.latency_us["p99_us"] / 1000 - direct["latency"]["p99_ms"],
        "added_median_ms": wrk.latency_us["p50_us"] / 1000 - direct["latency"]["median_ms"],
    }


def wrk_one_client(ctx: Context, address: str) -> dict[str, Any]:
    """wrk -c1 (a C client) against direct requests measured just before and after it."""
    body = chat_body(MAIN_MODEL, PROMPT, ONE_CLIENT_TOKENS)
    request = wire(PROMPT, ONE_CLIENT_TOKENS)

    async def direct(n: int) -> list[float]:
        async with DirectClient(address) as d:
            return [(await d.generate(request)).total_s for _ in range(n)]

    before = asyncio.run(direct(150))
    gw = ctx.served.gateway_process
    cpu = cpu_seconds(gw)
    wrk = run_wrk(ctx.served.url, body, connections=1, seconds=2.0)
    cpu = cpu_seconds(gw) - cpu
    after = asyncio.run(direct(150))
    d = summary_ms(before + after)
    return {
        "direct": d, "wrk_latency_us": wrk.latency_us, "wrk_requests": wrk.requests,
        "added_median_ms": wrk.latency_us["p50_us"] / 1000 - d["median_ms"],
        "added_p99_ms": wrk.latency_us["p99_us"] / 1000 - d["p99_ms"],
        "gateway_cpu_ms_per_request": cpu / max(wrk.requests, 1) * 1000,
    }


def run(ctx: Context, report: Report) -> None:
    served = ctx.served
    address = served.worker_address(MAIN_MODEL)
    raw: dict[str, Any] = report.raw.setdefault("overhead", {})
    raw["non_stream"] = ns = asyncio.run(one_client(served.url, address, MAIN_MODEL, ONE_CLIENT_PAIRS, stream=False))
    raw["stream_ttft"] = st = asyncio.run(one_client(served.url, address, MAIN_MODEL, ONE_CLIENT_PAIRS, stream=True))
    b = "overhead"
    base = f"direct {ns['direct']['median_ms']:.2f} ms"
    report.add(b, "added latency median, 1 client, whole reply", "<= 1 ms",
               f"{ns['added_median_ms']:+.2f} ms ({base}, x{ns['gateway']['median_ms'] / ns['direct']['median_ms']:.2f})",
               ns["added_median_ms"] <= 1.0)
    report.add(b, "added latency p99, 1 client, whole reply", "<= 5 ms", f"{ns['added_p99_ms']:+.2f} ms",
               ns["added_p99_ms"] <= 5.0)
    base = f"direct {st['direct']['median_ms']:.2f} ms"
    report.add(b, "added TTFT median, 1 client, stream", "<= 1 ms",
               f"{st['added_median_ms']:+.2f} ms ({base}, x{st['gateway']['median_ms'] / st['direct']['median_ms']:.2f})",
               st["added_median_ms"] <= 1.0)
    report.add(b, "added TTFT p99, 1 client, stream", "<= 5 ms", f"{st['added_p99_ms']:+.2f} ms",
               st["added_p99_ms"] <= 5.0)
    report.add(b, "same text direct and through the gateway", "all", "yes" if ns["texts_equal"] and st["texts_equal"] else "no",
               ns["texts_equal"] and st["texts_equal"])

    raw["wrk_one_client"] = w1 = wrk_one_client(ctx, address)
    report.add(b, "cross-check: wrk -c1 added median / p99", "report",
               f"{w1['added_median_ms']:+.2f} / {w1['added_p99_ms']:+.2f} ms; gateway CPU "
               f"{w1['gateway_cpu_ms_per_request']:.2f} ms/req", None)
    raw["httpx_one_client"] = hx = asyncio.run(httpx_one_client(served.url, address, ONE_CLIENT_PAIRS // 3))
    report.add(b, "cross-check: httpx client added median (whole / TTFT)", "report",
               f"{hx['non_stream']['added_median_ms']:+.2f} / {hx['stream_ttft']['added_median_ms']:+.2f} ms "
               "(includes httpx's own CPU)", None)

    raw["throughput"] = tp = throughput(ctx)
    cpu = tp["gateway"]["cpu_ms_per_request"]
    report.add(b, "proxied req/s per gateway process (1 / gateway CPU per request)", ">= 2000",
               f"{tp['gateway_capacity_rps']:.0f} req/s ({cpu['gateway']:.3f} ms CPU/req)",
               tp["gateway_capacity_rps"] >= 2000)
    report.add(b, f"achieved req/s at {CLIENTS} clients, gateway / direct (worker-bound)", "report",
               f"{tp['gateway']['rps']:.0f} / {tp['direct']['rps']:.0f} = x{tp['rps_ratio']:.2f}; CPU ms/req worker "
               f"{cpu['worker']:.2f}, host {cpu['host']:.3f}, wrk {cpu['wrk']:.3f}", None)
    report.add(b, f"added p99 at {CLIENTS} clients", "report",
               f"{tp['added_p99_ms']:+.1f} ms (direct p99 {tp['direct']['latency']['p99_ms']:.1f} ms, "
               f"gateway {tp['gateway']['latency_us']['p99_us'] / 1000:.1f} ms)", None)
