"""LoRA fine-tuning through peft: wrap our Transformer, save/load/merge adapters, reach the base model.

peft does the LoRA work: our linears carry Hugging Face names (q_proj ... down_proj), so
`peft.get_peft_model` wraps the plain nn.Module Transformer as it is. This file only decides
which targets exist in the model, freezes everything else, and gives the rest of the engine a
few verbs: apply, summarise, save, load (unmerged, for generation), load weights (resume), merge
(a standalone checkpoint), and unwrap (the KV-cache API lives on the base Transformer).

peft imports transformers and accelerate (3–5 s), so it is imported inside the functions that
need it: `import slm_core.lora` stays instant.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch.nn as nn

from slm_core.errors import SLMError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


# ---- unwrapping ----------------------------------------------------------------------------

def is_peft(model: nn.Module) -> bool:
    # Duck-typed so callers need not import peft just to ask.
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP (`.module`) and torch.compile (`._orig_mod`) wrappers; a peft model stays a peft model."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def base_transformer(model: nn.Module) -> nn.Module:
    """The Transformer underneath any wrapper: where `setup_kv_cache`/`clear_kv_cache` and `.config` live.

    Under peft the LoRA layers are injected into this very module, so calling it (or the peft
    wrapper, which forwards `input_pos=` unchanged) runs base + adapter, unmerged.
    """
    model = unwrap(model)
    return model.get_base_model() if is_peft(model) else model


# ---- targets -------------------------------------------------------------------------------

def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct short names of the model's Linear layers, e.g. ['down_proj', 'k_proj', ..., 'up_proj']."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def resolve_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """Keep the requested targets that name a Linear in this model (GELU MLPs have no gate_proj).

    A target matches as peft matches it: a module's full name, or its ending after a dot.
    Raises SLMError when nothing is left, listing what does exist.
    """
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
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
    peft_model = peft.get_peft_model(model, config)  # freezes every non-LoRA parameter
    return peft_model


def trainable_summary(model: nn.Module) -> dict:
    """{"trainable", "total", "frozen", "trainable_percent"}: parameter counts, a tied weight counted once."""
    trainable = total = 0
    for param in unwrap(model).parameters():  # parameters() yields a shared tensor once
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return {"trainable": trainable, "total": total, "frozen": total - trainable,
            "trainable_percent": 100.0 * trainable / max(total, 1)}


# ---- saving, loading, merging --------------------------------------------------------------

def save_adapter(model: nn.Module, out_dir) -> Path:
    """Write the adapter only (adapter_model.safetensors + adapter_config.json) to out_dir, atomically.

    The base weights are not copied: the run's config names the base (train.init_from).
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

    adapter_dir = _check_adapter_dir(adapter_dir)
    base = merge_adapter(base_model) if is_peft(unwrap(base_model)) else unwrap(base_model)
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise SLMError(f"the adapter in {adapter_dir} does not fit this base model ({exc}); load it on the "
                       f"model named by the LoRA run's train.init_from") from exc
    return model if trainable else model.eval()


def load_adapter_weights(model: nn.Module, adapter_dir) -> None:
    """Copy saved adapter weights into an existing peft model (resuming a LoRA run)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    peft_model = unwrap(model)
    adapter_dir = _check_adapter_dir(adapter_dir)
    device = next(peft_model.parameters()).device
    state = load_file(str(adapter_dir / ADAPTER_WEIGHTS), device=str(device))
    advice = "were lora.r or lora.targets changed since it was saved? Resume with the run's own config"
    try:
        result = set_peft_model_state_dict(peft_model, state)
    except RuntimeError as exc:  # shape mismatch: a different rank
        raise SLMError(f"the adapter in {adapter_dir} does not match this LoRA model ({str(exc)[:300]}); "
                       f"{advice}") from exc
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise SLMError(f"the adapter in {adapter_dir} does not match this LoRA model (missing {missing[:3]}, "
                       f"unexpected {list(result.unexpected_keys)[:3]}); {advice}")


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights → a plain Transformer (for a standalone checkpoint,
    quantization or export). Consumes the peft model: its base is the returned module."""
    model = unwrap(model)
    if not is_peft(model):
        return model
    return model.merge_and_unload()
