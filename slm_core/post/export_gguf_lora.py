"""A LoRA adapter as llama.cpp's LoRA GGUF, beside its base model's GGUF (`slm export RUN --format
gguf-lora`), with the tensor names and layouts export_gguf gives the base."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from slm_core.errors import SLMError
from slm_core.models.model import is_peft, unwrap
from slm_core.post.export_gguf import (
    gguf_architecture,
    gguf_writer,
    ollama_modelfile,
    permute_for_llama_cpp,
    safe_name,
    write_gguf,
)
from slm_core.post.gguf_quant import check_level
from slm_core.run.lineage_hub import add_gguf_base_models

LORA_GGUF_TYPES = ("f32", "f16")


def _gguf_name(ours: str, arch: str) -> Optional[str]:
    """Our module name (layers.3.self_attn.q_proj, lm_head) → the GGUF tensor it adapts, or None for q/k/v
    under GPT-2 (the fused tensor is handled separately)."""
    import gguf

    T = gguf.MODEL_TENSOR
    if ours == "lm_head":
        return f"{gguf.TENSOR_NAMES[T.OUTPUT]}.weight"
    parts = ours.split(".")  # layers, i, self_attn|mlp, proj
    kind = {"q_proj": T.ATTN_Q, "k_proj": T.ATTN_K, "v_proj": T.ATTN_V, "o_proj": T.ATTN_OUT,
            "gate_proj": T.FFN_GATE, "up_proj": T.FFN_UP, "down_proj": T.FFN_DOWN}.get(parts[-1])
    if parts[0] != "layers" or kind is None:
        raise SLMError(f"the adapter targets {ours}, which llama.cpp's LoRA loader has no tensor for; "
                       f"train with lora.targets among attention/mlp projections")
    if arch == "gpt2" and parts[-1] in ("q_proj", "k_proj", "v_proj"):
        return None
    return f"{gguf.TENSOR_NAMES[kind].format(bid=int(parts[1]))}.weight"


def lora_gguf_tensors(model_config, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
                      arch: str) -> dict[str, torch.Tensor]:
    """{our module name: (A (r, in), B (out, r))} → {GGUF name: tensor}, ready for llama.cpp."""
    out, fused = {}, {}
    for module, (a, b) in sorted(pairs.items()):
        name = _gguf_name(module, arch)
        if name is None:
            fused.setdefault(int(module.split(".")[1]), {})[module.rsplit(".", 1)[-1][0]] = (a, b)
            continue
        if arch == "llama" and module.endswith(("q_proj", "k_proj")):
            heads = model_config.n_head if module.endswith("q_proj") else model_config.n_kv_head
            b = permute_for_llama_cpp(b, heads)
        out[name + ".lora_a"], out[name + ".lora_b"] = a, b
    for layer, parts in fused.items():
        out.update(_fused_qkv(model_config, layer, parts))
    return out


def _fused_qkv(config, layer: int, parts: dict) -> dict[str, torch.Tensor]:
    """GPT-2's attn_qkv: A = [Aq; Ak; Av] (3r, in), B = blockdiag(Bq, Bk, Bv) (3 d_model, 3r); a projection
    without an adapter contributes zero rows. The rank triples, so B is scaled by 3 to keep alpha / r."""
    import gguf

    r = next(iter(parts.values()))[0].shape[0]
    d_in, d_out = config.d_model, config.n_head * config.head_dim
    a = torch.zeros(3 * r, d_in)
    b = torch.zeros(3 * d_out, 3 * r)
    for i, which in enumerate("qkv"):
        if which in parts:
            pa, pb = parts[which]
            a[i * r:(i + 1) * r] = pa
            b[i * d_out:(i + 1) * d_out, i * r:(i + 1) * r] = pb * 3
    name = f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ATTN_QKV].format(bid=layer)}.weight"
    return {name + ".lora_a": a, name + ".lora_b": b}


def adapter_pairs(peft_model) -> tuple[dict, float]:
    """({module name: (A (r, in), B (out, r))} in fp32 on CPU, the alpha llama.cpp needs) read from the LoRA
    layers themselves. Not peft's get_peft_model_state_dict: it loads the base's config.json through the base's
    config class to guess about embedding layers, which fails for a base read from a Hugging Face folder."""
    from peft.tuners.lora import LoraLayer

    adapter = peft_model.active_adapter
    settings = peft_model.peft_config[adapter]
    if settings.rank_pattern or settings.alpha_pattern:
        raise SLMError("this adapter uses per-module ranks or alphas, which llama.cpp's LoRA GGUF (one alpha) "
                       "cannot express: export it merged with --format gguf")
    if getattr(settings, "use_dora", False):
        raise SLMError("a DoRA adapter has no llama.cpp LoRA GGUF form: export it merged with --format gguf")
    pairs = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            pairs[name.removeprefix("base_model.model.")] = (a.detach().to("cpu", torch.float32),
                                                             b.detach().to("cpu", torch.float32))
    if not pairs:
        raise SLMError("the adapter holds no LoRA matrices: export the run's model with --format gguf")
    r = next(iter(pairs.values()))[0].shape[0]
    alpha = float(settings.lora_alpha)
    return pairs, alpha * math.sqrt(r) if settings.use_rslora else alpha


def write_lora_gguf(model_config, pairs: dict, alpha: float, path: str | Path, gguf_type: str = "f32",
                    name: Optional[str] = None, base_models: Optional[list[dict]] = None) -> Path:
    """Write the adapter GGUF; returns its path. `base_models`: general.base_model.* entries naming the base the
    adapter applies to (slm_core.run.lineage_hub.gguf_base_models), as llama.cpp's convert_lora_to_gguf.py writes
    them from the adapter's model card."""
    import gguf


    arch = gguf_architecture(model_config)
    tensors = lora_gguf_tensors(model_config, pairs, arch)
    path = Path(path)
    with gguf_writer(path, arch) as writer:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_name(name or f"{model_config.name}-lora")
        add_gguf_base_models(writer, base_models)
        writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.ALL_F32))
        for tensor_name, tensor in tensors.items():
            array = tensor.contiguous().numpy()
            writer.add_tensor(tensor_name, array.astype("float16" if gguf_type == "f16" else "float32"))
    return path


def write_lora_bundle(model, tokenizer, folder: Path, gguf_type: str, name: str,
                      template: Optional[str], base_models: Optional[list[dict]] = None) -> list[Path]:
    """The base model's GGUF, the adapter's GGUF and an Ollama Modelfile using both (FROM + ADAPTER).
    `model` is a LoRA model (peft); it is consumed (the adapter is unloaded to reach the bare base).
    `base_models`: the adapter's base (general.base_model.* on the adapter GGUF)."""
    model = unwrap(model)
    if not is_peft(model):
        raise SLMError("--format gguf-lora needs a LoRA run (base + adapter); export this model with --format gguf")
    if getattr(model.get_base_model(), "qlora", None):
        raise SLMError("export the LoRA run as saved (load it with `slm export RUN`), not the in-training QLoRA model")
    check_level(gguf_type)  # the base's level; the adapter is f32 for an f32 base, else f16
    pairs, alpha = adapter_pairs(model)
    base = model.unload().to("cpu", torch.float32).eval()  # the base exactly as trained on, adapter removed
    base_path = write_gguf(base, tokenizer, folder / f"{safe_name(name)}-base-{gguf_type}.gguf", gguf_type, name)
    lora_type = "f32" if gguf_type == "f32" else "f16"  # small matrices: quantizing them buys nothing
    lora_path = write_lora_gguf(base.config, pairs, alpha, folder / f"{safe_name(name)}-lora-{lora_type}.gguf",
                                lora_type, f"{name}-lora", base_models)
    modelfile = ollama_modelfile(folder, base_path.name, template)
    modelfile.write_text(modelfile.read_text().replace(f"FROM ./{base_path.name}\n",
                                                       f"FROM ./{base_path.name}\nADAPTER ./{lora_path.name}\n"))
    return [base_path, lora_path, modelfile]
