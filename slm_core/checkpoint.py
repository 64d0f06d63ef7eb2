"""Saving and loading checkpoints; turning any model source into a ready model + tokenizer.

A checkpoint is a folder: model.safetensors (or adapter/ for LoRA runs), config.yaml,
tokenizer/, state.json (step, val loss; written last, so its presence marks a complete
checkpoint) and, for `latest`, trainer_state.pt (optimizer, RNG, sampler state; loaded with
weights_only=True). Writes go to a temporary folder that is swapped in with renames, so a kill
at any instant leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from slm_core.config import RunConfig, load_run_config
from slm_core.errors import SLMError
from slm_core.runs import atomic_write_json, read_json, resolve_run

WEIGHTS = "model.safetensors"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    config: RunConfig
    path: Path
    template: Optional[str] = None  # instruction template the model was tuned with, if any
    kind: str = "checkpoint"  # checkpoint | quantized | hf

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def state_dict_for_save(model: torch.nn.Module) -> dict:
    """Contiguous CPU tensors; a tied lm_head is stored once (safetensors refuses shared storage)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def load_weights(model: torch.nn.Module, path: Path) -> None:
    state = load_file(str(path))
    if getattr(model.config, "tie_embeddings", False):
        state.setdefault("lm_head.weight", state["embed_tokens.weight"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not model.config.tie_embeddings]
    if missing or unexpected:
        raise SLMError(f"weights in {path} do not match the model config (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}); was the config edited after training?")


def save_checkpoint(ckpt_root: Path, tag: str, model: torch.nn.Module, config: RunConfig, tokenizer_dir: Path,
                    state: dict, trainer_state: Optional[dict] = None) -> Path:
    """Write checkpoints/<tag>/ atomically. `model` is the plain Transformer or a peft model (adapter only)."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{tag}-"))
    try:
        if config.train.mode == "lora":
            from slm_core.lora import save_adapter

            save_adapter(model, tmp / "adapter")
        else:
            save_file(state_dict_for_save(model), str(tmp / WEIGHTS))
        (tmp / "config.yaml").write_text(config.to_yaml())
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
        atomic_write_json(tmp / "state.json", state)  # last: marks the checkpoint complete
        _swap_in(tmp, ckpt_root / tag)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ckpt_root / tag


def _swap_in(new: Path, target: Path) -> None:
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def copy_checkpoint(ckpt_root: Path, src_tag: str, dst_tag: str) -> None:
    """best := latest, atomically (used when a new best validation loss arrives)."""
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{dst_tag}-"))
    shutil.rmtree(tmp)
    shutil.copytree(ckpt_root / src_tag, tmp, ignore=shutil.ignore_patterns("trainer_state.pt"))
    _swap_in(tmp, ckpt_root / dst_tag)


def find_checkpoint(run_dir: Path, tag: str = "best") -> Optional[Path]:
    """The complete checkpoint for `tag`, falling back to latest, and to a half-swapped `.old`."""
    for name in dict.fromkeys((tag, "latest", "best")):
        for candidate in (run_dir / "checkpoints" / name, run_dir / "checkpoints" / f"{name}.old"):
            if (candidate / "state.json").exists():
                return candidate
    return None


def load_trainer_state(ckpt_dir: Path) -> dict:
    return torch.load(ckpt_dir / "trainer_state.pt", map_location="cpu", weights_only=True)


def resolve_source(source: str | Path, tag: str = "best") -> Path:
    """A run name/dir, a checkpoint dir, a quantized artifact or a Hugging Face folder → a folder."""
    path = Path(source).expanduser()
    if not path.is_dir():
        path = resolve_run(source)
    if (path / "status.json").exists() and (path / "checkpoints").is_dir():
        ckpt = find_checkpoint(path, tag)
        if ckpt is None:
            raise SLMError(f"run '{path.name}' has no checkpoint yet; train it first or wait for the first save")
        return ckpt
    return path


def load_model(source: str | Path, tag: str = "best", device: str | torch.device = "cpu",
               dtype: Optional[torch.dtype] = None) -> LoadedModel:
    """Load any model source for generation, evaluation, quantization or export (eval mode)."""
    path = resolve_source(source, tag)
    if (path / "quantization.json").exists():
        from slm_core.quantize import load_quantized

        loaded = load_quantized(path, device=device)
    elif (path / "config.yaml").exists():
        loaded = _load_native(path)
    elif (path / "config.json").exists():
        loaded = _load_hf(path)
    else:
        raise SLMError(f"{path} holds no model: expected a run, a checkpoint folder (config.yaml + "
                       f"{WEIGHTS}), a quantized model or a Hugging Face folder (config.json + safetensors)")
    loaded.model.to(device=device, dtype=dtype) if dtype else loaded.model.to(device)
    loaded.model.eval()
    return loaded


def _load_native(path: Path) -> LoadedModel:
    from slm_core.model import Transformer
    from slm_core.tokenizer import Tokenizer

    config = load_run_config(path / "config.yaml")
    tokenizer = Tokenizer.load(path / "tokenizer")
    if (path / "adapter").is_dir():  # LoRA: the base model plus the adapter, unmerged
        from slm_core.lora import load_adapter

        base = load_model(config.train.init_from, tag="best")
        model = load_adapter(base.model, path / "adapter")
    else:
        model = Transformer(config.model)
        load_weights(model, path / WEIGHTS)
    return LoadedModel(model, tokenizer, config, path, template=config.data.template)


def _load_hf(path: Path) -> LoadedModel:
    from slm_core.hf_convert import from_hf
    from slm_core.model import Transformer
    from slm_core.tokenizer import Tokenizer

    model_config, state = from_hf(path)
    model = Transformer(model_config)
    if model_config.tie_embeddings:
        state.setdefault("lm_head.weight", state["embed_tokens.weight"])
    model.load_state_dict(state, strict=False)
    tokenizer = Tokenizer.from_hf(path) if (path / "tokenizer.json").exists() else None
    template = (read_json(path / "slm_studio.json", default={}) or {}).get("template")
    return LoadedModel(model, tokenizer, RunConfig(model=model_config), path, template=template, kind="hf")
