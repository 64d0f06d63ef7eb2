"""Our `Transformer` to and from Hugging Face causal-LM folders: configs checked and converted, weights renamed
and re-laid out, and folders that transformers loads without custom code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import torch

from slm_core.config import ModelConfig
from slm_core.errors import SLMError
from slm_core.models.model import Transformer
from slm_core.models.sources import weight_files

SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                           "Qwen3ForCausalLM")
_BY_MODEL_TYPE = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_MODEL_TYPE = {arch: kind for kind, arch in _BY_MODEL_TYPE.items()}
# Activations whose math is GPT-2's tanh-approximated GELU, which our GELU MLP computes.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# Mixture-of-experts configs name their expert count in one of these fields.
_MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "num_experts_per_tok")
_ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters", "max_position_embeddings")


# ---- which Hugging Face class a model fits ------------------------------------------------------

def hf_architecture(config: ModelConfig) -> str:
    """The HF class this config maps onto exactly, or SLMError naming what does not fit."""
    gpt2_misfits = _gpt2_misfits(config)
    if not gpt2_misfits:
        return "GPT2LMHeadModel"
    llama_misfits = _llama_misfits(config)
    if not llama_misfits:
        if config.qk_norm:
            return "Qwen3ForCausalLM"
        if config.qkv_bias and not config.bias:
            return "Qwen2ForCausalLM"
        source = _source_architecture(config)  # a Mistral checkpoint goes back out as Mistral
        return source if source == "MistralForCausalLM" and not config.bias else "LlamaForCausalLM"
    raise SLMError(
        f"model '{config.name}' (family {config.family}) has no exact Hugging Face equivalent: "
        f"GPT2LMHeadModel needs {', '.join(gpt2_misfits)}; LlamaForCausalLM needs {', '.join(llama_misfits)}. "
        "Export it as ONNX, or use the native checkpoint (slm generate / slm eval read it directly).")


def _source_architecture(config: ModelConfig) -> Optional[str]:
    try:
        return _architecture(config.hf_config) if config.hf_config else None
    except SLMError:
        return None


def _gpt2_misfits(c: ModelConfig) -> list[str]:
    wanted = [(c.norm == "layernorm", "LayerNorm"), (c.mlp == "gelu", "a GELU MLP"),
              (c.position == "learned", "learned positions"),
              (bool(c.bias) and bool(c.qkv_bias), "biases on every linear and norm (bias=true)"),
              (c.n_kv_head == c.n_head, "as many KV heads as heads"),
              (not c.qk_norm, "no q/k norm"), (c.head_dim * c.n_head == c.d_model, "head size = width / heads")]
    return [text for ok, text in wanted if not ok]


def _llama_misfits(c: ModelConfig) -> list[str]:
    wanted = [(c.norm == "rmsnorm", "RMSNorm"), (c.mlp == "swiglu", "a SwiGLU MLP"), (c.position == "rope", "RoPE"),
              # HF Llama's attention_bias covers q/k/v/o together; Qwen2 has q/k/v biases only.
              (bool(c.qkv_bias) or not c.bias, "q/k/v biases whenever o_proj has one"),
              (not c.qk_norm or not (c.bias or c.qkv_bias), "no biases with q/k norm (Qwen3)")]
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
    hf_config = _with_source_fields(hf_config, config)
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)  # HF ties it back from the input embedding at load
    return hf_config, {k: v.contiguous().clone() for k, v in state.items()}


def _with_source_fields(out: dict, c: ModelConfig) -> dict:
    """Our config.json over the source checkpoint's, so fields we do not model (bos/eos ids, rope
    scaling as written, pad id, ...) survive a load → train → export trip unchanged."""
    src = c.hf_config
    if not src or _source_architecture(c) != out["architectures"][0]:
        return out
    merged = {k: v for k, v in src.items() if k != "transformers_version"}
    try:
        same_rope = _rope_fields(config_from_hf(src)) == _rope_fields(c)
    except SLMError:
        same_rope = False
    for key in _ROPE_KEYS:
        if not same_rope:
            merged.pop(key, None)
    for key, value in out.items():
        if (same_rope and key in _ROPE_KEYS) or (value is None and merged.get(key) is not None):
            continue
        merged[key] = value
    if "torch_dtype" in merged:
        merged["torch_dtype"] = out["dtype"]
    if isinstance(merged.get("layer_types"), list):  # one entry per layer; sliding layers are refused at load
        merged["layer_types"] = ["full_attention"] * c.n_layer
    if "max_window_layers" in merged:
        merged["max_window_layers"] = min(int(merged["max_window_layers"] or c.n_layer), c.n_layer)
    return merged


def _rope_fields(c: ModelConfig) -> tuple:
    return (c.rope_theta, c.rope_scaling, c.rope_scaling_factor, c.rope_low_freq_factor, c.rope_high_freq_factor,
            c.rope_original_context, c.context_length)


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
    slm_core.models.model.rope_inv_freq) — which is plain RoPE with that base, so it is written as such;
    'linear' and 'llama3' map to HF's scalings of the same name."""
    if c.rope_scaling == "dynamic" and c.rope_scaling_factor > 1:
        dim = c.head_dim
        return float(c.rope_theta * (2 * c.rope_scaling_factor - 1) ** (dim / (dim - 2))), None
    if c.rope_scaling == "linear":
        return float(c.rope_theta), {"rope_type": "linear", "factor": float(c.rope_scaling_factor)}
    if c.rope_scaling == "llama3":
        return float(c.rope_theta), {"rope_type": "llama3", "factor": float(c.rope_scaling_factor),
                                     "low_freq_factor": float(c.rope_low_freq_factor),
                                     "high_freq_factor": float(c.rope_high_freq_factor),
                                     "original_max_position_embeddings": int(c.rope_original_context)}
    return float(c.rope_theta), None


def _llama_config(c: ModelConfig, arch: str) -> dict:
    theta, scaling = export_rope(c)
    out = dict(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff,
               num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
               head_dim=c.head_dim, max_position_embeddings=c.context_length, rms_norm_eps=c.norm_eps,
               rope_theta=theta, rope_scaling=scaling, hidden_act="silu",
               attention_dropout=c.dropout, initializer_range=c.init_std,
               tie_word_embeddings=bool(c.tie_embeddings), model_type=_MODEL_TYPE[arch])
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.n_layer)
    if arch == "Qwen3ForCausalLM":
        out.update(attention_bias=False)
    elif arch == "LlamaForCausalLM":
        out.update(attention_bias=bool(c.bias), mlp_bias=bool(c.bias))
    elif arch == "MistralForCausalLM":
        out.update(sliding_window=None)
    return out


def _llama_state(ours: dict, c: ModelConfig) -> dict:
    # Llama/Mistral/Qwen names are ours with a "model." prefix, except lm_head.
    return {(k if k.startswith("lm_head.") else f"model.{k}"): v for k, v in ours.items()}


def save_hf_folder(model: torch.nn.Module, tokenizer, out_dir: str | Path,
                   template: Optional[str] = None) -> list[Path]:
    """config.json, model.safetensors, generation_config.json (+ tokenizer files) into out_dir."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bos = eos = getattr(tokenizer, "eot_id", None) if tokenizer is not None else None
    bos = getattr(tokenizer, "bos_id", None) if getattr(tokenizer, "bos_id", None) is not None else bos
    hf_config, state = to_hf_state_dict(model, bos_id=bos, eos_id=eos)
    written = [out_dir / "config.json", out_dir / "model.safetensors", out_dir / "generation_config.json"]
    written[0].write_text(json.dumps(hf_config, indent=2))
    save_file(state, str(written[1]), metadata={"format": "pt"})
    generation = {"bos_token_id": hf_config.get("bos_token_id"), "eos_token_id": hf_config.get("eos_token_id")}
    pad = hf_config.get("pad_token_id")
    pad = pad if pad is not None else (eos if eos is not None else None)
    if pad is not None:
        generation["pad_token_id"] = pad
    written[2].write_text(json.dumps(generation, indent=2))
    if template:  # read back by slm_core.run.checkpoint so chat keeps the instruction format
        written.append(out_dir / "slm_studio.json")
        written[-1].write_text(json.dumps({"template": template}, indent=2))
    if tokenizer is not None:
        before = set(out_dir.iterdir())
        tokenizer.save_hf(out_dir)
        written += sorted(set(out_dir.iterdir()) - before)
    return written


# ---- Hugging Face → ours: the config, checked before any weights are read ------------------------

def read_hf_config(folder: str | Path) -> dict:
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise SLMError(f"{folder} has no config.json; point at a Hugging Face model folder (config.json + "
                       "*.safetensors), a run, a .gguf file or a Hub id")
    try:
        return json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SLMError(f"{config_path} is not readable JSON ({exc}); download the model again") from exc


def display_name(folder: Path) -> str:
    """'org/name' for a Hugging Face cache snapshot (…/models--org--name/snapshots/<commit>), else the folder name."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.removeprefix("models--").replace("--", "/", 1)
    return folder.name


def config_from_hf(raw: dict, name: str = "hf-model") -> ModelConfig:
    """ModelConfig for a config.json dict; SLMError naming the field for anything we would compute wrong."""
    arch = _architecture(raw)
    for key in _MOE_FIELDS:
        if raw.get(key):
            raise SLMError(f"{name}: config.json has {key}={raw[key]} (a mixture-of-experts model), which this "
                           "tool does not run; pick a dense model")
    if arch == "GPT2LMHeadModel":
        config = _config_from_gpt2(raw, name)
    else:
        config = _config_from_llama(raw, arch, name)
    config.hf_config = raw
    return config


def _architecture(raw: dict) -> str:
    names = list(raw.get("architectures") or [])
    if raw.get("model_type") in _BY_MODEL_TYPE:
        names.append(_BY_MODEL_TYPE[raw["model_type"]])
    for name in names:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    found = names or [raw.get("model_type")]
    raise SLMError(f"unsupported model architecture {found} (config.json 'architectures'): this tool reads "
                   f"{', '.join(SUPPORTED_ARCHITECTURES)}")


def _config_from_gpt2(raw: dict, name: str) -> ModelConfig:
    act = raw.get("activation_function", "gelu_new")
    if act not in _TANH_GELUS:
        raise SLMError(f"{name}: activation_function '{act}' is not supported; this model computes GPT-2's "
                       f"tanh GELU ({', '.join(_TANH_GELUS)})")
    if raw.get("scale_attn_by_inverse_layer_idx") or raw.get("scale_attn_weights", True) is False:
        raise SLMError(f"{name}: non-standard GPT-2 attention scaling (scale_attn_by_inverse_layer_idx / "
                       "scale_attn_weights) is not supported")
    d_model = raw.get("n_embd", 768)
    return ModelConfig(name=name, family="gpt2", n_layer=raw.get("n_layer", 12), n_head=raw.get("n_head", 12),
                       d_model=d_model, d_ff=raw.get("n_inner") or 4 * d_model,
                       context_length=raw.get("n_positions") or raw.get("n_ctx") or 1024,
                       vocab_size=raw.get("vocab_size", 50257), norm_eps=raw.get("layer_norm_epsilon", 1e-5),
                       tie_embeddings=raw.get("tie_word_embeddings", True), dropout=0.0)


def _rope_from_hf(raw: dict, name: str) -> dict:
    """ModelConfig's rope fields from rope_scaling (transformers 4) or rope_parameters (5)."""
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or params
    theta = float(raw.get("rope_theta") or params.get("rope_theta") or 10000.0)
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if float(raw.get("partial_rotary_factor") or params.get("partial_rotary_factor") or 1.0) != 1.0:
        raise SLMError(f"{name}: partial_rotary_factor is not supported (RoPE over the whole head only)")
    if kind in ("default", "dynamic"):
        # HF's dynamic NTK leaves RoPE untouched up to max_position_embeddings and raises the base
        # only beyond; within that length (all the model was trained on) plain RoPE is exact.
        return dict(rope_theta=theta)
    if kind == "linear":
        return dict(rope_theta=theta, rope_scaling="linear", rope_scaling_factor=float(scaling.get("factor", 1.0)))
    if kind == "llama3":
        return dict(rope_theta=theta, rope_scaling="llama3", rope_scaling_factor=float(scaling["factor"]),
                    rope_low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
                    rope_high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
                    rope_original_context=int(scaling.get("original_max_position_embeddings", 8192)))
    raise SLMError(f"{name}: rope_scaling.rope_type '{kind}' is not supported; this tool implements 'default', "
                   "'linear', 'dynamic' and 'llama3' RoPE")


def _config_from_llama(raw: dict, arch: str, name: str) -> ModelConfig:
    if raw.get("hidden_act", "silu") != "silu":
        raise SLMError(f"{name}: hidden_act '{raw.get('hidden_act')}' is not supported (SwiGLU needs 'silu')")
    heads, width = raw["num_attention_heads"], raw["hidden_size"]
    positions = raw.get("max_position_embeddings", 2048)
    positions = _check_sliding_window(raw, arch, name, positions)
    qk_norm = arch == "Qwen3ForCausalLM"
    if arch == "Qwen2ForCausalLM":
        qkv_bias, bias = True, False
    elif qk_norm:  # Qwen3's attention_bias covers q/k/v/o; we run it only without biases
        if raw.get("attention_bias"):
            raise SLMError(f"{name}: attention_bias=true with Qwen3's q/k norm is not supported")
        qkv_bias = bias = False
    else:  # missing biases are filled with zeros below, which computes the same
        qkv_bias = bool(raw.get("attention_bias", False))
        bias = qkv_bias or bool(raw.get("mlp_bias", False))
    head_dim = raw.get("head_dim")
    return ModelConfig(name=name, family="llama", n_layer=raw["num_hidden_layers"], n_head=heads,
                       n_kv_head=raw.get("num_key_value_heads") or heads, d_model=width,
                       d_ff=raw["intermediate_size"], context_length=positions, vocab_size=raw["vocab_size"],
                       bias=bias, qkv_bias=qkv_bias, norm_eps=raw.get("rms_norm_eps", 1e-6),
                       head_size=head_dim if head_dim not in (None, width // heads) else None, qk_norm=qk_norm,
                       tie_embeddings=raw.get("tie_word_embeddings", False), dropout=0.0,
                       **_rope_from_hf(raw, name))


def _check_sliding_window(raw: dict, arch: str, name: str, positions: int) -> int:
    """The context to run at, or SLMError if some layers attend only to a sliding window."""
    sliding = [i for i, kind in enumerate(raw.get("layer_types") or []) if kind != "full_attention"]
    if sliding:
        raise SLMError(f"{name}: config.json layer_types has sliding-window layers ({len(sliding)} of them, "
                       f"e.g. layer {sliding[0]}), which this tool does not run")
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        if raw.get("use_sliding_window") and raw.get("max_window_layers", 0) < raw["num_hidden_layers"]:
            raise SLMError(f"{name}: use_sliding_window=true (with max_window_layers < num_hidden_layers) is not "
                           "supported; set use_sliding_window to false if the model was trained without it")
        return positions
    window = raw.get("sliding_window") if arch == "MistralForCausalLM" else None
    # Within the window, sliding-window attention is plain causal attention: run at that length.
    return min(positions, int(window)) if window else positions


# ---- Hugging Face → ours: the weights -----------------------------------------------------------

def from_hf(folder: str | Path, name: Optional[str] = None) -> tuple[ModelConfig, dict]:
    """A local HF causal-LM folder → (ModelConfig, our state dict). A tied lm_head is left out of the state.

    The config is checked first, so an unsupported model is refused before any weights are read.
    Tensors come memory-mapped from the safetensors files (no copy until written to)."""
    folder = Path(folder)
    raw = read_hf_config(folder)
    config = config_from_hf(raw, name or display_name(folder))
    hf_state = read_safetensors_folder(folder)
    if config.family == "gpt2":
        state = _state_from_gpt2(hf_state, config)
    else:
        state = _state_from_llama(hf_state)
    if not config.tie_embeddings and "lm_head.weight" not in state:
        raise SLMError(f"{folder}: config.json says the embeddings are untied but the weights have no lm_head")
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    _zero_missing_biases(state, config)
    return config, state


def load_hf_model(folder: str | Path, dtype: Optional[torch.dtype] = None, name: Optional[str] = None):
    """A Transformer holding the folder's weights, built without a second copy of them."""
    config, state = from_hf(folder, name=name)
    return model_from_state(config, state, dtype)


def model_from_state(config: ModelConfig, state: dict, dtype: Optional[torch.dtype] = None):
    """Build on the meta device (no random init, no allocation) and assign `state`'s tensors as the
    parameters. dtype None: the embedding's dtype; any tensor in another dtype is converted."""
    with torch.device("meta"):
        model = Transformer(config)
    dtype = dtype or state["embed_tokens.weight"].dtype
    for key in list(state):  # one tensor at a time, so a conversion never holds two full copies
        if state[key].dtype != dtype:
            state[key] = state[key].to(dtype)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_embeddings)]
    if missing or unexpected:
        raise SLMError(f"the weights of '{config.name}' do not match its config.json (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}); download the model again")
    return model


def read_safetensors_folder(folder: Path) -> dict:
    """All tensors of model.safetensors or of the shards named in model.safetensors.index.json."""
    from safetensors.torch import load_file


    files = weight_files(folder)
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
        state.update(load_file(str(path)))  # memory-mapped: pages are read when first touched
    return state


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
        # pop: each transposed copy replaces its source, so memory holds one copy of the weights
        qkv_w, qkv_b = hf.pop(f"{src}attn.c_attn.weight").t(), hf[f"{src}attn.c_attn.bias"]  # (3d, d), (3d,)
        for j, name in enumerate("qkv"):
            state[f"{dst}self_attn.{name}_proj.weight"] = qkv_w[j * d:(j + 1) * d].contiguous()
            state[f"{dst}self_attn.{name}_proj.bias"] = qkv_b[j * d:(j + 1) * d]
        for hf_lin, ours_lin in (("attn.c_proj", "self_attn.o_proj"), ("mlp.c_fc", "mlp.up_proj"),
                                 ("mlp.c_proj", "mlp.down_proj")):
            state[f"{dst}{ours_lin}.weight"] = hf.pop(f"{src}{hf_lin}.weight").t().contiguous()
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
    d, q_dim = c.d_model, c.n_head * c.head_dim
    for i in range(c.n_layer):
        wanted = {f"layers.{i}.self_attn.o_proj.bias": d, f"layers.{i}.mlp.down_proj.bias": d,
                  f"layers.{i}.mlp.up_proj.bias": c.d_ff}
        if c.mlp == "swiglu":
            wanted[f"layers.{i}.mlp.gate_proj.bias"] = c.d_ff
        if c.qkv_bias:
            kv = c.n_kv_head * c.head_dim
            wanted.update({f"layers.{i}.self_attn.q_proj.bias": q_dim, f"layers.{i}.self_attn.k_proj.bias": kv,
                           f"layers.{i}.self_attn.v_proj.bias": kv})
        ref = state[f"layers.{i}.self_attn.q_proj.weight"]
        for key, size in wanted.items():
            if key not in state:
                state[key] = torch.zeros(size, dtype=ref.dtype)
