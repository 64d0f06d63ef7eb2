"""Measuring a quantized model against its original, side by side: size on disk, memory held,
validation perplexity and decode speed (`slm quantize --report`, the Quantize tab)."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from slm_core.data.cache import prepare_data
from slm_core.data.preference import text_data_config
from slm_core.errors import SLMError
from slm_core.infer.generate import generate_tokens
from slm_core.models.quantized import (
    WEIGHTS,
    WeightOnlyInt4Linear,
    is_dynamic_int8,
    is_quantized,
    quantized_state,
)


def method_label(model: nn.Module) -> str:
    info = getattr(model, "quantization", None)
    if not info:
        return str(next(model.parameters()).dtype).replace("torch.", "").replace("float", "fp")
    return info["method"] + (f"-g{info['group_size']}" if info.get("group_size") else "")


def model_memory_bytes(model: nn.Module) -> int:
    """Bytes the model's tensors hold in memory: parameters and buffers (shared storage once), the int4
    kernel's own layout where built, and torch.ao's packed int8 weights (counted at 1 byte/weight)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        if tensor.device.type != "meta" and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    for module in model.modules():
        if isinstance(module, WeightOnlyInt4Linear) and module._kernel is not None:
            total += sum(t.numel() * t.element_size() for t in module._kernel)
        elif is_dynamic_int8(module):
            qweight, bias = module.weight(), module.bias()
            total += qweight.numel() + qweight.shape[0] * 16 + (0 if bias is None else bias.numel() * 4)
    return total


def weights_file_bytes(model: nn.Module) -> int:
    """Size of the weights file this model saves to (model.safetensors), measured by writing it."""
    from safetensors.torch import save_file

    if is_quantized(model):
        tensors = quantized_state(model)[0]
    else:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_embeddings:
            tensors.pop("lm_head.weight", None)
    with tempfile.TemporaryDirectory() as tmp:
        save_file(tensors, f"{tmp}/{WEIGHTS}")
        return Path(f"{tmp}/{WEIGHTS}").stat().st_size


def as_windows(eval_windows, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) pairs from a LongTensor of windows (N, T+1) or an iterable of (x, y) (y = -100: not scored)."""
    if isinstance(eval_windows, torch.Tensor):
        w = eval_windows.long()
        return [(w[i:i + batch, :-1], w[i:i + batch, 1:]) for i in range(0, len(w), batch)]
    return [(x, y) for x, y in eval_windows]


@torch.inference_mode()
def windows_perplexity(model: nn.Module, windows: list) -> float:
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for x, y in windows:
        logits = model(x.to(device)).float()  # (B, T, V)
        y = y.to(device)
        nll += F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum").item()
        count += int((y != -100).sum())
    if count == 0:
        raise SLMError("no tokens to evaluate in the given windows; use a larger validation split")
    return math.exp(min(nll / count, 50.0))


def decode_tokens_per_sec(model: nn.Module, prompt_ids: list[int], new_tokens: int = 64) -> float:
    """Batch-1 greedy generation speed over the KV cache (prefill of the prompt included)."""
    start = time.perf_counter()
    produced = sum(1 for _ in generate_tokens(model, prompt_ids, new_tokens, temperature=0.0, seed=0))
    return produced / max(time.perf_counter() - start, 1e-9)


def _peak_cuda_mb(model: nn.Module, prompt_ids: list[int], new_tokens: int) -> Optional[float]:
    if next(model.parameters()).device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    decode_tokens_per_sec(model, prompt_ids, new_tokens)
    return torch.cuda.max_memory_allocated() / 2**20


def quantization_report(original: nn.Module, quantized, eval_windows=None, *, prompt_ids: Optional[list] = None,
                        new_tokens: int = 64, repeats: int = 3, paths: Optional[dict] = None,
                        eval_fn: Optional[Callable[[nn.Module], float]] = None,
                        baseline: Optional[dict] = None) -> list[dict]:
    """Size, memory, perplexity and decode speed of the original and each quantized model, measured in
    this process side by side (speed: the best of `repeats` interleaved rounds, which evens out noise
    from other work on the machine). `quantized`: a model or {label: model}; `paths`: {label: artifact
    folder or file} to read disk sizes from (else each model's weights are written to a temp file).
    Perplexity comes from `eval_fn(model)` or from `eval_windows` (see `as_windows`); memory is the
    tensors held (`model_memory_bytes`), plus peak allocation during generation on CUDA.
    `baseline`: the original's row as measured before (same checkpoint and windows): reused, not measured again,
    so every quantized variant's ratios are against one measurement of the original.
    Returns rows (dicts) with ratios against the first row, the original."""
    models = {method_label(original): original}
    models.update(quantized if isinstance(quantized, dict) else {method_label(quantized): quantized})
    windows = as_windows(eval_windows) if eval_windows is not None else None
    if prompt_ids is None:
        prompt_ids = windows[0][0][0, :16].tolist() if windows else [0] * 8
    rows = {label: _static_row(label, model, paths) for label, model in models.items()}
    first = next(iter(rows))
    measured = dict(models)
    if baseline is not None:
        rows[first] = {**rows[first], **{k: baseline[k] for k in ("ppl", "peak_mem_mb", "memory_mb") if k in baseline}}
        del measured[first]
    for label, model in measured.items():
        ppl = eval_fn(model) if eval_fn else (windows_perplexity(model, windows) if windows else None)
        rows[label]["ppl"] = ppl
        decode_tokens_per_sec(model, prompt_ids, 4)  # warm-up: first-call allocations, kernel layouts
        rows[label]["peak_mem_mb"] = _peak_cuda_mb(model, prompt_ids, new_tokens)
        rows[label]["memory_mb"] = model_memory_bytes(model) / 2**20  # after warm-up: caches built
    speeds = {label: 0.0 for label in measured}
    for _ in range(max(1, repeats)):
        for label, model in measured.items():
            speeds[label] = max(speeds[label], decode_tokens_per_sec(model, prompt_ids, new_tokens))
    if baseline is not None:
        speeds[first] = baseline["tokens_per_sec"]
    base = rows[next(iter(rows))]
    for label, row in rows.items():
        row["tokens_per_sec"] = speeds[label]
        row["speedup"] = speeds[label] / speeds[next(iter(rows))]
        row["size_ratio"] = row["disk_mb"] / base["disk_mb"]
        row["memory_ratio"] = row["memory_mb"] / base["memory_mb"]
        row["ppl_delta"] = None if row["ppl"] is None else row["ppl"] - base["ppl"]
    return list(rows.values())


def _static_row(label: str, model: nn.Module, paths: Optional[dict]) -> dict:
    info = getattr(model, "quantization", None) or {}
    path = Path(paths[label]) if paths and label in paths else None
    if path is not None and path.is_dir():
        path = path / WEIGHTS
    # The weights file on disk where there is one (what the report card counts), else the model saved now.
    size = path.stat().st_size if path is not None and path.is_file() else weights_file_bytes(model)
    return {"model": label, "method": info.get("method", "none"), "group_size": info.get("group_size"),
            "disk_mb": size / 2**20}


def format_report(rows: list[dict]) -> str:
    """A plain-text table of quantization_report rows, for the CLI."""
    lines = [f"{'model':<14}{'disk MB':>9}{'size':>7}{'mem MB':>9}{'mem':>7}{'val ppl':>10}{'Δppl':>9}"
             f"{'tok/s':>9}{'speed':>7}"]
    for r in rows:
        ppl = f"{r['ppl']:>10.4f}" if r["ppl"] is not None else f"{'-':>10}"
        delta = f"{r['ppl_delta']:>+9.4f}" if r["ppl_delta"] is not None else f"{'-':>9}"
        lines.append(f"{r['model']:<14}{r['disk_mb']:>9.2f}{r['size_ratio']:>6.2f}x{r['memory_mb']:>9.2f}"
                     f"{r['memory_ratio']:>6.2f}x{ppl}{delta}{r['tokens_per_sec']:>9.1f}{r['speedup']:>6.2f}x")
    return "\n".join(lines)


def eval_windows_for(loaded, max_tokens: int = 20_000) -> list:
    """Non-overlapping validation windows of the model's own data (its config's data source)."""
    data = prepare_data(text_data_config(loaded.config, loaded.path), tokenizer=loaded.tokenizer, progress=False)
    context = loaded.model.config.context_length
    windows, total = [], 0
    for x, y in data.iter_eval_windows("val", context, context):
        windows.append((x, y))
        total += x.numel()
        if total >= max_tokens:
            break
    return windows
