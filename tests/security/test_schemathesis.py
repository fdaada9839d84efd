"""Schemathesis (`--checks all`) against the locked `dukat serve`: no 5xx, no response off the
document, no valid request rejected, no invalid one accepted, no route answering without its key.

What JSON Schema cannot say (model-dependent rules, prompts x n) is told to schemathesis by
`schemathesis_hooks.py`; every check runs on every case.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.security.conftest import ADMIN_KEY, Locked

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_schemathesis_finds_nothing(locked: Locked, tmp_path: Path) -> None:
    command = [
        str(SCHEMATHESIS), "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{locked.url}/docs/openapi.json", "--url", locked.url,
        "--checks", "all", "-H", f"Authorization: Bearer {ADMIN_KEY}",
        # The coverage phase (~1,800 boundary cases, ~100 s here) is run by hand; fuzzing fits CI.
        "--phases", "examples,fuzzing", "--max-examples", "15", "--workers", "1",
        "--request-timeout", "60", "--max-response-time", "60", "--seed", "1",
        # Patterns like the model id's make the generator discard some draws; that is no failure.
        "--suppress-health-check", "filter_too_much",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "SCHEMATHESIS_HOOKS": "tests.security.schemathesis_hooks",
        "NO_COLOR": "1",
    }
    # Its caches go to the working directory: a temporary one keeps the checkout clean.
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts is not None and int(counts[1]) > 150 and counts[1] == counts[2], output[-2000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    assert selected is not None and selected[1] == selected[2] and int(selected[1]) >= 14, output[-2000:]
