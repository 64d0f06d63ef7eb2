"""GGUF export for llama.cpp and Ollama with gguf's GGUFWriter, as llama.cpp's convert_hf_to_gguf.py writes each
family: the llama, qwen2, qwen3 or gpt2 architecture (Llama 3's rope scaling as rope_freqs, Qwen2's q/k/v biases,
Qwen3's q/k norms, tied embeddings as no output tensor), tensors at one level of the quantization ladder
(gguf_quant.py) and the family's tokenizer (gguf_tokenizer.py)."""

from __future__ import annotations

import math
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from slm_core.errors import SLMError
from slm_core.models.hf import export_rope, hf_architecture
from slm_core.models.templates import format_prompt
from slm_core.post.gguf_quant import (
    GGUF_TYPES,
    K_LEVELS,
    check_level,
    encode,
    file_type,
    k_quantize,
    require_k_quantizer,
)
from slm_core.post.gguf_read import read_gguf, read_metadata
from slm_core.post.gguf_tokenizer import add_tokenizer
from slm_core.run.lineage_hub import add_gguf_base_models

__all__ = ["GGUF_TYPES", "gguf_architecture", "gguf_tensors", "permute_for_llama_cpp", "read_gguf", "write_gguf"]


def gguf_architecture(config) -> str:
    """'llama' | 'qwen2' | 'qwen3' | 'gpt2', or SLMError naming what llama.cpp has no graph for."""
    hf = hf_architecture(config)  # raises if the model fits no standard family at all
    if hf == "GPT2LMHeadModel":
        return "gpt2"
    if hf == "Qwen2ForCausalLM":
        return "qwen2"
    if hf == "Qwen3ForCausalLM":
        return "qwen3"
    if config.bias:
        raise SLMError("llama.cpp's llama graph has no o_proj/MLP biases: this model (bias=true) cannot be "
                       "exported as GGUF; export it as 'hf' or 'onnx'")
    return "llama"


def permute_for_llama_cpp(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(heads*head_dim, in) in HF's half-rotation row order → llama.cpp's adjacent-pair order (its llama graph
    rotates adjacent pairs; qwen2/qwen3 use the NEOX half rotation and are not permuted).
    Within each head, rows [0..D/2) and [D/2..D) are interleaved: 0, D/2, 1, D/2+1, ..."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape))


def llama3_rope_factors(config) -> torch.Tensor:
    """(head_dim/2,) divisors of each RoPE frequency: LlamaModel.generate_extra_tensors' rope_freqs, computed
    the same way (float32 tensor arithmetic per frequency), so the bytes equal llama.cpp's conversion."""
    dim, factor = config.head_dim, config.rope_scaling_factor
    low, high, old = config.rope_low_freq_factor, config.rope_high_freq_factor, config.rope_original_context
    freqs = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def gguf_tensors(model) -> dict[str, torch.Tensor]:
    """GGUF tensor name → tensor (the model's dtype) in the layout llama.cpp expects (rows = output features)."""
    import gguf

    config, arch = model.config, gguf_architecture(model.config)
    # Views in the model's own dtype: each tensor becomes float32 only when written (a 1B bf16 model would
    # otherwise hold a second, 5 GB copy of itself).
    ours = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    names, T = gguf.TENSOR_NAMES, gguf.MODEL_TENSOR
    out = {f"{names[T.TOKEN_EMBD]}.weight": ours["embed_tokens.weight"]}
    if arch == "gpt2":
        out[f"{names[T.POS_EMBD]}.weight"] = ours["embed_positions.weight"]
    if arch != "gpt2" and config.rope_scaling == "llama3":
        out[f"{names[T.ROPE_FREQS]}.weight"] = llama3_rope_factors(config)
    for i in range(config.n_layer):
        out.update(_block_tensors(ours, config, arch, i))
    out[f"{names[T.OUTPUT_NORM]}.weight"] = ours["norm.weight"]
    if "norm.bias" in ours:
        out[f"{names[T.OUTPUT_NORM]}.bias"] = ours["norm.bias"]
    # llama/qwen reuse token_embd when output is absent (tied); older gpt2 loaders require output.
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
                   ("mlp.down_proj", T.FFN_DOWN), ("self_attn.q_norm", T.ATTN_Q_NORM),
                   ("self_attn.k_norm", T.ATTN_K_NORM)]
    for ours_name, kind in same_layout:
        for p in ("weight", "bias"):
            if f"{src}{ours_name}.{p}" in ours:
                out[f"{name(kind)}.{p}"] = ours[f"{src}{ours_name}.{p}"]
    return out


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
    writer.add_key_length(config.head_dim)  # Qwen3-0.6B: 16 heads of 128 on a 1024 width
    writer.add_value_length(config.head_dim)
    theta, scaling = export_rope(config)  # our fixed-base dynamic NTK is plain RoPE with a raised base
    writer.add_rope_freq_base(theta)
    if scaling and scaling["rope_type"] == "linear":  # llama3 scaling is the rope_freqs tensor instead
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])


def write_gguf(model, tokenizer, path: str | Path, gguf_type: str = "f16", name: Optional[str] = None,
               base_models: Optional[list[dict]] = None) -> Path:
    """Write one .gguf file at `gguf_type` (a level of gguf_quant.GGUF_TYPES); returns its path. K-quant levels
    are written as f16 and then quantized by llama.cpp (refused first, in one line, when it is not here)."""
    check_level(gguf_type)
    path = Path(path)
    if gguf_type in K_LEVELS:
        require_k_quantizer(gguf_type)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".f16-") as tmp:
            source = _write_numpy_level(model, tokenizer, Path(tmp) / "f16.gguf", "f16", name, base_models)
            return k_quantize(source, path, gguf_type)
    return _write_numpy_level(model, tokenizer, path, gguf_type, name, base_models)


def _write_numpy_level(model, tokenizer, path: Path, level: str, name: Optional[str],
                       base_models: Optional[list[dict]] = None) -> Path:
    import gguf

    config = model.config
    arch = gguf_architecture(config)
    with gguf_writer(path, arch) as writer:
        writer.add_name(name or config.name)
        add_gguf_base_models(writer, base_models)  # general.base_model.*: where it came from (slm_core.run.lineage_hub)
        writer.add_file_type(file_type(level))
        if level not in ("f32", "f16"):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hparams(writer, config, arch)
        if tokenizer is not None:
            add_tokenizer(writer, tokenizer, config.vocab_size, getattr(config, "hf_config", None))
        for tensor_name, tensor in gguf_tensors(model).items():
            data, raw_dtype = encode(tensor_name, tensor.float().numpy(), level)
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
    return path


@contextmanager
def gguf_writer(path: Path, arch: str):
    """A GGUFWriter for `path`: what the block adds is written in gguf's order (header, key-values, tensors)
    when it ends, and the file is closed either way."""
    import gguf

    # use_temp_file: each encoded tensor goes to a spooled temporary file as it is added, not held until the end
    writer = gguf.GGUFWriter(str(path), arch, use_temp_file=True)
    try:
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


# ---- Ollama --------------------------------------------------------------------------------------

def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "model"


# Ollama's templates are Go templates, not Jinja: the family's chat format written out once, system turn included.
_OLLAMA_FAMILIES = {
    "<|im_start|>": ('{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}'
                     '<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}'
                     '<|im_end|>\n', ("<|im_start|>", "<|im_end|>")),
    "<|start_header_id|>": ('{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>'
                            '{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}'
                            '<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}'
                            '<|eot_id|>', ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "[INST]": ("[INST] {{ if .System }}<<SYS>>\n{{ .System }}\n<</SYS>>\n\n{{ end }}{{ .Prompt }} [/INST] "
               "{{ .Response }}", ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")),
}
_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\\n|\n)([^'\"{}<>]+?)<\|im_end\|>")  # a literal default only


def ollama_modelfile(folder: Path, gguf_name: str, template: Optional[str]) -> Path:
    """`ollama create NAME -f Modelfile` imports the GGUF with the prompt format it was trained on: our
    template (alpaca/chatml), or the family's own chat format (ChatML, Llama 3, Llama 2) read from the GGUF's
    tokenizer.chat_template, with its default system prompt."""
    chat_template = _gguf_chat_template(folder / gguf_name)
    family = next((key for key in _OLLAMA_FAMILIES if chat_template and key in chat_template), None)
    lines = [f"FROM ./{gguf_name}"]
    if template in (None, "model") and family:
        go_template, stops = _OLLAMA_FAMILIES[family]
        lines.append(f'TEMPLATE """{go_template}"""')
        system = _DEFAULT_SYSTEM.search(chat_template)
        if system:
            lines.append(f'SYSTEM """{system.group(1)}"""')
        lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    else:
        lines.append('PARAMETER stop "<|endoftext|>"')
        if template and template != "model":
            prompt = format_prompt({"instruction": "{{ .Prompt }}", "input": ""}, template)
            lines.append(f'TEMPLATE """{prompt}{{{{ .Response }}}}"""')
            if template == "chatml":
                lines.append('PARAMETER stop "<|im_end|>"')
    path = folder / "Modelfile"
    path.write_text("\n".join(lines) + "\n")
    return path


def _gguf_chat_template(path: Path) -> Optional[str]:
    if not path.exists():
        return None
    return read_metadata(path, stop_at="tokenizer.chat_template").get("tokenizer.chat_template")
