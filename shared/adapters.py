"""LoRA adapters on disk: a PEFT adapter folder (`adapter_config.json` naming its base model, and
`adapter_model.safetensors`) is a model id of its own, served by a worker of its base model.

Only what both the host (its catalog lists adapters with their base) and the model worker (which
applies them) read: the config's fields and where an adapter's folder is. No torch here.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from msgspec import Struct

from shared.errors import InvalidRequestError, NotFoundError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


class AdapterConfig(Struct, kw_only=True, forbid_unknown_fields=False):
    """The fields of PEFT's LoraConfig that decide what an adapter computes (the rest is training's)."""

    base_model_name_or_path: str | None = None
    peft_type: str = "LORA"
    r: int = 8
    lora_alpha: float = 8
    use_rslora: bool = False
    use_dora: bool = False
    bias: str = "none"
    fan_in_fan_out: bool = False
    modules_to_save: list[str] | None = None
    rank_pattern: dict[str, int] | None = None
    alpha_pattern: dict[str, float] | None = None

    def scale(self) -> float:
        """What B @ A is multiplied by: alpha / r, or alpha / sqrt(r) (rsLoRA)."""
        return self.lora_alpha / (self.r**0.5 if self.use_rslora else self.r)

    def refusal(self) -> str | None:
        """Why Dukat cannot apply this adapter as a plain per-row LoRA (None: it can)."""
        if self.peft_type.upper() != "LORA":
            return f"it is a {self.peft_type} adapter; only LoRA adapters are served"
        if self.use_dora:
            return "it is a DoRA adapter (use_dora); only plain LoRA adapters are served"
        if self.bias != "none":
            return f"it trains biases (bias={self.bias!r}); only LoRA matrices are served"
        if self.modules_to_save:
            return "it saves whole modules (modules_to_save); only LoRA matrices are served"
        if self.rank_pattern or self.alpha_pattern:
            return "it has per-module ranks or alphas (rank_pattern/alpha_pattern)"
        if self.fan_in_fan_out:
            return "its layers are Conv1D (fan_in_fan_out); only nn.Linear layers are served"
        return None


def is_adapter_folder(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and not (folder / "config.json").is_file()


def read_config(folder: Path) -> AdapterConfig:
    """The adapter's config; an unreadable one is a 400 naming the file."""
    try:
        return msgspec.json.decode((folder / CONFIG_NAME).read_bytes(), type=AdapterConfig)
    except (OSError, msgspec.DecodeError) as exc:
        raise InvalidRequestError(f"cannot read {folder / CONFIG_NAME}: {exc}", param="model") from exc


def adapter_folder(adapter_id: str, models_dir: Path) -> Path:
    """`models_dir/<adapter_id>` when it is an adapter folder (never a path outside models_dir)."""
    parts = adapter_id.split("/")
    if adapter_id.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise NotFoundError(f"adapter {adapter_id!r} is not a folder under models_dir", param="model")
    folder = Path(models_dir).joinpath(*parts)
    if not is_adapter_folder(folder):
        raise NotFoundError(
            f"adapter {adapter_id!r} is not a LoRA adapter folder under models_dir", param="model"
        )
    return folder
