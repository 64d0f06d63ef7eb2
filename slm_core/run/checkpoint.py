"""Saving and loading checkpoints; turning any model source into a ready model + tokenizer.

A checkpoint is a folder: model.safetensors (or adapter/ for LoRA runs), config.yaml,
tokenizer/, state.json (step, val loss) and, for `latest`, trainer_state.pt (optimizer, RNG,
sampler state; loaded with weights_only=True), and manifest.json (every file's size and CRC-32,
written last, after the files are synced: its presence vouches for the rest). Writes go to a
temporary folder `.<tag>-*` that is swapped in with renames; `latest` keeps the one before it as
`latest.prev`. Readers take the first folder the manifest vouches for (tag, tag.prev, latest,
latest.prev, ...), warn naming the damaged file they skipped, and refuse only when none is good.
A run's writer removes stale temporary folders at its start (run_lock.py makes it the only one).

CRC-32 rather than SHA-256: it detects truncation and corruption (the threat here is a kill, a
full disk or a bad sector, not an adversary) at ~2.7 GB/s against ~0.8 GB/s on this CPU.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from slm_core.config import RunConfig, load_run_config
from slm_core.errors import SLMError
from slm_core.run.runs import atomic_write_json, read_json, resolve_run

WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.pt"
SHARDS = "sharded"  # FSDP's torch.distributed.checkpoint folder: model + optimizer shards (slm_core.train.fsdp)
PREVIOUS = ".prev"  # latest.prev: the checkpoint before latest, kept as a fallback
_CHUNK = 16 * 1024 * 1024
MB = 1024 * 1024


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older good one."""


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
                    shards: Optional[Path] = None) -> Path:
    """Write checkpoints/<tag>/ atomically. `model` is the plain Transformer or a peft model (adapter only).
    Under FSDP (slm_core.train.fsdp) the consolidated `weights` come ready and the `shards` folder written by
    every rank is moved in as sharded/, covered by the manifest like the rest.

    Checks the free space first (the size is known) and turns a full disk into a DiskFullError
    naming the space needed and the last good checkpoint; nothing half-written is left behind."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    keep_previous = tag == "latest"
    lora = config.train.mode == "lora"
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
            from slm_core.models.lora import save_adapter

            save_adapter(model, tmp / "adapter", base=config.train.init_from)
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
        from slm_core.train.preflight import DiskFullError, is_disk_full

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
    from slm_core.train.preflight import DiskFullError

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
    _fsync_dir(target.parent)
    for trash in target.parent.glob(f".trash-{target.name}-*"):
        shutil.rmtree(trash, ignore_errors=True)


def copy_checkpoint(ckpt_root: Path, src_tag: str, dst_tag: str) -> None:
    """best := latest, atomically (used when a new best validation loss arrives)."""
    source = ckpt_root / src_tag
    _check_free_space(ckpt_root, dst_tag, _folder_bytes(source) - _size_or_zero(source / TRAINER_STATE)
                      - (_folder_bytes(source / SHARDS) if (source / SHARDS).is_dir() else 0))
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".{dst_tag}-"))
    try:
        shutil.rmtree(tmp)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(TRAINER_STATE, MANIFEST, SHARDS))
        manifest = read_json(source / MANIFEST)
        if manifest:  # the copy's manifest: the source's, less the resume-only state it leaves out
            manifest["files"] = {name: entry for name, entry in manifest["files"].items()
                                 if not _resume_only(name)}
            atomic_write_json(tmp / MANIFEST, manifest)
        _swap_in(tmp, ckpt_root / dst_tag)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        from slm_core.train.preflight import is_disk_full

        if is_disk_full(error):
            raise _disk_full(ckpt_root, dst_tag, _folder_bytes(source), _write_failure(error)) from error
        raise


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---- the manifest ------------------------------------------------------------------------------

def _checksum(path: Path, sync: bool = False) -> str:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
        if sync:  # the bytes reach the disk before the manifest vouches for them (power loss)
            os.fsync(handle.fileno())
    return f"{crc:08x}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_manifest(folder: Path) -> None:
    """manifest.json: {"format": 1, "checksum": "crc32", "files": {relative path: {"size", "crc32"}}}."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "crc32": _checksum(path, sync=True)}
    for sub in {p.parent for p in folder.rglob("*") if p.is_file()}:
        _fsync_dir(sub)
    atomic_write_json(folder / MANIFEST, {"format": 1, "checksum": "crc32", "files": files})


def verify_checkpoint(folder: Path, need_trainer_state: bool = False) -> Optional[str]:
    """None if the manifest vouches for the folder, else what is wrong, naming the file.

    The trainer state (the largest file) is checked only when it will be read (resume). A folder
    written before manifests existed passes if its state.json parses (its loaders still catch damage)."""
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST)
    if manifest is None:
        if (folder / MANIFEST).exists():
            return f"{folder / MANIFEST} is damaged"
        if not (folder / "state.json").exists():
            return f"{folder} is incomplete (no {MANIFEST}: it was being written when the writer stopped)"
        state = read_json(folder / "state.json")
        if not isinstance(state, dict) or "step" not in state:
            return f"{folder / 'state.json'} is empty or damaged"
        if need_trainer_state and not (folder / TRAINER_STATE).exists():
            return f"{folder / TRAINER_STATE} is missing"
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return f"{folder / MANIFEST} is damaged"
    if need_trainer_state and TRAINER_STATE not in files:
        return f"{folder / TRAINER_STATE} is missing"
    for name, entry in files.items():
        if _resume_only(name) and not need_trainer_state:
            continue
        problem = _check_file(folder / name, entry)
        if problem:
            return problem
    return None


def _resume_only(name: str) -> bool:
    """Files only a resume reads (the largest): checked when resuming, left out of `best`."""
    return name == TRAINER_STATE or name.startswith(f"{SHARDS}/")


def _check_file(path: Path, entry: dict) -> Optional[str]:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path} is missing"
    if size != entry.get("size"):
        return f"{path} is {'truncated' if size < entry.get('size', 0) else 'the wrong size'} " \
               f"({size} of {entry.get('size')} bytes)"
    if _checksum(path) != entry.get("crc32"):
        return f"{path} is corrupt (its checksum does not match the manifest)"
    return None


# ---- finding a good checkpoint ------------------------------------------------------------------

def _candidates(run_dir: Path, tag: str, need_trainer_state: bool) -> list[Path]:
    root = run_dir / "checkpoints"
    names = ("latest",) if need_trainer_state else dict.fromkeys((tag, "latest", "best"))
    # ".old": the name the previous checkpoint had before `.prev` (runs written by older versions).
    return [root / f"{name}{suffix}" for name in names for suffix in ("", PREVIOUS, ".old")]


def find_checkpoint(run_dir: Path, tag: str = "best", need_trainer_state: bool = False) -> Optional[Path]:
    """The first checkpoint its manifest vouches for, in the order tag, tag.prev, latest, latest.prev,
    best. Damaged ones are skipped with a CheckpointWarning naming the file; None when the run has
    no checkpoint at all; SLMError when every checkpoint it has is damaged."""
    damaged = []
    for candidate in _candidates(Path(run_dir), tag, need_trainer_state):
        if not candidate.is_dir():
            continue
        problem = verify_checkpoint(candidate, need_trainer_state)
        if problem is None:
            if damaged:
                warnings.warn(f"skipped damaged checkpoint(s): {'; '.join(damaged)}; using {candidate} "
                              f"(step {step_of(candidate)})", CheckpointWarning, stacklevel=2)
            return candidate
        damaged.append(problem)
    if damaged:
        raise SLMError(f"no good checkpoint left in run '{Path(run_dir).name}': {'; '.join(damaged)}. "
                       f"Start the run again (or restore the files from a backup)")
    return None


def step_of(ckpt_dir: Path) -> Optional[int]:
    state = read_json(Path(ckpt_dir) / "state.json")
    return state.get("step") if isinstance(state, dict) else None


def last_good_step(run_dir: Path) -> Optional[int]:
    """The step of the newest checkpoint a resume would use (sizes checked only: this runs in error paths)."""
    for candidate in _candidates(Path(run_dir), "latest", need_trainer_state=True):
        manifest = read_json(candidate / MANIFEST)
        if isinstance(manifest, dict) and all(_size_or_zero(candidate / name) == entry.get("size")
                                              for name, entry in manifest.get("files", {}).items()):
            return step_of(candidate)
    return None


def clean_stale(run_dir: Path) -> list[str]:
    """Remove temporary folders a killed writer left in checkpoints/ (call only while holding the
    run lock). A complete one whose target is missing (killed between the swap's two renames) is
    promoted instead: it is the newest good checkpoint. Returns what was removed."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    for tag in ("latest", "best"):
        if (root / tag).exists():
            continue
        complete = [p for p in root.glob(f".{tag}-*") if p.is_dir()
                    and verify_checkpoint(p, need_trainer_state=tag == "latest") is None]
        if complete:
            max(complete, key=lambda p: step_of(p) or -1).rename(root / tag)
    removed = []
    for stale in root.iterdir():
        if stale.name.startswith(".") and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale.name)
    return removed


def load_trainer_state(ckpt_dir: Path) -> dict:
    try:
        return torch.load(ckpt_dir / TRAINER_STATE, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as error:  # a pre-manifest checkpoint, damaged
        raise SLMError(f"{ckpt_dir / TRAINER_STATE} is damaged ({str(error)[:200]}); delete {ckpt_dir} "
                       f"to resume from the checkpoint before it") from error


def resolve_source(source: str | Path, tag: str = "best") -> Path:
    """A run name/dir, a checkpoint dir, a quantized artifact, a Hugging Face folder, a .gguf file or a
    Hub id (from the Hugging Face cache, else downloaded: slm_core.models.sources) → a folder."""
    path = Path(source).expanduser()
    if not path.is_dir():
        try:
            path = resolve_run(source)
        except SLMError:
            from slm_core.models.sources import resolve_external

            path = resolve_external(str(source))
            if path is None:
                raise
    if (path / "status.json").exists() and (path / "checkpoints").is_dir():
        ckpt = find_checkpoint(path, tag)
        if ckpt is None:
            raise SLMError(f"run '{path.name}' has no checkpoint yet; train it first or wait for the first save")
        return ckpt
    if (path / MANIFEST).exists():  # a checkpoint folder named directly: no fallback, but a clear word
        problem = verify_checkpoint(path)
        if problem:
            raise SLMError(f"checkpoint {path} is damaged: {problem}; load its run instead to fall back to "
                           f"the previous good checkpoint")
    return path


def load_model(source: str | Path, tag: str = "best", device: str | torch.device = "cpu",
               dtype: Optional[torch.dtype] = None, force: bool = False) -> LoadedModel:
    """Load any model source for generation, evaluation, quantization or export (eval mode).
    A model whose weights exceed the device's free memory is refused first (force or SLM_FORCE=1: try)."""
    from slm_core.models.memory import check_fits
    from slm_core.validate import check_load_args

    check_load_args(source, tag, device)
    path = resolve_source(source, tag)
    check_fits(path, str(device), str(dtype).removeprefix("torch.") if dtype else None, force=force)
    if (path / "quantization.json").exists():
        from slm_core.models.quantized import load_quantized

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
    from slm_core.models.model import Transformer
    from slm_core.models.tokenizer import Tokenizer

    config = load_run_config(path / "config.yaml")
    tokenizer = Tokenizer.load(path / "tokenizer")
    if (path / "adapter").is_dir():  # LoRA: the base model plus the adapter, unmerged
        from slm_core.models.lora import load_adapter

        base = load_model(config.train.init_from, tag="best")
        model = load_adapter(base.model, path / "adapter")
    else:
        model = Transformer(config.model)
        load_weights(model, path / WEIGHTS)
    return LoadedModel(model, tokenizer, config, path, template=config.data.template)


def _load_hf(path: Path) -> LoadedModel:
    from slm_core.models.hf import load_hf_model
    from slm_core.models.tokenizer import Tokenizer

    model = load_hf_model(path)  # meta-device build + memory-mapped weights: one copy in memory
    model_config = model.config
    tokenizer = Tokenizer.from_hf(path) if (path / "tokenizer.json").exists() else None
    if tokenizer is not None and tokenizer.n_vocab > model_config.vocab_size:  # fewer is fine: padded rows
        raise SLMError(f"the tokenizer in {path} has {tokenizer.n_vocab} tokens but the model's embedding only "
                       f"{model_config.vocab_size} rows: the folder mixes two models; download it again")
    template = (read_json(path / "slm_studio.json", default={}) or {}).get("template")
    return LoadedModel(model, tokenizer, RunConfig(model=model_config), path, template=template, kind="hf")
