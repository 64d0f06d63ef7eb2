"""Where a model comes from (a run, a folder, a GGUF file, the Hugging Face cache or a Hub id), resolved to
a local folder that `slm_core.run.checkpoint.load_model` reads."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from slm_core import allowlist
from slm_core.allowlist import readable
from slm_core.errors import SLMError
from slm_core.run.manifest import MANIFEST, find_checkpoint, verify_checkpoint
from slm_core.run.runs import resolve_run
from slm_core.run.runs import runs_dir as default_runs_dir

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# What a causal LM needs from a repo: no pickles, no ONNX/GGUF/flax copies, no original/ consolidated.pth.
ALLOW_PATTERNS = ["config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                  "chat_template.json"]
OFFLINE_VALUES = ("1", "true", "yes", "on")


@dataclass
class CachedModel:
    repo_id: str
    path: Path  # the snapshot folder
    revision: str
    size_bytes: int
    complete: bool


# ---- the Hugging Face cache ----------------------------------------------------------------------

def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def is_complete_folder(folder: Path) -> bool:
    """config.json and every weight file it needs (all shards the index names) are present."""
    if not (folder / "config.json").exists():
        return False
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return False
        return all((folder / shard).exists() for shard in shards)
    return any(folder.glob("*.safetensors"))


def _snapshot(repo_dir: Path, revision: str) -> Optional[Path]:
    ref = repo_dir / "refs" / revision
    commit = ref.read_text().strip() if ref.exists() else revision  # a revision may be a commit hash
    folder = repo_dir / "snapshots" / commit
    return folder if folder.is_dir() else None


def cached_snapshot(repo_id: str, revision: str = "main") -> Optional[Path]:
    """The complete cached snapshot of repo_id at revision, or None."""
    repo_dir = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    folder = _snapshot(repo_dir, revision) if repo_dir.is_dir() else None
    return folder if folder is not None and is_complete_folder(folder) else None


def list_cached_models() -> list[CachedModel]:
    """Causal-LM snapshots in the Hugging Face cache (those with a config.json), newest first."""
    found = []
    root = hub_cache_dir()
    for repo_dir in sorted(root.glob("models--*")) if root.is_dir() else []:
        repo_id = repo_dir.name.removeprefix("models--").replace("--", "/", 1)
        for snapshot in (repo_dir / "snapshots").glob("*") if (repo_dir / "snapshots").is_dir() else []:
            if (snapshot / "config.json").exists():
                size = sum(p.stat().st_size for p in snapshot.iterdir() if p.exists() and p.is_file())
                found.append(CachedModel(repo_id, snapshot, snapshot.name, size, is_complete_folder(snapshot)))
    return sorted(found, key=lambda m: m.path.stat().st_mtime, reverse=True)


def _cache_listing() -> str:
    models = [m.repo_id + ("" if m.complete else " (incomplete)") for m in list_cached_models()]
    where = hub_cache_dir()
    return f"the cache at {where} holds: {', '.join(models)}" if models else f"the cache at {where} holds no models"


# ---- what a folder holds, from the safetensors headers (no torch, no weights read) ----------------

# Bytes per element of each safetensors dtype (the header's names).
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file: 8-byte little-endian length, then {name: {dtype, shape,
    data_offsets}}. Reads only those bytes."""
    try:
        with Path(path).open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100 * 2**20:  # a real header is kilobytes; anything this long is not one
                raise ValueError(f"header length {length}")
            return json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise SLMError(f"{path} is not a readable safetensors file ({exc}); download or export it again") from exc


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files a loader reads: the shards of the index, else model.safetensors, else every
    *.safetensors. A damaged index raises (json/KeyError); the loader reports it."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return [folder / s for s in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (folder / "model.safetensors").exists():
        return [folder / "model.safetensors"]
    return sorted(folder.glob("*.safetensors"))


def weight_stats(folder: Path) -> dict:
    """{"parameters", "dtype" (the most common, lower case: bf16, f32...), "tensor_bytes", "disk_bytes"}
    of a folder's safetensors weights, from their headers only."""
    params, tensor_bytes, disk, dtypes = 0, 0, 0, {}
    try:
        files = weight_files(folder)
    except (OSError, ValueError, KeyError):  # a damaged index: estimate from the files that are there
        files = sorted(Path(folder).glob("*.safetensors"))
    for path in files:
        if not path.exists():
            continue
        disk += path.stat().st_size
        for name, info in safetensors_header(path).items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= dim
            params += count
            tensor_bytes += count * SAFETENSORS_BYTES.get(info["dtype"], 4)
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + count
    dtype = max(dtypes, key=dtypes.get).lower() if dtypes else None
    return {"parameters": params, "dtype": dtype, "tensor_bytes": tensor_bytes, "disk_bytes": disk}


# ---- resolving a name ----------------------------------------------------------------------------

def is_hub_id(spec: str) -> bool:
    return bool(HUB_ID.match(spec)) and not Path(spec).expanduser().exists()


def _confined_source(source: str, path: Path, runs_dir: Optional[Path]) -> Path:
    """A source whose local reading lies outside the allowed folders: a path is refused before anything looks
    at it (so nothing can be learnt of it, not even that it exists); a bare name is a run in the runs folder
    and `org/name` a Hub id, never something in the working folder."""
    if path.is_absolute() or not (len(path.parts) == 1 or HUB_ID.match(source)) or path.suffix.lower() == ".gguf":
        readable(path)
    if len(path.parts) == 1:
        return resolve_run(default_runs_dir(runs_dir) / source, runs_dir)
    return hub_folder(source)


def resolve_external(spec: str, progress: bool = True) -> Optional[Path]:
    """A local folder for a GGUF file or a Hub id; None when `spec` is neither (a run or a folder)."""
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not readable(path).is_file():
            raise SLMError(f"no GGUF file at {path}; check the path")
        return gguf_folder(path)
    if is_hub_id(spec):
        return hub_folder(spec, progress=progress)
    return None


def hub_folder(spec: str, progress: Any = True) -> Path:
    """The cached snapshot of `org/name[@revision]`, downloading what is missing when online.
    progress: True for huggingface_hub's own bars (the terminal), or a tqdm class to draw them with
    (the Studio's helper passes plain tqdm, whose updates it forwards to the page)."""
    repo_id, _, revision = spec.partition("@")
    revision = revision or "main"
    cached = cached_snapshot(repo_id, revision)
    if cached is not None:
        return cached
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in OFFLINE_VALUES:
        raise SLMError(f"'{repo_id}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set, so it cannot be "
                       f"downloaded; {_cache_listing()}. Pick one of those, a local folder or a run, or go online")
    return _download(repo_id, revision, progress)


def _download(repo_id: str, revision: str, progress: Any) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                        cache_dir=str(hub_cache_dir()), etag_timeout=10,
                                        tqdm_class=progress if isinstance(progress, type) else None))
    except GatedRepoError as exc:
        raise SLMError(f"'{repo_id}' is gated: accept its license at https://huggingface.co/{repo_id} and log in "
                       "(`hf auth login`, or set HF_TOKEN), then try again") from exc
    except RevisionNotFoundError as exc:
        raise SLMError(f"'{repo_id}' has no revision '{revision}'; drop the @{revision} or name a branch, "
                       "tag or commit it has") from exc
    except RepositoryNotFoundError as exc:
        raise SLMError(f"no model '{repo_id}' on the Hugging Face Hub (or it is private: log in with "
                       "`hf auth login`); check the spelling, e.g. Qwen/Qwen2.5-0.5B-Instruct") from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise SLMError(f"could not download '{repo_id}' ({str(exc).splitlines()[0][:200]}); {_cache_listing()}. "
                       "Check the network, or pick a cached model, a local folder or a run") from exc
    if not is_complete_folder(folder):
        raise SLMError(f"'{repo_id}' has no config.json with safetensors weights (only {ALLOW_PATTERNS} are "
                       "fetched; pickled .bin weights are refused): pick a repo that ships safetensors")
    return folder


def _save_dequantized(model, folder: Path) -> None:
    """config.json + model.safetensors of a GGUF-loaded transformers model. (transformers 5 refuses
    save_pretrained on it because it counts GGUF as a quantization, though the weights in memory are
    plain dequantized tensors.)"""
    from safetensors.torch import save_file

    raw = model.config.to_dict()
    raw.pop("quantization_config", None)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if raw.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)  # shared with the input embedding; transformers ties it back
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


# ---- GGUF ----------------------------------------------------------------------------------------

def models_dir() -> Path:
    return Path(os.environ.get("SLM_MODELS_DIR") or Path.home() / ".cache" / "slm-studio" / "models").expanduser()


def gguf_folder(path: Path) -> Path:
    """A Hugging Face folder holding the GGUF's weights (dequantized by transformers) and tokenizer,
    made once per file (keyed by name, size and mtime) and written atomically."""
    stat = path.stat()
    target = models_dir() / f"gguf-{path.stem}-{stat.st_size:x}-{int(stat.st_mtime):x}"
    if is_complete_folder(target):
        return target
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise SLMError("reading a GGUF file needs transformers (and gguf): pip install transformers gguf") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        except Exception as exc:  # the reader raises ValueError, KeyError, struct.error...: all mean "cannot read"
            raise SLMError(f"transformers could not read {path.name} ({str(exc).splitlines()[0][:200]}); its "
                           "architecture or quantization type may be unsupported: try a Q8_0/Q4_K_M/F16 file or "
                           "the original safetensors model") from exc
        _save_dequantized(model, tmp)
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ---- any model source → its folder ---------------------------------------------------------------

def resolve_source(source: str | Path, tag: str = "best", runs_dir: Optional[Path] = None) -> Path:
    """A run name/dir, a checkpoint dir, a quantized artifact, a Hugging Face folder, a .gguf file or a
    Hub id (from the Hugging Face cache, else downloaded) → a folder. Run names are looked up in `runs_dir`
    (default: $SLM_RUNS_DIR or ./runs)."""
    path = Path(source).expanduser()
    if allowlist.refuses(path):  # a confined process: see _confined_source
        path = _confined_source(str(source), path, runs_dir)
    elif not path.is_dir():
        try:
            path = resolve_run(source, runs_dir)
        except SLMError:
            path = resolve_external(str(source))
            if path is None:
                raise
    if not path.resolve().is_relative_to(hub_cache_dir().resolve()) and \
            not path.resolve().is_relative_to(models_dir().resolve()):
        readable(path)  # symlinks resolved: a link in the runs folder that points out of it is refused
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
