"""What a real checkpoint needs to chat, LoRA, QLoRA or fully fine-tune on this machine, from its config and
safetensors headers, before it is loaded; and the check that refuses a load that cannot fit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from slm_core.config import LoRAConfig, load_run_config
from slm_core.errors import SLMError
from slm_core.models.decoding import prepared_weight_copies
from slm_core.models.estimate import (
    CPU_ALLOCATOR_SLACK,
    count_parameters,
    default_device,
    fits,
    inference_memory,
    linear_weight_count,
    lora_parameters,
    training_memory,
)
from slm_core.models.hf import config_from_hf, display_name, read_hf_config
from slm_core.models.sources import (
    cached_snapshot,
    is_hub_id,
    resolve_source,
    weight_stats,
)
from slm_core.system import MB, available_memory_mb, cpu_has_native_bf16, format_mb

CHAT_SLOTS = 4  # concurrent replies the Studio's chat engine holds a KV cache for (studio.chat_session.SLOTS)
CHAT_CACHE = 4096  # positions per slot at most (slm_core.infer.engine.MAX_CACHE)
INT4_GROUP = 64  # slm_core.models.qlora.GROUP_SIZE: one fp32 scale and zero per 64 weights
FORCE_ENV = "SLM_FORCE"  # SLM_FORCE=1: load even when the estimate says it cannot fit
_DTYPE_BYTES = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2, "fp32": 4, "float32": 4, "bfloat16": 2, "float16": 2}


# ---- where the model is and what it is -----------------------------------------------------------

def locate(spec: str, runs_dir: Optional[str | Path] = None) -> Path:
    """The local folder holding `spec`'s config and weights, without downloading or converting anything:
    a Hub id already in the Hugging Face cache, a Hugging Face folder, a run (its best checkpoint) or a
    checkpoint folder."""
    spec = str(spec).strip()
    if is_hub_id(spec) and not (runs_dir and (Path(runs_dir) / spec).is_dir()):
        repo_id, _, revision = spec.partition("@")
        folder = cached_snapshot(repo_id, revision or "main")
        if folder is None:
            raise SLMError(f"'{repo_id}' is not downloaded yet: download it with the model picker (or "
                           f"`slm generate {repo_id}`) to see its estimate")
        return folder
    if spec.lower().endswith(".gguf"):
        raise SLMError("a GGUF file is estimated once it has been converted: load it once (Chat, or "
                       "`slm generate FILE.gguf`), then pick the folder it was converted to")
    path = Path(spec).expanduser()
    if not path.is_dir() and runs_dir is not None and (Path(runs_dir) / spec).is_dir():
        path = Path(runs_dir) / spec
    return resolve_source(path if path.is_dir() else spec)


def model_config(folder: Path):
    """(ModelConfig, display name) of a Hugging Face folder or a checkpoint folder (config.yaml)."""
    if (folder / "config.json").exists() and not (folder / "config.yaml").exists():
        name = display_name(folder)
        return config_from_hf(read_hf_config(folder), name), name
    if (folder / "config.yaml").exists():
        config = load_run_config(folder / "config.yaml")
        if config.uses_lora and (folder / "adapter").is_dir() and config.train.init_from:
            return model_config(locate(config.train.init_from))[0], _run_name(folder)
        return config.model, _run_name(folder)
    raise SLMError(f"{folder} holds no model: pick a Hugging Face folder (config.json + safetensors), a run, "
                   f"a checkpoint folder or a Hub id")


def _run_name(folder: Path) -> str:
    return folder.parent.parent.name if folder.parent.name == "checkpoints" else folder.name


def facts(folder: Path) -> dict:
    """name, family, parameters, context, dtype (as stored), weight and disk bytes, and the ModelConfig."""
    config, name = model_config(folder)
    stats = weight_stats(folder)
    if not stats["parameters"]:  # a LoRA checkpoint keeps only its adapter: count the base's shape
        stats = {**stats, "parameters": count_parameters(config)["total"]}
    raw = config.hf_config or {}
    family = (raw.get("architectures") or [raw.get("model_type") or f"{config.family}-style run"])[0]
    return {"name": name, "family": family, "parameters": stats["parameters"], "context": config.context_length,
            "dtype": stats["dtype"] or "f32", "tensor_bytes": stats["tensor_bytes"], "disk_bytes": stats["disk_bytes"],
            "config": config, "path": str(folder)}


def held_bytes(dtype: Optional[str]) -> int:
    """Bytes per weight as the loaders hold a checkpoint stored in `dtype` (bf16/fp16 stay 2 bytes)."""
    return _DTYPE_BYTES.get((dtype or "f32").lower(), 4)


# ---- the figures -------------------------------------------------------------------------------

def chat_dtype(device: str) -> str:
    """The dtype the chat engine computes in ('auto': bf16 where native, else fp32; see engine.pick_dtype)."""
    if device.startswith("cuda"):
        return "bf16"

    return "bf16" if cpu_has_native_bf16() else "fp32"


def quantized_base_bytes(config, params: int, held: int, method: str) -> tuple[float, float]:
    """Bytes of a QLoRA base as slm_core.models.qlora holds it: block linears int8 (fp32 scale per row) or int4 (fp32
    scale and zero per INT4_GROUP weights); the token table int8 rows with an fp32 scale each, shared with a
    tied lm_head (an untied one is int8 too); norms and biases in the checkpoint's dtype. Returns (those
    bytes, the transient): what a training-sized forward or backward dequantizes at a time, at most the
    output layer as two fp32 (vocab, d) temporaries (measured: +2.0 GB at Llama-3.2's 128k x 2048 head, benchmarks/bench_model_memory.py).
    Left out: the checkpoint's memory-mapped pages the loader touched while quantizing, which stay mapped
    (they count in RSS, but are file-backed: the kernel takes them back under pressure)."""
    d, f, vocab = config.d_model, config.d_ff, config.vocab_size
    block = linear_weight_count(config) - vocab * d
    tables = 1 if config.tie_embeddings else 2
    if method == "int8":  # one scale per output row: q, k, v, o, (gate,) up, down
        rows = config.n_layer * (config.n_head * config.head_dim + 2 * config.n_kv_head * config.head_dim
                                 + 2 * d + (2 if config.mlp == "swiglu" else 1) * f)
        quantized = block * 1.0 + 4.0 * rows
    else:
        quantized = block * 0.5 + 8.0 * block / INT4_GROUP
    rest = params - block - tables * vocab * d  # norms, biases, learned positions
    return quantized + tables * vocab * (d + 4.0) + rest * held, max(4.0 * f * d, 8.0 * vocab * d)


def training_rows(config, params: int, held: int, device: str, batch_size: int, context: int, precision: str,
                  grad_checkpointing: bool, lora) -> list[dict]:
    """LoRA, QLoRA int8, QLoRA int4 and full fine-tune peaks in MB.

    estimate.training_memory counts 4-byte weights (and, when everything trains, 4-byte gradients and
    8-byte AdamW state); those terms are replaced by what this checkpoint's dtype makes them. Both of
    its candidate peaks contain the weights and the optimizer state; the optimizer-step peak also all
    the gradients."""
    added = lora_parameters(config, lora)
    rows = []
    lora_mem = training_memory(config, batch_size, precision, grad_checkpointing, added / params, context=context,
                               device=device)
    lora_total = lora_mem["total_mb"] * MB - params * (4 - held)  # the frozen base in its own dtype
    rows.append({"what": "lora", "mb": lora_total / MB, "trainable": added})
    for method in ("int8", "int4"):
        base, dequantized = quantized_base_bytes(config, params, held, method)
        rows.append({"what": f"qlora-{method}", "mb": (lora_total - params * held + base + dequantized) / MB,
                     "trainable": added, "base_mb": base / MB, "dequantized_mb": dequantized / MB})
    full = training_memory(config, batch_size, precision, grad_checkpointing, 1.0, context=context, device=device)
    # Weights and AdamW's two moments (3 x 4 bytes) are in both peaks and follow the parameters' dtype. The
    # gradients, also in that dtype, are all alive only at the optimizer step: leaving them at 4 bytes keeps
    # this an upper bound, exact when the backward peak is the larger.
    full_total = full["total_mb"] * MB - 3 * params * (4 - held)
    rows.append({"what": "finetune", "mb": full_total / MB, "trainable": params})
    return rows


def estimate(spec: str, runs_dir: Optional[str | Path] = None, device: Optional[str] = None, batch_size: int = 1,
             context: Optional[int] = None, precision: str = "auto", grad_checkpointing: bool = False,
             lora_r: int = 8, lora_targets="attention") -> dict:
    """Everything the Studio shows for a picked real model:
    {"facts", "device", "available_mb", "chat": {...}, "training": [rows], "context", "notes"}; each row has
    "mb" and "fits" (None when the free memory is unknown). Training uses `context` tokens (default: the
    model's, capped at 2048) and `batch_size` sequences per step."""
    folder = locate(spec, runs_dir)
    info = facts(folder)
    config = info.pop("config")
    if config.vocab_size is None:
        raise SLMError(f"{spec}: the model's vocabulary size is unknown; train it first")
    device = str(device or _device())
    available = available_memory_mb(device)
    held = held_bytes(info["dtype"])
    params = info["parameters"]
    cache = min(config.context_length, CHAT_CACHE)
    dtype = chat_dtype(device)
    one = inference_memory(config, batch=1, context=cache, dtype=dtype)
    # The engine keeps a KV cache per slot, computes the logits of the last position only, and runs a small
    # model from prepared copies of its matrices (slm_core.infer.decoder).

    copies = prepared_weight_copies(params, config.d_model, dtype, device)
    chat_mb = (one["weights_mb"] * (1 + copies) + CHAT_SLOTS * one["kv_cache_mb"] + one["activations_mb"]
               + 4 * config.vocab_size / MB)
    if held_bytes(dtype) != held:  # converting: the memory-mapped checkpoint stays mapped until all is converted
        chat_mb = max(chat_mb, info["tensor_bytes"] / MB + one["weights_mb"])
    T = min(int(context or 2048), config.context_length)
    lora = LoRAConfig(r=int(lora_r), targets=lora_targets)
    rows = training_rows(config, params, held, device, int(batch_size), T, precision, grad_checkpointing, lora)
    slack = 1.0 if device.startswith("cuda") else CPU_ALLOCATOR_SLACK
    for row in rows:
        row["fits"] = None if available is None else fits(row["mb"] * slack, available)
    notes = []
    if dtype == "fp32" and held == 2:
        notes.append("This CPU has no native bf16, so chat converts the weights to fp32 (twice the checkpoint).")
    return {"facts": info, "device": device, "available_mb": available, "context": T, "batch_size": int(batch_size),
            "chat": {"mb": chat_mb, "dtype": dtype, "cache": cache, "slots": CHAT_SLOTS,
                     "weights_mb": one["weights_mb"], "kv_cache_mb": one["kv_cache_mb"] * CHAT_SLOTS,
                     "fits": None if available is None else fits(chat_mb, available)},
            "training": rows, "notes": notes}


def _device() -> str:
    return default_device()


# ---- refusing a load that cannot fit -------------------------------------------------------------

def load_bytes(folder: Path, dtype: Optional[str] = None) -> Optional[int]:
    """Bytes the loader will hold for `folder`'s weights (converted to `dtype` when given), from the
    safetensors headers; None when the folder keeps its weights elsewhere (a LoRA run: its base is
    checked when it loads; a damaged file: its loader says so in its own words)."""
    try:
        stats = weight_stats(folder)
    except SLMError:
        return None
    if not stats["tensor_bytes"]:
        return None
    if dtype is None or stats["dtype"] is None:
        return stats["tensor_bytes"]
    return int(stats["tensor_bytes"] * held_bytes(dtype) / held_bytes(stats["dtype"]))


def check_fits(folder: Path, device: str = "cpu", dtype: Optional[str] = None, force: bool = False) -> None:
    """Refuse, before a weight is read, to load a model whose weights alone exceed the free memory of
    `device` (RAM, a container's limit, or the GPU). force or SLM_FORCE=1 skips the check."""
    if force or os.environ.get(FORCE_ENV, "").lower() in ("1", "true", "yes", "on"):
        return
    needed = load_bytes(folder, dtype)
    available = available_memory_mb(str(device))
    if needed is None or available is None or needed / MB <= available:
        return
    where = "the GPU" if str(device).startswith("cuda") else "this machine"
    raise SLMError(f"refusing to load {folder.name}: its weights need about {format_mb(needed / MB)} and {where} has "
                   f"{format_mb(available)} free. Pick a smaller model, or an int8/int4 version of it (`slm quantize` "
                   f"on a machine where it fits); set {FORCE_ENV}=1 (or train.force=true) to try anyway")


def base_training_mb(config, device: str) -> Optional[tuple[float, str]]:
    """(MB, what) a LoRA / QLoRA / fine-tune / distill run on a real base needs, from the base's config
    before it loads; None when the base is not on disk yet (a Hub id still to download)."""
    train = config.train
    try:
        found = estimate(train.init_from, device=device, batch_size=train.batch_size, context=config.model.context_length,
                         precision=train.precision, grad_checkpointing=train.grad_checkpointing,
                         lora_r=config.lora.r, lora_targets=config.lora.targets)
    except SLMError:
        return None  # not downloaded yet, or refused with its own message when it loads
    quantize = getattr(config.lora, "quantize_base", None) or "none"
    kind = ("finetune" if not config.uses_lora else "lora" if quantize == "none" else f"qlora-{quantize}")
    row = next((r for r in found["training"] if r["what"] == kind), found["training"][-1])
    return row["mb"], kind
