"""Running out of memory or disk, said plainly: recognising the errors, explaining them with the memory
estimate, and the pre-flight check that refuses a model far too large before anything is allocated."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional

from slm_core.config import PREFERENCE_MODES, RunConfig
from slm_core.data.preference import BUILTIN as BUILTIN_PAIRS
from slm_core.data.sources import source_kind
from slm_core.errors import SLMError
from slm_core.models.estimate import (
    CPU_ALLOCATOR_SLACK,
    count_parameters,
    default_device,
    fits,
    lora_parameters,
    training_memory,
)
from slm_core.models.load import check_model_source
from slm_core.models.memory import base_training_mb
from slm_core.run.runs import check_runs_dir
from slm_core.system import (
    DiskFullError,
    available_memory_mb,
    format_mb,
    is_disk_full,
    is_out_of_memory,
)
from slm_core.validate import check_device

# Refuse up front only when the estimate exceeds what is available by this much: the estimate is a
# model, not a measurement, and a run that merely might not fit should be allowed to try.
REFUSE_FACTOR = 1.5
# Free memory per device as the pre-flight check saw it, before the model was built: what an
# out-of-memory explanation should compare with (measured afterwards, the run's own use hides it).
_AVAILABLE_AT_START: dict = {}


# ---- the estimate and what would fit -----------------------------------------------------------

def estimate_device(config: RunConfig) -> str:
    """Where the run will train, as estimate.py names devices ("cpu" | "cuda" | "cuda:N")."""
    pref = config.train.device
    if pref == "auto":
        return default_device()
    return pref


def training_estimate_mb(config: RunConfig, device: str) -> dict:
    """estimate.training_memory for this run's model and settings (LoRA trains a fraction)."""
    train, fraction = config.train, 1.0
    if config.uses_lora:
        fraction = min(1.0, lora_parameters(config.model, config.lora) / count_parameters(config.model)["total"])
    rows = train.batch_size * (2 if train.mode in PREFERENCE_MODES else 1)  # a pair is two rows
    return training_memory(config.model, rows, train.precision, train.grad_checkpointing, fraction,
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
    slack = (1.0 if device.startswith("cuda") else CPU_ALLOCATOR_SLACK) * _processes_here(device)
    found: list[str] = []

    def fits_with(changes: dict, label: str) -> bool:
        sections = {k: dataclasses.replace(getattr(config, k), **v) for k, v in changes.items()}
        candidate = dataclasses.replace(config, **sections)
        ok = fits(training_estimate_mb(candidate, device)["total_mb"] * slack, available_mb)
        if ok and len(found) < limit:
            found.append(f"{label} (~{format_mb(training_estimate_mb(candidate, device)['total_mb'])})")
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


def _breakdown(estimate: dict) -> str:
    parts = [(k[:-3], estimate[k]) for k in ("weights_mb", "gradients_mb", "optimizer_mb", "activations_mb",
                                            "logits_mb") if estimate.get(k, 0) >= 1]
    return ", ".join(f"{name} {format_mb(mb)}" for name, mb in parts)


def memory_advice(config: RunConfig, device: str, available_mb: Optional[float]) -> str:
    """'needs ~X (breakdown) but D has Y free; settings that fit: ...' for messages."""
    estimate = training_estimate_mb(config, device)
    where = "the GPU" if device.startswith("cuda") else "this machine"
    text = f"training this model needs about {format_mb(estimate['total_mb'])} ({_breakdown(estimate)})"
    if _world_size() > 1:  # per process: say so, and how the strategy counts
        text += f" per process ({estimate['strategy']} over {_world_size()} processes"
        text += f", {_processes_here(device)} on this machine)" if _processes_here(device) > 1 else ")"
    if available_mb is None:
        return text
    text += f" and {where} has {format_mb(available_mb)} free"
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

    found = base_training_mb(config, device)
    if found is None or found[0] <= REFUSE_FACTOR * available:
        return
    where = "the GPU" if device.startswith("cuda") else "this machine"
    raise SLMError(f"refusing to start: {found[1]} of {config.train.init_from} needs about {format_mb(found[0])} "
                   f"(batch {config.train.batch_size}, context {config.model.context_length}) and {where} has "
                   f"{format_mb(available)} free. Use QLoRA (train.mode=lora lora.quantize_base=int4), a smaller "
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


def preflight_train(config: Any, run_dir: str | Path, resume: bool = False) -> None:
    """Everything a new (or resumed) run needs that can be checked without building it: called
    before the run directory is created, so a bad input leaves nothing behind."""
    if not isinstance(config, RunConfig):
        raise SLMError(f"config must be a RunConfig, got {type(config).__name__}: build one with "
                       "slm_core.config.load_recipe(name) or load_run_config(path)")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise SLMError(f"the run directory {run_dir} is a file: give a folder path")
    if resume and not (run_dir / "config.yaml").exists():
        raise SLMError(f"{run_dir} is not a run to resume (no config.yaml): start it with `slm train`")
    check_runs_dir(run_dir.parent, create=True)
    config.check_ready()
    if config.train.device != "auto":
        check_device(config.train.device)
    if config.train.mode in ("lora", "finetune", *PREFERENCE_MODES) or (config.train.mode == "distill" and config.train.init_from):
        check_model_source(config.train.init_from, "train.init_from", runs_dir=run_dir.parent)
    if config.train.mode == "distill":
        check_model_source(config.distill.teacher, "distill.teacher", runs_dir=run_dir.parent)
    if config.data.source.strip() != BUILTIN_PAIRS:
        source_kind(config.data.source)  # a missing local file is named now, not after a failed run
    if config.tokenizer.path and not Path(config.tokenizer.path).expanduser().exists():
        raise SLMError(f"tokenizer.path={config.tokenizer.path!r} does not exist: give a saved tokenizer folder "
                       "(or the folder with vocab.bpe + encoder.json for kind=gpt2), or leave it unset")
