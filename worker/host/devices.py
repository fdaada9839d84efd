"""The devices a worker host offers and their memory, read without importing torch (the host stays
light; only model workers touch CUDA). GPUs through NVML (nvidia-ml-py), RAM through psutil."""

from __future__ import annotations

import contextlib
import logging

import psutil

from shared.host_api import DeviceState

log = logging.getLogger(__name__)




class Gpus:
    """NVML, initialised once per host (cheap reads after that: a host state is read every second
    per gateway). No driver, no library: no GPUs."""

    def __init__(self) -> None:
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # no driver (NVMLError), no library (ImportError): a CPU host
            log.debug("no NVML: %s", exc)

    def devices(self) -> list[DeviceState]:
        nvml = self._nvml
        if nvml is None:
            return []
        out = []
        with contextlib.suppress(nvml.NVMLError):
            for index in range(nvml.nvmlDeviceGetCount()):
                memory = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index))
                out.append(
                    DeviceState(name=f"cuda:{index}", total_memory=memory.total, free_memory=memory.free)
                )
        return out

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None


def cpu_device() -> DeviceState:
    mem = psutil.virtual_memory()
    return DeviceState(name="cpu", total_memory=mem.total, free_memory=mem.available)


def offered_devices(configured: tuple[str, ...], gpus: Gpus) -> list[DeviceState]:
    """The devices of `DUKAT_DEVICES`: "auto" means every CUDA device, else the cpu."""
    cuda = gpus.devices()
    if configured in ((), ("auto",)):
        return cuda or [cpu_device()]
    by_name = {d.name: d for d in cuda}
    out = []
    for name in configured:
        if name == "cpu":
            out.append(cpu_device())
        elif name in by_name:
            out.append(by_name[name])
    return out
