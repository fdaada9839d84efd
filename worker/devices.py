"""The devices a worker host offers and their memory, read without importing torch (the host stays
light; only model workers touch CUDA)."""

from __future__ import annotations

import shutil
import subprocess

import psutil

from shared.host_api import DeviceState


def cuda_devices() -> list[DeviceState]:
    """CUDA devices as nvidia-smi reports them (none when there is no driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    devices = []
    for line in out.strip().splitlines():
        index, total, free = (part.strip() for part in line.split(","))
        devices.append(
            DeviceState(name=f"cuda:{index}", total_memory=int(total) << 20, free_memory=int(free) << 20)
        )
    return devices


def cpu_device() -> DeviceState:
    mem = psutil.virtual_memory()
    return DeviceState(name="cpu", total_memory=mem.total, free_memory=mem.available)


def offered_devices(configured: tuple[str, ...]) -> list[DeviceState]:
    """The devices of `DUKAT_DEVICES`: "auto" means every CUDA device, else the cpu."""
    cuda = cuda_devices()
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


def pick_device(devices: list[DeviceState], requested: str) -> str | None:
    """`requested` if offered; for "auto", the offered device with the most free memory."""
    if requested != "auto":
        return requested if any(d.name == requested for d in devices) else None
    if not devices:
        return None
    return max(devices, key=lambda d: d.free_memory).name
