"""LoRA through peft on our Transformer: targets, apply, summarise, save, load, merge and unwrap, with
adapters in the layout peft uses for the same base in transformers."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch.nn as nn

from slm_core.errors import SLMError
from slm_core.models.model import base_transformer, is_peft, merge_adapter, unwrap
from slm_core.models.quantized import QUANTIZED_TYPES

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


# ---- targets -------------------------------------------------------------------------------

def _is_linear(module: nn.Module) -> bool:
    """nn.Linear, or a QLoRA base's weight-only int8/int4 linear (slm_core.models.qlora wraps those)."""
    return isinstance(module, (nn.Linear, *QUANTIZED_TYPES))


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct short names of the model's Linear layers, e.g. ['down_proj', 'k_proj', ..., 'up_proj']."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_linear(module)})


def resolve_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """Keep the requested targets that name a Linear in this model (GELU MLPs have no gate_proj).

    A target matches as peft matches it: a module's full name, or its ending after a dot.
    Raises SLMError when nothing is left, listing what does exist.
    """
    linear_names = [name for name, module in model.named_modules() if _is_linear(module)]
    kept = [t for t in targets if any(n == t or n.endswith("." + t) for n in linear_names)]
    if not kept:
        raise SLMError(f"none of the LoRA targets {list(targets)} exist in this model; its linear layers are "
                       f"{linear_module_names(model)}: set lora.targets to some of them (or 'attention')")
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    if tied and "lm_head" in kept:
        # Merging a delta into a tied lm_head would silently change the input embeddings too.
        raise SLMError("lora.targets includes lm_head, whose weight is tied to the input embeddings here; "
                       "drop lm_head from lora.targets")
    return kept


# ---- applying and summarising --------------------------------------------------------------

def apply_lora(model: nn.Module, lora_cfg) -> nn.Module:
    """Wrap `model` (our Transformer) with fresh LoRA adapters → a peft model; only adapters train.

    lora_cfg: config.LoRAConfig (r, alpha, dropout, target_modules). The adapters start at zero
    (peft's default B = 0), so the wrapped model begins exactly where the base left off. A base
    that is itself a LoRA model is merged first, so adapters never stack.
    """
    import peft

    model = merge_adapter(model) if is_peft(unwrap(model)) else unwrap(model)
    targets = resolve_targets(model, lora_cfg.target_modules)
    config = peft.LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                             target_modules=targets, bias="none")
    if getattr(model, "qlora", None):  # a base quantize_base made int8/int4: peft needs our LoRA layer for it
        from slm_core.models.qlora import register_quantized_layers  # subclasses peft's layer: imports peft

        register_quantized_layers(config)
    peft_model = peft.get_peft_model(model, config)  # freezes every non-LoRA parameter
    return peft_model


def trainable_summary(model: nn.Module) -> dict:
    """{"trainable", "total", "frozen", "trainable_percent"}: parameter counts, a tied weight counted once."""
    trainable = total = 0
    for param in unwrap(model).parameters():  # parameters() yields a shared tensor once
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    if getattr(base_transformer(model), "qlora", None):  # a QLoRA base keeps its weights in buffers
        from slm_core.models.qlora import quantized_weight_count  # imports peft: only for a QLoRA base

        total += quantized_weight_count(base_transformer(model))
    return {"trainable": trainable, "total": total, "frozen": total - trainable,
            "trainable_percent": 100.0 * trainable / max(total, 1)}


# ---- saving, loading, merging --------------------------------------------------------------

def save_adapter(model: nn.Module, out_dir, base: Optional[str] = None) -> Path:
    """Write the adapter only (adapter_model.safetensors + adapter_config.json) to out_dir, atomically,
    in transformers' layout (see the module docstring); `base` (train.init_from) is recorded as
    base_model_name_or_path. The base weights are not copied.
    """
    peft_model = unwrap(model)
    if not is_peft(peft_model):
        raise TypeError("save_adapter needs the peft model returned by apply_lora/load_adapter")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model-card template: noise in a checkpoint
        _to_transformers_layout(tmp, base_transformer(peft_model).config, base)
        old = out_dir.with_name(out_dir.name + ".old")
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# Our Transformer's modules are transformers' LlamaForCausalLM's minus the `.model` level.
_OURS, _THEIRS = "base_model.model.", "base_model.model.model."


def _to_transformers_layout(folder: Path, config, base: Optional[str]) -> None:
    """Rename adapter keys and fill adapter_config.json so peft on a transformers model applies them.
    GPT-2 keeps our layout: transformers' GPT-2 fuses q/k/v into one Conv1D, so separate q/k/v
    adapters have no peft equivalent there."""
    from safetensors.torch import load_file, save_file

    settings = json.loads((folder / ADAPTER_CONFIG).read_text())
    if base:
        base_path = Path(str(base)).expanduser()
        settings["base_model_name_or_path"] = str(base_path.resolve()) if base_path.exists() else str(base)
    if config.family != "gpt2":
        weights = folder / ADAPTER_WEIGHTS
        state = load_file(str(weights))
        renamed = {(_THEIRS + k[len(_OURS):] if k.startswith(_OURS + "layers.") else k): v for k, v in state.items()}
        save_file(renamed, str(weights), metadata={"format": "pt"})
        settings["task_type"] = "CAUSAL_LM"
    (folder / ADAPTER_CONFIG).write_text(json.dumps(settings, indent=2, sort_keys=True))


def read_adapter(adapter_dir) -> tuple:
    """(peft LoraConfig for our Transformer, adapter state with our key names) from any accepted layout."""
    import peft
    from safetensors.torch import load_file

    adapter_dir = _check_adapter_dir(adapter_dir)
    settings = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if settings.get("peft_type", "LORA") != "LORA":
        raise SLMError(f"{adapter_dir} holds a {settings['peft_type']} adapter; only LoRA adapters load here")
    settings["task_type"] = None  # our Transformer is a plain module, not a transformers causal LM
    config = peft.LoraConfig(**{k: v for k, v in settings.items() if k in peft.LoraConfig.__dataclass_fields__})
    state = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    return config, {(_OURS + k[len(_THEIRS):] if k.startswith(_THEIRS) else k): v for k, v in state.items()}


def _check_adapter_dir(adapter_dir) -> Path:
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).exists() or not (adapter_dir / ADAPTER_WEIGHTS).exists():
        raise SLMError(f"{adapter_dir} is not a LoRA adapter folder (expected {ADAPTER_CONFIG} and "
                       f"{ADAPTER_WEIGHTS}); point at a LoRA run's checkpoints/<tag>/adapter")
    return adapter_dir


def load_adapter(base_model: nn.Module, adapter_dir, trainable: bool = False) -> nn.Module:
    """The base model with a saved adapter attached, unmerged → a peft model (eval mode unless trainable).

    Generation runs through it directly (see base_transformer for the KV cache). The base is
    modified in place (peft injects its layers), so pass a model you do not need bare again.
    """
    from peft import PeftModel

    config, state = read_adapter(adapter_dir)
    config.inference_mode = not trainable
    base = merge_adapter(base_model) if is_peft(unwrap(base_model)) else unwrap(base_model)
    try:
        model = PeftModel(base, config)
        _set_adapter_state(model, state, adapter_dir, "load it on the model named by the LoRA run's train.init_from")
    except (ValueError, KeyError) as exc:
        raise SLMError(f"the adapter in {adapter_dir} does not fit this base model ({exc}); load it on the "
                       f"model named by the LoRA run's train.init_from") from exc
    if not trainable:
        model.requires_grad_(False)
    return model if trainable else model.eval()


def _set_adapter_state(model: nn.Module, state: dict, adapter_dir, advice: str) -> None:
    from peft import set_peft_model_state_dict

    device = next(model.parameters()).device
    try:
        result = set_peft_model_state_dict(model, {k: v.to(device) for k, v in state.items()})
    except RuntimeError as exc:  # shape mismatch: a different rank or width
        raise SLMError(f"the adapter in {adapter_dir} does not match this model ({str(exc)[:300]}); {advice}") from exc
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise SLMError(f"the adapter in {adapter_dir} does not match this model (missing {missing[:3]}, "
                       f"unexpected {list(result.unexpected_keys)[:3]}); {advice}")


def load_adapter_weights(model: nn.Module, adapter_dir) -> None:
    """Copy saved adapter weights into an existing peft model (resuming a LoRA run)."""
    _, state = read_adapter(adapter_dir)
    _set_adapter_state(unwrap(model), state, adapter_dir,
                       "were lora.r or lora.targets changed since it was saved? Resume with the run's own config")
