"""Finding a model on the Hugging Face Hub: search by name and filters, one model's files and sizes (safetensors
and GGUF quantisations), whether its weights fit this machine, and the local cache when the Hub is out of reach.
No torch; the Studio's model browser renders these."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from huggingface_hub import HfApi, scan_cache_dir
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import CacheNotFound, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import ModelInfo
from huggingface_hub.utils import get_session

from slm_core.errors import SLMError
from slm_core.models.estimate import CPU_ALLOCATOR_SLACK, fits
from slm_core.models.sources import OFFLINE_VALUES, hub_cache_dir, is_complete_folder
from slm_core.system import MB, available_memory_mb

TIMEOUT_S = 5.0  # one request to the Hub; offline it fails at once (refused) or within this (no route)
SORTS = ("downloads", "likes", "trending_score", "last_modified")
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3", "phi3", "gpt2")
# llama.cpp's quantisation names as they appear in GGUF file names (Q4_K_M, IQ2_XXS, Q8_0, F16, BF16...).
GGUF_QUANT = re.compile(r"(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|FP?16|FP?32)(?![A-Za-z0-9])", re.IGNORECASE)
OFFLINE_ADVICE = ("pick a model already in the Hugging Face cache (listed below), a local Hugging Face folder, a "
                  "GGUF file or a run; to search the Hub, go online (and unset HF_HUB_OFFLINE)")


class HubOffline(SLMError):
    """The Hub cannot be reached; the message says why and what to use instead."""


@dataclass
class WeightFile:
    name: str
    size: Optional[int]  # bytes; None when the listing did not carry sizes
    kind: str  # "safetensors" or "gguf"
    quant: Optional[str] = None  # GGUF: Q4_K_M, Q8_0, F16...


@dataclass
class HubModel:
    repo_id: str
    family: Optional[str] = None  # model_type (llama, qwen2...) or the first architecture
    parameters: Optional[int] = None  # from the safetensors metadata or the GGUF header the Hub read
    downloads: Optional[int] = None
    likes: Optional[int] = None
    gated: bool = False
    pipeline: Optional[str] = None
    files: list[WeightFile] = field(default_factory=list)

    @property
    def safetensors_bytes(self) -> Optional[int]:
        sizes = [f.size for f in self.files if f.kind == "safetensors"]
        return sum(sizes) if sizes and None not in sizes else None


# ---- reaching the Hub -----------------------------------------------------------------------------

def endpoint() -> str:
    """The Hub's address, read now (huggingface_hub reads HF_ENDPOINT once, at import)."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or hub_constants.ENDPOINT


def _api() -> HfApi:
    return HfApi(endpoint=endpoint())


def check_online(timeout: float = TIMEOUT_S) -> None:
    """Raise HubOffline unless the Hub answers one short request. HF_HUB_OFFLINE refuses without a request;
    huggingface_hub's listing retries a failed connection with back-off for many seconds, so it is asked only
    once this single try (no retry) has answered."""
    # huggingface_hub reads HF_HUB_OFFLINE once, at import, and refuses every request after; the variable is
    # read again here so that setting it in a running process counts too.
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in OFFLINE_VALUES or hub_constants.HF_HUB_OFFLINE:
        raise HubOffline(f"Offline: HF_HUB_OFFLINE is set, so the Hub is not searched; {OFFLINE_ADVICE}")
    try:
        reply = get_session().get(f"{endpoint()}/api/models", params={"limit": 1}, timeout=timeout)
    except Exception as error:  # noqa: BLE001 - httpx's connect, timeout and DNS errors all mean "not reachable"
        raise HubOffline(f"Offline: the Hugging Face Hub at {endpoint()} cannot be reached ({type(error).__name__}); "
                         f"{OFFLINE_ADVICE}") from error
    if reply.status_code >= 500:
        raise HubOffline(f"The Hugging Face Hub answered {reply.status_code}; try again later, or {OFFLINE_ADVICE}")


def search(query: str = "", family: Optional[str] = None, gguf: bool = False, max_params_b: Optional[float] = None,
           sort: str = "downloads", limit: int = 20, timeout: float = TIMEOUT_S) -> list[HubModel]:
    """Text-generation models on the Hub whose name contains `query`, most downloaded first: optionally of one
    family (its model_type tag), only those with GGUF files, at most `max_params_b` billion parameters."""
    if sort not in SORTS:
        raise SLMError(f"sort must be one of {', '.join(SORTS)}")
    check_online(timeout)
    filters = [family] if family else []
    if gguf:
        filters.append("gguf")
    try:
        found = _api().list_models(search=query.strip() or None, filter=filters or None,
                                   pipeline_tag="text-generation", sort=sort, limit=int(limit),
                                   num_parameters=f"max:{max_params_b:g}B" if max_params_b else None,
                                   expand=["downloads", "likes", "gated", "pipeline_tag", "safetensors", "gguf",
                                           "config", "tags"])
        return [describe(info) for info in found]
    except HfHubHTTPError as error:
        raise SLMError(f"the Hub refused the search ({str(error).splitlines()[0][:160]}); change the query or "
                       "filters") from error


def model_details(repo_id: str, timeout: float = TIMEOUT_S) -> HubModel:
    """One model with every file's size (safetensors shards and GGUF quantisations)."""
    check_online(timeout)
    try:
        info = _api().model_info(repo_id, files_metadata=True, timeout=timeout)
    except GatedRepoError as error:
        raise SLMError(f"'{repo_id}' is gated: accept its license at https://huggingface.co/{repo_id} and log in "
                       "(`hf auth login`, or set HF_TOKEN)") from error
    except RepositoryNotFoundError as error:
        raise SLMError(f"no model '{repo_id}' on the Hugging Face Hub; check the spelling") from error
    except HfHubHTTPError as error:
        raise SLMError(f"the Hub could not describe '{repo_id}' ({str(error).splitlines()[0][:160]}); "
                       "try again") from error
    except Exception as error:  # noqa: BLE001 - a connection lost after the check: offline after all
        raise HubOffline(f"Offline: the Hub stopped answering ({type(error).__name__}); {OFFLINE_ADVICE}") from error
    return describe(info)


# ---- reading what the Hub says ------------------------------------------------------------------

def describe(info: ModelInfo) -> HubModel:
    """A HubModel from huggingface_hub's ModelInfo (a search hit, or model_info with files_metadata)."""
    config = info.config or {}
    architectures = config.get("architectures") or []
    family = config.get("model_type") or (architectures[0] if architectures else None)
    gguf = info.gguf or {}
    if family is None and gguf.get("architecture"):
        family = gguf["architecture"]
    parameters = info.safetensors.total if info.safetensors else gguf.get("total")
    files = []
    for sibling in info.siblings or []:
        name = sibling.rfilename
        size = sibling.size if sibling.size is not None else (sibling.lfs.size if sibling.lfs else None)
        if name.endswith(".safetensors"):
            files.append(WeightFile(name, size, "safetensors"))
        elif name.lower().endswith(".gguf"):
            files.append(WeightFile(name, size, "gguf", gguf_quant(name)))
    return HubModel(info.id, family=family, parameters=parameters, downloads=info.downloads, likes=info.likes,
                    gated=bool(info.gated), pipeline=info.pipeline_tag, files=files)


def gguf_quant(filename: str) -> Optional[str]:
    """'Q4_K_M' from 'qwen2.5-0.5b-instruct-q4_k_m.gguf' (the last quantisation name in it); None if none."""
    found = GGUF_QUANT.findall(Path(filename).stem)
    return found[-1].upper().replace("FP", "F") if found else None


def weight_choices(model: HubModel) -> list[tuple[str, Optional[int]]]:
    """(what, bytes) for each way to get the weights: all safetensors shards together, then each GGUF file."""
    choices = []
    if any(f.kind == "safetensors" for f in model.files):
        choices.append(("safetensors", model.safetensors_bytes))
    choices += [(f"GGUF {f.quant or f.name}", f.size) for f in model.files if f.kind == "gguf"]
    return choices


def weights_fit(size_bytes: Optional[int], device: str = "cpu") -> Optional[bool]:
    """Whether weights of this size load here (None when the size or the free memory is unknown): the rule
    slm_core.models.memory.check_fits applies before a load, with the CPU allocator's slack; the picker's full
    estimate (chat, LoRA, fine-tune) follows once the model is downloaded."""
    available = available_memory_mb(device)
    if size_bytes is None or available is None:
        return None
    slack = 1.0 if device.startswith("cuda") else CPU_ALLOCATOR_SLACK
    return fits(size_bytes / MB * slack, available)


# ---- the local cache ------------------------------------------------------------------------------

@dataclass
class CachedRepo:
    repo_id: str
    size_bytes: int
    files: int
    revisions: list[str]  # refs (main...) or commit hashes
    path: Optional[Path]  # the newest snapshot
    complete: bool  # config.json and every safetensors shard
    gguf: list[str]  # GGUF files in the newest snapshot
    last_accessed: float


def cached_models(cache_dir: Optional[Path] = None) -> list[CachedRepo]:
    """Every model repo in the Hugging Face cache, most recently used first (huggingface_hub's own scan)."""
    try:
        scanned = scan_cache_dir(cache_dir or hub_cache_dir())
    except CacheNotFound:
        return []
    repos = []
    for repo in scanned.repos:
        if repo.repo_type != "model":
            continue
        revisions = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
        newest = revisions[0] if revisions else None
        names = [f.file_name for f in newest.files] if newest else []
        repos.append(CachedRepo(
            repo.repo_id, repo.size_on_disk, repo.nb_files,
            [ref for r in revisions for ref in sorted(r.refs)] or [r.commit_hash[:12] for r in revisions],
            newest.snapshot_path if newest else None,
            bool(newest) and is_complete_folder(newest.snapshot_path),
            [n for n in names if n.lower().endswith(".gguf")], repo.last_accessed))
    return sorted(repos, key=lambda r: r.last_accessed, reverse=True)


def browse(query: str = "", **filters: Any) -> tuple[list[HubModel], list[CachedRepo], Optional[str]]:
    """(Hub hits, cached repos, offline message): the hits when the Hub answers, else the cache (filtered by
    `query`) and the message saying why and what to use instead."""
    try:
        return search(query, **filters), [], None
    except HubOffline as offline:
        words = query.strip().lower()
        return [], [r for r in cached_models() if words in r.repo_id.lower()], str(offline)
