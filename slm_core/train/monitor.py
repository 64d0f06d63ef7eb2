"""Resource sampling for the training loop and the Studio: RAM, CPU and GPU memory, per rank under
torchrun. `system_memory` and `gpu_info` import no torch."""

from __future__ import annotations

import math
from typing import Any

from slm_core.system import MB, this_process

# What each rank reports of itself (the GPU's total is a fact of the device, logged by rank 0 alone).
RANK_MEMORY_KEYS = ("ram_mb", "gpu_mem_allocated_mb", "gpu_mem_reserved_mb", "gpu_mem_peak_mb")
RANK_MEMORY_EVERY = 10  # steps between gathers: one tiny collective every 10 steps, never one a step


def process_sample(device: Any = None) -> dict:
    """This process now: {"ram_mb", "cpu_percent"} and, when `device` is CUDA, the torch allocator's
    {"gpu_mem_allocated_mb", "gpu_mem_reserved_mb", "gpu_mem_total_mb"}.

    cpu_percent is the usage since the previous call (100 = one core busy), without blocking.
    """
    proc = this_process()
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
