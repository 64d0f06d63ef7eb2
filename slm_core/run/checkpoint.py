"""Checkpoints: saved atomically with a manifest, the newest good one found, and any model source turned into
a ready model and tokenizer (`load_model`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import load_file, save_file

from slm_core.config import RunConfig
from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_json, fsync_dir
from slm_core.run.manifest import (
    MANIFEST,
    PREVIOUS,
    SHARDS,
    TRAINER_STATE,
    WEIGHTS,
    last_good_step,
    resume_only,
    size_or_zero,
    write_manifest,
)
from slm_core.run.runs import read_json
from slm_core.system import MB, DiskFullError, is_disk_full


def state_dict_for_save(model: torch.nn.Module) -> dict:
    """Contiguous CPU tensors; a tied lm_head is stored once (safetensors refuses shared storage)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def read_weights(path: Path, tie_embeddings: bool = False) -> dict:
    """model.safetensors as a state dict (a tied head filled in from the embedding)."""
    try:
        state = load_file(str(path))
    except Exception as error:  # SafetensorError (truncated header/data) is not an OSError subclass
        raise SLMError(f"{path} is damaged or unreadable ({str(error)[:200]}); use another checkpoint "
                       f"(e.g. --checkpoint latest) or train again") from error
    if tie_embeddings:
        state.setdefault("lm_head.weight", state["embed_tokens.weight"])
    return state


def load_weights(model: torch.nn.Module, path: Path) -> None:
    state = read_weights(path, getattr(model.config, "tie_embeddings", False))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not model.config.tie_embeddings]
    if missing or unexpected:
        raise SLMError(f"weights in {path} do not match the model config (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}); was the config edited after training?")


def save_checkpoint(ckpt_root: Path, tag: str, model: torch.nn.Module, config: RunConfig, tokenizer_dir: Path,
                    state: dict, trainer_state: Optional[dict] = None, weights: Optional[dict] = None,
                    shards: Optional[Path] = None,
                    write_adapter: Optional[Callable[[torch.nn.Module, Path], None]] = None) -> Path:
    """Write checkpoints/<tag>/ atomically. `model` is the plain Transformer, or a peft model whose adapter
    alone is written by `write_adapter(model, folder)` (a LoRA run's trainer passes it).
    Under FSDP (slm_core.train.fsdp) the consolidated `weights` come ready and the `shards` folder written by
    every rank is moved in as sharded/, covered by the manifest like the rest.

    Checks the free space first (the size is known) and turns a full disk into a DiskFullError
    naming the space needed and the last good checkpoint; nothing half-written is left behind."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    keep_previous = tag == "latest"
    lora = config.uses_lora
    if lora and write_adapter is None:
        raise ValueError("a LoRA run's checkpoint needs write_adapter (slm_core.models.lora.save_adapter)")
    if weights is None and not lora:
        weights = state_dict_for_save(model)
    needed = (_tensor_bytes(weights) if weights is not None else
              sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad))
    needed += _tensor_bytes(trainer_state) + _folder_bytes(tokenizer_dir) + MB
    try:
        _check_free_space(ckpt_root, tag, needed)
    except SLMError:
        if not (keep_previous and (ckpt_root / tag).exists() and (ckpt_root / f"{tag}{PREVIOUS}").exists()):
            raise
        _discard(ckpt_root / f"{tag}{PREVIOUS}")  # short of room: give up the fallback, latest stays good
        _check_free_space(ckpt_root, tag, needed)
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{tag}-"))
    try:
        if lora:
            write_adapter(model, tmp / "adapter")
        else:
            save_file(weights, str(tmp / WEIGHTS))
        (tmp / "config.yaml").write_text(config.to_yaml())
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
        if shards is not None:
            Path(shards).rename(tmp / SHARDS)
        atomic_write_json(tmp / "state.json", state)
        write_manifest(tmp)  # last: vouches for everything above
        _swap_in(tmp, ckpt_root / tag, keep_previous)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)

        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise _disk_full(ckpt_root, tag, needed, _write_failure(error)) from error
        raise
    return ckpt_root / tag


def _write_failure(error: BaseException) -> str:
    """What a failed write says, in words: torch.save's zip writer reports only 'unexpected pos'."""
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    text = str(error)
    for needle, words in (("os error 27", "File too large"), ("os error 28", "No space left on device"),
                          ("os error 122", "Disk quota exceeded"), ("unexpected pos", "a file write stopped short")):
        if needle in text:
            return words
    return text[:200]


def _tensor_bytes(obj) -> int:
    """Bytes of every tensor in a nested dict/list (what torch.save / safetensors will write)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _check_free_space(ckpt_root: Path, tag: str, needed: int) -> None:
    # 5% over the tensor bytes: headers, pickle framing, the manifest.
    if shutil.disk_usage(ckpt_root).free < needed * 1.05:
        raise _disk_full(ckpt_root, tag, needed)


def _disk_full(ckpt_root: Path, tag: str, needed: int, detail: str = ""):
    free = shutil.disk_usage(ckpt_root).free / MB
    good = last_good_step(ckpt_root.parent)
    last = f"last good checkpoint: step {good}" if good is not None else "no checkpoint saved yet"
    why = f" ({detail})" if detail else ""
    return DiskFullError(f"not enough disk space to save the '{tag}' checkpoint{why}: needs {needed * 1.05 / MB:.0f} "
                         f"MB free in {ckpt_root} ({free:.0f} MB free now); {last}. Free some space, then "
                         f"`slm resume {ckpt_root.parent.name}`")


def _discard(folder: Path) -> None:
    """Remove a folder so that no half-deleted copy is ever visible under its name: rename, then delete."""
    if not folder.exists():
        return
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    folder.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _swap_in(new: Path, target: Path, keep_previous: bool = False) -> None:
    """Rename `new` to `target`. The old target becomes target.prev (keep_previous) or is deleted.
    A kill between the two renames leaves target missing but target.prev (or the complete `new`,
    which clean_stale promotes) good."""
    if target.exists():
        if keep_previous:
            _discard(target.with_name(target.name + PREVIOUS))
            target.rename(target.with_name(target.name + PREVIOUS))
        else:
            old = target.with_name(f".trash-{target.name}-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
    new.rename(target)
    fsync_dir(target.parent)
    for trash in target.parent.glob(f".trash-{target.name}-*"):
        shutil.rmtree(trash, ignore_errors=True)


def copy_checkpoint(ckpt_root: Path, src_tag: str, dst_tag: str) -> None:
    """best := latest, atomically (used when a new best validation loss arrives)."""
    source = ckpt_root / src_tag
    _check_free_space(ckpt_root, dst_tag, _folder_bytes(source) - size_or_zero(source / TRAINER_STATE)
                      - (_folder_bytes(source / SHARDS) if (source / SHARDS).is_dir() else 0))
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{dst_tag}-"))
    try:
        shutil.rmtree(tmp)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(TRAINER_STATE, MANIFEST, SHARDS))
        manifest = read_json(source / MANIFEST)
        if manifest:  # the copy's manifest: the source's, less the resume-only state it leaves out
            manifest["files"] = {name: entry for name, entry in manifest["files"].items()
                                 if not resume_only(name)}
            atomic_write_json(tmp / MANIFEST, manifest)
        _swap_in(tmp, ckpt_root / dst_tag)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)

        if is_disk_full(error):
            raise _disk_full(ckpt_root, dst_tag, _folder_bytes(source), _write_failure(error)) from error
        raise


# ---- finding a good checkpoint ------------------------------------------------------------------


def load_trainer_state(ckpt_dir: Path) -> dict:
    try:
        return torch.load(ckpt_dir / TRAINER_STATE, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as error:  # a pre-manifest checkpoint, damaged
        raise SLMError(f"{ckpt_dir / TRAINER_STATE} is damaged ({str(error)[:200]}); delete {ckpt_dir} "
                       f"to resume from the checkpoint before it") from error
