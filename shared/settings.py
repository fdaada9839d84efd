"""One registry of `DUKAT_*` settings, read and validated once at start-up.

Every setting has one entry in `Settings` (name, type, default, doc). `load_settings` reads the
environment (and CLI overrides of the same names), converts and validates, and raises a
`SettingsError` naming the variable. Nothing reads `os.environ` for a DUKAT_ variable elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from shared.errors import SettingsError
from shared.keep_alive import parse_keep_alive

Quantization = Literal["4bit", "8bit", "none"]
# What runs `4bit` on CUDA: bitsandbytes' NF4 (the seed's) or torch's int4 kernel (tinygemm).
Cuda4bit = Literal["bitsandbytes", "tinygemm"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)


class Settings(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Where downloaded and hand-placed models live.
    models_dir: Path = Path("models")
    # The JSON model config (descriptions, quantization, default parameters, default model).
    config_path: Path = Path("models/config.json")
    # Model used when a request names none; the config file's `default_model` wins when set.
    default_model: str | None = None
    # Device map for loads: auto, cpu or cuda:N.
    device_map: str = "auto"
    # Quantization used when neither the request nor the config names one.
    default_quantization: Quantization = "4bit"
    # Gateway bind address.
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    # Comma-separated worker host URLs; empty means: start a local worker host.
    worker_hosts: tuple[str, ...] = ()
    # Seconds a gateway reuses the hosts' state before asking them again (a load or unload asks at once).
    host_state_ttl_s: Annotated[float, Meta(ge=0)] = 1.0
    # Seconds to wait for the local worker host (started when no worker_hosts are set) to answer.
    host_start_timeout_s: Annotated[float, Meta(gt=0)] = 120.0
    # Seconds between polls of a download job followed to its end (the seed's download_model, `dukat pull`).
    download_poll_s: Annotated[float, Meta(gt=0)] = 0.2
    # Bind address of a worker host (`dukat host`).
    host_bind: str = "127.0.0.1"
    host_port: Annotated[int, Meta(ge=0, le=65535)] = 8100
    # Devices a worker host offers: "auto" (every CUDA device, else cpu) or a comma list.
    devices: tuple[str, ...] = ("auto",)
    # Inference keys: OpenAI routes and read-only listings (comma-separated). No keys at all: no auth.
    api_keys: tuple[str, ...] = ()
    # Admin keys: everything above plus the management routes that change state, and /api/hosts.
    admin_keys: tuple[str, ...] = ()
    # A JSON file of named keys with roles and per-key limits ({"keys": [{"name", "key", "role",
    # "requests_per_minute", "tokens_per_minute", "max_concurrent"}]}), beside the two lists above.
    keys_file: Path | None = None
    # The key the CLI's client commands send (DUKAT_API_KEY or --api-key).
    api_key: str | None = None
    # Shared secret between gateway, worker hosts and model workers; None: `dukat serve` draws one
    # for its local host, a standalone host accepts anyone.
    internal_token: str | None = None
    # Hub repo ids an admin may pull: glob patterns (comma-separated), matched case-sensitively.
    pull_allow: tuple[str, ...] = ("*",)
    # Model ids (glob patterns, comma-separated) whose own code (`auto_map`) may run at load: an
    # architecture this transformers does not have. Empty: no model's code ever runs.
    trust_remote_code: tuple[str, ...] = ()
    # A pull larger than this (bytes, the files Dukat fetches) is refused before the first byte.
    max_model_bytes: Annotated[int, Meta(ge=0)] = 100 * 2**30
    # Request limits: JSON nesting, generations (prompts x n), embedding inputs, characters per prompt,
    # model id length. Each refusal is a 400 naming the limit.
    max_json_depth: Annotated[int, Meta(ge=2, le=1000)] = 64
    max_generations: Annotated[int, Meta(ge=1)] = 256
    max_embedding_inputs: Annotated[int, Meta(ge=1)] = 2048
    max_prompt_chars: Annotated[int, Meta(ge=1)] = 1_000_000
    # Characters (or token ids) of prompt a request makes the worker read: its prompts' sizes x n.
    max_request_prompt_chars: Annotated[int, Meta(ge=1)] = 2_000_000
    # Messages (chat, Anthropic) or input items (Responses) per request: 100,000 one-word messages fit
    # every character bound and cost the model worker seconds of chat template before its context error.
    max_messages: Annotated[int, Meta(ge=1)] = 10_000
    # Bytes of large request bodies (256 KB or more) a gateway reads and checks at once; past them, a
    # large body is a 429 before it is read.
    large_body_bytes: Annotated[int, Meta(ge=1)] = 256 * 2**20
    max_model_id_length: Annotated[int, Meta(ge=8, le=4096)] = 256
    # Images in chat content (`image_url` parts, Responses `input_image`): `data:` URLs always; http(s)
    # URLs only from these hosts (exact names; empty: off), fetched by the gateway within the caps below.
    image_url_hosts: tuple[str, ...] = ()
    # The most bytes one image may have (a data: URL's decoded bytes, or a fetched body).
    max_image_bytes: Annotated[int, Meta(ge=1)] = 20_000_000
    # The most pixels (width x height) one image may have, checked before its pixels are decoded.
    max_image_pixels: Annotated[int, Meta(ge=1)] = 25_000_000
    # Seconds the gateway waits for an http(s) image, the whole download.
    image_fetch_timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    # Torch threads per model worker (0 = torch's default).
    worker_threads: Annotated[int, Meta(ge=0)] = 0
    # Seconds to wait for a model worker to become ready after spawn.
    load_timeout_s: Annotated[float, Meta(gt=0)] = 600.0
    # Seconds between SIGTERM and SIGKILL when stopping a worker.
    stop_timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    # A worker that dies after it loaded is restarted: at most this many times per window, the
    # first after the backoff, each next one after twice the last; then it is `failed`.
    worker_restarts: Annotated[int, Meta(ge=0)] = 3
    worker_restart_window_s: Annotated[float, Meta(gt=0)] = 300.0
    worker_restart_backoff_s: Annotated[float, Meta(ge=0)] = 1.0
    # The host pings each worker this often; one that does not answer within the timeout is hung:
    # it is killed and restarted.
    worker_ping_interval_s: Annotated[float, Meta(gt=0)] = 5.0
    worker_ping_timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    # Deadlines of every request on a worker, whatever the worker does: the whole request, and
    # the first streamed token.
    request_timeout_s: Annotated[float, Meta(gt=0)] = 600.0
    first_token_timeout_s: Annotated[float, Meta(gt=0)] = 120.0
    # Back-pressure: a stream's events the gateway holds for a client that reads slower than the model
    # writes; when full, the stream's row stops generating (leaves the batch) until the client reads,
    # and a stream whose client read nothing for the stall timeout is cancelled.
    stream_buffer_events: Annotated[int, Meta(ge=1)] = 256
    stream_stall_timeout_s: Annotated[float, Meta(gt=0)] = 60.0
    # A stream silent this long gets a `: keep-alive` comment (proxies cut idle connections).
    sse_keepalive_s: Annotated[float, Meta(gt=0)] = 15.0
    # On SIGTERM/Ctrl-C, requests in flight get this long to finish; streams still open then end
    # with an error event and [DONE].
    shutdown_timeout_s: Annotated[float, Meta(ge=0)] = 30.0
    # Requests queued per model worker beyond the running batch at most; more, or any whose wait in
    # the queue would pass first_token_timeout_s, are refused with 429 and a Retry-After.
    max_queue: Annotated[int, Meta(ge=1)] = 1024
    # Concurrent sequences a model worker batches together.
    max_batch: Annotated[int, Meta(ge=1)] = 16
    # Bounds on a client's grammar (JSON schema, regex, choice list) for constrained decoding: its
    # characters, JSON nesting, subschemas, links of a $ref chain, values of a choice/enum/anyOf list;
    # the compile's deadline and memory (in a child process), the compiled grammars kept (bytes).
    grammar_max_chars: Annotated[int, Meta(ge=1)] = 100_000
    grammar_max_depth: Annotated[int, Meta(ge=1)] = 32
    grammar_max_nodes: Annotated[int, Meta(ge=1)] = 2_000
    grammar_max_ref_chain: Annotated[int, Meta(ge=1)] = 32
    grammar_max_choices: Annotated[int, Meta(ge=1)] = 1_000
    grammar_compile_timeout_s: Annotated[float, Meta(gt=0)] = 5.0
    grammar_compile_memory_bytes: Annotated[int, Meta(ge=2**26)] = 2**30
    grammar_cache_bytes: Annotated[int, Meta(ge=0)] = 64 * 2**20
    # Models loaded when the gateway starts (comma-separated ids).
    preload: tuple[str, ...] = ()
    # Load a known model on the first request that names it.
    auto_load: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Log lines as text, or one JSON object a line (request id, model, key, status, timings) for a
    # cluster's log collector; every process (gateway, worker host, model worker) follows it.
    log_format: Literal["text", "json"] = "text"
    # How long a model stays loaded after its last request (Ollama's keep_alive: "5m", seconds,
    # 0 = unload after each request, -1 = forever); a request's or the config file's value wins.
    keep_alive: str = "30m"
    # Workers of one model a host may run on one device (a model's `replicas` beyond the host's
    # devices): >1 suits CPU hosts, each worker with its own threads (DUKAT_WORKER_THREADS).
    replicas_per_device: Annotated[int, Meta(ge=1, le=64)] = 1
    # The range an inference key's `keep_alive` is clamped to (-1 becomes the ceiling, 0 the floor):
    # pinning and unloading a shared model are an admin's (or the config file's) powers.
    keep_alive_floor: str = "1m"
    keep_alive_ceiling: str = "1h"
    # Models one worker host keeps loaded at most (0: no limit); beyond, idle ones are evicted.
    max_loaded_models: Annotated[int, Meta(ge=0)] = 0
    # Bytes of memory a worker host offers on each device at most (0: what the device has).
    host_memory_bytes: Annotated[int, Meta(ge=0)] = 0
    # Tokens of KV cache a load's memory estimate budgets for (all sequences of a batch together).
    kv_cache_tokens: Annotated[int, Meta(ge=0)] = 4096
    # Tokens of prompt-prefix KV a model worker keeps for later prompts that start the same way
    # (automatic prefix caching; 0: off). Counted in a load's memory estimate too.
    prefix_cache_tokens: Annotated[int, Meta(ge=0)] = 4096
    # A prompt longer than this is prefilled this many tokens per scheduler step, between the
    # running streams' steps (chunked prefill; 0: in one piece). 64: on Gemma 3 270M (2 CPU threads)
    # the running streams' largest gap was x4.1 their median, x7.8 with 128.
    prefill_chunk_tokens: Annotated[int, Meta(ge=0)] = 64
    # Decode steps of Llama-family models (Llama, Mistral, Qwen, Gemma) run on Dukat's own step
    # (worker/model/decode_step.py: the same logits without the forward's per-call overhead, checked
    # at load); off: the model's forward (a baseline for `make bench`).
    own_decode_step: bool = True
    # On CUDA that step runs as CUDA graphs over static buffers, one per batch-size bucket, all
    # captured at load (worker/model/graph_step.py); off: launched op by op.
    cuda_graphs: bool = True
    # Tokens of KV (rows x columns) those graphs' static buffers hold at most, counted in a CUDA
    # load's memory estimate; a batch past it decodes op by op until it fits again.
    cuda_graph_kv_tokens: Annotated[int, Meta(ge=0)] = 32768
    # `4bit` on CUDA: bitsandbytes' NF4 layers (the seed's), or torch's int4 weight-only kernel
    # (worker/model/int4_weights.py: packed groups read inside the matmul; captures in CUDA graphs).
    cuda_4bit: Cuda4bit = "bitsandbytes"
    # LoRA adapters (PEFT folders under models_dir, each a model id) a model worker keeps loaded at
    # most, least recently used out; rows of different adapters and the base share a batch (0: none).
    max_loras: Annotated[int, Meta(ge=0)] = 8
    # OpenTelemetry traces (an OTLP/HTTP base URL, e.g. http://collector:4318; OpenTelemetry's own
    # OTEL_EXPORTER_OTLP_ENDPOINT works too): a span per request in the gateway, a child span per
    # generation in the model worker (shared/tracing.py; needs the `otel` extra). Empty: off.
    otel_endpoint: str = ""
    # Seconds a gateway waits for a host's state before it counts the host as down.
    host_state_timeout_s: Annotated[float, Meta(gt=0)] = 2.0
    # Seconds a request whose model no host has room for (or no host is up: a pool scaled to zero)
    # waits for capacity, asking the hosts again every second, before its 503 (0: refused at once).
    capacity_wait_s: Annotated[float, Meta(ge=0)] = 0.0


# Every setting's default, for what is set before (or without) reading the settings: argparse and
# keyword defaults read it here instead of restating it.
DEFAULTS = Settings()
_PREFIX = "DUKAT_"
_TUPLE_FIELDS = {name for name, t in Settings.__annotations__.items() if "tuple" in str(t)}


def setting_names() -> list[str]:
    """The environment variable of every setting, for docs and `dukat --help`."""
    return [_PREFIX + name.upper() for name in Settings.__struct_fields__]


def load_settings(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Settings from `env` (default: os.environ) with `overrides` (e.g. CLI flags) on top."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    for name in Settings.__struct_fields__:
        value = env.get(_PREFIX + name.upper())
        if value is not None:
            raw[name] = _split(value) if name in _TUPLE_FIELDS else value
    for name, value in (overrides or {}).items():
        if name not in Settings.__struct_fields__:
            raise SettingsError(f"unknown setting {name!r}", param=name)
        if value is not None:
            raw[name] = _split(value) if name in _TUPLE_FIELDS and isinstance(value, str) else value
    try:
        settings = msgspec.convert(raw, Settings, strict=False, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        message, field = _name_the_variable(str(exc))
        raise SettingsError(message, param=field) from None
    for name in ("keep_alive", "keep_alive_floor", "keep_alive_ceiling"):
        try:
            parse_keep_alive(getattr(settings, name))
        except ValueError as exc:
            variable = _PREFIX + name.upper()
            raise SettingsError(f"invalid {variable}: {exc}", param=variable) from None
    if "config_path" not in raw and "models_dir" in raw:
        settings = msgspec.structs.replace(settings, config_path=settings.models_dir / "config.json")
    return settings


def _decode_path(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str | Path):
        return Path(value)
    raise NotImplementedError


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _name_the_variable(message: str) -> tuple[str, str | None]:
    # msgspec says "... - at `$.port`"; users set DUKAT_PORT.
    if "`$." in message:
        head, _, path = message.partition(" - at `$.")
        field = path.split("`")[0].split("[")[0]
        return f"invalid {_PREFIX}{field.upper()}: {head}", _PREFIX + field.upper()
    return f"invalid settings: {message}", None
