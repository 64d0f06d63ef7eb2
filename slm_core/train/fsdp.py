"""train.strategy=fsdp: FSDP2 (`fully_shard`) across the ranks, and its sharded checkpoints (DCP) beside the
consolidated weights, whose index is read without unpickling arbitrary objects."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Optional

import torch

from slm_core.errors import SLMError
from slm_core.models.model import Transformer
from slm_core.run import checkpoint
from slm_core.run.checkpoint import read_weights
from slm_core.run.manifest import SHARDS, WEIGHTS


def uses_fsdp(config, world_size: int) -> bool:
    return world_size > 1 and config.train.strategy == "fsdp"


def check_supported(config, world_size: int) -> None:
    """Refuse, before anything starts, what FSDP here does not do."""
    if not uses_fsdp(config, world_size):
        return
    if config.uses_lora:
        raise SLMError("train.strategy=fsdp does not run LoRA: its adapters are small enough to replicate, "
                       "so use train.strategy=ddp (the base model's frozen weights are not sharded under LoRA)")
    if config.train.optimizer == "muon":
        raise SLMError("train.optimizer=muon cannot run with train.strategy=fsdp: Muon orthogonalises whole "
                       "weight matrices and FSDP splits them across ranks; use train.optimizer=adamw or "
                       "train.strategy=ddp")


def mixed_precision(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """bf16 weights for compute where the device runs bf16 (CUDA under bf16 autocast); gradients are
    reduced in fp32 so averaging across many ranks loses nothing. On CPU (gloo) the weights and their
    reduction stay fp32 (tested here); CPU autocast still runs the matrix multiplies in bf16 where native."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device.type == "cuda" and amp_dtype == torch.bfloat16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model: torch.nn.Module, device: torch.device, amp_dtype: Optional[torch.dtype]) -> torch.nn.Module:
    """Shard each block, then the rest (embeddings, final norm, head) as the root, in place.

    Ranks seed their initialisation differently (dropout streams), so rank 0's weights are broadcast
    first, as DDP does at construction: every process count starts from the same model."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = mixed_precision(device, amp_dtype)
    for block in _blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    layers = getattr(model, "layers", None)
    if layers is None:
        raise SLMError(f"train.strategy=fsdp needs a model with .layers (got {type(model).__name__}); "
                       f"use train.strategy=ddp")
    return list(layers)


# ---- checkpoints ---------------------------------------------------------------------------

def full_weights(model: torch.nn.Module) -> dict:
    """The consolidated state dict for model.safetensors: on rank 0 contiguous CPU tensors (a tied head
    stored once, as checkpoint.state_dict_for_save does), on the other ranks {}. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    state = {k: v.contiguous() for k, v in state.items()}
    if state and getattr(model.config, "tie_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def whole_copy(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """An unsharded CPU copy of the model on rank 0 (None elsewhere), e.g. to sample from. Collective."""
    weights = full_weights(model)
    if not weights:
        return None
    with torch.device("meta"):
        copy = Transformer(model.config)
    if getattr(model.config, "tie_embeddings", False):
        weights["lm_head.weight"] = weights["embed_tokens.weight"]
    copy.load_state_dict(weights, assign=True)
    copy.tie_weights()
    return copy.eval()


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Every rank's shards of the weights and the optimizer state into `folder` (DCP). Collective:
    when it returns on rank 0 every rank's files and the index are written."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, storage_writer=dcp.FileSystemWriter(str(folder)))


def save_checkpoint(ckpt_root: Path, tag: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    config, tokenizer_dir: Path, state: dict, trainer_state: dict) -> None:
    """checkpoint.save_checkpoint for a sharded model; every rank calls it. The shards go to a staging
    folder first (every rank writes there), the consolidated weights are gathered to rank 0, and rank 0
    moves the shards into the checkpoint it writes, before the manifest that vouches for all of it."""
    import torch.distributed as dist


    stage = Path(ckpt_root) / f".{tag}-{SHARDS}"  # a dot folder: clean_stale removes one a kill left
    if dist.get_rank() == 0:
        import shutil

        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
    dist.barrier()
    save_sharded(model, optimizer, stage)
    weights = full_weights(model)
    if dist.get_rank() == 0:
        checkpoint.save_checkpoint(ckpt_root, tag, model, config, tokenizer_dir, state,
                                   {**trainer_state, "optimizer": None},  # the optimizer lives in the shards
                                   weights=weights, shards=stage)


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: Path,
            full_optimizer_state: Optional[dict]) -> None:
    """Load a checkpoint into a sharded model and its optimizer, whatever process count wrote it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
        set_state_dict,
    )

    ckpt = Path(ckpt)
    if (ckpt / SHARDS).is_dir():  # FSDP on any number of ranks wrote it: DCP reshards to ours
        import torch.distributed.checkpoint as dcp

        model_state, optim_state = get_state_dict(model, optimizer)
        both = {"model": model_state, "optimizer": optim_state}
        dcp.load(both, storage_reader=SafeReader(str(ckpt / SHARDS)))
        set_state_dict(model, optimizer, model_state_dict=both["model"], optim_state_dict=both["optimizer"])
        return
    if full_optimizer_state is None:
        raise SLMError(f"{ckpt} holds no optimizer state (neither {SHARDS}/ nor trainer_state.pt's); "
                       f"start the run again")

    # A single process or DDP wrote it: full weights on every rank, each keeps its own shard.
    weights = read_weights(ckpt / WEIGHTS, getattr(model.config, "tie_embeddings", False))
    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=full)
    set_optimizer_state_dict(model, optimizer, by_name(full_optimizer_state, model, optimizer), options=full)


def load_sharded_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: Path) -> None:
    """A DDP or single-process resume of an FSDP checkpoint: its optimizer shards, gathered by DCP into
    this process's whole optimizer (the weights come from model.safetensors)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    with warnings.catch_warnings():  # one process: DCP warns that it assumes so, which is the point
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=SafeReader(str(Path(ckpt) / SHARDS)), no_dist=not dist.is_initialized())
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def by_name(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """An optimizer state dict keyed by parameter index (torch's own format, what a DDP or single-process
    checkpoint holds) → keyed by parameter name (what torch.distributed.checkpoint.state_dict loads).
    Indices number the parameters in param_groups order; this run's optimizer is built in the same
    order (optim.build_optimizer), which the group sizes confirm."""
    names = {id(p): name for name, p in model.named_parameters()}
    ours = [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    theirs = [group["params"] for group in state["param_groups"]]
    if [len(g) for g in ours] != [len(g) for g in theirs]:
        raise SLMError("the checkpoint's optimizer state does not match this model's parameters "
                       "(was train.optimizer changed?); resume with the settings it was saved with")
    index_to_name = {i: n for g_ours, g_theirs in zip(ours, theirs) for i, n in zip(g_theirs, g_ours)}
    groups = [{**group, "params": names_} for group, names_ in zip(state["param_groups"], ours)]
    return {"state": {index_to_name[i]: v for i, v in state["state"].items()}, "param_groups": groups}


# ---- reading DCP's index without unpickling arbitrary objects ---------------------------------

_ALLOWED_MODULES = ("torch.distributed.checkpoint.",)
_ALLOWED = {("torch", "Size"), ("torch", "device"), ("collections", "OrderedDict"), ("builtins", "set"),
            ("builtins", "frozenset"), ("torch._utils", "_rebuild_tensor_v2"),
            ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
            ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        dtype = getattr(torch, name, None) if module == "torch" else None
        if isinstance(dtype, (torch.dtype, torch.layout, torch.memory_format)) or (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module.startswith(_ALLOWED_MODULES) and "." not in name:  # a dotted name could reach `os.system`
            found = super().find_class(module, name)
            if isinstance(found, type) and found.__module__.startswith(_ALLOWED_MODULES):  # DCP's own classes
                return found
        raise SLMError(f"the checkpoint's {SHARDS}/.metadata refers to {module}.{name}, which a DCP index never "
                       f"holds: the file is damaged or not from SLM Studio; resume from another checkpoint")


def _safe_reader_class():
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as handle:
                metadata = _MetadataUnpickler(io.BytesIO(handle.read())).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader


def SafeReader(path: str):  # noqa: N802 - reads as the class it builds
    """DCP's FileSystemReader with the restricted unpickler above (built lazily: importing DCP costs)."""
    return _safe_reader_class()(path)
