"""What a GGUF level costs in quality: the exported file's tensors read back (dequantized) into a copy of the model,
its perplexity on the run's validation data next to the same model with f16 weights, and every level's size.

The tensors are mapped back by inverting export_gguf's layout (names, llama.cpp's q/k row order, GPT-2's fused
q|k|v), so the figure is the weights' own rounding error, measured by our forward pass."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import torch

from slm_core.errors import SLMError
from slm_core.post.export_gguf import gguf_architecture, read_gguf
from slm_core.post.gguf_quant import GGUF_TYPES, estimated_bytes
from slm_core.post.quantize import eval_windows_for, windows_perplexity

MAX_MEASURED_PARAMS = 600e6
_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_OURS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_output": "self_attn.o_proj",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
         "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_TOP = {"token_embd.weight": "embed_tokens.weight", "position_embd.weight": "embed_positions.weight",
        "output_norm.weight": "norm.weight", "output_norm.bias": "norm.bias", "output.weight": "lm_head.weight"}


def unpermute_from_llama_cpp(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of export_gguf.permute_for_llama_cpp: llama.cpp's adjacent pairs → HF's two halves per head."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape))


def state_from_gguf(config, tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Our state dict from an export's GGUF tensors (rope_freqs, computed from the config, is skipped)."""
    arch, state = gguf_architecture(config), {}
    for name, array in tensors.items():
        tensor = torch.from_numpy(np.array(array, dtype=np.float32))
        if name in _TOP:
            state[_TOP[name]] = tensor
            continue
        match = _BLOCK.match(name)
        if match is None:
            continue
        layer, kind, part = match.groups()
        prefix = f"layers.{layer}."
        if kind == "attn_qkv":  # GPT-2: q|k|v stacked on the output axis
            for which, piece in zip("qkv", tensor.chunk(3, dim=0)):
                state[f"{prefix}self_attn.{which}_proj.{part}"] = piece.contiguous()
            continue
        if arch == "llama" and kind in ("attn_q", "attn_k") and part == "weight":
            tensor = unpermute_from_llama_cpp(tensor, config.n_head if kind == "attn_q" else config.n_kv_head)
        state[f"{prefix}{_OURS[kind]}.{part}"] = tensor
    return state


def model_from_gguf(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """A float32 copy of `model` (our Transformer) holding the weights its GGUF export at `path` stores."""
    copied = copy.deepcopy(model).to("cpu", torch.float32).eval()
    _, tensors = read_gguf(path)
    missing, unexpected = copied.load_state_dict(state_from_gguf(copied.config, tensors), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and copied.config.tie_embeddings)]
    if missing or unexpected:
        raise SLMError(f"{Path(path).name} does not hold this model's tensors (missing {missing[:3]}, unexpected "
                       f"{unexpected[:3]}): measure the model it was exported from")
    copied.tie_weights()
    return copied


def level_sizes(model: torch.nn.Module) -> dict[str, int]:
    """Estimated file bytes of `model` at every GGUF level (tokenizer metadata aside)."""
    config = model.config
    n_matrix = n_edge = n_vector = 0
    for name, param in model.named_parameters():
        if param.ndim < 2:
            n_vector += param.numel()
        elif name.startswith(("embed_tokens", "lm_head")) and not (name == "lm_head.weight" and config.tie_embeddings):
            n_edge += param.numel()
        elif not name.startswith("embed_positions"):
            n_matrix += param.numel()
    return {level: estimated_bytes(n_matrix, n_edge, n_vector, level) for level in GGUF_TYPES}


def quality_table(loaded, model: torch.nn.Module, gguf_path: str | Path, level: str,
                  max_tokens: int = 20_000) -> list[dict]:
    """Rows {level, bytes, perplexity, vs_f16} for f16 (the model's weights rounded to half) and the written
    level (its file read back), on up to `max_tokens` of the run's validation data; every other level's row has
    its estimated size only. `model`: the plain float model that was exported."""
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > MAX_MEASURED_PARAMS:  # three float32 copies of the model are held while measuring
        raise SLMError(f"perplexity per level is measured up to {MAX_MEASURED_PARAMS / 1e6:.0f}M parameters; this "
                       f"model has {n_params / 1e6:.0f}M: run llama.cpp's llama-perplexity on the file instead")
    windows = eval_windows_for(loaded, max_tokens=max_tokens)
    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    with torch.no_grad():
        half = copy.deepcopy(model)
        for param in half.parameters():
            param.copy_(param.half().float())
    f16 = windows_perplexity(half, windows)
    measured = {"f16": f16, level: windows_perplexity(model_from_gguf(model, gguf_path), windows)}
    sizes = level_sizes(model)
    sizes[level] = Path(gguf_path).stat().st_size
    return [{"level": name, "bytes": sizes[name], "perplexity": measured.get(name),
             "vs_f16": None if name not in measured else measured[name] / f16 - 1} for name in GGUF_TYPES]
