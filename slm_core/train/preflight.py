"""Running out of memory or disk, said plainly: recognising the errors, explaining them with the
memory estimate (slm_core.models.estimate) and the settings that would fit, and the pre-flight check
that refuses a model far too large for the device before anything is allocated.

torch is imported lazily (only to recognise its error types), so the check itself is cheap.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import resource
from pathlib import Path
from typing import Optional

from slm_core.config import RunConfig
from slm_core.errors import SLMError

MB = 1024 * 1024
# Refuse up front only when the estimate exceeds what is available by this much: the estimate is a
# model, not a measurement, and a run that merely might not fit should be allowed to try.
REFUSE_FACTOR = 1.5
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# How full disks surface through libraries that wrap the OS error: torch.save's zip writer
# ("[enforce fail at inline_container.cc] unexpected pos"), safetensors' Rust I/O error, plain text.
_DISK_TEXT = ("unexpected pos", "inline_container", "No space left on device", "File too large",
              "Disk quota exceeded", "os error 28", "os error 27", "os error 122")
# Free memory per device as the pre-flight check saw it, before the model was built: what an
# out-of-memory explanation should compare with (measured afterwards, the run's own use hides it).
_AVAILABLE_AT_START: dict = {}
_OOM_TEXT = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory", "out of memory",
             "Cannot allocate memory", "not enough memory")


class DiskFullError(SLMError):
    """A checkpoint or log could not be written for lack of space (the message names how much)."""


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, DiskFullError):
        return True
    if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
        return True
    return any(t in str(error) for t in _DISK_TEXT) and not is_out_of_memory(error)


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(t in str(error) for t in _OOM_TEXT)


def free_disk_mb(path: Path) -> float:
    import shutil

    return shutil.disk_usage(path).free / MB


# ---- memory available ------------------------------------------------------------------------

def available_memory_mb(device: str) -> Optional[float]:
    """Free memory on `device` in MB (None if unknown). On CPU the least of the host's available
    RAM, a container's (cgroup) limit and this process's address-space limit (RLIMIT_AS)."""
    from slm_core.train import monitor

    if device.startswith("cuda"):
        gpus = monitor.gpu_info()
        index = int(device.split(":")[1]) if ":" in device else 0
        return gpus[index]["free_mb"] if len(gpus) > index else None
    candidates = [monitor.system_memory()["available_mb"]]
    limit, used = _cgroup_memory()
    if limit is not None:
        candidates.append((limit - used) / MB)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        candidates.append((soft - _vm_size()) / MB)
    return max(0.0, min(candidates))


def _cgroup_memory() -> tuple[Optional[int], int]:
    """(limit, usage) in bytes of this process's cgroup (v2, else v1); (None, 0) when unlimited."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if raw == "max" or int(raw) >= 1 << 60:  # v1 says "unlimited" with a huge number
            return None, 0
        return int(raw), usage
    return None, 0


def _vm_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ---- the estimate and what would fit -----------------------------------------------------------

def estimate_device(config: RunConfig) -> str:
    """Where the run will train, as estimate.py names devices ("cpu" | "cuda" | "cuda:N")."""
    pref = config.train.device
    if pref == "auto":
        from slm_core.models.estimate import _default_device

        return _default_device()
    return pref


def training_estimate_mb(config: RunConfig, device: str) -> dict:
    """estimate.training_memory for this run's model and settings (LoRA trains a fraction)."""
    from slm_core.models.estimate import count_parameters, lora_parameters, training_memory

    train, fraction = config.train, 1.0
    if train.mode == "lora":
        fraction = min(1.0, lora_parameters(config.model, config.lora) / count_parameters(config.model)["total"])
    return training_memory(config.model, train.batch_size, train.precision, train.grad_checkpointing, fraction,
                           grad_accum=train.grad_accum, device=device, optimizer_kind=train.optimizer,
                           strategy=train.strategy, world_size=_world_size())


def _world_size() -> int:
    """Processes in this run (torchrun sets WORLD_SIZE in each): FSDP's shards shrink with it."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def _processes_here(device: str) -> int:
    """How many of the run's processes share this device's memory: all on this machine for CPU RAM
    (torchrun's LOCAL_WORLD_SIZE), one per GPU."""
    return 1 if device.startswith("cuda") else max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def fitting_settings(config: RunConfig, device: str, available_mb: float, limit: int = 3) -> list[str]:
    """Up to `limit` override sets (as --set text) under which the estimate fits `available_mb`."""
    from slm_core.models.estimate import CPU_ALLOCATOR_SLACK, fits

    slack = (1.0 if device.startswith("cuda") else CPU_ALLOCATOR_SLACK) * _processes_here(device)
    found: list[str] = []

    def fits_with(changes: dict, label: str) -> bool:
        sections = {k: dataclasses.replace(getattr(config, k), **v) for k, v in changes.items()}
        candidate = dataclasses.replace(config, **sections)
        ok = fits(training_estimate_mb(candidate, device)["total_mb"] * slack, available_mb)
        if ok and len(found) < limit:
            found.append(f"{label} (~{_size(training_estimate_mb(candidate, device)['total_mb'])})")
        return ok

    train, model = config.train, config.model
    batch = train.batch_size
    while batch > 1:  # smaller micro-batches, more of them: the same tokens per step
        batch //= 2
        accum = train.grad_accum * max(1, train.batch_size // batch)
        if fits_with({"train": {"batch_size": batch, "grad_accum": accum}},
                     f"train.batch_size={batch} train.grad_accum={accum}"):
            break
    if not train.grad_checkpointing:
        fits_with({"train": {"grad_checkpointing": True}}, "train.grad_checkpointing=true")
        accum = train.grad_accum * train.batch_size
        fits_with({"train": {"grad_checkpointing": True, "batch_size": 1, "grad_accum": accum}},
                  f"train.grad_checkpointing=true train.batch_size=1 train.grad_accum={accum}")
    context = model.context_length
    while context > 64 and len(found) < limit:
        context //= 2
        if fits_with({"model": {"context_length": context}}, f"model.context_length={context}"):
            break
    if train.mode == "finetune":
        fits_with({"train": {"mode": "lora"}}, "train.mode=lora")
    return found


def _size(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def _breakdown(estimate: dict) -> str:
    parts = [(k[:-3], estimate[k]) for k in ("weights_mb", "gradients_mb", "optimizer_mb", "activations_mb",
                                            "logits_mb") if estimate.get(k, 0) >= 1]
    return ", ".join(f"{name} {_size(mb)}" for name, mb in parts)


def memory_advice(config: RunConfig, device: str, available_mb: Optional[float]) -> str:
    """'needs ~X (breakdown) but D has Y free; settings that fit: ...' for messages."""
    estimate = training_estimate_mb(config, device)
    where = "the GPU" if device.startswith("cuda") else "this machine"
    text = f"training this model needs about {_size(estimate['total_mb'])} ({_breakdown(estimate)})"
    if _world_size() > 1:  # per process: say so, and how the strategy counts
        text += f" per process ({estimate['strategy']} over {_world_size()} processes"
        text += f", {_processes_here(device)} on this machine)" if _processes_here(device) > 1 else ")"
    if available_mb is None:
        return text
    text += f" and {where} has {_size(available_mb)} free"
    fitting = fitting_settings(config, device, available_mb)
    if fitting:
        return text + "; settings that would fit: " + "; ".join(fitting)
    return text + "; even batch 1 with gradient checkpointing does not fit: pick a smaller model (fewer layers, " \
                  "a narrower model.d_model) or a larger device"


# ---- entry points for the training loop ---------------------------------------------------------

def preflight(config: RunConfig, resolved: bool = False) -> None:
    """Refuse a model whose training estimate exceeds the device's free memory by REFUSE_FACTOR,
    unless train.force=true. Counts parameters on the meta device: nothing is allocated.

    Called twice: before anything exists (resolved=False: checks only runs whose shape is
    config.model, i.e. without a base model) and once the shape is final (modes.build_for_mode)."""
    device = estimate_device(config)
    if not resolved:  # before anything is built: the figure out-of-memory messages compare with too
        _AVAILABLE_AT_START[device] = available_memory_mb(device)
    has_base = config.train.mode in ("lora", "finetune") or bool(config.train.init_from)
    if has_base and not resolved:
        _base_preflight(config, device)
        return
    available = _AVAILABLE_AT_START.get(device) or available_memory_mb(device)
    if available is None or getattr(config.train, "force", False):
        return
    estimate = training_estimate_mb(config, device)["total_mb"] * _processes_here(device)
    if estimate > REFUSE_FACTOR * available:
        raise SLMError(f"refusing to start: {memory_advice(config, device, available)}. "
                       f"Set train.force=true to try anyway")


def _base_preflight(config: RunConfig, device: str) -> None:
    """A real base's training estimate from its config.json (slm_core.models.memory), refused before the base
    loads when it exceeds the free memory by REFUSE_FACTOR (train.force=true: try anyway)."""
    available = _AVAILABLE_AT_START.get(device)
    if not config.train.init_from or available is None or getattr(config.train, "force", False):
        return
    from slm_core.models.memory import base_training_mb

    found = base_training_mb(config, device)
    if found is None or found[0] <= REFUSE_FACTOR * available:
        return
    where = "the GPU" if device.startswith("cuda") else "this machine"
    raise SLMError(f"refusing to start: {found[1]} of {config.train.init_from} needs about {_size(found[0])} "
                   f"(batch {config.train.batch_size}, context {config.model.context_length}) and {where} has "
                   f"{_size(available)} free. Use QLoRA (train.mode=lora lora.quantize_base=int4), a smaller "
                   f"train.batch_size or model.context_length, train.grad_checkpointing=true, or a smaller "
                   f"model; set train.force=true to try anyway")


def explain_failure(error: BaseException, config: Optional[RunConfig], step: int) -> Optional[str]:
    """A one-line message for an out-of-memory or disk-full error, None for anything else."""
    if isinstance(error, SLMError) and not isinstance(error, DiskFullError):
        return None
    if is_out_of_memory(error):
        kind = "GPU" if type(error).__name__ == "OutOfMemoryError" else "CPU"
        if config is None:
            return f"out of memory ({kind}) at step {step}"
        device = estimate_device(config)
        available = _AVAILABLE_AT_START.get(device) or available_memory_mb(device)
        return f"out of memory ({kind}) at step {step}: {memory_advice(config, device, available)}"
    if isinstance(error, DiskFullError):
        return str(error)
    if is_disk_full(error):
        where = getattr(error, "filename", None)
        return (f"the disk is full ({error}){f' writing {where}' if where else ''} at step {step}; free some space, "
                f"then resume the run (the last complete checkpoint is kept)")
    return None
