"""A checkpoint folder's manifest: written last, it vouches for every file's size and checksum. Finding,
verifying and cleaning checkpoints reads folders only (no torch), so the Studio's server can do it."""

from __future__ import annotations

import os
import shutil
import warnings
import zlib
from pathlib import Path
from typing import Optional

from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_json, fsync_dir
from slm_core.run.runs import read_json

WEIGHTS = "model.safetensors"


MANIFEST = "manifest.json"


TRAINER_STATE = "trainer_state.pt"


SHARDS = "sharded"  # FSDP's torch.distributed.checkpoint folder: model + optimizer shards (slm_core.train.fsdp)


PREVIOUS = ".prev"  # latest.prev: the checkpoint before latest, kept as a fallback


_CHUNK = 16 * 1024 * 1024


def size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _checksum(path: Path, sync: bool = False) -> str:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
        if sync:  # the bytes reach the disk before the manifest vouches for them (power loss)
            os.fsync(handle.fileno())
    return f"{crc:08x}"


def write_manifest(folder: Path) -> None:
    """manifest.json: {"format": 1, "checksum": "crc32", "files": {relative path: {"size", "crc32"}}}."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "crc32": _checksum(path, sync=True)}
    for sub in {p.parent for p in folder.rglob("*") if p.is_file()}:
        fsync_dir(sub)
    atomic_write_json(folder / MANIFEST, {"format": 1, "checksum": "crc32", "files": files})


def verify_checkpoint(folder: Path, need_trainer_state: bool = False) -> Optional[str]:
    """None if the manifest vouches for the folder, else what is wrong, naming the file.

    The trainer state (the largest file) is checked only when it will be read (resume). A folder
    written before manifests existed passes if its state.json parses (its loaders still catch damage).
    A manifest that does not parse vouches for nothing: the folder is not trusted, and the manifest is left
    as it is (moved aside, the folder would pass for one written before manifests)."""
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST)
    if manifest is None:
        if (folder / MANIFEST).exists():
            return f"{folder / MANIFEST} is damaged (it does not parse)"
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
        return f"{folder / MANIFEST} is damaged (it lists no files)"
    if need_trainer_state and TRAINER_STATE not in files:
        return f"{folder / TRAINER_STATE} is missing"
    for name, entry in files.items():
        if resume_only(name) and not need_trainer_state:
            continue
        problem = _check_file(folder / name, entry)
        if problem:
            return problem
    return None


def resume_only(name: str) -> bool:
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
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if isinstance(files, dict) and all(isinstance(entry, dict) and size_or_zero(candidate / name) == entry.get("size")
                                           for name, entry in files.items()):
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


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older good one."""
