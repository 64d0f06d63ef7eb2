"""Name and layout mapping between our `Transformer` and Hugging Face causal-LM folders, both ways.

Out: `to_hf_state_dict(model)` picks the Hugging Face class the model fits exactly —
GPT2LMHeadModel (LayerNorm, GELU, learned positions, biases everywhere), LlamaForCausalLM
(RMSNorm, SwiGLU, RoPE, biases all-or-nothing) or Qwen2ForCausalLM (the same with biases on
q/k/v only) — and returns its config.json dict plus a state dict with its names.
`save_hf_folder` writes a folder transformers loads with no custom code.

In: `from_hf(folder)` reads a local GPT2LMHeadModel / LlamaForCausalLM / Qwen2ForCausalLM folder
(config.json + safetensors, sharded or not) into a ModelConfig and our state dict. Pickled
`pytorch_model.bin` files are refused: unpickling runs code from the file.

Layouts: our Linear weights are (out, in) like HF Llama; GPT-2's Conv1D stores (in, out) and
fuses q|k|v into c_attn, so those are transposed and split/concatenated here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import torch

from slm_core.config import ModelConfig
from slm_core.errors import SLMError

SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM")
# Activations whose math is GPT-2's tanh-approximated GELU, which our GELU MLP computes.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


# ---- which Hugging Face class a model fits ------------------------------------------------------

def hf_architecture(config: ModelConfig) -> str:
    """The HF class this config maps onto exactly, or SLMError naming what does not fit."""
    gpt2_misfits = _gpt2_misfits(config)
    if not gpt2_misfits:
        return "GPT2LMHeadModel"
    llama_misfits = _llama_misfits(config)
    if not llama_misfits:
        return "Qwen2ForCausalLM" if (config.qkv_bias and not config.bias) else "LlamaForCausalLM"
    raise SLMError(
        f"model '{config.name}' (family {config.family}) has no exact Hugging Face equivalent: "
        f"GPT2LMHeadModel needs {', '.join(gpt2_misfits)}; LlamaForCausalLM needs {', '.join(llama_misfits)}. "
        "Export it as ONNX, or use the native checkpoint (slm generate / slm eval read it directly).")


def _gpt2_misfits(c: ModelConfig) -> list[str]:
    wanted = [(c.norm == "layernorm", "LayerNorm"), (c.mlp == "gelu", "a GELU MLP"),
              (c.position == "learned", "learned positions"),
              (bool(c.bias) and bool(c.qkv_bias), "biases on every linear and norm (bias=true)"),
              (c.n_kv_head == c.n_head, "as many KV heads as heads")]
    return [text for ok, text in wanted if not ok]


def _llama_misfits(c: ModelConfig) -> list[str]:
    wanted = [(c.norm == "rmsnorm", "RMSNorm"), (c.mlp == "swiglu", "a SwiGLU MLP"), (c.position == "rope", "RoPE"),
              # HF Llama's attention_bias covers q/k/v/o together; Qwen2 has q/k/v biases only.
              (bool(c.qkv_bias) or not c.bias, "q/k/v biases whenever o_proj has one")]
    return [text for ok, text in wanted if not ok]


# ---- ours → Hugging Face ------------------------------------------------------------------------

def to_hf_state_dict(model: torch.nn.Module, bos_id: Optional[int] = None,
                     eos_id: Optional[int] = None) -> tuple[dict, dict]:
    """(config.json dict, HF state dict) for the class the model fits. Tensors are contiguous CPU clones."""
    config: ModelConfig = model.config
    arch = hf_architecture(config)
    ours = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    if arch == "GPT2LMHeadModel":
        hf_config, state = _gpt2_config(config), _gpt2_state(ours, config)
    else:
        hf_config, state = _llama_config(config, arch), _llama_state(ours, config)
    dtype = ours["embed_tokens.weight"].dtype
    hf_config.update(architectures=[arch], dtype=str(dtype).replace("torch.", ""), use_cache=True,
                     bos_token_id=bos_id, eos_token_id=eos_id)
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)  # HF ties it back from the input embedding at load
    return hf_config, {k: v.contiguous().clone() for k, v in state.items()}


def _gpt2_config(c: ModelConfig) -> dict:
    return dict(model_type="gpt2", vocab_size=c.vocab_size, n_positions=c.context_length, n_embd=c.d_model,
                n_layer=c.n_layer, n_head=c.n_head, n_inner=c.d_ff, activation_function="gelu_new",
                layer_norm_epsilon=c.norm_eps, resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
                initializer_range=c.init_std, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                reorder_and_upcast_attn=False, tie_word_embeddings=bool(c.tie_embeddings))


def _gpt2_state(ours: dict, c: ModelConfig) -> dict:
    state = {"transformer.wte.weight": ours["embed_tokens.weight"],
             "transformer.wpe.weight": ours["embed_positions.weight"],
             "transformer.ln_f.weight": ours["norm.weight"], "transformer.ln_f.bias": ours["norm.bias"],
             "lm_head.weight": ours["lm_head.weight"]}
    for i in range(c.n_layer):
        src, dst = f"layers.{i}.", f"transformer.h.{i}."
        for ours_norm, hf_norm in (("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2")):
            for p in ("weight", "bias"):
                state[f"{dst}{hf_norm}.{p}"] = ours[f"{src}{ours_norm}.{p}"]
        # Conv1D keeps weights as (in, out): transpose; q|k|v are fused along the output axis.
        qkv = [ours[f"{src}self_attn.{n}_proj.weight"] for n in "qkv"]
        state[f"{dst}attn.c_attn.weight"] = torch.cat(qkv, dim=0).t()  # (d, 3d)
        state[f"{dst}attn.c_attn.bias"] = torch.cat([ours[f"{src}self_attn.{n}_proj.bias"] for n in "qkv"])
        for ours_lin, hf_lin in (("self_attn.o_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"),
                                 ("mlp.down_proj", "mlp.c_proj")):
            state[f"{dst}{hf_lin}.weight"] = ours[f"{src}{ours_lin}.weight"].t()
            state[f"{dst}{hf_lin}.bias"] = ours[f"{src}{ours_lin}.bias"]
    return state


def export_rope(c: ModelConfig) -> tuple[float, Optional[dict]]:
    """(rope_theta, rope_scaling) that make a standard Llama compute our RoPE exactly.

    Our 'dynamic' NTK scaling uses one raised base fixed by context_length (see
    slm_core.model.rope_inv_freq) — which is plain RoPE with that base, so it is written as such;
    'linear' maps to HF's linear scaling."""
    if c.rope_scaling == "dynamic" and c.rope_scaling_factor > 1:
        dim = c.head_dim
        return float(c.rope_theta * (2 * c.rope_scaling_factor - 1) ** (dim / (dim - 2))), None
    if c.rope_scaling == "linear":
        return float(c.rope_theta), {"rope_type": "linear", "factor": float(c.rope_scaling_factor)}
    return float(c.rope_theta), None


def _llama_config(c: ModelConfig, arch: str) -> dict:
    theta, scaling = export_rope(c)
    out = dict(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff,
               num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
               head_dim=c.head_dim, max_position_embeddings=c.context_length, rms_norm_eps=c.norm_eps,
               rope_theta=theta, rope_scaling=scaling, hidden_act="silu",
               attention_dropout=c.dropout, initializer_range=c.init_std,
               tie_word_embeddings=bool(c.tie_embeddings))
    if arch == "Qwen2ForCausalLM":
        out.update(model_type="qwen2", use_sliding_window=False, sliding_window=None,
                   max_window_layers=c.n_layer)
    else:
        out.update(model_type="llama", attention_bias=bool(c.bias), mlp_bias=bool(c.bias))
    return out


def _llama_state(ours: dict, c: ModelConfig) -> dict:
    # Llama/Qwen2 names are ours with a "model." prefix, except lm_head.
    return {(k if k.startswith("lm_head.") else f"model.{k}"): v for k, v in ours.items()}


def save_hf_folder(model: torch.nn.Module, tokenizer, out_dir: str | Path,
                   template: Optional[str] = None) -> list[Path]:
    """config.json, model.safetensors, generation_config.json (+ tokenizer files) into out_dir."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eot = getattr(tokenizer, "eot_id", None) if tokenizer is not None else None
    hf_config, state = to_hf_state_dict(model, bos_id=eot, eos_id=eot)
    written = [out_dir / "config.json", out_dir / "model.safetensors", out_dir / "generation_config.json"]
    written[0].write_text(json.dumps(hf_config, indent=2))
    save_file(state, str(written[1]), metadata={"format": "pt"})
    generation = {"bos_token_id": eot, "eos_token_id": eot}
    if eot is not None:
        generation["pad_token_id"] = eot
    written[2].write_text(json.dumps(generation, indent=2))
    if template:  # read back by slm_core.checkpoint so chat keeps the instruction format
        written.append(out_dir / "slm_studio.json")
        written[-1].write_text(json.dumps({"template": template}, indent=2))
    if tokenizer is not None:
        before = set(out_dir.iterdir())
        tokenizer.save_hf(out_dir)
        written += sorted(set(out_dir.iterdir()) - before)
    return written


# ---- Hugging Face → ours ------------------------------------------------------------------------

def from_hf(folder: str | Path) -> tuple[ModelConfig, dict]:
    """A local HF causal-LM folder → (ModelConfig, our state dict). A tied lm_head is left out of the state."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise SLMError(f"{folder} has no config.json; point at a Hugging Face model folder")
    raw = json.loads(config_path.read_text())
    arch = _architecture(raw)
    hf_state = read_safetensors_folder(folder)
    if arch == "GPT2LMHeadModel":
        config = _config_from_gpt2(raw, folder)
        state = _state_from_gpt2(hf_state, config)
    else:
        config = _config_from_llama(raw, arch, folder)
        state = _state_from_llama(hf_state)
    if not config.tie_embeddings and "lm_head.weight" not in state:
        raise SLMError(f"{folder}: config.json says the embeddings are untied but the weights have no lm_head")
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    _zero_missing_biases(state, config)
    return config, state


def _architecture(raw: dict) -> str:
    names = list(raw.get("architectures") or [])
    by_type = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    if raw.get("model_type") in by_type:
        names.append(by_type[raw["model_type"]])
    for name in names:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    found = names or [raw.get("model_type")]
    raise SLMError(f"unsupported model architecture {found}: this tool reads {', '.join(SUPPORTED_ARCHITECTURES)}")


def read_safetensors_folder(folder: Path) -> dict:
    """All tensors of model.safetensors or of the shards named in model.safetensors.index.json."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / s for s in shards]
    elif (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
        hint = (f" It has {pickles[:3]}: pickled weights can run code when loaded, so they are refused. Convert "
                "them once in a trusted environment (transformers: model.save_pretrained(dir, "
                "safe_serialization=True)) and point here again.") if pickles else ""
        raise SLMError(f"{folder} has no .safetensors weights.{hint}")
    state = {}
    for path in files:
        if not path.exists():
            raise SLMError(f"{folder}: shard {path.name} named in the index is missing; download it again")
        state.update(load_file(str(path)))
    return state


def _config_from_gpt2(raw: dict, folder: Path) -> ModelConfig:
    act = raw.get("activation_function", "gelu_new")
    if act not in _TANH_GELUS:
        raise SLMError(f"{folder}: activation_function '{act}' is not supported; this model computes GPT-2's "
                       f"tanh GELU ({', '.join(_TANH_GELUS)})")
    if raw.get("scale_attn_by_inverse_layer_idx") or raw.get("scale_attn_weights", True) is False:
        raise SLMError(f"{folder}: non-standard GPT-2 attention scaling is not supported")
    d_model = raw.get("n_embd", 768)
    return ModelConfig(name=folder.name, family="gpt2", n_layer=raw.get("n_layer", 12), n_head=raw.get("n_head", 12),
                       d_model=d_model, d_ff=raw.get("n_inner") or 4 * d_model,
                       context_length=raw.get("n_positions") or raw.get("n_ctx") or 1024,
                       vocab_size=raw.get("vocab_size", 50257), norm_eps=raw.get("layer_norm_epsilon", 1e-5),
                       tie_embeddings=raw.get("tie_word_embeddings", True), dropout=0.0)


def _rope_from_hf(raw: dict, folder: Path) -> tuple[float, Optional[str], float]:
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or params
    theta = float(raw.get("rope_theta") or params.get("rope_theta") or 10000.0)
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if kind == "dynamic":
        # HF's dynamic NTK leaves RoPE untouched up to max_position_embeddings and raises the base
        # only beyond; within that length (all the model was trained on) plain RoPE is exact.
        return theta, None, 1.0
    if kind == "default":
        return theta, None, 1.0
    if kind != "linear":
        raise SLMError(f"{folder}: RoPE scaling '{kind}' is not supported; this model implements the default "
                       "and 'linear' RoPE (Llama-3.1/3.2 checkpoints use 'llama3' scaling)")
    return theta, kind, float(scaling.get("factor", 1.0))


def _config_from_llama(raw: dict, arch: str, folder: Path) -> ModelConfig:
    if raw.get("hidden_act", "silu") != "silu":
        raise SLMError(f"{folder}: hidden_act '{raw.get('hidden_act')}' is not supported (SwiGLU needs 'silu')")
    heads, width = raw["num_attention_heads"], raw["hidden_size"]
    if raw.get("head_dim") not in (None, width // heads):
        raise SLMError(f"{folder}: head_dim {raw['head_dim']} differs from hidden_size/heads ({width // heads}); "
                       "this model derives the head size from the width")
    if arch == "Qwen2ForCausalLM" and raw.get("use_sliding_window"):
        raise SLMError(f"{folder}: sliding-window attention is not supported; set use_sliding_window=false")
    theta, scaling, factor = _rope_from_hf(raw, folder)
    positions = raw.get("max_position_embeddings", 2048)
    if arch == "Qwen2ForCausalLM":
        qkv_bias, bias = True, False
    else:  # missing biases are filled with zeros below, which computes the same
        qkv_bias = bool(raw.get("attention_bias", False))
        bias = qkv_bias or bool(raw.get("mlp_bias", False))
    return ModelConfig(name=folder.name, family="llama", n_layer=raw["num_hidden_layers"], n_head=heads,
                       n_kv_head=raw.get("num_key_value_heads") or heads, d_model=width,
                       d_ff=raw["intermediate_size"], context_length=positions, vocab_size=raw["vocab_size"],
                       bias=bias, qkv_bias=qkv_bias, norm_eps=raw.get("rms_norm_eps", 1e-6), rope_theta=theta,
                       rope_scaling=scaling, rope_scaling_factor=factor,
                       tie_embeddings=raw.get("tie_word_embeddings", False), dropout=0.0)


def _state_from_gpt2(hf: dict, c: ModelConfig) -> dict:
    hf = {k.removeprefix("transformer."): v for k, v in hf.items()}  # GPT2Model checkpoints lack the prefix
    state = {"embed_tokens.weight": hf["wte.weight"], "embed_positions.weight": hf["wpe.weight"],
             "norm.weight": hf["ln_f.weight"], "norm.bias": hf["ln_f.bias"]}
    if "lm_head.weight" in hf:
        state["lm_head.weight"] = hf["lm_head.weight"]
    d = c.d_model
    for i in range(c.n_layer):
        src, dst = f"h.{i}.", f"layers.{i}."
        for hf_norm, ours_norm in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            for p in ("weight", "bias"):
                state[f"{dst}{ours_norm}.{p}"] = hf[f"{src}{hf_norm}.{p}"]
        qkv_w, qkv_b = hf[f"{src}attn.c_attn.weight"].t(), hf[f"{src}attn.c_attn.bias"]  # (3d, d), (3d,)
        for j, name in enumerate("qkv"):
            state[f"{dst}self_attn.{name}_proj.weight"] = qkv_w[j * d:(j + 1) * d]
            state[f"{dst}self_attn.{name}_proj.bias"] = qkv_b[j * d:(j + 1) * d]
        for hf_lin, ours_lin in (("attn.c_proj", "self_attn.o_proj"), ("mlp.c_fc", "mlp.up_proj"),
                                 ("mlp.c_proj", "mlp.down_proj")):
            state[f"{dst}{ours_lin}.weight"] = hf[f"{src}{hf_lin}.weight"].t()
            state[f"{dst}{ours_lin}.bias"] = hf[f"{src}{hf_lin}.bias"]
    return {k: v.contiguous() for k, v in state.items()}


_LLAMA_KEY = re.compile(r"^(?:model\.)?(embed_tokens\.|layers\.|norm\.)")


def _state_from_llama(hf: dict) -> dict:
    state = {}
    for key, value in hf.items():
        if key.startswith("lm_head."):
            state[key] = value
        elif _LLAMA_KEY.match(key) and "rotary_emb" not in key:
            state[key.removeprefix("model.")] = value
    return state


def _zero_missing_biases(state: dict, c: ModelConfig) -> None:
    """HF Llama may have attention_bias without mlp_bias (or the reverse): zeros compute the same."""
    if not c.bias:
        return
    d = c.d_model
    for i in range(c.n_layer):
        wanted = {f"layers.{i}.self_attn.o_proj.bias": d, f"layers.{i}.mlp.down_proj.bias": d,
                  f"layers.{i}.mlp.up_proj.bias": c.d_ff}
        if c.mlp == "swiglu":
            wanted[f"layers.{i}.mlp.gate_proj.bias"] = c.d_ff
        if c.qkv_bias:
            kv = c.n_kv_head * c.head_dim
            wanted.update({f"layers.{i}.self_attn.q_proj.bias": d, f"layers.{i}.self_attn.k_proj.bias": kv,
                           f"layers.{i}.self_attn.v_proj.bias": kv})
        ref = state[f"layers.{i}.self_attn.q_proj.weight"]
        for key, size in wanted.items():
            if key not in state:
                state[key] = torch.zeros(size, dtype=ref.dtype)
