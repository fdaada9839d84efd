"""A vision model's image rows in the scheduler, in process, against transformers' own `generate` on
the same ids and pixels: alone, beside a text row in the batch, and paused by back-pressure (it
leaves the batch and its cache is recomputed on resume, through its pixels again)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch

from shared.generation import GenerateRequest, ImageURL, Message, SamplingParams, TextPart
from tests.conftest import TINY_MODEL_CACHE
from tests.gateway.test_vision_models import BLUE, RED
from tests.support.tiny_vision_models import ensure_vision_model
from worker.host.catalog import model_type_of
from worker.model.batching import Job, Scheduler
from worker.model.engine import Engine
from worker.model.sampling import TokenSampler

GEMMA = "google/gemma-3-4b-it"
TOKENS = 16
GREEDY = SamplingParams(max_new_tokens=TOKENS, temperature=0)


@pytest.fixture(scope="module")
def engine() -> Any:
    path = ensure_vision_model(GEMMA, TINY_MODEL_CACHE)
    engine = Engine.load(path, model_type=model_type_of(GEMMA, path), quantization="none", device="cpu")
    yield engine
    engine.close()


def _plan(engine: Any, image: str | None) -> Any:
    parts = [TextPart(text="What is in this picture?")]
    if image is not None:
        parts.insert(0, TextPart(type="image_url", image_url=ImageURL(url=image)))
    req = GenerateRequest(messages=[Message(role="user", content=parts)], params=GREEDY)
    return engine._plan(engine._require_loaded(), req, None, None)


def _reference(engine: Any, plan: Any) -> list[int]:
    """transformers' greedy `generate` on the plan's ids and processor tensors (no end token)."""
    model = engine._require_loaded().model
    ids = torch.tensor([plan.prompt_ids])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, **(plan.model_inputs or {}), max_new_tokens=TOKENS,
                             min_new_tokens=TOKENS, do_sample=False)  # fmt: skip
    return [int(t) for t in out[0, ids.shape[1]:]]


def _run(engine: Any, plans: list[Any], pause_after: int | None = None) -> list[list[int]]:
    """The plans' rows in one scheduler over the engine's model; each row's tokens. With
    `pause_after`, the first row is paused after that many tokens, then resumed."""
    model = engine._require_loaded().model
    scheduler = Scheduler(model, max_batch=4, max_queue=4, seq2seq=False, pad_id=0)
    tokens: list[list[int]] = [[] for _ in plans]
    ended = [threading.Event() for _ in plans]
    pause = threading.Event()

    def on_item(i: int, item: Any) -> None:
        if isinstance(item, int):
            tokens[i].append(item)
            if i == 0 and len(tokens[0]) == pause_after:
                pause.set()  # on the scheduler's thread: parked before its next step
        else:
            ended[i].set()

    cpu = torch.device("cpu")
    jobs = [Job(prompt_ids=list(plan.prompt_ids), sampler=TokenSampler(GREEDY, device=cpu),
                max_new_tokens=TOKENS, stop_ids=frozenset(), on_item=lambda x, i=i: on_item(i, x),
                pause=pause if i == 0 else None, model_inputs=plan.model_inputs)
            for i, plan in enumerate(plans)]
    for job in jobs:
        scheduler.submit(job)
    if pause_after is not None:
        time.sleep(0.5)
        assert len(tokens[0]) < TOKENS  # it was parked, not finished
        pause.clear()
        scheduler.wake()
    assert all(e.wait(60) for e in ended)
    scheduler.close()
    return tokens


def test_image_rows_make_transformers_tokens_alone_beside_text_and_paused(engine: Any) -> None:
    red, blue, text = _plan(engine, RED), _plan(engine, BLUE), _plan(engine, None)
    want = [_reference(engine, plan) for plan in (red, blue, text)]
    assert want[0] != want[1]  # the pixels decide
    assert _run(engine, [red]) == [want[0]]
    assert _run(engine, [red, text, blue]) == [want[0], want[2], want[1]]
    assert _run(engine, [red, text], pause_after=3) == [want[0], want[2]]
