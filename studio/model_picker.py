"""The model picker's extra sources and its one-line description of a model, without torch.

`hub_choices()` lists the complete causal-LM snapshots in the Hugging Face cache as (label, value)
pairs whose value is the Hub id, which every model argument accepts (`slm_core.sources`
resolves it to the cached snapshot, offline). `describe_model(folder)` reads config.json and the
safetensors headers (8-byte length + JSON: shapes and dtypes, no weights) to show family,
parameters, context, dtype and disk size. Tabs add these to their own run lists.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Optional

from slm_core.sources import list_cached_models

_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "F64": 8, "I32": 4, "I64": 8}


def hub_choices() -> list[tuple[str, str]]:
    """(label, Hub id) for each complete model in the Hugging Face cache, newest first."""
    seen, choices = set(), []
    for model in list_cached_models():
        if model.complete and model.repo_id not in seen:
            seen.add(model.repo_id)
            choices.append((f"{model.repo_id} (Hugging Face cache)", model.repo_id))
    return choices


def _header(path: Path) -> dict:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def weight_stats(folder: Path) -> tuple[int, Optional[str], int]:
    """(parameters, dtype, bytes on disk) of a folder's safetensors files, from their headers only."""
    params, dtypes, size = 0, {}, 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        size += path.stat().st_size
        for name, info in _header(path).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= dim
            params += count
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + count
    dtype = max(dtypes, key=dtypes.get).lower() if dtypes else None
    return params, dtype, size


def describe_model(folder: str | Path) -> dict:
    """family, parameters, context, dtype, disk_bytes of a Hugging Face folder (a cache snapshot too)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    params, dtype, size = weight_stats(folder)
    return {"family": (config.get("architectures") or [config.get("model_type", "?")])[0],
            "parameters": params, "context": config.get("max_position_embeddings") or config.get("n_positions"),
            "dtype": dtype, "disk_bytes": size}


def describe_line(folder: str | Path) -> str:
    """'LlamaForCausalLM · 1.24B parameters · context 131,072 · bf16 · 2.47 GB on disk'."""
    info = describe_model(folder)
    params = info["parameters"]
    count = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"
    context = f"{info['context']:,}" if info["context"] else "?"
    return (f"{info['family']} · {count} parameters · context {context} · {info['dtype']} · "
            f"{info['disk_bytes'] / 1e9:.2f} GB on disk")
