"""Loading any model kind into a LoadedModel: a run's checkpoint, a quantized artifact, a Hugging Face or
GGUF folder, refused first when it cannot fit in memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from slm_core.config import RunConfig, load_run_config
from slm_core.errors import SLMError
from slm_core.models.hf import load_hf_model
from slm_core.models.lora import load_adapter
from slm_core.models.memory import check_fits
from slm_core.models.model import Transformer
from slm_core.models.quantized import install_quantized, read_quantization_meta
from slm_core.models.sources import resolve_source
from slm_core.models.tokenizer import Tokenizer
from slm_core.run.checkpoint import load_weights
from slm_core.run.manifest import WEIGHTS
from slm_core.run.runs import read_json
from slm_core.validate import check_device, check_tag


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


def load_model(source: str | Path, tag: str = "best", device: str | torch.device = "cpu",
               dtype: Optional[torch.dtype] = None, force: bool = False, runs_dir: Optional[Path] = None
               ) -> LoadedModel:
    """Load any model source for generation, evaluation, quantization or export (eval mode).
    A model whose weights exceed the device's free memory is refused first (force or SLM_FORCE=1: try)."""
    check_load_args(source, tag, device)
    path = resolve_source(source, tag, runs_dir)
    check_fits(path, str(device), str(dtype).removeprefix("torch.") if dtype else None, force=force)
    if (path / "quantization.json").exists():
        loaded = load_quantized(path, device=device)
    elif (path / "config.yaml").exists():
        loaded = _load_native(path, runs_dir)
    elif (path / "config.json").exists():
        loaded = _load_hf(path)
    else:
        raise SLMError(f"{path} holds no model: expected a run, a checkpoint folder (config.yaml + "
                       f"{WEIGHTS}), a quantized model or a Hugging Face folder (config.json + safetensors)")
    loaded.model.to(device=device, dtype=dtype) if dtype else loaded.model.to(device)
    loaded.model.eval()
    return loaded


def _load_native(path: Path, runs_dir: Optional[Path]) -> LoadedModel:
    config = load_run_config(path / "config.yaml")
    tokenizer = Tokenizer.load(path / "tokenizer")
    if (path / "adapter").is_dir():  # LoRA: the base model plus the adapter, unmerged
        if runs_dir is None and path.parent.name == "checkpoints":  # <runs>/<run>/checkpoints/<tag>: its base
            runs_dir = path.parents[2]                                # is a run beside it
        base = load_model(config.train.init_from, tag="best", runs_dir=runs_dir)
        model = load_adapter(base.model, path / "adapter")
    else:
        model = Transformer(config.model)
        load_weights(model, path / WEIGHTS)
    return LoadedModel(model, tokenizer, config, path, template=config.data.template)


def _load_hf(path: Path) -> LoadedModel:
    model = load_hf_model(path)  # meta-device build + memory-mapped weights: one copy in memory
    model_config = model.config
    tokenizer = Tokenizer.from_hf(path) if (path / "tokenizer.json").exists() else None
    if tokenizer is not None and tokenizer.n_vocab > model_config.vocab_size:  # fewer is fine: padded rows
        raise SLMError(f"the tokenizer in {path} has {tokenizer.n_vocab} tokens but the model's embedding only "
                       f"{model_config.vocab_size} rows: the folder mixes two models; download it again")
    template = (read_json(path / "slm_studio.json", default={}) or {}).get("template")
    return LoadedModel(model, tokenizer, RunConfig(model=model_config), path, template=template, kind="hf")


def _plain_file(source: Any) -> bool:
    """A file that is not a model by itself (a .gguf file may be one)."""
    path = Path(str(source)).expanduser()
    return path.is_file() and path.suffix.lower() != ".gguf"


def check_load_args(source: Any, tag: str, device: Any) -> None:
    """load_model's arguments: a source that is not a file, a known tag, a device this machine has."""
    if source is None or not str(source).strip():
        raise SLMError("no model given: name a run, or a checkpoint, quantized or Hugging Face model folder")
    if _plain_file(source):
        raise SLMError(f"{source} is a file: give a run name, or the model folder that holds it")
    check_tag(tag)
    check_device(device)


def check_model_source(source: Any, field: str, tag: str = "best", runs_dir: Optional[Path] = None) -> Path:
    """A run name (in the runs directory), run folder, checkpoint, quantized or HF folder → its folder.
    Cheap: nothing is loaded, only the folders are looked at."""
    if str(source).lower().endswith(".gguf") and Path(str(source)).expanduser().is_file():
        return Path(str(source)).expanduser()
    if _plain_file(source):
        raise SLMError(f"{field}={source!r} is a file: give a run name, or a checkpoint, quantized or Hugging Face "
                       "model folder")
    try:
        folder = resolve_source(str(source), tag, runs_dir)
    except SLMError as error:  # names the runs directory it looked in; say which setting it came from
        raise SLMError(f"{field}={source!r}: {error}") from None
    known = ("quantization.json", "config.yaml", "config.json")
    if not any((folder / name).exists() for name in known):
        raise SLMError(f"{field}={source!r}: {folder} holds no model (no config.yaml or config.json); give a run "
                       "name, or a checkpoint, quantized or Hugging Face model folder")
    return folder


def load_quantized(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a quantized artifact (from its metadata, no original needed) → checkpoint.LoadedModel."""
    from safetensors.torch import load_file


    path = Path(path)
    meta = read_quantization_meta(path)
    if meta["method"] == "int8-dynamic" and torch.device(device).type != "cpu":
        raise SLMError("int8-dynamic models run on CPU only (torch.ao dynamic kernels); use int8 or int4 on a GPU")
    config = load_run_config(path / "config.yaml")
    with torch.device("meta"):  # skip random init: every tensor comes from the file
        model = Transformer(config.model)
    install_quantized(model, load_file(str(path / WEIGHTS)), meta["modules"], meta["method"], meta["group_size"])
    model.quantization["source"] = meta.get("source")
    tokenizer = None
    if (path / "tokenizer").is_dir():
        tokenizer = Tokenizer.load(path / "tokenizer")
    model.to(device).eval()
    return LoadedModel(model, tokenizer, config, path, template=config.data.template, kind="quantized")
