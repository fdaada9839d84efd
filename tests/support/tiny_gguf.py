"""A tiny GGUF file written from a tiny Llama folder, the way llama.cpp's converter lays one out.

Tests load it through the real GGUF path (transformers' reader, our conversion and cache) in
seconds. The tokenizer goes in as llama.cpp's byte-level BPE (`tokenizer.ggml.model = "gpt2"`, as
Llama 3 files have it), the weights as F32, and the query/key projections permuted as llama.cpp
permutes them (transformers permutes them back when it reads the file).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_CONTROL, _NORMAL = 3, 1  # llama.cpp's token types


def write_tiny_llama_gguf(
    model_dir: Path, dest: Path, *, arch: str = "llama", padding_strings: int = 0
) -> Path:
    """Write `dest` (a .gguf) holding the Llama model and tokenizer saved in `model_dir`.

    `arch` other than "llama" writes the same tensors under another architecture name, for the
    tests of architectures transformers cannot read from GGUF. `padding_strings` adds a metadata
    array of that many strings, as large as a real model's vocabulary (Gemma 3's has 262k) makes
    the header: slow for a reader that parses all of it.
    """
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config["hidden_size"] // heads

    dest.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(dest), arch)
    writer.add_name("tiny llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta") or config["rope_parameters"]["rope_theta"]))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    _add_tokenizer(writer, model_dir, config)
    if padding_strings:
        writer.add_array("dukat.test.padding", [f"piece-{i}" for i in range(padding_strings)])
    for name, array in _llama_cpp_tensors(weights, config["num_hidden_layers"], heads, kv_heads):
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def _add_tokenizer(writer: object, model_dir: Path, config: dict[str, object]) -> None:
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    specials = {t["content"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    w = writer
    w.add_tokenizer_model("gpt2")  # type: ignore[attr-defined]
    w.add_tokenizer_pre("default")  # type: ignore[attr-defined]
    w.add_token_list(tokens)  # type: ignore[attr-defined]
    w.add_token_types([_CONTROL if t in specials else _NORMAL for t in tokens])  # type: ignore[attr-defined]
    w.add_token_merges(merges)  # type: ignore[attr-defined]
    w.add_bos_token_id(int(config["bos_token_id"]))  # type: ignore[attr-defined, call-overload]
    w.add_eos_token_id(int(config["eos_token_id"]))  # type: ignore[attr-defined, call-overload]
    w.add_add_bos_token(True)  # type: ignore[attr-defined]


def _llama_cpp_tensors(
    weights: dict[str, np.ndarray], layers: int, heads: int, kv_heads: int
) -> list[tuple[str, np.ndarray]]:
    out = [("token_embd.weight", weights["model.embed_tokens.weight"])]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (f"blk.{i}.attn_norm.weight", weights[p + "input_layernorm.weight"]),
            (f"blk.{i}.attn_q.weight", _permute(weights[p + "self_attn.q_proj.weight"], heads)),
            (f"blk.{i}.attn_k.weight", _permute(weights[p + "self_attn.k_proj.weight"], kv_heads)),
            (f"blk.{i}.attn_v.weight", weights[p + "self_attn.v_proj.weight"]),
            (f"blk.{i}.attn_output.weight", weights[p + "self_attn.o_proj.weight"]),
            (f"blk.{i}.ffn_norm.weight", weights[p + "post_attention_layernorm.weight"]),
            (f"blk.{i}.ffn_gate.weight", weights[p + "mlp.gate_proj.weight"]),
            (f"blk.{i}.ffn_up.weight", weights[p + "mlp.up_proj.weight"]),
            (f"blk.{i}.ffn_down.weight", weights[p + "mlp.down_proj.weight"]),
        ]
    out.append(("output_norm.weight", weights["model.norm.weight"]))
    if "lm_head.weight" in weights:
        out.append(("output.weight", weights["lm_head.weight"]))
    return out


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows (its convert_hf_to_gguf.py `permute`)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
