"""Models whose shapes some quantization cannot take, built on purpose."""

from __future__ import annotations

from pathlib import Path


def save_llama_with_hidden_48(dest: Path) -> Path:
    """A Llama whose Linear layers have in_features 48: fine for fp32 and 8-bit, not for CPU 4-bit."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.support.tiny_models import build_tokenizer

    tokenizer = build_tokenizer("llama")
    config = LlamaConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=3,
        num_key_value_heads=1,
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest
