"""The gateway ↔ worker host management API (HTTP + JSON): commands and the host's reported state.

The host is the truth about what is loaded where; gateways read this state and never keep their own.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, NamedTuple
from urllib.parse import quote

from msgspec import Meta, Struct

from shared.settings import Quantization

# A download job's id as a host makes it (`dl-` and 12 hex digits), with the gateway's `<host index>.`
# in front when it has several hosts.
JOB_ID_PATTERN = r"^([0-9]{1,4}\.)?dl-[0-9a-f]{12}$"



class Endpoint(NamedTuple):
    """One route of a host's management API, stated once: the host serves it, the gateway calls it."""

    method: Literal["GET", "POST"]
    path: str  # litestar's syntax for path parameters: {name:type}
    status: int = 200

    def at(self, **params: str) -> str:
        """The path with its parameters filled in (escaped)."""
        return re.sub(r"\{(\w+):\w+\}", lambda m: quote(params[m.group(1)], safe=""), self.path)


HEALTH = Endpoint("GET", "/health")
STATE = Endpoint("GET", "/state")
LOCAL_MODELS = Endpoint("GET", "/models/local")
LOAD = Endpoint("POST", "/models/load")
UNLOAD = Endpoint("POST", "/models/unload")
ESTIMATE = Endpoint("POST", "/models/estimate")
DETAILS = Endpoint("GET", "/models/details")  # ?model_id=
DELETE = Endpoint("POST", "/models/delete")
START_DOWNLOAD = Endpoint("POST", "/downloads", status=202)
DOWNLOAD = Endpoint("GET", "/downloads/{job_id:str}")

WorkerStatus = Literal["loading", "loaded", "failed", "stopping"]
# Loading or loaded: a model in service (it counts against max_loaded_models; a same load joins it).
LIVE_STATUSES: tuple[WorkerStatus, ...] = ("loading", "loaded")
# The worker's process still runs (stopping too): it holds memory, and its files are in use.
RUNNING_STATUSES: tuple[WorkerStatus, ...] = ("loading", "loaded", "stopping")
DownloadStatus = Literal["queued", "running", "done", "failed"]


class LoadAsked(Struct, kw_only=True, forbid_unknown_fields=True):
    """What a load's caller asks for: the model, and the quantization and device it wants (None: not
    asked). The management API's load request is this, named for the public API."""

    model_id: str
    quantization: Quantization | None = None
    device: str | None = None


class LoadCommand(LoadAsked, kw_only=True):
    """A load: what was asked, and what the gateway knows of the model. A model already loading or
    loaded is joined, unless what was asked differs from it (a conflict)."""

    # What a load that asks for none gets: the config file's quantization (None: the host's default
    # for the model's type, DUKAT_DEFAULT_QUANTIZATION or "none" for a type bitsandbytes cannot
    # quantize) and the gateway's device map ("auto": the host's device with the most free memory).
    default_quantization: Quantization | None = None
    default_device: str = "auto"
    # The config file's override of the inferred type.
    model_type: str | None = None
    revision: str | None = None
    # Seconds the model stays loaded when idle (negative: forever); None: the host's DUKAT_KEEP_ALIVE.
    keep_alive_s: float | None = None
    request_id: str = ""  # of the request that caused the load, for the host's log line
    # The config entry's `gguf_file`: which .gguf of the model's folder to load (or an absolute path).
    gguf_file: str | None = None
    # Workers of the model this host runs (the gateway's share of the model's `replicas` for it),
    # each on its own device first, then several on one as DUKAT_REPLICAS_PER_DEVICE allows.
    replicas: Annotated[int, Meta(ge=1, le=64)] = 1


DeviceKind = Literal["cpu", "cuda"]
DEVICE_KINDS: tuple[DeviceKind, ...] = ("cpu", "cuda")


def device_kind(device: str) -> DeviceKind:
    """What a device name is ("cuda", "cuda:1": cuda; anything else: cpu), as estimates count bytes."""
    return "cuda" if device.startswith("cuda") else "cpu"


class LoadEstimate(Struct, kw_only=True):
    """Bytes a load would take, by device kind ("cpu", "cuda"); empty when the files are not here."""

    quantization: str | None = None
    bytes_by_kind: dict[str, int] = {}


class UnloadCommand(Struct, kw_only=True, forbid_unknown_fields=True):
    model_id: str
    request_id: str = ""


class Unloaded(Struct, kw_only=True):
    model_id: str
    status: Literal["unloaded"] = "unloaded"


class DownloadCommand(Struct, kw_only=True, forbid_unknown_fields=True):
    model_id: str
    revision: str | None = None
    # One file of the repo (a .gguf) instead of the transformers files.
    file: str | None = None


class DownloadCounts(Struct, kw_only=True):
    """How far a download is: what the downloader reports and its job shows."""

    downloaded_bytes: int = 0
    total_bytes: int = 0
    files_done: int = 0
    files_total: int = 0


class DownloadJob(DownloadCounts, kw_only=True):
    id: str
    model_id: str
    status: DownloadStatus
    revision: str | None = None
    file: str | None = None
    path: str | None = None
    error: str | None = None
    error_code: str | None = None
    started_at: float = 0.0
    finished_at: float | None = None


class WorkerState(Struct, kw_only=True):
    model_id: str
    # Which of the model's workers on this host (0, 1, ...): replicas on other devices, or on one
    # device as DUKAT_REPLICAS_PER_DEVICE allows.
    replica: int = 0
    status: WorkerStatus
    device: str
    quantization: str
    model_type: str | None = None
    task: str | None = None
    # host:port of the model worker's framed wire, once loaded.
    address: str | None = None
    pid: int | None = None
    memory_bytes: int = 0
    context_length: int = 0
    load_seconds: float = 0.0
    # False: one sequence at a time, and `batching_reason` says why (worker/model/kv_cache.py).
    batching: bool = True
    batching_reason: str | None = None
    started_at: float = 0.0
    error: str | None = None
    error_code: str | None = None
    # The worker's last log lines, to tell why it failed.
    log_tail: list[str] = []
    # What the host set aside for it before the load (worker/host/memory_estimate.py).
    estimated_bytes: int = 0
    # The keep-alive in force (negative: forever, i.e. pinned): the last request's, else the load's.
    keep_alive_s: float | None = None
    # Times the host restarted this worker after it died or hung, and why it last did.
    restarts: int = 0
    last_restart_reason: str | None = None
    # The worker's own counters as of its last ping: requests queued or generating, and totals.
    in_flight: int = 0
    finished: int = 0
    cancelled: int = 0
    idle_s: float = 0.0
    last_used_at: float = 0.0  # wall clock: least recently used models are evicted first
    # The LoRA adapters (model ids) it has loaded, as of its last ping.
    adapters: list[str] = []


class DeviceState(Struct, kw_only=True):
    name: str  # "cpu" or "cuda:N"
    # What the host offers (capped by DUKAT_HOST_MEMORY_BYTES) and what is left of it, loads in
    # progress already taken off.
    total_memory: int
    free_memory: int
    models: list[str] = []


class HostState(Struct, kw_only=True):
    host_id: str
    url: str
    devices: list[DeviceState]
    models: list[WorkerState]
    downloads: list[DownloadJob] = []
    # DUKAT_MAX_LOADED_MODELS of this host (0: no limit).
    max_loaded_models: int = 0
    # The most the host's own event loop ran late since it started (a tick every 50 ms): a blocked
    # loop shows here; while it is late the host judges no worker hung.
    loop_late_max_s: float = 0.0


class LocalModel(Struct, kw_only=True):
    """A model folder under a host's models_dir (a download or a `save_pretrained` put there by hand)."""

    id: str  # path relative to models_dir; the hub id for downloads
    path: str
    model_type: str | None  # a Dukat model type name; None when it cannot be told (see `error`)
    architecture: str | None = None  # transformers' model_type (config.json or the GGUF header)
    task: str | None = None  # the type's task: chat, vision, seq2seq, embedding
    size_bytes: int
    has_tokenizer: bool
    has_chat_template: bool
    downloaded: bool = False
    revision: str | None = None
    complete: bool = True
    error: str | None = None
    # A LoRA adapter's base model id (its adapter_config.json's base_model_name_or_path); None: a model.
    base_model: str | None = None


class ModelDetails(Struct, kw_only=True):
    """One model folder on a host, as `dukat show` tells it (read from its files, not loaded)."""

    model_id: str
    path: str | None = None  # None: not on this host
    model_type: str | None = None
    task: str | None = None
    architecture: str | None = None
    gguf_file: str | None = None  # a GGUF model: the file it serves
    parameters: int | None = None  # counted from the safetensors headers
    context_length: int | None = None
    dtype: str | None = None
    chat_template: str | None = None
    license: str | None = None
    size_bytes: int = 0
    revision: str | None = None
    error: str | None = None
    base_model: str | None = None  # a LoRA adapter's base model


class DeleteCommand(Struct, kw_only=True, forbid_unknown_fields=True):
    model_id: str


class Deleted(Struct, kw_only=True):
    model_id: str
    freed_bytes: int
