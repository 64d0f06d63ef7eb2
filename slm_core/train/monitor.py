"""Resource sampling for the training loop and the Studio: RAM, CPU and GPU memory.

psutil measures the host, pynvml (the `nvidia-ml-py` distribution) the GPUs. `system_memory`
and `gpu_info` import no torch, so the Studio can call them; `process_sample` reads torch's
allocator only when the training device is CUDA, importing torch there and nowhere else.
`gather_rank_memory` brings every rank's memory to rank 0 under torchrun (keys `ram_mb_rank1`, …).
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import psutil

MB = 1024 * 1024
# What each rank reports of itself (the GPU's total is a fact of the device, logged by rank 0 alone).
RANK_MEMORY_KEYS = ("ram_mb", "gpu_mem_allocated_mb", "gpu_mem_reserved_mb", "gpu_mem_peak_mb")
RANK_MEMORY_EVERY = 10  # steps between gathers: one tiny collective every 10 steps, never one a step

_NVML_OK: Optional[bool] = None  # None: not tried yet; the answer never changes within a process
_PROCESS: Optional[psutil.Process] = None


def _nvml() -> Any:
    """The initialised pynvml module, or None where there is no NVIDIA driver (tried once per process)."""
    global _NVML_OK
    try:
        import pynvml
    except ImportError:
        _NVML_OK = False
        return None
    if _NVML_OK is None:
        try:
            pynvml.nvmlInit()
            _NVML_OK = True
        except pynvml.NVMLError:  # NVMLError_LibraryNotFound on machines without a GPU driver
            _NVML_OK = False
    return pynvml if _NVML_OK else None


def _process() -> psutil.Process:
    # One Process object for the life of the process: cpu_percent(interval=None) reports the
    # usage since the previous call on the same object, so a fresh object would always say 0.
    global _PROCESS
    if _PROCESS is None or _PROCESS.pid != os.getpid():  # a forked worker gets its own
        _PROCESS = psutil.Process()
        _PROCESS.cpu_percent(interval=None)
    return _PROCESS


def system_memory() -> dict:
    """Host RAM and CPUs: {"total_mb", "available_mb", "used_percent", "cpu_count"}."""
    mem = psutil.virtual_memory()
    return {"total_mb": mem.total / MB, "available_mb": mem.available / MB,
            "used_percent": float(mem.percent), "cpu_count": psutil.cpu_count(logical=True) or 1}


def gpu_info() -> list[dict]:
    """One dict per NVIDIA GPU: {"index", "name", "total_mb", "used_mb", "free_mb"}; [] without a GPU."""
    nvml = _nvml()
    if nvml is None:
        return []
    devices = []
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append({"index": index, "name": name.decode() if isinstance(name, bytes) else str(name),
                            "total_mb": mem.total / MB, "used_mb": mem.used / MB, "free_mb": mem.free / MB})
    except nvml.NVMLError:  # a GPU that vanished or a driver hiccup: report what we have
        pass
    return devices


def process_sample(device: Any = None) -> dict:
    """This process now: {"ram_mb", "cpu_percent"} and, when `device` is CUDA, the torch allocator's
    {"gpu_mem_allocated_mb", "gpu_mem_reserved_mb", "gpu_mem_total_mb"}.

    cpu_percent is the usage since the previous call (100 = one core busy), without blocking.
    """
    proc = _process()
    with proc.oneshot():
        sample = {"ram_mb": proc.memory_info().rss / MB, "cpu_percent": proc.cpu_percent(interval=None)}
    if device is not None and str(device).startswith("cuda"):
        sample.update(_cuda_sample(device))
    return sample


def _cuda_sample(device: Any) -> dict:
    import torch

    device = torch.device(device)
    if not torch.cuda.is_available():
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    # torch's own figure, not NVML's: under CUDA_VISIBLE_DEVICES torch's index 0 need not be NVML's 0.
    total = torch.cuda.get_device_properties(index).total_memory / MB
    return {"gpu_mem_allocated_mb": torch.cuda.memory_allocated(index) / MB,
            "gpu_mem_reserved_mb": torch.cuda.memory_reserved(index) / MB,
            "gpu_mem_peak_mb": torch.cuda.max_memory_allocated(index) / MB,
            "gpu_mem_total_mb": total}


def rank_memory_due(step: int, max_steps: int) -> bool:
    """Whether `step` gathers every rank's memory: the first step, every RANK_MEMORY_EVERY-th, the last.
    Only the step counters decide, so every rank agrees without talking (the gather is a collective)."""
    return step == 1 or step % RANK_MEMORY_EVERY == 0 or step == max_steps


def gather_rank_memory(sample: dict, device: Any) -> dict:
    """Every rank's memory figures of its own `process_sample`, as {"ram_mb_rank1": ..., ...} for ranks
    1..N-1 (rank 0's stay under the plain keys). A collective: every rank must call it at the same step.

    The figures travel as one small tensor on the training device (a CUDA tensor where NCCL is the
    backend, which moves no CPU tensors); a key this process lacks (GPU memory on CPU) travels as NaN
    and is left out of the result.
    """
    import torch
    import torch.distributed as dist

    mine = torch.tensor([float(sample.get(key, math.nan)) for key in RANK_MEMORY_KEYS], dtype=torch.float64,
                        device=device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)  # four numbers a rank: gather to rank 0 alone would save nothing
    out = {}
    for rank, values in enumerate(torch.stack(every).tolist()):
        if rank:
            out.update({f"{key}_rank{rank}": value for key, value in zip(RANK_MEMORY_KEYS, values)
                        if math.isfinite(value)})
    return out


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: where bf16 matrix multiplies beat fp32 on the CPU (elsewhere they are slower)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
