"""1. Gateway overhead: the same requests straight to the model worker (its msgpack wire) and through
the gateway (HTTP), at one client and at 64.

- One client: direct and gateway requests alternate, so load from elsewhere hits both alike. Added
  latency is what the gateway adds to the whole reply (non-streaming) and to the time to the first
  content token (streaming). Measured with the thin probe (see `clients.Probe`); wrk with one
  connection and httpx are cross-checks, reported without a target.
- Throughput: 64 keep-alive connections (wrk) of max_tokens=1 requests on the smallest tiny Llama,
  against 64 concurrent direct requests on the same worker. On 2 cores the worker, the gateway and
  the load generator share the machine, so the gateway's capacity is stated from its own CPU time per
  request (psutil): 1 / (CPU s per request) is what one gateway process proxies with a core of its own.
"""

from __future__ import annotations

import asyncio
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
    run_load,
    wire_request,
)
from bench.harness import MAIN_MODEL, Context, Report, cpu_seconds, median, pct, summary_ms

PROMPT = "Tell me a story about the sea."
ONE_CLIENT_TOKENS = 4
ONE_CLIENT_PAIRS = 300
HTTPX_PAIRS = 100
WARMUP = 30
CLIENTS = 64
THROUGHPUT_SECONDS = 5.0
THROUGHPUT_MODEL = "bench/small-00"
THROUGHPUT_PROMPT = "Hi"
DRAIN_S = 0.5


async def paired(
    direct: Callable[[], Awaitable[Timed]], gateway: Callable[[], Awaitable[Timed]], n: int
) -> tuple[list[Timed], list[Timed], dict[str, float]]:
    """`n` requests on each path, back to back, alternating which goes first; also this process's
    CPU per request on each path (what each client costs)."""
    for _ in range(WARMUP):
        await direct()
        await gateway()
    d: list[Timed] = []
    g: list[Timed] = []
    cpu = {"direct": 0.0, "gateway": 0.0}

    async def timed(path: str, call: Callable[[], Awaitable[Timed]], out: list[Timed]) -> None:
        started = time.process_time()
        out.append(await call())
        cpu[path] += time.process_time() - started

    for i in range(n):
        if i % 2:
            await timed("direct", direct, d)
            await timed("gateway", gateway, g)
        else:
            await timed("gateway", gateway, g)
            await timed("direct", direct, d)
    return d, g, {f"{k}_client_cpu_ms": v / n * 1000 for k, v in cpu.items()}


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
    request = wire_request(PROMPT, tokens)
    async with DirectClient(address) as d, Probe(url) as p:
        if stream:
            ds, gs, cpu = await paired(lambda: d.stream(request), lambda: p.stream(body), n)
        else:
            ds, gs, cpu = await paired(lambda: d.generate(request), lambda: p.generate(body), n)
    key = "first_s" if stream else "total_s"
    out = added([getattr(t, key) for t in ds], [getattr(t, key) for t in gs])
    out.update(cpu)
    out["texts_equal"] = all(a.text == b.text for a, b in zip(ds, gs, strict=True))
    return out


async def httpx_one_client(url: str, address: str, n: int) -> dict[str, Any]:
    """The same comparison with httpx as the HTTP client (its own CPU per request included)."""
    body = chat_body(MAIN_MODEL, PROMPT, ONE_CLIENT_TOKENS)
    stream_body = chat_body(MAIN_MODEL, PROMPT, ONE_CLIENT_TOKENS, stream=True)
    request = wire_request(PROMPT, ONE_CLIENT_TOKENS)
    async with DirectClient(address) as d, http_client(url) as h:
        ds, gs, cpu = await paired(lambda: d.generate(request), lambda: http_generate(h, body), n)
        dss, gss, scpu = await paired(lambda: d.stream(request), lambda: http_stream(h, stream_body), n)
    return {
        "non_stream": added([t.total_s for t in ds], [t.total_s for t in gs]) | cpu,
        "stream_ttft": added([t.first_s for t in dss], [t.first_s for t in gss]) | scpu,
    }


def load_one_client(ctx: Context, address: str) -> dict[str, Any]:
    """One keep-alive connection of the load generator (wrk: a C client) for 2 s, against direct
    requests measured just before and after it."""
    body = chat_body(MAIN_MODEL, PROMPT, ONE_CLIENT_TOKENS)
    request = wire_request(PROMPT, ONE_CLIENT_TOKENS)

    async def direct(n: int) -> list[float]:
        async with DirectClient(address) as d:
            return [(await d.generate(request)).total_s for _ in range(n)]

    before = asyncio.run(direct(150))
    gw = ctx.served.gateway_process
    cpu = cpu_seconds(gw)
    load = run_load(ctx.served.url, body, connections=1, seconds=2.0)
    cpu = cpu_seconds(gw) - cpu
    after = asyncio.run(direct(150))
    d = summary_ms(before + after)
    return {
        "load_generator": load.tool,
        "direct": d,
        "latency_us": load.latency_us,
        "requests": load.requests,
        "added_median_ms": load.latency_us["p50_us"] / 1000 - d["median_ms"],
        "added_p99_ms": load.latency_us["p99_us"] / 1000 - d["p99_ms"],
        "gateway_cpu_ms_per_request": cpu / max(load.requests, 1) * 1000,
    }


async def direct_load(address: str, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` concurrent loops of max_tokens=1 requests straight to the worker for `seconds`."""
    request = wire_request(THROUGHPUT_PROMPT, 1)
    latencies: list[float] = []
    async with DirectClient(address) as d:
        await asyncio.gather(*(d.generate(request) for _ in range(clients)))  # warm-up
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < deadline:
                latencies.append((await d.generate(request)).total_s)

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "latency": summary_ms(latencies),
        "client_cpu_ms_per_request": cpu / len(latencies) * 1000,
    }


def throughput(ctx: Context) -> dict[str, Any]:
    served = ctx.served
    served.add_model(ctx.small_path, THROUGHPUT_MODEL)
    served.load(THROUGHPUT_MODEL)
    try:
        address = served.worker_address(THROUGHPUT_MODEL)
        procs = {
            "gateway": served.gateway_process,
            "host": served.host_process(),
            "worker": served.worker_process(THROUGHPUT_MODEL),
        }
        body = chat_body(THROUGHPUT_MODEL, THROUGHPUT_PROMPT, 1)
        direct = asyncio.run(direct_load(address, CLIENTS, THROUGHPUT_SECONDS))
        run_load(served.url, body, connections=CLIENTS, seconds=1.0)  # warm-up
        # A load generator stops with requests in flight; let the worker finish them, or they count
        # against its queue limit (429) in the next run.
        time.sleep(DRAIN_S)
        before = {name: cpu_seconds(p) for name, p in procs.items()}
        load = run_load(served.url, body, connections=CLIENTS, seconds=THROUGHPUT_SECONDS)
        used = {name: cpu_seconds(p) - before[name] for name, p in procs.items()}
    finally:
        served.unload(THROUGHPUT_MODEL)
    used["client"] = load.client_cpu_s
    cpu_ms = {name: s / max(load.requests, 1) * 1000 for name, s in used.items()}
    return {
        "model": THROUGHPUT_MODEL,
        "clients": CLIENTS,
        "max_tokens": 1,
        "direct": direct,
        "gateway": {
            "load_generator": load.tool,
            "requests": load.requests,
            "seconds": load.seconds,
            "rps": load.rps,
            "errors": load.errors,
            "latency_us": load.latency_us,
            "cpu_ms_per_request": cpu_ms,
        },
        "gateway_capacity_rps": 1000 / cpu_ms["gateway"] if cpu_ms["gateway"] > 0 else float("inf"),
        "rps_ratio": load.rps / direct["rps"],
        "added_p99_ms": load.latency_us["p99_us"] / 1000 - direct["latency"]["p99_ms"],
        "added_median_ms": load.latency_us["p50_us"] / 1000 - direct["latency"]["median_ms"],
    }


def _report_one_client(report: Report, ns: dict[str, Any], st: dict[str, Any]) -> None:
    b = "overhead"
    for what, m in (("latency", ns), ("TTFT", st)):
        kind = "whole reply" if m is ns else "stream"
        ratio = m["gateway"]["median_ms"] / m["direct"]["median_ms"]
        report.add(
            b,
            f"added {what} median, 1 client, {kind}",
            "<= 1 ms",
            f"{m['added_median_ms']:+.2f} ms (direct {m['direct']['median_ms']:.2f} ms, x{ratio:.2f})",
            m["added_median_ms"] <= 1.0,
        )
        report.add(
            b,
            f"added {what} p99, 1 client, {kind}",
            "<= 5 ms",
            f"{m['added_p99_ms']:+.2f} ms (direct p99 {m['direct']['p99_ms']:.2f} ms)",
            m["added_p99_ms"] <= 5.0,
        )
    same = ns["texts_equal"] and st["texts_equal"]
    report.add(b, "same text direct and through the gateway", "all", "yes" if same else "no", same)
    report.add(
        b,
        "  client CPU per request: direct wire client / HTTP probe",
        "report",
        f"{ns['direct_client_cpu_ms']:.2f} / {ns['gateway_client_cpu_ms']:.2f} ms whole, "
        f"{st['direct_client_cpu_ms']:.2f} / {st['gateway_client_cpu_ms']:.2f} ms stream",
        None,
    )


def run(ctx: Context, report: Report) -> None:
    served = ctx.served
    address = served.worker_address(MAIN_MODEL)
    raw: dict[str, Any] = report.raw.setdefault("overhead", {})
    b = "overhead"
    ns = asyncio.run(one_client(served.url, address, MAIN_MODEL, ONE_CLIENT_PAIRS, stream=False))
    st = asyncio.run(one_client(served.url, address, MAIN_MODEL, ONE_CLIENT_PAIRS, stream=True))
    raw["non_stream"], raw["stream_ttft"] = ns, st
    _report_one_client(report, ns, st)

    raw["load_one_client"] = w1 = load_one_client(ctx, address)
    report.add(
        b,
        f"cross-check: {w1['load_generator']}, 1 connection: added median / p99",
        "report",
        f"{w1['added_median_ms']:+.2f} / {w1['added_p99_ms']:+.2f} ms; gateway CPU "
        f"{w1['gateway_cpu_ms_per_request']:.2f} ms/req",
        None,
    )
    raw["httpx_one_client"] = hx = asyncio.run(httpx_one_client(served.url, address, HTTPX_PAIRS))
    report.add(
        b,
        "cross-check: httpx client, added median whole / TTFT",
        "report",
        f"{hx['non_stream']['added_median_ms']:+.2f} / {hx['stream_ttft']['added_median_ms']:+.2f} ms "
        f"(httpx's own CPU: {hx['non_stream']['gateway_client_cpu_ms']:.2f} ms/req)",
        None,
    )

    raw["throughput"] = tp = throughput(ctx)
    gw = tp["gateway"]
    cpu = gw["cpu_ms_per_request"]
    errors = f"; {gw['errors']} ERRORS" if gw["errors"] else ""
    report.add(
        b,
        "proxied req/s per gateway process = 1 / its CPU per request",
        ">= 2000",
        f"{tp['gateway_capacity_rps']:.0f} req/s ({cpu['gateway']:.3f} ms CPU/req "
        f"at {gw['rps']:.0f} req/s{errors})",
        tp["gateway_capacity_rps"] >= 2000 and not gw["errors"],
    )
    report.add(
        b,
        f"achieved req/s, {CLIENTS} clients: gateway / direct (shared 2 cores)",
        "report",
        f"{gw['rps']:.0f} / {tp['direct']['rps']:.0f} = x{tp['rps_ratio']:.2f}; CPU ms/req: worker "
        f"{cpu['worker']:.2f}, host {cpu['host']:.3f}, {gw['load_generator']} {cpu['client']:.3f}",
        None,
    )
    report.add(
        b,
        f"added p99 at {CLIENTS} clients",
        "report",
        f"{tp['added_p99_ms']:+.1f} ms (direct p99 {tp['direct']['latency']['p99_ms']:.1f} ms, "
        f"gateway {gw['latency_us']['p99_us'] / 1000:.1f} ms)",
        None,
    )
