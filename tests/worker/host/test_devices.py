"""The devices a worker host offers, read through NVML (GPUs) and psutil (RAM), never through torch.

This machine has no GPU: the NVML path degrades to "no GPUs" here, and the test of real GPUs skips
(it runs where NVML finds one)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from worker.host.devices import Gpus, offered_devices


@pytest.fixture(scope="module")
def gpus() -> Iterator[Gpus]:
    found = Gpus()
    try:
        yield found
    finally:
        found.close()


def test_a_host_without_gpus_offers_its_cpu_with_real_memory(gpus: Gpus) -> None:
    if gpus.devices():
        pytest.skip("this machine has GPUs")
    [cpu] = offered_devices(("auto",), gpus)
    assert cpu.name == "cpu" and 0 < cpu.free_memory <= cpu.total_memory
    # A GPU asked for by name is not offered where there is none; the cpu still is when named.
    assert [d.name for d in offered_devices(("cuda:0", "cpu"), gpus)] == ["cpu"]


def test_gpus_are_offered_by_nvml_index_with_their_memory(gpus: Gpus) -> None:
    found = gpus.devices()
    if not found:
        pytest.skip("no GPU here: NVML's device path can only run on a machine with one")
    assert [d.name for d in found] == [f"cuda:{i}" for i in range(len(found))]
    assert all(0 < d.free_memory <= d.total_memory for d in found)
    assert [d.name for d in offered_devices(("auto",), gpus)] == [d.name for d in found]


def test_the_worker_host_never_imports_torch() -> None:
    code = "import sys, worker.host.api, worker.host.devices; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
