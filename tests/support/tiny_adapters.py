"""Tiny random LoRA adapters of the tiny models, written by PEFT itself (`save_pretrained`), with
non-zero B matrices so that each adapter changes the model's outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# What each attention and MLP projection of a Llama-family decoder is called.
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build_tiny_adapter(
    base: Path,
    dest: Path,
    *,
    base_id: str,
    seed: int,
    r: int = 4,
    alpha: int = 8,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    init_std: float = 0.3,
) -> Path:
    """A PEFT LoRA adapter folder for the model in `base`, its config naming `base_id` as its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * init_std)
    peft_model.save_pretrained(str(dest))
    config_file = Path(dest) / "adapter_config.json"
    fields: dict[str, Any] = json.loads(config_file.read_text())
    fields["base_model_name_or_path"] = base_id
    config_file.write_text(json.dumps(fields, indent=2))
    return Path(dest)


def place_tiny_adapter(base: Path, dest: Path, cache_dir: Path, *, base_id: str, **kwargs: Any) -> Path:
    """`build_tiny_adapter`'s folder at `dest`, copied from one built once under `cache_dir` (PEFT
    takes seconds per adapter), its config naming `base_id`."""
    import shutil

    from tests.support.tiny_models import _ensure

    options = {"base": base.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}
    built = _ensure(
        cache_dir, "lora", options, lambda tmp: build_tiny_adapter(base, tmp, base_id="", **kwargs)
    )
    shutil.copytree(built, dest)
    config_file = Path(dest) / "adapter_config.json"
    fields: dict[str, Any] = json.loads(config_file.read_text())
    fields["base_model_name_or_path"] = base_id
    config_file.write_text(json.dumps(fields, indent=2))
    return Path(dest)


def merged_model(base: Path, adapter: Path) -> Any:
    """PEFT's own base model with `adapter` merged into its weights: what the adapter's rows must equal."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
