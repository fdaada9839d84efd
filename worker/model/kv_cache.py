"""The KV-cache mechanics of generation: rows that share one left-padded cache, sequences on a
cache of their own, and the load-time check of which of the two a model can take.

`PaddedBatch`: the rows' KV cache is left-padded to a common width, with an attention mask (zeros
on pads) and per-row position ids, so each row computes what it would alone. Rows join (a batched
prefill of the newcomers, padded and concatenated onto the cache) and leave (index_select, then the
pad columns all rows share are trimmed). Sliding-window layers (Gemma 2/3, Mistral with a window)
keep only the last `window - 1` columns of that common timeline: they are padded and trimmed to
what they hold, and their token count (`cumulative_length`, from which transformers places the
window in the mask) is kept equal to the timeline's width. Since each row's real tokens are
contiguous at the right, a window over timeline columns is the window over that row's tokens.
`Solo`: one sequence on its own cache (encoder-decoder models, and models whose batched logits
differ from their lone ones). Both return logits; choosing tokens is the scheduler's job.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from worker.model.decode_step import DecodeStep
from worker.model.graph_step import step_for

# A row's layers as a prefill left them: (row index, keys, values), each [1, heads, columns, dim].
RowKV = Callable[[int, list[torch.Tensor], list[torch.Tensor]], None]


class PaddedBatch:
    """The batched rows' KV cache, left-padded to one width, with their mask and next positions."""

    def __init__(self, model: Any, pad_id: int, decode: DecodeStep | None = None) -> None:
        self._model = model
        self._pad_id = pad_id
        self._decode = decode  # the decode step without the model's forward (None: its forward)
        self._device, self._cache_kw, self._keep = calling(model)
        # Bloom has none: its ALiBi positions come from the attention mask.
        self._takes_positions = "position_ids" in inspect.signature(model.forward).parameters
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self._device)
        self.positions = torch.zeros(0, dtype=torch.long, device=self._device)
        self._padded = False

    def join(self, prompts: list[list[int]], *, on_row: RowKV | None = None) -> torch.Tensor:
        """Prefill `prompts` together; their rows join the batch. Returns their last logits [k, vocab].
        `on_row(i, keys, values)` gets each row's layers [1, heads, >= its length, dim] (ending with
        its own tokens) where every layer still holds all of them (a sliding one may not)."""
        self._settle()
        width = max(len(p) for p in prompts)
        ids = [[self._pad_id] * (width - len(p)) + p for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        mask_t = torch.tensor(mask, dtype=torch.long, device=self._device)
        positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(torch.tensor(ids, device=self._device), mask_t, positions, cache=None)
        if on_row is not None:
            layers = cache_of(out).layers
            for i, prompt in enumerate(prompts):
                if all(layer.keys is not None and layer.keys.shape[2] >= len(prompt) for layer in layers):
                    on_row(
                        i,
                        [layer.keys[i : i + 1] for layer in layers],
                        [layer.values[i : i + 1] for layer in layers],
                    )
        self._merge(cache_of(out), mask_t, positions[:, -1] + 1)
        return out.logits[:, -1]

    def add(self, cache: Any, length: int) -> None:
        """A row prefilled on its own (a RowPrefill's finished cache of `length` tokens) joins the batch."""
        self._settle()
        mask = torch.ones(1, length, dtype=torch.long, device=self._device)
        self._merge(cache, mask, torch.tensor([length], device=self._device))

    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed each row its next token; returns the logits after it [rows, vocab]."""
        ones = torch.ones(len(tokens), 1, dtype=torch.long, device=self._device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        ids = torch.tensor(tokens, device=self._device)[:, None]
        if self._decode is not None:
            logits = self._decode(ids, self.positions, self.mask if self._padded else None, self.cache)
            self.positions = self.positions + 1
            return logits
        out = self._forward(ids, self.mask, self.positions[:, None], cache=self.cache)
        self.cache = cache_of(out)
        self.positions = self.positions + 1
        return out.logits[:, -1]

    def keep(self, rows: list[int]) -> None:
        """Only `rows` stay; then drop the leading columns that are padding in every row."""
        self._settle()
        if not rows:
            self.cache, self.mask, self.positions = None, self.mask[:0, :0], self.positions[:0]
            return
        index = torch.tensor(rows, device=self._device)
        self.mask, self.positions = self.mask[index], self.positions[index]
        lead = int(self.mask.any(dim=0).int().argmax())  # first column where some row is real
        self.mask = self.mask[:, lead:]
        width = self.mask.shape[1]
        for layer in self.cache.layers:
            # A sliding layer holds the timeline's last columns: it keeps at most the new width.
            start = -min(layer.keys.shape[2], width) if _sliding(layer) else lead
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]
        self._set_widths(width)
        self._padded = bool((self.mask == 0).any())

    def _settle(self) -> None:
        """The cache's layers up to date before they are edited (a graph step keeps its own buffers)."""
        if self._decode is not None and self.cache is not None:
            self._decode.settle(self.cache)

    def _merge(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor) -> None:
        if self.cache is None:
            self.cache, self.mask, self.positions = cache, mask, positions
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])
            self.positions = torch.cat([self.positions, positions])
            for mine, new in zip(self.cache.layers, cache.layers, strict=True):
                held = max(mine.keys.shape[2], new.keys.shape[2]) if _sliding(mine) else width
                mine.keys = torch.cat([_pad_left(mine.keys, held, 2), _pad_left(new.keys, held, 2)])
                mine.values = torch.cat([_pad_left(mine.values, held, 2), _pad_left(new.values, held, 2)])
        self._set_widths(self.mask.shape[1])
        self._padded = bool((self.mask == 0).any())

    def _set_widths(self, width: int) -> None:
        """Sliding layers count the timeline's tokens, pads included, as the mask does."""
        for layer in self.cache.layers:
            if _sliding(layer):
                layer.cumulative_length = width

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> Any:
        kwargs: dict[str, Any] = {**self._keep, "use_cache": True}
        if self._padded or cache is None:
            kwargs["attention_mask"] = mask  # without pads, no mask: the plain causal path is faster
        if self._takes_positions:
            kwargs["position_ids"] = positions
        if cache is not None:
            kwargs[self._cache_kw] = cache
        return self._model(input_ids=ids, **kwargs)


class RowPrefill:
    """One prompt's prefill on a cache of its own, in chunks of the caller's size, after a cached
    prefix if any; once done, its cache joins a PaddedBatch (`PaddedBatch.add`).

    The cache is the model's own kind (DynamicCache from the config), but its sliding layers record
    the past: they keep every column during the prefill (the attention still sees only the window,
    from the mask sizes), so that the whole prompt's keys and values can be kept for later prompts;
    `finish` trims them to their window. No pads: no mask, positions from where the chunk starts.
    """

    def __init__(self, model: Any, prompt_ids: list[int], prefix: tuple[int, list[Any], list[Any]]) -> None:
        from transformers.cache_utils import DynamicCache

        self._model = model
        self._device, self._cache_kw, self._keep = calling(model)
        self._takes_positions = "position_ids" in inspect.signature(model.forward).parameters
        self.prompt = prompt_ids
        cache: Any = DynamicCache(config=model.config)
        for layer in cache.layers:
            if _sliding(layer):
                layer.activate_past_recording()
        self.cached, keys, values = prefix
        for layer, k, v in zip(cache.layers, keys, values, strict=False):
            layer.update(k, v)
        self.cache = cache
        self.done = self.cached

    @property
    def remaining(self) -> int:
        return len(self.prompt) - self.done

    def advance(self, tokens: int) -> torch.Tensor | None:
        """Prefill up to `tokens` more of the prompt; the last token's logits [1, vocab] once all is done."""
        end = min(len(self.prompt), self.done + tokens)
        ids = torch.tensor([self.prompt[self.done : end]], dtype=torch.long, device=self._device)
        kwargs: dict[str, Any] = {**self._keep, "use_cache": True, self._cache_kw: self.cache}
        if self._takes_positions:
            kwargs["position_ids"] = torch.arange(self.done, end, device=self._device)[None]
        out = self._model(input_ids=ids, **kwargs)
        self.done = end
        return out.logits[:, -1] if end == len(self.prompt) else None

    def layers_kv(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """Every layer's keys and values of the whole prompt (None: some layer holds none of its own)."""
        layers = self.cache.layers
        if any(getattr(layer, "keys", None) is None or layer.keys.shape[2] != self.done for layer in layers):
            return None
        return [layer.keys for layer in layers], [layer.values for layer in layers]

    def finish(self) -> Any:
        """The prefilled cache as a batch holds it: sliding layers trimmed to their window."""
        for layer in self.cache.layers:
            if _sliding(layer):
                layer.record_past = False
                layer.keys = layer.keys[:, :, -layer.sliding_window + 1 :]
                layer.values = layer.values[:, :, -layer.sliding_window + 1 :]
        return self.cache


class Solo:
    """One sequence on its own cache: `prefill`, then one `step` per token. Runs under the
    caller's inference mode."""

    def __init__(
        self, model: Any, prompt_ids: list[int], *, seq2seq: bool, inputs: dict[str, Any] | None = None
    ) -> None:
        self._model = model
        self._seq2seq = seq2seq
        self._device, self._cache_kw, self._keep = calling(model)
        self._prompt = prompt_ids
        self._images = inputs  # a prompt with images: the processor's tensors, for the prefill only
        self._inputs: dict[str, Any] = {}
        self._cache: Any = None

    def prefill(self) -> torch.Tensor:
        """The logits of the first new token [1, vocab]."""
        if self._images is not None:
            self._cache, logits = prefill_with_images(self._model, self._prompt, self._images)
            self._images = None
            return logits
        ids = torch.tensor([self._prompt], dtype=torch.long, device=self._device)
        if self._seq2seq:
            self._inputs = {"encoder_outputs": self._model.get_encoder()(input_ids=ids)}
            start = self._column(_decoder_start(self._model))
            out = self._model(**self._inputs, decoder_input_ids=start, use_cache=True)
        else:
            out = self._model(input_ids=ids, use_cache=True, **self._keep)
        self._cache = cache_of(out)
        return out.logits[:, -1]

    def step(self, token: int) -> torch.Tensor:
        """Feed `token`; the logits of the one after it [1, vocab]."""
        step = {"decoder_input_ids" if self._seq2seq else "input_ids": self._column(token)}
        out = self._model(
            **self._inputs, **step, **{self._cache_kw: self._cache}, use_cache=True, **self._keep
        )
        self._cache = cache_of(out)
        return out.logits[:, -1]

    def _column(self, token: int) -> torch.Tensor:
        return torch.tensor([[token]], dtype=torch.long, device=self._device)


def prefill_with_images(
    model: Any, prompt_ids: list[int], inputs: dict[str, Any]
) -> tuple[Any, torch.Tensor]:
    """One prompt with images through the model's forward: its cache (sliding layers holding their
    window, as a batch keeps them) and the first new token's logits [1, vocab]."""
    device, _, keep = calling(model)
    dtype = next(model.parameters()).dtype
    moved = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) if torch.is_tensor(v) else v
        for k, v in inputs.items()
    }
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out = model(input_ids=ids, use_cache=True, **keep, **moved)
    cache = cache_of(out)
    for layer in cache.layers:
        if _sliding(layer) and layer.keys.shape[2] >= layer.sliding_window:
            layer.keys = layer.keys[:, :, -layer.sliding_window + 1 :]
            layer.values = layer.values[:, :, -layer.sliding_window + 1 :]
    return cache, out.logits[:, -1]


def multimodal_positions(model: Any) -> bool:
    """Whether the model places tokens by positions of its own after images (Qwen2-VL's and
    Qwen2.5-VL's rotary deltas, kept on the model between calls), not by their count."""
    return hasattr(getattr(model, "model", None), "rope_deltas")


def can_batch(model: Any, pad_id: int) -> bool:
    """Whether left-padded batched rows give a model the logits they give alone (`batch_refusal`)."""
    return batch_refusal(model, pad_id) is None


def batch_refusal(model: Any, pad_id: int) -> str | None:
    """Why left-padded batched rows would not give a model the logits they give alone (None: they
    do, up to rounding, or for LLM.int8 (8-bit) up to its batch-dependent quantization).

    Needs a cache whose layers are DynamicLayers or DynamicSlidingWindowLayers (static, chunked or
    offloaded layers keep other state) and a model that honours the mask and position ids.

    LLM.int8 cannot be exact in a batch: each matmul quantizes every activation row on its own,
    but takes the outlier columns (any |x| > 6, computed in 16 bits) over all rows at once, so a
    row's neighbours decide which of its columns are quantized. The documented bound, which the
    tests check: a batched row's logits move less than 8-bit quantization itself moved them from
    the unquantized model's (max-norm; 0.02-0.6 of it measured on the tiny Llamas). Here a coarse
    form of it (a quarter of the logits' scale) still tells a mask or position error, which
    scrambles the logits entirely.
    """
    if getattr(model.config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    prompts, nexts = [[5, 6, 7, 8, 9], [10, 11]], [12, 13]
    # Rounding differs with the batch shape (~eps); a mask or position error is O(1).
    relative = _relative_tolerance(model)
    with torch.inference_mode():
        batch = PaddedBatch(model, pad_id)
        together = [batch.join(prompts), batch.step(nexts)]
        kinds = sorted({type(layer).__name__ for layer in batch.cache.layers} - _PADDABLE)
        if kinds:
            return f"its cache has {', '.join(kinds)} layers, which rows cannot share left-padded"
        for row, (prompt, token) in enumerate(zip(prompts, nexts, strict=True)):
            alone = PaddedBatch(model, pad_id)
            expected = [alone.join([prompt]), alone.step([token])]
            for got, want in zip(together, expected, strict=True):
                if _moved(got[row], want[0], relative):
                    return "its batched logits differ from its lone ones (it ignores the mask or positions)"
    return None


def checked_decode_step(
    model: Any, pad_id: int, *, graph_rows: int = 0, graph_tokens: int = 0
) -> tuple[DecodeStep | None, str | None]:
    """The model's own-code decode step (worker/model/decode_step.py; on CUDA with `graph_rows`, the
    graph-replayed one of worker/model/graph_step.py for up to that many rows in buffers of
    `graph_tokens`) where it gives the logits the model's forward gives. Else (None, why)."""
    decode, why = step_for(model, graph_rows, graph_tokens)
    if decode is None:
        return None, why
    why = decode_step_refusal(model, pad_id, decode)
    return (None, why) if why is not None else (decode, None)


def decode_step_refusal(model: Any, pad_id: int, decode: DecodeStep) -> str | None:
    """Why `decode` may not replace the model's forward (None: it may): two steps of a padded
    two-row batch and of one row alone, on both paths, within the load-time checks' tolerance."""
    relative = _relative_tolerance(model)
    try:
        with torch.inference_mode():
            for prompts in ([[5, 6, 7, 8, 9], [10, 11]], [[5, 6, 7]]):
                paths = [PaddedBatch(model, pad_id), PaddedBatch(model, pad_id, decode)]
                for batch in paths:
                    batch.join(prompts)
                for tokens in ([12, 13], [14, 15]):
                    want, got = (batch.step(tokens[: len(prompts)]) for batch in paths)
                    if _moved(got, want, relative):
                        return "its logits differ from the model's forward"
    except Exception as exc:  # a layer this step does not know how to feed
        return f"{type(exc).__name__}: {exc}"
    return None


# transformers' cache layers whose columns PaddedBatch pads, trims and selects.
_PADDABLE = frozenset({"DynamicLayer", "DynamicSlidingWindowLayer"})


def can_prefill_alone(model: Any, pad_id: int) -> bool:
    """Whether a RowPrefill in chunks, from a stored prefix, gives a batched prefill's logits (the
    load-time check of chunked prefill and prefix caching, as `can_batch` is of batching)."""
    prompt = [5, 6, 7, 8, 9, 10, 11]
    try:
        with torch.inference_mode():
            want = PaddedBatch(model, pad_id).join([prompt])[0]
            first = RowPrefill(model, prompt[:4], (0, [], []))
            first.advance(4)
            kv = first.layers_kv()
            if kv is None:
                return False
            row = RowPrefill(model, prompt, (4, *kv))
            row.advance(2)
            got = row.advance(2)
    except Exception:  # a cache this path cannot build or feed
        return False
    if got is None:
        return False
    return not _moved(got[0], want, _relative_tolerance(model))


def join_keeps(model: Any) -> int | None:
    """The longest prompt whose every column a batched prefill's cache keeps (sliding layers keep
    their window less one); None: no limit."""
    from transformers.cache_utils import DynamicCache

    layers: list[Any] = DynamicCache(config=model.config).layers
    return min((layer.sliding_window - 1 for layer in layers if _sliding(layer)), default=None)


def _relative_tolerance(model: Any) -> float:
    """How far (relative to the logits' scale) a row may move between the load-time checks' two paths.
    Activations quantized per block (LLM.int8, the CPU block kernels) turn a float rounding
    difference into a step of the int8 grid: bounded, but far above float rounding."""
    return 0.25 if is_int8(model) or _block_quantized(model) else 1e-3


def _moved(got: torch.Tensor, want: torch.Tensor, relative: float) -> bool:
    """Whether `got` is farther from `want` than `relative` of its scale (at least float rounding)."""
    tolerance = max(relative, 8 * torch.finfo(want.dtype).eps) * (float(want.abs().max()) + 1e-6)
    return float((got - want).abs().max()) > tolerance


def _block_quantized(model: Any) -> bool:
    """Whether `model` runs the CPU block kernels (worker/model/cpu_kernels)."""
    return any(type(module).__name__ == "BlockLinear" for module in model.modules())


def is_int8(model: Any) -> bool:
    """Whether `model` runs LLM.int8 (bitsandbytes 8-bit) layers."""
    return any(type(module).__name__ == "Linear8bitLt" for module in model.modules())


def calling(model: Any) -> tuple[torch.device, str, dict[str, int]]:
    """How to call `model`: its device, its cache argument's name, and "only the last logits"."""
    params = inspect.signature(model.forward).parameters
    # transformers 5 renamed past_key_values to cache; keep both working.
    cache_kw = "cache" if "cache" in params else "past_key_values"
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return next(model.parameters()).device, cache_kw, last_only


def cache_of(out: Any) -> Any:
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _sliding(layer: Any) -> bool:
    return bool(getattr(layer, "is_sliding", False))


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - dim - 1) + [missing, 0]  # F.pad lists dims from the last one
    return F.pad(t, pad)


def _decoder_start(model: Any) -> int:
    for config in (getattr(model, "generation_config", None), model.config):
        start = getattr(config, "decoder_start_token_id", None)
        if start is not None:
            return int(start)
    return int(model.config.pad_token_id or 0)
