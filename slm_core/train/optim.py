"""The optimizer (AdamW, or Muon on hidden matrices with AdamW on the rest) and the learning-rate
schedule (warmup, then cosine / linear / constant / warmup-stable-decay)."""

from __future__ import annotations

import math

import torch

from slm_core.config import TrainConfig
from slm_core.errors import SLMError
from slm_core.system import cpu_has_native_bf16


def _split_params(model: torch.nn.Module) -> dict[str, list]:
    """'hidden': 2-D weights inside the blocks (what Muon is for); 'decay': other matrices that take
    weight decay under AdamW; 'no_decay': norms, biases, embeddings, the head and LoRA factors."""
    groups = {"hidden": [], "decay": [], "no_decay": []}
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        is_embedding = "embed_tokens" in name or "embed_positions" in name or name.endswith("lm_head.weight")
        # LoRA factors start at zero (B) and stay small: decaying them only fights the update, and
        # orthogonalising a rank-r factor (Muon) is not what it was designed for.
        is_adapter = "lora_" in name
        if param.dim() == 2 and not (is_embedding or is_adapter):
            groups["hidden"].append(param)
        elif param.dim() >= 2 and not (is_embedding or is_adapter):
            groups["decay"].append(param)
        else:
            groups["no_decay"].append(param)
    return groups


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """Weight decay on matrices only: never on norms, biases or embeddings. With train.optimizer=muon
    the hidden matrices go to torch.optim.Muon and everything else stays on AdamW."""
    parts = _split_params(model)
    fused = device.type == "cuda"  # fused AdamW: one kernel for all parameters on CUDA
    if cfg.optimizer == "muon" and parts["hidden"]:
        adamw = torch.optim.AdamW([{"params": parts["decay"], "weight_decay": cfg.weight_decay},
                                   {"params": parts["no_decay"], "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)
        # match_rms_adamw (Moonshot's scaling) makes the update's RMS match AdamW's, so one lr and one
        # weight decay serve both optimizers; train.muon_lr overrides the peak for Muon alone.
        muon_lr = cfg.muon_lr or cfg.lr
        muon = Muon(parts["hidden"], lr=muon_lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                    adjust_lr_fn="match_rms_adamw", ns_dtype=newton_schulz_dtype(device))
        for group in muon.param_groups:
            group["lr_scale"] = muon_lr / cfg.lr
        return CombinedOptimizer({"adamw": adamw, "muon": muon})
    groups = [{"params": parts["hidden"] + parts["decay"], "weight_decay": cfg.weight_decay},
              {"params": parts["no_decay"], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16 where matrix multiplies run it natively (CUDA, AVX-512 BF16 / AMX CPUs), else fp32."""
    return torch.bfloat16 if device.type == "cuda" or cpu_has_native_bf16() else torch.float32


def newton_schulz(grad: torch.Tensor, steps: int, coefficients: tuple, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """Keller Jordan's quintic Newton-Schulz iteration: approximately U V^T of grad = U S V^T (m, n).

    A 3-D grad (k, m, n) with m <= n is k matrices orthogonalised at once (batched multiplies)."""
    a, b, c = coefficients
    if grad.dim() == 3:
        x = grad.to(dtype)
        x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
        for _ in range(steps):
            gram = torch.bmm(x, x.mT)
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return x
    x = grad.to(dtype)
    transposed = grad.size(0) > grad.size(1)
    if transposed:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if transposed else x


BATCH_ELEMENTS = 1 << 22  # 16 MB of fp32 per stacked Newton-Schulz batch


def shape_batches(shapes: list) -> list[list[int]]:
    """Indices of `shapes` in batches of one (wide-oriented) shape, each at most BATCH_ELEMENTS numbers,
    so a large model's matrices (compute-bound anyway) go one at a time and no big copy is made."""
    by_shape: dict[tuple, list[list[int]]] = {}
    for index, (m, n) in enumerate(shapes):
        chunks = by_shape.setdefault((min(m, n), max(m, n)), [[]])
        if chunks[-1] and (len(chunks[-1]) + 1) * m * n > BATCH_ELEMENTS:
            chunks.append([])
        chunks[-1].append(index)
    return [chunk for chunks in by_shape.values() for chunk in chunks]


def orthogonalise_batch(updates: list[torch.Tensor], steps: int, coefficients: tuple, eps: float,
                        dtype: torch.dtype) -> list[torch.Tensor]:
    """newton_schulz of same-shaped matrices (up to a transpose) in one batched iteration.

    A small model's hidden matrices are many and tiny (16 of 128x128 in a 4-layer, 128-wide model): a
    multiply each spends more in per-call overhead than in arithmetic; batched, Newton-Schulz ran ~1.7x
    faster on a 2-core CPU. A batch of one keeps the 2-D path (torch's own arithmetic, bit for bit)."""
    if len(updates) == 1:
        return [newton_schulz(updates[0], steps, coefficients, eps, dtype)]
    tall = [u.size(0) > u.size(1) for u in updates]  # turned wide for the stack, then back
    stacked = torch.stack([u.T if t else u for u, t in zip(updates, tall)])
    return [x.T if t else x for t, x in zip(tall, newton_schulz(stacked, steps, coefficients, eps, dtype).unbind(0))]


class Muon(torch.optim.Muon):
    """torch.optim.Muon's update, with the Newton-Schulz dtype chosen by the device.

    torch runs Newton-Schulz in bf16 always; on a CPU without native bf16 (AVX2 only) a bf16 matrix
    multiply is ~20x slower than fp32 (measured here), which made Muon cost more than the forward and
    backward passes. The state (momentum_buffer) and hyperparameters are torch's, so checkpoints are
    interchangeable with torch.optim.Muon.
    """

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        from torch.optim._muon import (
            _adjust_lr,  # torch's own lr scaling ("original" / "match_rms_adamw")
        )

        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            params = [param for param in group["params"] if param.grad is not None]
            for batch in shape_batches([param.shape for param in params]):
                updates = []
                for param in (params[i] for i in batch):
                    grad = param.grad
                    state = self.state[param]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                    buf = state["momentum_buffer"]
                    buf.lerp_(grad, 1 - momentum)
                    updates.append(grad.lerp(buf, momentum) if group["nesterov"] else buf)
                updates = orthogonalise_batch(updates, group["ns_steps"], group["ns_coefficients"], group["eps"],
                                              self.ns_dtype)
                for param, update in zip((params[i] for i in batch), updates):
                    param.mul_(1 - lr * group["weight_decay"])
                    param.add_(update.to(param.dtype), alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return None


class CombinedOptimizer:
    """Several optimizers stepped as one: what the loop, the checkpoint and the lr schedule need
    (param_groups, step, zero_grad, state_dict). A GradScaler unscales and steps each of `.optimizers`."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.named = optimizers
        self.optimizers = list(optimizers.values())

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.named.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.named):
            raise SLMError("the checkpoint's optimizer state is for another train.optimizer; resume with the "
                           "optimizer the run started with")
        for name, opt in self.named.items():
            opt.load_state_dict(state[name])


def set_lr(optimizer, lr: float) -> None:
    """Every group gets `lr`, times its own lr_scale (Muon's groups when train.muon_lr is set)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (1-based): linear warmup, then cosine/linear/constant,
    or wsd: hold the peak, then decay linearly over the last `decay_fraction` of the steps (the
    schedule lets a run be stopped early or extended without committing to its length up front)."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    min_lr = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.max_steps * cfg.decay_fraction))
        decay_start = max(cfg.warmup_steps, cfg.max_steps - decay_steps)
        if step <= decay_start:
            return cfg.lr
        progress = min(1.0, (step - decay_start) / max(1, cfg.max_steps - decay_start))
        return cfg.lr - (cfg.lr - min_lr) * progress
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "linear":
        return cfg.lr - (cfg.lr - min_lr) * progress
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))
