"""Loading a model folder onto one device, optionally quantized: by bitsandbytes on CUDA (the seed's
path; `4bit` in torch's int4 kernel instead with DUKAT_CUDA_4BIT=tinygemm, worker/model/int4_weights.py),
by our block kernels on a CPU (worker/model/cpu_quantization.py: bitsandbytes' CPU path is slower
than float32 there).

Everything that can make a model unusable is found here, at load time, with a clear error: a device
that is not there, a quantization the layers cannot take, a model that cannot run a forward pass.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.errors import DeviceUnavailableError, ModelLoadFailedError, QuantizationError
from shared.gguf import is_model_folder, pick_gguf
from shared.gguf import prepare as prepare_gguf
from shared.model_types import CONTEXT_LENGTH_KEYS, ModelType, Task
from shared.settings import Cuda4bit, Quantization
from worker.model.architectures import model_class
from worker.model.cpu_quantization import quantize_for_cpu
from worker.model.int4_weights import quantize_int4

logger = logging.getLogger(__name__)


# T5 uses relative positions and states no limit; its checkpoints were trained on 512 tokens.
_SEQ2SEQ_DEFAULT_CONTEXT = 512
_FALLBACK_CONTEXT = 2048
# A tokenizer's model_max_length above this means "not set" (transformers writes 1e30).
_SANE_MAX_LENGTH = 10_000_000


@dataclass(frozen=True, kw_only=True)
class Loaded:
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    quantization: Quantization
    memory_bytes: int
    context_length: int
    load_seconds: float
    # A vision model's AutoProcessor (its image processor and image tokens); None: it takes no images.
    processor: Any = None


def load_model(
    path: Path,
    *,
    model_type: ModelType,
    quantization: Quantization,
    device: str,
    trust_remote_code: bool = False,
    cuda_4bit: Cuda4bit = "bitsandbytes",
) -> Loaded:
    """Load the model and tokenizer in `path` onto `device`, quantized as asked, and check it runs.

    `path` is a `save_pretrained` folder, a .gguf file or a folder holding one (converted on its
    first load, see shared/gguf.py).

    Quantization applies to every task (embedding models included) on the same rule: either the
    layers take it or the load fails with a QuantizationError; there is no silent fallback.
    """
    started = time.perf_counter()
    dev = resolve_device(device)
    gguf_file = pick_gguf(path) if not is_model_folder(Path(path)) else None
    if gguf_file is not None:
        path = prepare_gguf(gguf_file)  # converted once, then cached beside the file
    if not Path(path).is_dir():  # else transformers would take it for a hub id and try the network
        raise ModelLoadFailedError(f"no model folder at {path}")
    dtype = _dtype_for(dev)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": str(dev)}}
    kwargs["trust_remote_code"] = trust_remote_code  # only for the models DUKAT_TRUST_REMOTE_CODE names
    int4 = quantization == "4bit" and dev.type == "cuda" and cuda_4bit == "tinygemm"
    on_bnb = quantization != "none" and dev.type != "cpu" and not int4
    if on_bnb:
        kwargs["quantization_config"] = _bnb_config(quantization, dtype)
    tokenizer = _load_tokenizer(path, trust_remote_code)
    try:
        auto = model_class(path, model_type.task, trust_remote_code=trust_remote_code)
        model = auto.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelLoadFailedError(f"cannot load the model in {path}: {exc}") from exc
    model.eval()
    if on_bnb:
        _check_quantized(model, quantization)
    elif int4:
        if not quantize_int4(model):
            kind = model.config.model_type
            raise QuantizationError(f"4bit (tinygemm) found no linear layer it can take in this {kind} model")
        logger.info("4bit on CUDA runs on torch's int4 kernel (tinygemm)")
    elif quantization != "none":
        kernel = quantize_for_cpu(model, quantization)
        logger.info("%s on the CPU runs on %s kernels", quantization, kernel)
    _smoke_forward(model, tokenizer, model_type.task, quantization)
    return Loaded(
        model=model,
        tokenizer=tokenizer,
        device=dev,
        dtype=dtype,
        quantization=quantization,
        memory_bytes=int(model.get_memory_footprint()),
        context_length=context_length(model.config, tokenizer, model_type.task),
        load_seconds=time.perf_counter() - started,
        processor=_load_processor(path, trust_remote_code) if model_type.task is Task.VISION else None,
    )


def resolve_device(device: str) -> torch.device:
    """ "auto" (cuda:0 when there is one, else cpu), "cpu", "cuda" or "cuda:N", checked to exist."""
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise DeviceUnavailableError(
                f"invalid device {device!r}; use auto, cpu or cuda:N", param="device"
            )
        index = int(index_text)
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {device!r} was asked for, but no CUDA device is available on this machine "
                '(use device "cpu" or "auto")',
                param="device",
            )
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceUnavailableError(
                f"device {device!r} does not exist: this machine has {count} CUDA device(s) "
                f"(cuda:0..cuda:{count - 1})",
                param="device",
            )
        return torch.device("cuda", index)
    raise DeviceUnavailableError(f"unknown device {device!r}; use auto, cpu or cuda:N", param="device")


def context_length(config: Any, tokenizer: Any, task: Task) -> int:
    """The longest sequence (prompt + completion) the model takes, in tokens."""
    for attr in CONTEXT_LENGTH_KEYS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
                # Positions start after padding_idx: 514 positions hold 512 tokens.
                value -= (getattr(config, "pad_token_id", None) or 0) + 1
            return value
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max < _SANE_MAX_LENGTH:
        return tokenizer_max
    return _SEQ2SEQ_DEFAULT_CONTEXT if task is Task.SEQ2SEQ else _FALLBACK_CONTEXT


def _dtype_for(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32  # half precision on CPU is slow and partly unsupported
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _bnb_config(quantization: Quantization, dtype: torch.dtype) -> Any:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:  # broken install or missing native library
        raise QuantizationError(
            f"{quantization} quantization needs bitsandbytes, which cannot be imported here ({exc}); "
            'load the model with quantization "none"',
            param="quantization",
        ) from exc
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    _quiet_int8_cast_warning()
    return BitsAndBytesConfig(load_in_8bit=True)


def _load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:  # missing files, or none it can build a tokenizer from
        raise ModelLoadFailedError(f"cannot load the tokenizer in {path}: {exc}") from exc


def _load_processor(path: Path, trust_remote_code: bool) -> Any:
    """The folder's AutoProcessor when it has an image processor; else None (and images are refused)."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError, AttributeError) as exc:  # no processor files or backend
        logger.warning("no image processor loads from %s, so images are refused: %s", path, exc)
        return None
    if getattr(processor, "image_processor", None) is None:
        logger.warning("%s has no image processor, so images are refused", path)
        return None
    return processor


def _check_quantized(model: Any, quantization: Quantization) -> None:
    """Fail now, not at the first request, when bitsandbytes quantized nothing."""
    import bitsandbytes as bnb

    layer_class = bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, layer_class)]
    if not layers:
        raise QuantizationError(
            f"{quantization} quantization found no layer to quantize in this "
            f"{model.config.model_type} model (bitsandbytes only replaces plain nn.Linear/Conv1D "
            'layers); load it with quantization "none"',
            param="quantization",
        )


def _smoke_forward(model: Any, tokenizer: Any, task: Task, quantization: Quantization) -> None:
    """One token through the model, so a model that cannot run fails at load."""
    token = next(
        (
            t
            for t in (tokenizer.bos_token_id, tokenizer.cls_token_id, tokenizer.eos_token_id)
            if t is not None
        ),
        0,
    )
    device = next(model.parameters()).device
    ids = torch.tensor([[token]], device=device)
    kwargs: dict[str, Any] = {"input_ids": ids}
    if task is Task.SEQ2SEQ:
        start = model.config.decoder_start_token_id
        kwargs["decoder_input_ids"] = torch.tensor([[start if start is not None else 0]], device=device)
    try:
        with torch.inference_mode():
            model(**kwargs)
    except Exception as exc:
        what = f"with {quantization} quantization " if quantization != "none" else ""
        message = f"the model loaded but a test forward pass {what}failed: {type(exc).__name__}: {exc}"
        if quantization != "none":
            raise QuantizationError(message + '; try quantization "none"', param="quantization") from exc
        raise ModelLoadFailedError(message) from exc


class _DropInt8CastWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast" not in record.getMessage()


def _quiet_int8_cast_warning() -> None:
    # bitsandbytes logs this on every 8-bit forward with fp32 inputs (always, on CPU).
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastWarning) for f in bnb_logger.filters):
        bnb_logger.addFilter(_DropInt8CastWarning())
