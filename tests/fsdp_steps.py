"""Exact FSDP checks shared by tests/test_distributed.py (a helper module, not a test module).

`python -m torch.distributed.run --nproc-per-node=2 tests/fsdp_steps.py OUT` trains a tiny Llama for
four optimizer steps under slm_core.train.fsdp (gradient checkpointing on), each rank on its half of the
same global batches the test trains one process on, and writes OUT/fsdp.json (the losses), a sharded
checkpoint after step 2 (OUT/sharded/ and OUT/model.safetensors), and the step-3 loss of a sharded
model restored from the single-process checkpoint in OUT/plain/ (written by the test first) over steps
3 and 4: a step's loss is taken before its update, so step 4's shows whether step 3 used the restored
optimizer moments.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from slm_core.config import ModelConfig, TrainConfig
from slm_core.models.model import Transformer
from slm_core.train.optim import build_optimizer

CONFIG = ModelConfig(family="llama", n_layer=2, n_head=4, n_kv_head=2, d_model=64, context_length=32, vocab_size=300)
TRAIN = TrainConfig(lr=1e-2, grad_clip=0.5)
GLOBAL_BATCH, STEPS, SAVE_AFTER = 8, 4, 2


def batches() -> list:
    """Tokens from the first 16 ids only: a pattern three steps of training visibly learn."""
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 16, (2, GLOBAL_BATCH, CONFIG.context_length), generator=generator)
            for _ in range(STEPS)]


def fresh_model(checkpointing: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = Transformer(CONFIG).train()
    model.gradient_checkpointing = checkpointing
    return model


def step(model, optimizer, xy, rank: int = 0, world: int = 1) -> float:
    """One step on this rank's rows of the global batch; returns the global batch's mean loss."""
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    x, y = xy[0][rows], xy[1][rows]
    logits = model(x)
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters()], TRAIN.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss = loss.detach()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(loss)
        loss /= world
    return loss.item()


def main(out: Path) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from slm_core.train import fsdp

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cpu = torch.device("cpu")
    model = fsdp.shard(fresh_model(checkpointing=True), cpu, None)
    optimizer = build_optimizer(model, TRAIN, cpu)
    losses = []
    for number, xy in enumerate(batches(), start=1):
        losses.append(step(model, optimizer, xy, rank, world))
        if number == SAVE_AFTER:
            fsdp.save_sharded(model, optimizer, out / fsdp.SHARDS)
            weights = fsdp.full_weights(model)
            if rank == 0:
                save_file(weights, str(out / "model.safetensors"))
    # 1 process → 2: a sharded model resumes from a single-process checkpoint.
    model = fsdp.shard(fresh_model(), cpu, None)
    optimizer = build_optimizer(model, TRAIN, cpu)
    saved = torch.load(out / "plain" / "optimizer.pt", weights_only=True)
    fsdp.restore(model, optimizer, out / "plain", saved)
    from_plain = [step(model, optimizer, xy, rank, world) for xy in batches()[SAVE_AFTER:]]
    if rank == 0:
        (out / "fsdp.json").write_text(json.dumps({"losses": losses, "from_plain": from_plain}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
