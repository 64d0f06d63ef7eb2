"""GGUF export for llama.cpp and Ollama with gguf's GGUFWriter: the llama, qwen2 or gpt2 architecture,
tensors in f32, f16 or q8_0, and the byte-level BPE tokenizer."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from slm_core.errors import SLMError
from slm_core.models.hf import export_rope, hf_architecture
from slm_core.models.templates import format_prompt
from slm_core.models.tokenizer import (
    _merges_from_ranks,  # tiktoken ranks → BPE merges (helper T's)
    bytes_to_unicode,
)

GGUF_TYPES = ("f32", "f16", "q8_0")


def gguf_architecture(config) -> str:
    """'llama' | 'qwen2' | 'gpt2', or SLMError naming what llama.cpp has no graph for."""
    hf = hf_architecture(config)  # raises if the model fits no standard family at all
    if hf == "GPT2LMHeadModel":
        return "gpt2"
    if hf == "Qwen2ForCausalLM":
        return "qwen2"
    if config.bias:
        raise SLMError("llama.cpp's llama graph has no o_proj/MLP biases: this model (bias=true) cannot be "
                       "exported as GGUF; export it as 'hf' or 'onnx'")
    return "llama"


def permute_for_llama_cpp(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(heads*head_dim, in) in HF's half-rotation row order → llama.cpp's adjacent-pair order.
    Within each head, rows [0..D/2) and [D/2..D) are interleaved: 0, D/2, 1, D/2+1, ..."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape))


def gguf_tensors(model) -> dict[str, torch.Tensor]:
    """GGUF tensor name → float tensor in the layout llama.cpp expects (rows = output features)."""
    import gguf

    config, arch = model.config, gguf_architecture(model.config)
    ours = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    names, T = gguf.TENSOR_NAMES, gguf.MODEL_TENSOR
    out = {f"{names[T.TOKEN_EMBD]}.weight": ours["embed_tokens.weight"]}
    if arch == "gpt2":
        out[f"{names[T.POS_EMBD]}.weight"] = ours["embed_positions.weight"]
    for i in range(config.n_layer):
        out.update(_block_tensors(ours, config, arch, i))
    out[f"{names[T.OUTPUT_NORM]}.weight"] = ours["norm.weight"]
    if "norm.bias" in ours:
        out[f"{names[T.OUTPUT_NORM]}.bias"] = ours["norm.bias"]
    # llama/qwen2 reuse token_embd when output is absent (tied); older gpt2 loaders require output.
    if arch == "gpt2" or not config.tie_embeddings:
        out[f"{names[T.OUTPUT]}.weight"] = ours["lm_head.weight"]
    return out


def _block_tensors(ours: dict, config, arch: str, i: int) -> dict[str, torch.Tensor]:
    import gguf

    T, src, out = gguf.MODEL_TENSOR, f"layers.{i}.", {}

    def name(kind) -> str:
        return gguf.TENSOR_NAMES[kind].format(bid=i)

    attn = {n: ours[f"{src}self_attn.{n}_proj.weight"] for n in "qkv"}
    if arch == "llama":
        attn["q"] = permute_for_llama_cpp(attn["q"], config.n_head)
        attn["k"] = permute_for_llama_cpp(attn["k"], config.n_kv_head)
    if arch == "gpt2":  # one fused q|k|v matrix, as GPT-2's c_attn
        out[f"{name(T.ATTN_QKV)}.weight"] = torch.cat([attn["q"], attn["k"], attn["v"]])
        out[f"{name(T.ATTN_QKV)}.bias"] = torch.cat([ours[f"{src}self_attn.{n}_proj.bias"] for n in "qkv"])
    else:
        for n, kind in (("q", T.ATTN_Q), ("k", T.ATTN_K), ("v", T.ATTN_V)):
            out[f"{name(kind)}.weight"] = attn[n]
            if config.qkv_bias:
                out[f"{name(kind)}.bias"] = ours[f"{src}self_attn.{n}_proj.bias"]
    same_layout = [("input_layernorm", T.ATTN_NORM), ("post_attention_layernorm", T.FFN_NORM),
                   ("self_attn.o_proj", T.ATTN_OUT), ("mlp.gate_proj", T.FFN_GATE), ("mlp.up_proj", T.FFN_UP),
                   ("mlp.down_proj", T.FFN_DOWN)]
    for ours_name, kind in same_layout:
        for p in ("weight", "bias"):
            if f"{src}{ours_name}.{p}" in ours:
                out[f"{name(kind)}.{p}"] = ours[f"{src}{ours_name}.{p}"]
    return out


def _encode(array: np.ndarray, gguf_type: str):
    """→ (data, raw_dtype or None) for GGUFWriter.add_tensor."""
    import gguf

    if array.ndim < 2 or gguf_type == "f32":
        return array.astype(np.float32), None
    if gguf_type == "q8_0" and array.shape[-1] % 32 == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(array.astype(np.float32), q8), q8
    return array.astype(np.float16), None


def _add_hparams(writer, config, arch: str) -> None:
    import gguf


    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.d_model)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_vocab_size(config.vocab_size)
    if arch == "gpt2":
        writer.add_layer_norm_eps(config.norm_eps)
        return
    writer.add_head_count_kv(config.n_kv_head)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_dimension_count(config.head_dim)
    theta, scaling = export_rope(config)  # our fixed-base dynamic NTK is plain RoPE with a raised base
    writer.add_rope_freq_base(theta)
    if scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])


def write_gguf(model, tokenizer, path: str | Path, gguf_type: str = "f16", name: Optional[str] = None) -> Path:
    """Write one .gguf file; returns its path."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise SLMError(f"GGUF type {gguf_type!r} is not supported: use one of {', '.join(GGUF_TYPES)}")
    config = model.config
    arch = gguf_architecture(config)
    path = Path(path)
    with gguf_writer(path, arch) as writer:
        writer.add_name(name or config.name)
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
        writer.add_file_type(int(file_type))
        if gguf_type == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hparams(writer, config, arch)
        if tokenizer is not None:
            add_tokenizer(writer, tokenizer, config.vocab_size)
        for tensor_name, tensor in gguf_tensors(model).items():
            data, raw_dtype = _encode(tensor.numpy(), gguf_type)
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
    return path


@contextmanager
def gguf_writer(path: Path, arch: str):
    """A GGUFWriter for `path`: what the block adds is written in gguf's order (header, key-values, tensors)
    when it ends, and the file is closed either way."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


# ---- tokenizer metadata -----------------------------------------------------------------------------

def _byte_level(token: bytes, table: dict[int, str]) -> str:
    return "".join(table[b] for b in token)


def gguf_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) for llama.cpp's byte-level BPE, in id order, padded to vocab_size."""
    import gguf


    if tokenizer.kind == "hf":
        tokens, types, merges = _hf_vocab(tokenizer)
    else:
        table = bytes_to_unicode()
        by_id = {rank: token for token, rank in tokenizer.ranks.items()}
        tokens = [_byte_level(by_id[i], table) for i in range(len(by_id))]
        types = [int(gguf.TokenType.NORMAL)] * len(tokens)
        tokens.append("<|endoftext|>")  # the eot id is the last one for our kinds
        types.append(int(gguf.TokenType.CONTROL))
        pairs = _merges_from_ranks(tokenizer.ranks) + _chain_merges(tokenizer.ranks)
        merges = [f"{_byte_level(a, table)} {_byte_level(b, table)}" for a, b in pairs]
    if len(tokens) > vocab_size:
        raise SLMError(f"the tokenizer has {len(tokens)} tokens but the model only {vocab_size} embedding rows")
    for i in range(len(tokens), vocab_size):  # rows the model has beyond the tokenizer (padding)
        tokens.append(f"[PAD{i}]")
        types.append(int(gguf.TokenType.UNUSED))
    return tokens, types, merges


def _chain_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Merges that build a multi-byte token no two tokens concatenate to (a char tokenizer's 3- and
    4-byte characters), byte by byte. tiktoken takes such a token whole; llama.cpp only reaches it
    through merges, and its intermediate symbols need not be tokens."""
    chains = []
    for token in sorted(ranks, key=ranks.get):
        if len(token) > 1 and not any(token[:i] in ranks and token[i:] in ranks for i in range(1, len(token))):
            chains += [(token[:i], token[i:i + 1]) for i in range(1, len(token))]
    return list(dict.fromkeys(chains))


def _hf_vocab(tokenizer) -> tuple[list[str], list[int], list[str]]:
    """A Hugging Face byte-level BPE tokenizer.json (e.g. our own HF export read back)."""
    import json

    import gguf

    spec = json.loads(tokenizer._hf_files.get("tokenizer.json", b"{}"))
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    byte_level = pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
    if model.get("type") != "BPE" or not byte_level:
        raise SLMError("GGUF export writes GPT-2-style byte-level BPE tokenizers; this Hugging Face tokenizer "
                       "is different. Export as 'hf' and convert with llama.cpp's convert_hf_to_gguf.py, which "
                       "knows its pre-tokenizer")
    vocab = dict(model["vocab"])
    specials = {t["id"]: t["content"] for t in spec.get("added_tokens") or []}
    size = max([*vocab.values(), *specials]) + 1
    tokens, types = [f"[PAD{i}]" for i in range(size)], [int(gguf.TokenType.UNUSED)] * size
    for text, i in vocab.items():
        tokens[i], types[i] = text, int(gguf.TokenType.NORMAL)
    for i, text in specials.items():
        tokens[i], types[i] = text, int(gguf.TokenType.CONTROL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return tokens, types, merges


def add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    tokens, types, merges = gguf_vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.eot_id)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_add_bos_token(False)  # GPT-2 style: nothing is prepended to a prompt


def read_gguf(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata fields as Python values, tensors dequantized to float32 in numpy (rows, cols) order)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {}
    for key, field in reader.fields.items():
        values = [field.parts[i] for i in field.data]
        if field.types and field.types[0] == gguf.GGUFValueType.STRING:
            values = [bytes(v).decode("utf-8") for v in values]
        elif field.types and field.types[0] == gguf.GGUFValueType.ARRAY and len(field.types) > 1 \
                and field.types[-1] == gguf.GGUFValueType.STRING:
            values = [bytes(v).decode("utf-8") for v in values]
        else:
            values = [v.tolist()[0] if hasattr(v, "tolist") and len(v) == 1 else v for v in values]
        is_array = field.types and field.types[0] == gguf.GGUFValueType.ARRAY
        fields[key] = values if is_array else values[0] if values else None
    tensors = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
               for t in reader.tensors}
    return fields, tensors


# ---- Ollama --------------------------------------------------------------------------------------

def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "model"


def ollama_modelfile(folder: Path, gguf_name: str, template: Optional[str]) -> Path:
    """`ollama create NAME -f Modelfile` imports the GGUF; the prompt template matches training."""
    lines = [f"FROM ./{gguf_name}", 'PARAMETER stop "<|endoftext|>"']
    if template:
        prompt = format_prompt({"instruction": "{{ .Prompt }}", "input": ""}, template)
        lines.append(f'TEMPLATE """{prompt}{{{{ .Response }}}}"""')
        if template == "chatml":
            lines.append('PARAMETER stop "<|im_end|>"')
    path = folder / "Modelfile"
    path.write_text("\n".join(lines) + "\n")
    return path
