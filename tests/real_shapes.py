"""Folders shaped exactly like real checkpoints, for memory estimates that read no weights (no test_ prefix:
not collected). `header_only_folder` writes a published config.json and a model.safetensors whose header
lists every tensor with its real shape and dtype, but whose data is absent (extend=False) or a sparse hole
(extend=True, zeros when read): the estimate and the pre-load check see a real 1B model for a few bytes of disk.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

# meta-llama/Llama-3.2-1B's published config.json (the fields that set the shape).
LLAMA_32_1B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "vocab_size": 128256,
    "bos_token_id": 128000, "eos_token_id": 128001, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192}}
LLAMA_32_1B_PARAMETERS = 1_235_814_400  # as published (tied embeddings counted once)
# Llama-3.1-405B's shape: far beyond any machine these tests run on.
LLAMA_405B = {**LLAMA_32_1B, "hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126,
              "num_attention_heads": 128, "head_dim": 128, "tie_word_embeddings": False}


def tensor_shapes(config: dict) -> dict[str, list[int]]:
    """A Llama-shaped checkpoint's tensor names and shapes (transformers' names)."""
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or d // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    shapes = {"model.embed_tokens.weight": [config["vocab_size"], d], "model.norm.weight": [d]}
    if not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = [config["vocab_size"], d]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": [q, d], p + "self_attn.k_proj.weight": [kv, d],
                       p + "self_attn.v_proj.weight": [kv, d], p + "self_attn.o_proj.weight": [d, q],
                       p + "mlp.gate_proj.weight": [f, d], p + "mlp.up_proj.weight": [f, d],
                       p + "mlp.down_proj.weight": [d, f], p + "input_layernorm.weight": [d],
                       p + "post_attention_layernorm.weight": [d]})
    return shapes


def header_only_folder(folder: Path, config: dict, dtype: str = "BF16", extend: bool = False) -> int:
    """Write config.json + a header-only model.safetensors into `folder`; returns the tensor bytes it claims."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    size = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    header, offset = {}, 0
    for name, shape in tensor_shapes(config).items():
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size * count]}
        offset += size * count
    raw = json.dumps(header).encode()
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        if extend:
            f.truncate(8 + len(raw) + offset)
    return offset


def hub_cache_snapshot(cache: Path, repo_id: str, config: dict, commit: str = "0123abcd") -> Path:
    """A header-only model laid out as the Hugging Face cache holds a download of `repo_id`."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    header_only_folder(repo / "snapshots" / commit, config, extend=True)  # sparse: its size, no disk
    return repo / "snapshots" / commit
