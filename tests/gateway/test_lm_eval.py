"""lm-evaluation-harness's `local-completions` loglikelihood path (multiple choice: lm-eval's most
common kind of task) against the shared `dukat serve`: token-id prompts, `echo`, `logprobs`,
`max_tokens: 0`. The task is a three-question local one; random weights make the score meaningless,
so the test checks that every choice was scored by the server, with a finite log-likelihood."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.gateway.conftest import Dukat

lm_eval = pytest.importorskip("lm_eval")

QUESTIONS = [
    {"question": "The capital of France is", "choices": [" Paris", " Berlin", " Rome"], "answer": 0},
    {"question": "Two plus two is", "choices": [" four", " five"], "answer": 0},
    {"question": "The sky is", "choices": [" blue", " green", " loud"], "answer": 0},
]
TASK = """task: dukat_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def test_local_completions_loglikelihood_scores_every_choice(
    dukat: Dukat, tmp_path: Path, tiny_model_dir: Callable[[str], Path]
) -> None:
    from lm_eval.tasks import TaskManager

    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(q) for q in QUESTIONS))
    (tmp_path / "tiny_mc.yaml").write_text(TASK.format(data=data))
    args = (
        f"model=tiny/tinyllama,base_url={dukat.base_url}/completions,tokenizer={tiny_model_dir('tinyllama')},"
        "tokenized_requests=True,num_concurrent=1,max_retries=1"
    )
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=args,
        tasks=["dukat_tiny_mc"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        log_samples=True,
    )
    assert results is not None
    samples = results["samples"]["dukat_tiny_mc"]
    scored = [resp[0][0] for sample in samples for resp in sample["resps"]]
    assert len(samples) == 3 and len(scored) == 8
    assert all(math.isfinite(ll) and ll < 0 for ll in scored)
    assert 0.0 <= results["results"]["dukat_tiny_mc"]["acc,none"] <= 1.0
