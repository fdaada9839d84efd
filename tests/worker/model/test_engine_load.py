"""Loading: every family on CPU, quantization (block kernels on CPU, bitsandbytes on CUDA), and clear
errors at load time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from shared.errors import DeviceUnavailableError, ModelLoadFailedError, QuantizationError
from shared.generation import GenerateRequest, Message, SamplingParams
from shared.model_types import Task, get_model_type
from tests.support.odd_models import save_llama_with_hidden_48
from worker.model.cpu_kernels import BlockEmbedding, BlockLinear
from worker.model.engine import Engine
from worker.model.loading import load_model, resolve_device

CHAT_FAMILIES = ["llama", "tinyllama", "mistral", "gemma", "gpt2", "gpt_neox", "gptj", "gpt_neo", "falcon",
                 "bloom", "opt"]  # fmt: skip
ALL_FAMILIES = [*CHAT_FAMILIES, "t5", "bert", "roberta"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _greedy(max_new_tokens: int = 8) -> GenerateRequest:
    return GenerateRequest(
        messages=[Message(role="user", content="What is the capital of France?")],
        params=SamplingParams(temperature=0, max_new_tokens=max_new_tokens),
    )


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_family_loads_unquantized_on_cpu(tiny_model_dir: Callable[[str], Path], family: str) -> None:
    model_type = get_model_type(family)
    engine = Engine.load(tiny_model_dir(family), model_type=model_type, quantization="none", device="cpu")
    info = engine.info
    assert (info.model_type, info.task) == (model_type.name, model_type.task.value)
    assert (info.device, info.quantization, info.dtype) == ("cpu", "none", "float32")
    assert info.context_length == 512  # the tiny models are built with a 512-token context
    assert info.memory_bytes > 0
    assert info.load_seconds > 0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize(("quantization", "bits"), [("4bit", 4), ("8bit", 8)])
def test_quantized_load_on_cpu_holds_every_layer_in_blocks_and_saves_memory(
    tiny_model_dir: Callable[[str], Path], family: str, quantization: str, bits: int
) -> None:
    path, model_type = tiny_model_dir(family), get_model_type(family)
    full = load_model(path, model_type=model_type, quantization="none", device="cpu")
    loaded = load_model(path, model_type=model_type, quantization=quantization, device="cpu")  # type: ignore[arg-type]
    layers = [m for m in loaded.model.modules() if isinstance(m, BlockLinear)]
    assert len(layers) >= 8  # 2 blocks of attention and MLP projections (GPT-2's Conv1D too)
    assert {m.bits for m in layers} == {bits, 8}  # the LM head is held in 8 bits either way
    assert not any(type(m) is torch.nn.Linear for m in loaded.model.modules())
    assert isinstance(loaded.model.get_input_embeddings(), BlockEmbedding)
    assert loaded.quantization == quantization
    assert loaded.memory_bytes < full.memory_bytes / 2


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_model_generates(
    tiny_model_dir: Callable[[str], Path], family: str, quantization: str
) -> None:
    engine = Engine.load(
        tiny_model_dir(family),
        model_type=get_model_type(family),
        quantization=quantization,  # type: ignore[arg-type]
        device="cpu",
    )
    result = engine.generate(_greedy())
    assert result.completion_tokens >= 1
    assert result.finish_reason in ("stop", "length")
    assert engine.info.quantization == quantization


def test_embedding_model_takes_8bit(tiny_model_dir: Callable[[str], Path]) -> None:
    loaded = load_model(
        tiny_model_dir("bert"), model_type=get_model_type("bert"), quantization="8bit", device="cpu"
    )
    assert loaded.quantization == "8bit"


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_on_cpu_with_layers_not_a_multiple_of_32_fails_at_load(
    tmp_path: Path, quantization: str
) -> None:
    path = save_llama_with_hidden_48(tmp_path / "llama48")
    with pytest.raises(QuantizationError, match="multiple of 32") as caught:
        load_model(path, model_type=get_model_type("llama"), quantization=quantization, device="cpu")  # type: ignore[arg-type]
    assert caught.value.param == "quantization"
    # The same model runs unquantized.
    loaded = load_model(path, model_type=get_model_type("llama"), quantization="none", device="cpu")
    assert loaded.context_length == 128


def test_quantization_that_replaces_no_layer_is_an_error(tiny_model_dir: Callable[[str], Path]) -> None:
    # Falcon's layers are FalconLinear, which the replacement skips (as bitsandbytes' does): only the
    # LM head would be quantized.
    with pytest.raises(QuantizationError, match="no layer to quantize"):
        load_model(
            tiny_model_dir("falcon"), model_type=get_model_type("falcon"), quantization="4bit", device="cpu"
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda:0", "cuda", "cuda:3"])
def test_cuda_device_without_cuda_is_a_clear_error(
    tiny_model_dir: Callable[[str], Path], device: str
) -> None:
    with pytest.raises(DeviceUnavailableError, match="no CUDA device is available"):
        Engine.load(
            tiny_model_dir("llama"), model_type=get_model_type("llama"), quantization="none", device=device
        )


def test_missing_or_broken_model_folder_fails_to_load(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadFailedError, match="no model folder"):
        load_model(tmp_path / "absent", model_type=get_model_type("llama"), quantization="none", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadFailedError, match="cannot load"):
        load_model(tmp_path / "empty", model_type=get_model_type("llama"), quantization="none", device="cpu")


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "mps:0"])
def test_unknown_device_is_a_clear_error(device: str) -> None:
    with pytest.raises(DeviceUnavailableError, match="use auto, cpu or cuda:N"):
        resolve_device(device)


def test_auto_device_is_cpu_without_cuda() -> None:
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(resolve_device("auto")) == expected


def test_seq2seq_and_embedding_models_get_their_model_classes(tiny_model_dir: Callable[[str], Path]) -> None:
    t5 = load_model(tiny_model_dir("t5"), model_type=get_model_type("t5"), quantization="none", device="cpu")
    bert = load_model(
        tiny_model_dir("bert"), model_type=get_model_type("bert"), quantization="none", device="cpu"
    )
    assert t5.model.config.is_encoder_decoder
    assert type(bert.model).__name__ == "BertModel"
    assert get_model_type("t5").task is Task.SEQ2SEQ


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("quantization", ["none", "4bit", "8bit"])
def test_loads_and_generates_on_cuda(tiny_model_dir: Callable[[str], Path], quantization: str) -> None:
    engine = Engine.load(
        tiny_model_dir("llama"),
        model_type=get_model_type("llama"),
        quantization=quantization,  # type: ignore[arg-type]
        device="cuda:0",
    )
    assert engine.info.device == "cuda:0"
    assert engine.info.dtype in ("bfloat16", "float16")
    assert engine.generate(_greedy()).completion_tokens >= 1


@pytest.mark.gpu
@cuda
def test_cuda_index_out_of_range_is_a_clear_error() -> None:
    with pytest.raises(DeviceUnavailableError, match="does not exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_a_quantized_model_lets_go_of_its_loaded_file(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, quantization: str
) -> None:
    """A float32 model runs on the file's memory map; a quantized one must not keep that map (and its
    resident pages) alive through the few tensors quantization left as loaded."""
    import gc
    import shutil

    folder = shutil.copytree(tiny_model_dir("llama"), tmp_path / "llama")  # a path no other test maps
    loaded = load_model(folder, model_type=get_model_type("llama"), quantization=quantization, device="cpu")
    gc.collect()
    mapped = str(folder / "model.safetensors") in Path("/proc/self/maps").read_text()
    assert mapped is (quantization == "none")
    del loaded
